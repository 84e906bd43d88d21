/**
 * Ingest over HTTP against the real server: 202 bodies, duplicates, batches
 * (JSON array and NDJSON), all-or-nothing batches, every error status with
 * its problem code and metric, concurrency, and what lands on disk.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import {
  BATCH,
  E2E_TARGETS,
  event,
  KEY,
  KEY2,
  metric,
  metricsText,
  post,
  SINGLE,
  startServer,
  stopAll,
  storedEvents,
  type Server,
} from "./support/harness.ts";

// stopAll also removes the servers' temporary data dirs.
afterAll(stopAll);

const NO_LIMIT = { PAYFLUX_INGEST_BURST: "100000", PAYFLUX_INGEST_RPS: "100000" };
const REJECT_REASONS = [
  "rate_limited",
  "malformed_json",
  "payload_too_large",
  "batch_too_large",
  "empty_batch",
  "unsupported_media_type",
  "validation_failed",
  "storage_unavailable",
];
const rejected = (reason: string) => `payflux_ingest_rejected_total{reason="${reason}"}`;

async function accepted(res: Response): Promise<{ status: number; body: unknown }> {
  return { status: res.status, body: await res.json() };
}

/** Counters that a refused request must (or must not) move, and the events on disk. */
async function snapshot(server: Server) {
  const text = await metricsText(server);
  const counters: Record<string, number> = {};
  for (const r of REJECT_REASONS) counters[r] = metric(text, rejected(r))!;
  for (const r of ["missing_key", "invalid_key", "revoked_key"]) counters[`auth:${r}`] = metric(text, `payflux_auth_denied_total{reason="${r}"}`)!;
  counters.accepted = metric(text, "payflux_ingest_accepted_total")!;
  counters.duplicates = metric(text, "payflux_ingest_duplicate_total")!;
  return { counters, stored: (await storedEvents(server.dataDir)).length };
}

/**
 * Runs `send`, then checks status, problem content type and code, that nothing
 * was stored, and that exactly `reason` moved by one (or nothing, for null).
 */
async function expectRefused(
  server: Server,
  send: () => Promise<Response>,
  status: number,
  code: string,
  reason: string | null,
): Promise<{ res: Response; body: Record<string, any> }> {
  const before = await snapshot(server);
  const res = await send();
  const text = await res.text();
  expect({ status: res.status, text }).toEqual({ status, text: expect.any(String) });
  expect(res.headers.get("content-type")).toStartWith("application/problem+json");
  const body = JSON.parse(text);
  expect(body.code).toBe(code);
  expect(body.status).toBe(status);
  const after = await snapshot(server);
  const expected = { ...before.counters };
  if (reason !== null) expected[reason] = expected[reason]! + 1;
  expect(after.counters).toEqual(expected);
  expect(after.stored).toBe(before.stored);
  return { res, body };
}

/**
 * Writes `data` on a raw loopback connection and never sends the rest of the
 * body: resolves with what the server answered (until it closes, the problem
 * code shows up, or 5 s pass). A 413 here was sent before the body was read.
 */
function unfinishedRequest(server: Server, data: string): Promise<string> {
  return new Promise((resolve) => {
    let got = "";
    const socket = connect(server.port, "127.0.0.1");
    const done = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(got);
    };
    const timer = setTimeout(done, 5000);
    socket.on("connect", () => socket.write(data));
    socket.on("data", (chunk) => {
      got += chunk.toString("latin1");
      if (got.includes("payload_too_large")) done();
    });
    socket.on("close", done);
    socket.on("error", done);
  });
}

/** All bytes of every file under `dir` (recursively), as latin1 text. */
function allFileText(dir: string): string {
  let out = "";
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    out += statSync(p).isDirectory() ? allFileText(p) : readFileSync(p, "latin1");
  }
  return out;
}

