/**
 * Smoke subset on the compiled binary (dist/payflux, built by `npm run build`):
 * it must behave like the source.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import pkg from "../package.json" with { type: "json" };
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { baseEnv, BINARY, ensureBinary, event, KEY, metric, metricsText, post, runCli, SINGLE, startServer, stopAll, storedEvents, type Server } from "./support/harness.ts";

beforeAll(async () => {
  await ensureBinary();
}, 180_000);
afterAll(stopAll);

describe("dist/payflux", () => {
  test("--version prints the package.json version, exit 0", () => {
    const r = runCli(["--version"], {}, true);
    expect(r.code).toBe(0);
    expect(r.stdout.trim().split(/\s+/)).toContain(pkg.version);
  });

  test("check-config: 0 for a valid config, 78 for an invalid one, 78 with no key", () => {
    const ok = runCli(["check-config"], { PAYFLUX_API_KEYS: KEY }, true);
    expect(ok.code).toBe(0);
    expect(ok.stdout).toContain("1 active");
    expect(ok.stdout + ok.stderr).not.toContain(KEY);
    const bad = runCli(["check-config"], { PAYFLUX_API_KEYS: KEY, PAYFLUX_INGEST_RPS: "abc", PAYFLUX_PORT: "70000" }, true);
    expect(bad.code).toBe(78);
    expect(bad.stderr).toContain("PAYFLUX_INGEST_RPS");
    expect(bad.stderr).toContain("PAYFLUX_PORT");
    const none = runCli(["check-config"], {}, true);
    expect(none.code).toBe(78);
    expect(none.stderr).toContain("PAYFLUX_API_KEYS");
  });

  test("a .env or bunfig.toml in the working directory is never read: only the environment and the config file are", () => {
    const dir = mkdtempSync(join(tmpdir(), "payflux-dotenv-"));
    try {
      writeFileSync(join(dir, ".env"), "PAYFLUX_API_KEYS=from-a-dotenv-file-0123456789abcdef\nPAYFLUX_PORT=notaport\n");
      writeFileSync(join(dir, "bunfig.toml"), 'preload = ["./missing.ts"]\n');
      const run = (env: Record<string, string>) => Bun.spawnSync([BINARY, "check-config"], { cwd: dir, env: baseEnv(env), stdout: "pipe", stderr: "pipe" });
      const ok = run({ PAYFLUX_API_KEYS: KEY });
      expect({ code: ok.exitCode, stderr: ok.stderr.toString() }).toEqual({ code: 0, stderr: "" });
      const none = run({});
      expect(none.exitCode).toBe(78);
      expect(none.stderr.toString()).toContain("PAYFLUX_API_KEYS");
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("unknown command: exit 64", () => {
    const r = runCli(["frobnicate"], {}, true);
    expect(r.code).toBe(64);
    expect(r.stderr).toMatch(/usage/i);
  });

  describe("serve", () => {
    let server: Server;
    beforeAll(async () => {
      server = await startServer({ binary: true });
    });

    test("202, duplicate, invalid key: the compat smoke metrics lines", async () => {
      const ev = event();
      const first = await post(server, SINGLE, ev);
      expect(first.status).toBe(202);
      expect(await first.json()).toEqual({ accepted: 1, duplicates: 0 });
      const again = await post(server, SINGLE, ev);
      expect(again.status).toBe(202);
      expect(await again.json()).toEqual({ accepted: 0, duplicates: 1 });
      const bad = await post(server, SINGLE, ev, { key: "wrong-key-0000000000000000" });
      expect(bad.status).toBe(401);
      expect((await bad.json()).code).toBe("invalid_key");

      const text = await metricsText(server);
      expect(text).toContain("payflux_ingest_accepted_total 1\n");
      expect(text).toContain("payflux_ingest_duplicate_total 1\n");
      expect(text).toContain('payflux_auth_denied_total{reason="invalid_key"} 1\n');
      expect(metric(text, `payflux_build_info{version="${pkg.version}",runtime="bun"}`)).toBe(1);
      expect(metric(text, "process_cpu_seconds_total")).toBeNumber();

      const stored = await storedEvents(server.dataDir);
      expect(stored.map((e) => e.event_id)).toEqual([ev.event_id]);
    });

    test("health 200", async () => {
      const res = await fetch(server.url + "/health");
      expect(res.status).toBe(200);
      const body = await res.json();
      expect(body.status).toBe("ok");
      expect(body.version).toBe(pkg.version);
      expect(body.config_fingerprint).toMatch(/^[0-9a-f]{12}$/);
    });

    test("logs are JSON lines without the key; SIGTERM exits 0", async () => {
      expect(await server.stop("SIGTERM")).toBe(0);
      for (const l of server.stdout.filter((x) => x.trim() !== "")) expect(() => JSON.parse(l)).not.toThrow();
      expect(server.logs().some((l) => l.msg === "payflux listening")).toBe(true);
      expect(server.stdout.join("\n") + server.stderr()).not.toContain(KEY);
    });
  });
});
