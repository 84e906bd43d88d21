/**
 * GET/HEAD /health: 200 with status, version, uptime and a 12-hex config
 * fingerprint that follows the effective config. (503 on storage failure is
 * covered by the storage tests.)
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import pkg from "../package.json" with { type: "json" };
import { E2E_TARGETS, KEY, KEY2, startServer, stopAll, tempDir, type Server } from "./support/harness.ts";

afterAll(stopAll);

async function health(server: Server): Promise<Record<string, any>> {
  const res = await fetch(server.url + "/health");
  expect(res.status).toBe(200);
  return res.json();
}

for (const target of E2E_TARGETS) {
  describe(`[${target}] GET and HEAD /health`, () => {
    let server: Server;
    beforeAll(async () => {
      server = await startServer({ target });
    });
    afterAll(stopAll);

    test("GET: 200 JSON with status, version, uptime_s and a 12-hex fingerprint", async () => {
      const res = await fetch(server.url + "/health");
      expect(res.status).toBe(200);
      expect(res.headers.get("content-type")).toStartWith("application/json");
      const body = await res.json();
      expect(body.status).toBe("ok");
      expect(body.version).toBe(pkg.version);
      expect(typeof body.uptime_s).toBe("number");
      expect(Number.isFinite(body.uptime_s)).toBe(true);
      expect(body.uptime_s).toBeGreaterThanOrEqual(0);
      expect(body.config_fingerprint).toMatch(/^[0-9a-f]{12}$/);
    });

    test("GET needs no API key and ignores a bad one", async () => {
      const res = await fetch(server.url + "/health", { headers: { authorization: "Bearer definitely-not-a-key-000000" } });
      expect(res.status).toBe(200);
      expect((await res.json()).status).toBe("ok");
    });

    test("the fingerprint matches the one in the start-up log line", async () => {
      const listening = server.logs().find((l) => l.msg === "payflux listening")!;
      expect((await health(server)).config_fingerprint).toBe(listening.config_fingerprint);
    });

    test("HEAD: 200 with no body", async () => {
      const res = await fetch(server.url + "/health", { method: "HEAD" });
      expect(res.status).toBe(200);
      const body = new Uint8Array(await res.arrayBuffer());
      expect(body.byteLength).toBe(0);
    });
  });

  describe(`[${target}] config fingerprint`, () => {
    afterAll(stopAll);
    // The data dir is part of the config: every run shares one (one server at a time).
    let dataDir: string;
    beforeAll(() => {
      dataDir = tempDir();
    });
    const fingerprintOf = async (env: Record<string, string>): Promise<string> => {
      const s = await startServer({ target, env, dataDir });
      const f = (await health(s)).config_fingerprint as string;
      expect(await s.stop()).toBe(0);
      expect(f).toMatch(/^[0-9a-f]{12}$/);
      return f;
    };

    test("equal for identical config, different when keys or RPS change", async () => {
      const fa = await fingerprintOf({ PAYFLUX_API_KEYS: KEY });
      // Another process, another port (PAYFLUX_PORT=0 both times): the same config, the same fingerprint.
      const fsame = await fingerprintOf({ PAYFLUX_API_KEYS: KEY });
      const fkey = await fingerprintOf({ PAYFLUX_API_KEYS: KEY2 });
      const fmore = await fingerprintOf({ PAYFLUX_API_KEYS: `${KEY},${KEY2}` });
      const frps = await fingerprintOf({ PAYFLUX_API_KEYS: KEY, PAYFLUX_INGEST_RPS: "50" });
      const frevoked = await fingerprintOf({ PAYFLUX_API_KEYS: KEY, PAYFLUX_REVOKED_KEYS: KEY2 });
      expect(fsame).toBe(fa);
      expect(new Set([fa, fkey, fmore, frps, frevoked]).size).toBe(5);
    });

    test("key order and spacing do not change the fingerprint", async () => {
      const f1 = await fingerprintOf({ PAYFLUX_API_KEYS: `${KEY},${KEY2}` });
      const f2 = await fingerprintOf({ PAYFLUX_API_KEYS: ` ${KEY2} , ${KEY}` });
      expect(f2).toBe(f1);
    });
  });
}

describe("the same config on every target", () => {
  afterAll(stopAll);
  test(`one fingerprint on ${E2E_TARGETS.join(", ")}`, async () => {
    const dataDir = tempDir();
    const env = { PAYFLUX_API_KEYS: `${KEY},${KEY2}`, PAYFLUX_INGEST_RPS: "50" };
    const seen: Record<string, string> = {};
    for (const target of E2E_TARGETS) {
      const s = await startServer({ target, env, dataDir });
      seen[target] = (await health(s)).config_fingerprint;
      expect(await s.stop()).toBe(0);
    }
    const first = seen[E2E_TARGETS[0]!]!;
    expect(first).toMatch(/^[0-9a-f]{12}$/);
    expect(seen).toEqual(Object.fromEntries(E2E_TARGETS.map((t) => [t, first])));
  });
});
