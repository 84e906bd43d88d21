/**
 * Issue 8, item 1: expensive bodies must not stall everyone. While attackers
 * send ~800 KB events nested 200k levels deep and NDJSON bodies of millions
 * of tiny lines (with a raised PAYFLUX_MAX_BODY_BYTES), a good client's p99
 * latency stays under 100 ms, every attack gets its 4xx, and nothing of the
 * attack is stored. Also item 10's body rules, end to end: repeated known
 * members and non-canonical retry_count literals are 422, nothing stored.
 */
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { BATCH, E2E_TARGETS, event, KEY, metric, metricsText, post, SINGLE, startServer, stopAll, storedEvents, type Server } from "./support/harness.ts";

afterAll(stopAll);

/** The good client's p99 must stay under this while the attack runs (the bound). */
const P99_LIMIT_MS = 100;
const ATTACKER = join(import.meta.dir, "support", "body-attacker.ts");

function attack(server: Server, path: string, body: string | Uint8Array, contentType = "application/json") {
  return fetch(server.url + path, {
    method: "POST",
    headers: { authorization: `Bearer ${KEY}`, "content-type": contentType },
    body: body as BodyInit,
    signal: AbortSignal.timeout(30_000),
  }).then(async (r) => ({ status: r.status, code: ((await r.json()) as { code?: string }).code }));
}

