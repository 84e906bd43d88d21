/**
 * Logs: JSON on stdout, one start-up line, throttled warn lines for denials,
 * and never a key, a revoked key, a presented bad key or the metrics token,
 * after a run full of denials against the real server.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import pkg from "../package.json" with { type: "json" };
import { event, metric, post, SINGLE, BATCH, startServer, stopAll, type Server } from "./support/harness.ts";

afterAll(stopAll);

const hex = (n: number) => randomBytes(n).toString("hex");
const KEY_A = `live-a-${hex(24)}`;
const KEY_B = `live-b-${hex(24)}`;
const REVOKED = `revoked-${hex(24)}`;
const METRICS_TOKEN = `metrics-${hex(24)}`;

const VALID = 20;
const INVALID = 100;
const REVOKED_N = 100;
const MISSING = 100;
const WRONG_METRICS = 30;

describe("a run full of denials", () => {
  let server: Server;
  const invalidKeys: string[] = [];
  const wrongTokens: string[] = [];
  const acceptedIds: string[] = [];
  let output = "";
  let lines: Record<string, any>[] = [];
  let metricsAfter = "";

  beforeAll(async () => {
    server = await startServer({
      env: {
        PAYFLUX_API_KEYS: `${KEY_A}, ${KEY_B}`,
        PAYFLUX_REVOKED_KEYS: REVOKED,
        PAYFLUX_METRICS_TOKEN: METRICS_TOKEN,
        // Every denial here must reach the key check (the failed-login limit has its own test).
        PAYFLUX_AUTH_FAIL_BURST: "0",
      },
    });
    const requests: (() => Promise<number>)[] = [];
    for (let i = 0; i < VALID; i++) {
      const ev = event();
      acceptedIds.push(ev.event_id as string);
      requests.push(async () => (await post(server, i % 2 ? BATCH : SINGLE, i % 2 ? [ev] : ev, { key: i % 3 ? KEY_A : KEY_B })).status);
    }
    for (let i = 0; i < INVALID; i++) {
      const bad = `bad-${hex(20)}`;
      invalidKeys.push(bad);
      requests.push(async () => (await post(server, SINGLE, event(), { key: bad })).status);
    }
    for (let i = 0; i < REVOKED_N; i++) requests.push(async () => (await post(server, BATCH, [event()], { key: REVOKED })).status);
    for (let i = 0; i < MISSING; i++) {
      // No header, another scheme carrying a live key, an empty token.
      const headers: Record<string, string> = i % 3 === 0 ? {} : i % 3 === 1 ? { authorization: `Basic ${KEY_A}` } : { authorization: "Bearer " };
      requests.push(async () => (await post(server, SINGLE, event(), { key: null, headers })).status);
    }
    for (let i = 0; i < WRONG_METRICS; i++) {
      const wrong = `wrong-metrics-${hex(16)}`;
      wrongTokens.push(wrong);
      requests.push(async () => {
        const r = await fetch(server.url + "/metrics", { headers: { authorization: `Bearer ${wrong}` } });
        await r.arrayBuffer();
        return r.status;
      });
    }
    // Interleave the kinds, then send 20 at a time.
    const order = requests.map((r, i) => ({ r, k: (i * 7919) % requests.length })).sort((a, b) => a.k - b.k);
    const statuses: number[] = [];
    for (let i = 0; i < order.length; i += 20) statuses.push(...(await Promise.all(order.slice(i, i + 20).map((o) => o.r()))));
    expect(statuses.filter((s) => s === 202).length).toBe(VALID);
    expect(statuses.filter((s) => s === 401).length).toBe(INVALID + REVOKED_N + MISSING + WRONG_METRICS);

    const m = await fetch(server.url + "/metrics", { headers: { authorization: `Bearer ${METRICS_TOKEN}` } });
    expect(m.status).toBe(200);
    metricsAfter = await m.text();

    expect(await server.stop()).toBe(0);
    output = server.stdout.join("\n") + "\n" + server.stderr();
    lines = server.logs();
  });

  test("the traffic was counted as sent", () => {
    expect(metric(metricsAfter, "payflux_ingest_accepted_total")).toBe(VALID);
    expect(metric(metricsAfter, 'payflux_auth_denied_total{reason="invalid_key"}')).toBe(INVALID);
    expect(metric(metricsAfter, 'payflux_auth_denied_total{reason="revoked_key"}')).toBe(REVOKED_N);
    expect(metric(metricsAfter, 'payflux_auth_denied_total{reason="missing_key"}')).toBe(MISSING);
  });

  test("no key, revoked key, presented bad key or metrics token appears in stdout or stderr", () => {
    const secrets = [KEY_A, KEY_B, REVOKED, METRICS_TOKEN, ...invalidKeys, ...wrongTokens];
    for (const s of secrets) {
      expect(output.includes(s)).toBe(false);
      // Nor its random part on its own (e.g. a truncated key).
      const tail = s.slice(-20);
      expect(output.includes(tail)).toBe(false);
    }
  });

  test("every stdout line is JSON", () => {
    const nonEmpty = server.stdout.filter((l) => l.trim() !== "");
    expect(nonEmpty.length).toBeGreaterThan(0);
    for (const l of nonEmpty) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(l);
      } catch {
        throw new Error(`stdout line is not JSON: ${l}`);
      }
      expect(typeof parsed).toBe("object");
      expect(typeof (parsed as Record<string, unknown>).level).toBe("string");
      expect(typeof (parsed as Record<string, unknown>).msg).toBe("string");
    }
  });

  test("exactly one start-up line, with version, address, key counts and config source", () => {
    const starts = lines.filter((l) => l.msg === "payflux listening");
    expect(starts.length).toBe(1);
    const s = starts[0]!;
    expect(s.level).toBe("info");
    expect(s.version).toBe(pkg.version);
    expect(s.address).toBe(`http://127.0.0.1:${server.port}`);
    expect(s.keys).toEqual({ active: 2, revoked: 1, expired: 0 });
    expect(s.config_source).toBe("environment");
  });

  test("denials are logged at warn with reason, key_id and client_ip", () => {
    const denials = lines.filter((l) => l.msg === "auth denied");
    expect(denials.length).toBeGreaterThan(0);
    const reasons = new Set<string>();
    for (const d of denials) {
      expect(d.level).toBe("warn");
      expect(["missing_key", "invalid_key", "revoked_key"]).toContain(d.reason);
      reasons.add(d.reason);
      expect(d.client_ip).toBe("127.0.0.1");
      if (d.reason === "missing_key") expect(d.key_id).toBeUndefined();
      else expect(d.key_id).toMatch(/^[0-9a-f]{12}$/);
    }
    expect([...reasons].sort()).toEqual(["invalid_key", "missing_key", "revoked_key"]);
    // A revoked key always has the same key_id.
    expect(new Set(denials.filter((d) => d.reason === "revoked_key").map((d) => d.key_id)).size).toBe(1);
  });

  test("denial lines are throttled and the suppressed count is reported (flushed at shutdown)", () => {
    const denials = lines.filter((l) => l.msg === "auth denied");
    const total = INVALID + REVOKED_N + MISSING;
    expect(denials.length).toBeLessThan(100);
    const summaries = lines.filter((l) => typeof l.suppressed === "number");
    expect(summaries.length).toBeGreaterThan(0);
    for (const s of summaries) {
      expect(s.level).toBe("warn");
      expect(s.suppressed).toBeGreaterThan(0);
      expect(s.msg).toContain(String(s.suppressed));
    }
    // Every denial is either logged or counted as suppressed.
    const suppressedDenials = summaries.filter((s) => String(s.kind ?? "").startsWith("auth")).reduce((n, s) => n + s.suppressed, 0);
    expect(denials.length + suppressedDenials).toBe(total);
    // The last summary comes with the shutdown, after "shutting down".
    const shutdownAt = lines.findIndex((l) => String(l.msg).startsWith("shutting down"));
    expect(shutdownAt).toBeGreaterThan(0);
    expect(lines.slice(shutdownAt).some((l) => typeof l.suppressed === "number")).toBe(true);
  });

  test("no per-request info line for accepted events at the default level", () => {
    const startAt = lines.findIndex((l) => l.msg === "payflux listening");
    const shutdownAt = lines.findIndex((l) => String(l.msg).startsWith("shutting down"));
    const between = lines.slice(startAt + 1, shutdownAt);
    expect(between.filter((l) => l.level === "info" || l.level === "debug" || l.level === "trace")).toEqual([]);
    for (const id of acceptedIds) expect(output.includes(id)).toBe(false);
  });
});