for (const target of E2E_TARGETS) {
  describe(`[${target}] single events and duplicates (fresh server)`, () => {
    let server: Server;
    beforeAll(async () => {
      server = await startServer({ target, env: NO_LIMIT });
    });
    afterAll(stopAll);

    test("202 {accepted:1,duplicates:0}, then the same event is a duplicate", async () => {
      const ev = event();
      const first = await post(server, SINGLE, ev);
      expect(first.status).toBe(202);
      expect(first.headers.get("content-type")).toStartWith("application/json");
      expect(await first.text()).toBe('{"accepted":1,"duplicates":0}');
      const second = await post(server, SINGLE, ev);
      expect(second.status).toBe(202);
      expect(await second.text()).toBe('{"accepted":0,"duplicates":1}');
      const text = await metricsText(server);
      expect(metric(text, "payflux_ingest_accepted_total")).toBe(1);
      expect(metric(text, "payflux_ingest_duplicate_total")).toBe(1);
      expect((await storedEvents(server.dataDir)).filter((e) => e.event_id === ev.event_id).length).toBe(1);
    });

    test("an event_id in another letter case is the same id", async () => {
      const id = crypto.randomUUID();
      expect(await accepted(await post(server, SINGLE, event({ event_id: id.toLowerCase() })))).toEqual({
        status: 202,
        body: { accepted: 1, duplicates: 0 },
      });
      expect(await accepted(await post(server, SINGLE, event({ event_id: id.toUpperCase() })))).toEqual({
        status: 202,
        body: { accepted: 0, duplicates: 1 },
      });
      const mixed = id.replace(/[a-f]/g, (c, i: number) => (i % 2 ? c.toUpperCase() : c));
      expect(await accepted(await post(server, BATCH, [event({ event_id: mixed })]))).toEqual({
        status: 202,
        body: { accepted: 0, duplicates: 1 },
      });
      const onDisk = (await storedEvents(server.dataDir)).filter((e) => String(e.event_id).toLowerCase() === id);
      expect(onDisk.length).toBe(1);
      expect(onDisk[0]!.event_id).toBe(id.toLowerCase());
      expect(metric(await metricsText(server), "payflux_ingest_duplicate_total")).toBe(3);
    });

    test("20 concurrent posts of the same new event store it exactly once", async () => {
      const ev = event();
      const results = await Promise.all(Array.from({ length: 20 }, () => post(server, SINGLE, ev).then(accepted)));
      expect(results.map((r) => r.status)).toEqual(Array(20).fill(202));
      const bodies = results.map((r) => r.body as { accepted: number; duplicates: number });
      expect(bodies.reduce((s, b) => s + b.accepted, 0)).toBe(1);
      expect(bodies.reduce((s, b) => s + b.duplicates, 0)).toBe(19);
      expect((await storedEvents(server.dataDir)).filter((e) => e.event_id === ev.event_id).length).toBe(1);
    });

    test("concurrent batches sharing events store each event exactly once", async () => {
      const shared = Array.from({ length: 5 }, () => event());
      const results = await Promise.all(
        Array.from({ length: 10 }, (_, i) => post(server, BATCH, i % 2 ? shared : [...shared].reverse()).then(accepted)),
      );
      expect(results.map((r) => r.status)).toEqual(Array(10).fill(202));
      const bodies = results.map((r) => r.body as { accepted: number; duplicates: number });
      expect(bodies.reduce((s, b) => s + b.accepted, 0)).toBe(5);
      expect(bodies.reduce((s, b) => s + b.duplicates, 0)).toBe(45);
      const ids = new Set(shared.map((e) => e.event_id));
      expect((await storedEvents(server.dataDir)).filter((e) => ids.has(e.event_id)).length).toBe(5);
    });
  });

  describe(`[${target}] batches (real server)`, () => {
    let server: Server;
    beforeAll(async () => {
      server = await startServer({ target, env: NO_LIMIT });
    });
    afterAll(stopAll);

    test("a JSON array of 500 events (the old load harness) is accepted whole", async () => {
      const before = (await storedEvents(server.dataDir)).length;
      const events = Array.from({ length: 500 }, () => event());
      expect(await accepted(await post(server, BATCH, events))).toEqual({ status: 202, body: { accepted: 500, duplicates: 0 } });
      const stored = await storedEvents(server.dataDir);
      expect(stored.length).toBe(before + 500);
      const ids = new Set(stored.map((e) => e.event_id));
      for (const e of events) expect(ids.has(e.event_id)).toBe(true);
    });

    test("an NDJSON batch with Content-Type application/x-ndjson", async () => {
      const events = [event(), event({ processor: "adyen" }), event({ processor: "internal" })];
      const body = events.map((e) => JSON.stringify(e)).join("\n") + "\n";
      expect(await accepted(await post(server, BATCH, body, { contentType: "application/x-ndjson" }))).toEqual({
        status: 202,
        body: { accepted: 3, duplicates: 0 },
      });
      const ids = new Set(events.map((e) => e.event_id));
      const onDisk = (await storedEvents(server.dataDir)).filter((e) => ids.has(e.event_id));
      expect(onDisk.map(({ received_at, key_id, ...rest }) => rest)).toEqual(events);
    });

    test("NDJSON without a trailing newline and with a charset parameter", async () => {
      const events = [event(), event()];
      const body = events.map((e) => JSON.stringify(e)).join("\n");
      expect(await accepted(await post(server, BATCH, body, { contentType: "application/x-ndjson; charset=utf-8" }))).toEqual({
        status: 202,
        body: { accepted: 2, duplicates: 0 },
      });
    });

    test("the same event_id twice in one batch: accepted 1, duplicates 1", async () => {
      const ev = event();
      expect(await accepted(await post(server, BATCH, [ev, { ...ev, retry_count: 3 }]))).toEqual({
        status: 202,
        body: { accepted: 1, duplicates: 1 },
      });
      const onDisk = (await storedEvents(server.dataDir)).filter((e) => e.event_id === ev.event_id);
      expect(onDisk.length).toBe(1);
      expect(onDisk[0]!.retry_count).toBe(0); // the first occurrence is the one stored
    });

    test("a batch mixing new and already-seen events", async () => {
      const old = event();
      expect((await post(server, SINGLE, old)).status).toBe(202);
      expect(await accepted(await post(server, BATCH, [event(), old, event()]))).toEqual({
        status: 202,
        body: { accepted: 2, duplicates: 1 },
      });
    });

    test("all-or-nothing: one bad event among good ones -> 422 with its index, nothing stored", async () => {
      const good = [event(), event(), event(), event()];
      const batch = [good[0], good[1], event({ processor: "paypal" }), good[2], good[3]];
      const { body } = await expectRefused(server, () => post(server, BATCH, batch), 422, "validation_failed", "validation_failed");
      expect(body.errors.map((e: any) => [e.index, e.field])).toEqual([[2, "processor"]]);
      // None of the good events was marked seen.
      expect(await accepted(await post(server, BATCH, good))).toEqual({ status: 202, body: { accepted: 4, duplicates: 0 } });
    });

    test("all-or-nothing for NDJSON too", async () => {
      const lines = [event(), event({ retry_count: 101 }), event()].map((e) => JSON.stringify(e)).join("\n");
      const { body } = await expectRefused(
        server,
        () => post(server, BATCH, lines, { contentType: "application/x-ndjson" }),
        422,
        "validation_failed",
        "validation_failed",
      );
      expect(body.errors.map((e: any) => [e.index, e.field])).toEqual([[1, "retry_count"]]);
    });
  });

  describe(`[${target}] refused requests (real server)`, () => {
    let server: Server;
    beforeAll(async () => {
      server = await startServer({ target, env: NO_LIMIT });
    });
    afterAll(stopAll);

    test("400 malformed_json for a body that is not JSON (single)", async () => {
      await expectRefused(server, () => post(server, SINGLE, '{"event_id": "x",'), 400, "malformed_json", "malformed_json");
    });

    test("400 malformed_json for a body that is not JSON (batch)", async () => {
      await expectRefused(server, () => post(server, BATCH, "[{]"), 400, "malformed_json", "malformed_json");
    });

    test("400 malformed_json for an empty body", async () => {
      await expectRefused(server, () => post(server, SINGLE, ""), 400, "malformed_json", "malformed_json");
    });

    test("400 malformed_json for NDJSON with one bad line; the good lines are not stored", async () => {
      const body = [JSON.stringify(event()), "{not json", JSON.stringify(event())].join("\n");
      await expectRefused(server, () => post(server, BATCH, body, { contentType: "application/x-ndjson" }), 400, "malformed_json", "malformed_json");
    });

    test("422 empty_batch for an empty array", async () => {
      await expectRefused(server, () => post(server, BATCH, []), 422, "empty_batch", "empty_batch");
    });

    test("415 unsupported_media_type for text/plain (single and batch)", async () => {
      await expectRefused(server, () => post(server, SINGLE, event(), { contentType: "text/plain" }), 415, "unsupported_media_type", "unsupported_media_type");
      await expectRefused(server, () => post(server, BATCH, [event()], { contentType: "text/plain" }), 415, "unsupported_media_type", "unsupported_media_type");
    });

    test("a missing Content-Type is read as JSON (old clients)", async () => {
      const ev = event();
      const res = await fetch(server.url + SINGLE, {
        method: "POST",
        headers: { authorization: `Bearer ${KEY}` },
        body: new TextEncoder().encode(JSON.stringify(ev)),
      });
      expect(await accepted(res)).toEqual({ status: 202, body: { accepted: 1, duplicates: 0 } });
      const batch = [event(), event()];
      const res2 = await post(server, BATCH, batch, { contentType: null });
      expect(await accepted(res2)).toEqual({ status: 202, body: { accepted: 2, duplicates: 0 } });
      const ids = new Set([ev, ...batch].map((e) => e.event_id));
      expect((await storedEvents(server.dataDir)).filter((e) => ids.has(e.event_id)).length).toBe(3);
    });

    test("application/json with a charset parameter is JSON", async () => {
      expect(await accepted(await post(server, SINGLE, event(), { contentType: "application/json; charset=utf-8" }))).toEqual({
        status: 202,
        body: { accepted: 1, duplicates: 0 },
      });
    });

    test("405 with Allow for GET on the ingest routes, before auth", async () => {
      for (const route of [SINGLE, BATCH]) {
        const { res } = await expectRefused(server, () => fetch(server.url + route), 405, "method_not_allowed", null);
        expect(res.headers.get("allow")).toBe("POST");
        const { res: res2 } = await expectRefused(
          server,
          () => fetch(server.url + route, { method: "PUT", headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" }, body: JSON.stringify(event()) }),
          405,
          "method_not_allowed",
          null,
        );
        expect(res2.headers.get("allow")).toBe("POST");
      }
    });

    test("405 with Allow for DELETE /health", async () => {
      const { res } = await expectRefused(server, () => fetch(server.url + "/health", { method: "DELETE" }), 405, "method_not_allowed", null);
      expect(res.headers.get("allow")?.split(",").map((s) => s.trim()).sort()).toEqual(["GET", "HEAD"]);
    });

    test("404 not_found for an unknown route, before auth", async () => {
      await expectRefused(server, () => fetch(server.url + "/v1/events/unknown", { method: "POST", body: "{}" }), 404, "not_found", null);
      await expectRefused(server, () => post(server, "/v1/events", event()), 404, "not_found", null);
      await expectRefused(server, () => fetch(server.url + "/nope"), 404, "not_found", null);
    });
  });

  describe(`[${target}] size limits (PAYFLUX_MAX_BODY_BYTES=2048, PAYFLUX_MAX_BATCH=5)`, () => {
    let server: Server;
    beforeAll(async () => {
      server = await startServer({ target, env: { ...NO_LIMIT, PAYFLUX_MAX_BODY_BYTES: "2048", PAYFLUX_MAX_BATCH: "5" } });
    });
    afterAll(stopAll);

    /** A small valid event (required fields only) so that batches fit the body limit. */
    const small = () => ({ event_type: "payment_failed", event_timestamp: "2026-11-22T08:00:00Z", event_id: crypto.randomUUID(), processor: "stripe" });

    test("413 payload_too_large for a body over the limit with Content-Length", async () => {
      const big = event({ padding: "x".repeat(3000) });
      await expectRefused(server, () => post(server, SINGLE, big), 413, "payload_too_large", "payload_too_large");
      // The refused event was not stored or marked seen.
      const { padding, ...fits } = big;
      expect(await accepted(await post(server, SINGLE, fits))).toEqual({ status: 202, body: { accepted: 1, duplicates: 0 } });
    });

    test("413 payload_too_large for a streamed (chunked) body over the limit", async () => {
      const batch = Array.from({ length: 5 }, () => event({ note: "y".repeat(12_000) }));
      const bytes = new TextEncoder().encode(JSON.stringify(batch));
      expect(bytes.length).toBeGreaterThan(2048);
      const stream = () =>
        new ReadableStream<Uint8Array>({
          start(controller) {
            for (let i = 0; i < bytes.length; i += 512) controller.enqueue(bytes.slice(i, i + 512));
            controller.close();
          },
        });
      await expectRefused(
        server,
        () =>
          fetch(server.url + BATCH, {
            method: "POST",
            headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
            body: stream(),
            duplex: "half",
          } as RequestInit),
        413,
        "payload_too_large",
        "payload_too_large",
      );
    });

    test("413 payload_too_large before the body is sent: a declared Content-Length over the limit, and a chunked body past it", async () => {
      const head = (framing: string) =>
        `POST ${SINGLE} HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer ${KEY}\r\ncontent-type: application/json\r\n${framing}\r\n`;
      const before = await snapshot(server);
      // 10 MB announced, nothing sent.
      const declared = await unfinishedRequest(server, head("content-length: 10000000\r\n"));
      expect(declared).toStartWith("HTTP/1.1 413");
      expect(declared).toContain("payload_too_large");
      // One 3000-byte chunk (over the 2048 limit) of a body that never ends.
      const chunk = "x".repeat(3000);
      const chunked = await unfinishedRequest(server, head("transfer-encoding: chunked\r\n") + `${chunk.length.toString(16)}\r\n${chunk}\r\n`);
      expect(chunked).toStartWith("HTTP/1.1 413");
      expect(chunked).toContain("payload_too_large");
      const after = await snapshot(server);
      expect(after.counters).toEqual({ ...before.counters, payload_too_large: before.counters.payload_too_large! + 2 });
      expect(after.stored).toBe(before.stored);
    });

    test("a streamed (chunked) body under the limit is accepted", async () => {
      const ev = small();
      const bytes = new TextEncoder().encode(JSON.stringify(ev));
      const res = await fetch(server.url + SINGLE, {
        method: "POST",
        headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
        body: new ReadableStream<Uint8Array>({
          start(controller) {
            for (let i = 0; i < bytes.length; i += 16) controller.enqueue(bytes.slice(i, i + 16));
            controller.close();
          },
        }),
        duplex: "half",
      } as RequestInit);
      expect(await accepted(res)).toEqual({ status: 202, body: { accepted: 1, duplicates: 0 } });
    });

    test("a body of exactly the limit is not refused for size", async () => {
      const ev: Record<string, unknown> = { ...small(), pad: "" };
      ev.pad = "z".repeat(2048 - JSON.stringify(ev).length);
      expect(new TextEncoder().encode(JSON.stringify(ev)).length).toBe(2048);
      expect(await accepted(await post(server, SINGLE, ev))).toEqual({ status: 202, body: { accepted: 1, duplicates: 0 } });
    });

    test("413 batch_too_large for a batch over PAYFLUX_MAX_BATCH (JSON and NDJSON)", async () => {
      const six = Array.from({ length: 6 }, small);
      expect(JSON.stringify(six).length).toBeLessThan(2048);
      await expectRefused(server, () => post(server, BATCH, six), 413, "batch_too_large", "batch_too_large");
      const ndjson = six.map((e) => JSON.stringify(e)).join("\n");
      await expectRefused(server, () => post(server, BATCH, ndjson, { contentType: "application/x-ndjson" }), 413, "batch_too_large", "batch_too_large");
      // Exactly the limit is fine.
      expect(await accepted(await post(server, BATCH, six.slice(0, 5)))).toEqual({ status: 202, body: { accepted: 5, duplicates: 0 } });
    });
  });

  describe(`[${target}] events on disk after 202`, () => {
    let server: Server;
    beforeAll(async () => {
      server = await startServer({ target, env: { ...NO_LIMIT, PAYFLUX_API_KEYS: `${KEY},${KEY2}` } });
    });
    afterAll(stopAll);

    test("each event is stored as sent, plus received_at and key_id", async () => {
      const t0 = Date.now();
      const a = event({ custom_field: "kept", nested: { list: [1, 2, 3], flag: false }, retry_count: 7 });
      const b = event({ processor: "checkout" });
      const c = event({ processor: "adyen" });
      expect((await post(server, SINGLE, a)).status).toBe(202);
      expect((await post(server, BATCH, [b])).status).toBe(202);
      expect((await post(server, SINGLE, c, { key: KEY2 })).status).toBe(202);
      const t1 = Date.now();

      const stored = await storedEvents(server.dataDir);
      const byId = (id: unknown) => {
        const hits = stored.filter((e) => e.event_id === id);
        expect(hits.length).toBe(1);
        return hits[0]!;
      };
      const [sa, sb, sc] = [byId(a.event_id), byId(b.event_id), byId(c.event_id)];
      for (const [sent, onDisk] of [
        [a, sa],
        [b, sb],
        [c, sc],
      ] as const) {
        const { received_at, key_id, ...rest } = onDisk;
        expect(rest).toEqual(sent);
        expect(Object.keys(onDisk).sort()).toEqual([...Object.keys(sent), "key_id", "received_at"].sort());
        expect(received_at).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/);
        const ms = Date.parse(received_at);
        expect(ms).toBeGreaterThanOrEqual(t0 - 1000);
        expect(ms).toBeLessThanOrEqual(t1 + 1000);
        expect(key_id).toMatch(/^[0-9a-f]{12}$/);
      }
      // Same key, same key_id; another key, another key_id.
      expect(sa.key_id).toBe(sb.key_id);
      expect(sc.key_id).not.toBe(sa.key_id);
      // key_id is not the key or a piece of it.
      for (const k of [KEY, KEY2]) {
        expect(k.includes(sa.key_id)).toBe(false);
        expect(k.includes(sc.key_id)).toBe(false);
      }
    });

    test("segment files are NDJSON, one event per line, and never contain a key", async () => {
      const names = readdirSync(server.dataDir).filter((n) => n.startsWith("segment-"));
      expect(names.length).toBeGreaterThan(0);
      for (const n of names) {
        const text = readFileSync(join(server.dataDir, n), "utf8");
        if (text === "") continue;
        expect(text.endsWith("\n")).toBe(true);
        for (const line of text.slice(0, -1).split("\n")) expect(() => JSON.parse(line)).not.toThrow();
      }
      const everything = allFileText(server.dataDir);
      expect(everything.length).toBeGreaterThan(0);
      for (const k of [KEY, KEY2]) expect(everything.includes(k)).toBe(false);
    });
  });
}