for (const target of E2E_TARGETS) {
  describe(`expensive bodies on ${target}`, () => {
    let server: Server;
    beforeAll(async () => {
      server = await startServer({
        target,
        env: { PAYFLUX_MAX_BODY_BYTES: String(64 * 1024 * 1024), PAYFLUX_INGEST_RPS: "100000", PAYFLUX_INGEST_BURST: "100000" },
      });
    }, 60_000);

    test(`a good client's p99 stays under ${P99_LIMIT_MS} ms while 200k-deep events and 12M-line NDJSON bodies arrive; each attack is a 4xx`, async () => {
      // Warm up the good path (JIT, connection pool) before measuring.
      for (let i = 0; i < 20; i++) await post(server, SINGLE, event());

      // Two attacker processes for 4 s, each bounded to 100 requests, 40 ms apart: on the
      // code before issue 8 one such request held the only JS thread for 0.6-0.9 s.
      let attacking = true;
      const attackers = Promise.all(
        [0, 2].map(async (offset) => {
          const p = Bun.spawn([process.execPath, ATTACKER, server.url, KEY, "4000", "100", String(offset), "40"], { stdout: "pipe", stderr: "inherit" });
          const timer = setTimeout(() => p.kill("SIGKILL"), 60_000);
          const out = await new Response(p.stdout).text();
          clearTimeout(timer);
          return JSON.parse(out) as { path: string; ct: string; status: number | string; code?: string }[];
        }),
      ).finally(() => (attacking = false));

      const latencies: number[] = [];
      const goodIds: string[] = [];
      while (attacking && latencies.length < 5000) {
        const ev = event();
        const started = performance.now();
        const res = await post(server, SINGLE, ev);
        latencies.push(performance.now() - started);
        expect(res.status).toBe(202);
        await res.arrayBuffer();
        goodIds.push(ev.event_id as string);
      }
      const results = (await attackers).flat();
      latencies.sort((a, b) => a - b);
      const p99 = latencies[Math.min(latencies.length - 1, Math.floor(latencies.length * 0.99))]!;
      // Enough samples to mean something, then the bound itself.
      expect(latencies.length).toBeGreaterThan(50);
      const worst = latencies.slice(-5).map((l) => Math.round(l));
      expect({ p99: p99 < P99_LIMIT_MS ? "ok" : p99, samples: latencies.length, worst }).toEqual({ p99: "ok", samples: latencies.length, worst });

      expect(results.length).toBeGreaterThanOrEqual(8);
      for (const r of results) {
        const want = r.ct === "application/x-ndjson" ? [413, "batch_too_large"] : [400, "malformed_json"];
        expect([r.path, r.status, r.code]).toEqual([r.path, ...want]);
      }

      // Nothing of the attack was stored; every good event was.
      const stored = await storedEvents(server.dataDir);
      expect(stored.filter((r) => "extra" in r)).toEqual([]);
      const ids = new Set(stored.map((r) => r.event_id));
      expect(goodIds.every((id) => ids.has(id))).toBe(true);
      expect(server.proc.exitCode).toBeNull();
    }, 90_000);

    test("maxBatch+1 elements or lines are refused as batch_too_large as soon as the extra one starts, before the rest is parsed", async () => {
      // What follows the 1001st element is not even JSON: the count wins, the parse never runs.
      const body = `[${"1,".repeat(1000)}1, this is not JSON`;
      expect(await attack(server, BATCH, body)).toEqual({ status: 413, code: "batch_too_large" });
      const nd = Array.from({ length: 1001 }, () => JSON.stringify(event())).join("\n") + "\nnot JSON either";
      expect(await attack(server, BATCH, nd, "application/x-ndjson")).toEqual({ status: 413, code: "batch_too_large" });
      // Exactly maxBatch is fine: blank lines do not count.
      const ok = Array.from({ length: 1000 }, () => JSON.stringify(event())).join("\n\n \r\n");
      expect((await attack(server, BATCH, ok, "application/x-ndjson")).status).toBe(202);
    });

    test("nesting up to 32 levels is accepted; 33 is 400 malformed_json naming the limit", async () => {
      const at = (levels: number) => {
        const ev = JSON.stringify(event());
        // The event object is level 1: `extra` adds levels - 1 more.
        return `${ev.slice(0, -1)},"extra":${"[".repeat(levels - 1)}${"]".repeat(levels - 1)}}`;
      };
      expect((await attack(server, SINGLE, at(32))).status).toBe(202);
      const res = await fetch(server.url + SINGLE, { method: "POST", headers: { authorization: `Bearer ${KEY}` }, body: at(33) });
      const body = (await res.json()) as { code: string; detail: string };
      expect([res.status, body.code]).toEqual([400, "malformed_json"]);
      expect(body.detail).toContain("32 levels");
      // Brackets inside strings are data, not nesting.
      expect((await attack(server, SINGLE, JSON.stringify(event({ note: "[".repeat(1000) + "{\\\"".repeat(100) })))).status).toBe(202);
    });

    test("two event_id members (or any known member twice, even spelled with an escape) are 422 naming it; nothing stored", async () => {
      const ev = event();
      const id2 = crypto.randomUUID();
      const twice = `${JSON.stringify(ev).slice(0, -1)},"event_id":"${id2}"}`;
      const escaped = `${JSON.stringify(ev).slice(0, -1)},"event\\u005fid":"${id2}"}`;
      const batch = `[${JSON.stringify(event())},${JSON.stringify(ev).slice(0, -1)},"processor":"adyen"}]`;
      for (const [path, body, field, index] of [
        [SINGLE, twice, "event_id", 0],
        [SINGLE, escaped, "event_id", 0],
        [BATCH, batch, "processor", 1],
      ] as const) {
        const res = await fetch(server.url + path, { method: "POST", headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" }, body });
        const problem = (await res.json()) as { code: string; errors: { index: number; field: string; message: string }[] };
        expect([res.status, problem.code]).toEqual([422, "validation_failed"]);
        expect(problem.errors).toContainEqual({ index, field, message: "appears more than once in this event; send each member once" });
      }
      // An unknown member twice is left to JSON (last wins), as before; nested objects may reuse names.
      const nested = `${JSON.stringify(event({ meta: { event_id: "x", processor: "y" } }))}`;
      expect((await attack(server, SINGLE, nested)).status).toBe(202);
      const ids = new Set((await storedEvents(server.dataDir)).map((r) => r.event_id));
      expect(ids.has(ev.event_id)).toBe(false);
      expect(ids.has(id2)).toBe(false);
    });

    test("retry_count must be written as plain digits: 100.0000000000000001, -0, 1e2, 100.0, 007 are 422; 0, 7, 100 are stored as sent", async () => {
      for (const literal of ["100.0000000000000001", "-0", "1e2", "100.0", "007", "0.0", "-0.0"]) {
        const body = JSON.stringify(event()).replace('"retry_count":0', `"retry_count":${literal}`);
        const res = await fetch(server.url + SINGLE, { method: "POST", headers: { authorization: `Bearer ${KEY}` }, body });
        const problem = (await res.json()) as { code?: string; errors?: unknown[] };
        expect({ literal, status: res.status, code: problem.code, errors: problem.errors }).toEqual({
          literal,
          status: literal === "007" ? 400 : 422, // a leading zero is not JSON at all
          code: literal === "007" ? "malformed_json" : "validation_failed",
          errors: literal === "007" ? undefined : [{ index: 0, field: "retry_count", message: "must be an integer from 0 to 100" }],
        });
      }
      for (const n of [0, 7, 100]) {
        const ev = event({ retry_count: n });
        expect((await post(server, SINGLE, ev)).status).toBe(202);
        const rec = (await storedEvents(server.dataDir)).find((r) => r.event_id === ev.event_id)!;
        expect(rec.retry_count).toBe(n);
      }
      expect(metric(await metricsText(server), 'payflux_ingest_rejected_total{reason="validation_failed"}')).toBeGreaterThan(0);
    });
  });
}
