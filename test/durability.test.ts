/**
 * Durability of the event log against the real server: kill -9 under load
 * (repeated), torn tails written by hand, the storage cap (freed by hand and
 * by retention), segment rollover, duplicate detection across restarts and
 * its memory cap; plus unit tests of the line framing and CRC-32.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { appendFileSync, readdirSync, readFileSync, statSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import { crc32 as zlibCrc32 } from "node:zlib";
import { frame as frameText, isIntactLine, unframe } from "../src/record.ts";
import { mutate, rng } from "./support/rng.ts";
import { BATCH, event, metric, metricsText, post, SINGLE, startServer, stopAll, storedEvents, tempDir, type Server } from "./support/harness.ts";

afterAll(stopAll);

/** No rate limit gets in the way of these tests. */
const FAST = { PAYFLUX_INGEST_RPS: "1000000", PAYFLUX_INGEST_BURST: "1000000" };
const SEGMENT_NAME = /^segment-\d{20}\.ndjson$/;
/** Framed lines as bytes, as they are on disk. */
const frame = (records: string[]) => Buffer.from(frameText(records));

type Ev = Record<string, unknown> & { event_id: string };
const ev = (overrides: Record<string, unknown> = {}) => event(overrides) as Ev;

/** Segment files of a data dir, in name order, with their raw bytes. */
function segmentFiles(dir: string): { name: string; path: string; buf: Buffer }[] {
  return readdirSync(dir)
    .filter((n) => n.startsWith("segment-"))
    .sort()
    .map((name) => ({ name, path: join(dir, name), buf: readFileSync(join(dir, name)) }));
}

/** Lines of a buffer (without their newlines); a tail without a newline is not a line. */
function lines(buf: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let start = 0;
  for (let nl = buf.indexOf(10); nl >= 0; start = nl + 1, nl = buf.indexOf(10, start)) out.push(buf.subarray(start, nl));
  return out;
}

/** Bytes past the end of the last line whose framing holds: what start-up recovery must cut. */
function tornTailBytes(buf: Buffer): number {
  let goodEnd = 0;
  let start = 0;
  for (let nl = buf.indexOf(10); nl >= 0; start = nl + 1, nl = buf.indexOf(10, start)) {
    if (unframe(buf.subarray(start, nl)) !== null) goodEnd = nl + 1;
  }
  return buf.length - goodEnd;
}

/** event_ids of the records of one raw segment. */
function idsOf(buf: Buffer): string[] {
  return lines(buf).map((l) => JSON.parse(unframe(l)!.toString("utf8")).event_id);
}

async function storedIds(dir: string): Promise<string[]> {
  return (await storedEvents(dir)).map((e) => e.event_id);
}

function startedLine(server: Server): Record<string, any> {
  const line = server.logs().find((l) => l.msg === "payflux listening");
  if (!line) throw new Error("no start-up line");
  return line;
}

function recoveryLines(server: Server): Record<string, any>[] {
  return server.logs().filter((l) => typeof l.msg === "string" && l.msg.startsWith("event log recovered"));
}

async function postJson(server: Server, path: string, body: unknown): Promise<{ status: number; body: any; headers: Headers }> {
  const res = await post(server, path, body);
  return { status: res.status, body: await res.json(), headers: res.headers };
}

async function metrics(server: Server): Promise<string> {
  return metricsText(server);
}

/** Sum of sizes and number of segment files on disk. */
function diskUsage(dir: string): { bytes: number; segments: number } {
  const names = readdirSync(dir).filter((n) => SEGMENT_NAME.test(n));
  return { bytes: names.reduce((s, n) => s + statSync(join(dir, n)).size, 0), segments: names.length };
}

/** Posts `events` one request at a time (singles); every one must be a 202 {"accepted":1}. */
async function postAll(server: Server, events: Ev[]): Promise<void> {
  for (const e of events) {
    const r = await postJson(server, SINGLE, e);
    expect(r.status).toBe(202);
    expect(r.body).toEqual({ accepted: 1, duplicates: 0 });
  }
}

describe("crash under load (kill -9), repeated", () => {
  test(
    "3 rounds of kill -9 mid-load: every acknowledged event is stored exactly once, nothing else",
    async () => {
      const dataDir = tempDir();
      const env = { ...FAST, PAYFLUX_SEGMENT_BYTES: "65536" };
      const sent = new Set<string>(); // every event_id ever sent
      const acked = new Set<string>(); // every event_id that got a 202 (first attempt or retry)
      const unexpected: string[] = [];
      let server = await startServer({ dataDir, env });

      for (let round = 0; round < 3; round++) {
        const inDoubt: Ev[] = []; // sent, but the response never came (the server died)
        let stop = false;
        const loop = async (worker: number) => {
          for (let i = 0; !stop; i++) {
            const n = (worker + i) % 4 === 0 ? 1 : 1 + ((worker * 7 + i) % 4); // singles and batches of 1..4
            const events = Array.from({ length: n }, () => ev({ retry_count: round }));
            for (const e of events) sent.add(e.event_id);
            try {
              const res = n === 1 && i % 2 === 0 ? await post(server, SINGLE, events[0]) : await post(server, BATCH, events);
              const body = await res.json();
              if (res.status !== 202 || body.accepted !== n || body.duplicates !== 0) {
                unexpected.push(`${res.status} ${JSON.stringify(body)}`);
                return;
              }
              for (const e of events) acked.add(e.event_id);
            } catch {
              inDoubt.push(...events);
              return; // the server is gone
            }
          }
        };
        const ackedBefore = acked.size;
        const loops = Array.from({ length: 8 }, (_, w) => loop(w));
        // Kill once the load is well under way (some hundreds of events acknowledged).
        const deadline = Date.now() + 10_000;
        while (acked.size < ackedBefore + 500 + round * 100 && unexpected.length === 0 && Date.now() < deadline) await Bun.sleep(5);
        server.proc.kill("SIGKILL");
        await server.exited;
        stop = true;
        await Promise.all(loops);
        expect(unexpected).toEqual([]);
        expect(acked.size).toBeGreaterThan(ackedBefore);
        expect(inDoubt.length).toBeGreaterThan(0); // every client loop ended on a request the kill cut off

        // What recovery must find: the torn tail of the last segment, if the kill left one.
        const files = segmentFiles(dataDir);
        const tail = tornTailBytes(files.at(-1)!.buf);

        server = await startServer({ dataDir, env });
        const recoveries = recoveryLines(server);
        const truncations = metric(await metrics(server), "payflux_storage_recovered_truncations_total");
        if (tail > 0) {
          expect(recoveries).toHaveLength(1);
          expect(recoveries[0]!.level).toBe("warn");
          expect(recoveries[0]!.truncated_bytes).toBe(tail);
          expect(recoveries[0]!.segment).toBe(files.at(-1)!.name);
          expect(truncations).toBe(1);
        } else {
          expect(recoveries).toEqual([]);
          expect(truncations).toBe(0);
        }

        // Every line holds its crc (storedEvents throws otherwise), no event twice, every ack there.
        const ids = await storedIds(dataDir);
        expect(new Set(ids).size).toBe(ids.length);
        const stored = new Set(ids);
        expect([...acked].filter((id) => !stored.has(id))).toEqual([]);
        expect(ids.filter((id) => !sent.has(id))).toEqual([]);
        // The duplicate window was rebuilt from exactly what is in the log.
        expect(startedLine(server).dedup_ids_restored).toBe(ids.length);

        // The client retries what it never got an answer for: stored once, whether it made it before the kill or not.
        for (const e of inDoubt) {
          const r = await postJson(server, SINGLE, e);
          expect(r.status).toBe(202);
          expect(r.body).toEqual(stored.has(e.event_id) ? { accepted: 0, duplicates: 1 } : { accepted: 1, duplicates: 0 });
          acked.add(e.event_id);
        }
      }

      // After three crashes: the log holds exactly the acknowledged events, each once, every line intact.
      const ids = await storedIds(dataDir);
      expect(ids.length).toBe(acked.size);
      expect(new Set(ids)).toEqual(acked);
      expect(segmentFiles(dataDir).length).toBeGreaterThan(1); // the crashes spanned segment rollovers too
      await server.stop();
    },
    30_000,
  );
});

describe("torn tail written by hand", () => {
  /** Stores `n` events, stops the server cleanly; returns the data dir, the events and the segment. */
  async function storeAndStop(n: number) {
    const server = await startServer({ env: FAST });
    const events = Array.from({ length: n }, () => ev());
    await postAll(server, events.slice(0, 2));
    const r = await postJson(server, BATCH, events.slice(2));
    expect(r.body).toEqual({ accepted: n - 2, duplicates: 0 });
    expect(await server.stop()).toBe(0);
    const files = segmentFiles(server.dataDir);
    expect(files).toHaveLength(1);
    return { dataDir: server.dataDir, events, path: files[0]!.path, name: files[0]!.name, clean: files[0]!.buf };
  }

  async function expectRecovered(dataDir: string, name: string, appended: number, clean: Buffer, events: Ev[]) {
    const server = await startServer({ dataDir, env: FAST });
    expect(metric(await metrics(server), "payflux_storage_recovered_truncations_total")).toBe(1);
    const rec = recoveryLines(server);
    expect(rec).toHaveLength(1);
    expect(rec[0]!.level).toBe("warn");
    expect(rec[0]!.truncated_bytes).toBe(appended);
    expect(rec[0]!.segment).toBe(name);
    expect(rec[0]!.corrupt_lines).toBe(0);
    // Exactly the torn tail was cut: the file is byte for byte what the clean shutdown left.
    const after = readFileSync(join(dataDir, name));
    expect(after.equals(clean)).toBe(true);
    expect(after.at(-1)).toBe(0x0a);
    expect(await storedIds(dataDir)).toEqual(events.map((e) => e.event_id));
    expect(startedLine(server).dedup_ids_restored).toBe(events.length);
    return server;
  }

  test("half a record at the end is cut on start-up; the rest survives and new events append after it", async () => {
    const N = 6;
    const { dataDir, events, path, name, clean } = await storeAndStop(N);
    const half = frame([JSON.stringify(ev())]).subarray(0, 40); // first 40 bytes of a valid line, no newline
    appendFileSync(path, half);

    const server = await expectRecovered(dataDir, name, 40, clean, events);
    // The stored events are still duplicates; a new one appends after them on a fresh line.
    expect((await postJson(server, SINGLE, events[0])).body).toEqual({ accepted: 0, duplicates: 1 });
    const next = ev();
    await postAll(server, [next]);
    expect(await storedIds(dataDir)).toEqual([...events, next].map((e) => e.event_id));

    // A clean log needs no recovery on the next start.
    expect(await server.stop()).toBe(0);
    const again = await startServer({ dataDir, env: FAST });
    expect(recoveryLines(again)).toEqual([]);
    expect(metric(await metrics(again), "payflux_storage_recovered_truncations_total")).toBe(0);
    expect(startedLine(again).dedup_ids_restored).toBe(N + 1);
    await again.stop();
  });

  test("a whole line with a wrong crc followed by half a line is cut; the cut event is not remembered", async () => {
    const N = 5;
    const { dataDir, events, path, name, clean } = await storeAndStop(N);
    const lost = ev();
    // A complete line whose crc does not match its content (one byte of the body changed after framing).
    const bad = Buffer.from(frame([JSON.stringify({ ...lost, received_at: new Date().toISOString(), key_id: "k" })]));
    const at = bad.indexOf("payment_failed");
    bad[at] = "P".charCodeAt(0);
    expect(unframe(bad.subarray(0, bad.length - 1))).toBeNull();
    const half = frame([JSON.stringify(ev())]);
    const tail = Buffer.concat([bad, half.subarray(0, Math.floor(half.length / 2))]);
    appendFileSync(path, tail);

    const server = await expectRecovered(dataDir, name, tail.length, clean, events);
    // The event of the cut line was never acknowledged: it is new, and stored once.
    expect((await postJson(server, SINGLE, lost)).body).toEqual({ accepted: 1, duplicates: 0 });
    expect(await storedIds(dataDir)).toEqual([...events, lost].map((e) => e.event_id));
    await server.stop();
  });
});

describe("storage cap (PAYFLUX_SEGMENT_BYTES=4096, PAYFLUX_STORAGE_MAX_BYTES=65536)", () => {
  const CAP = 65536;

  test(
    "fills to the cap: 503 storage_full with Retry-After; room freed by hand lets the refused event in",
    async () => {
      const server = await startServer({
        env: { ...FAST, PAYFLUX_SEGMENT_BYTES: "4096", PAYFLUX_STORAGE_MAX_BYTES: String(CAP), PAYFLUX_RETENTION: "30d" },
      });
      const acked: string[] = [];
      let refused: Ev | null = null;
      let res!: { status: number; body: any; headers: Headers };
      for (let i = 0; i < 1000; i++) {
        const e = ev();
        res = await postJson(server, SINGLE, e);
        if (res.status !== 202) {
          refused = e;
          break;
        }
        expect(res.body).toEqual({ accepted: 1, duplicates: 0 });
        acked.push(e.event_id);
      }
      expect(refused).not.toBeNull();
      expect(res.status).toBe(503);
      expect(res.headers.get("content-type")).toBe("application/problem+json");
      expect(res.body.code).toBe("storage_full");
      expect(res.body.status).toBe(503);
      expect(res.headers.get("retry-after")).toMatch(/^[1-9]\d*$/);
      // The cap was really reached, not hit early: it holds well over one segment.
      expect(acked.length).toBeGreaterThan(60);

      let text = await metrics(server);
      expect(metric(text, 'payflux_ingest_rejected_total{reason="storage_full"}')).toBeGreaterThanOrEqual(1);
      const used = diskUsage(server.dataDir);
      expect(used.bytes).toBeLessThanOrEqual(CAP);
      expect(metric(text, "payflux_storage_bytes")).toBe(used.bytes);
      expect(metric(text, "payflux_storage_segments")).toBe(used.segments);

      // Still refused on retry (not a duplicate: it was never stored), and not on disk.
      const retry = await postJson(server, SINGLE, refused);
      expect(retry.status).toBe(503);
      expect(retry.body.code).toBe("storage_full");
      expect(await storedIds(server.dataDir)).toEqual(acked);

      // The operator deletes the two oldest (closed) segments.
      const files = segmentFiles(server.dataDir);
      expect(files.length).toBeGreaterThan(3);
      const deleted = new Set([...idsOf(files[0]!.buf), ...idsOf(files[1]!.buf)]);
      unlinkSync(files[0]!.path);
      unlinkSync(files[1]!.path);

      let again = retry;
      for (let i = 0; i < 50 && again.status === 503; i++) {
        await Bun.sleep(100);
        again = await postJson(server, SINGLE, refused);
      }
      expect(again.status).toBe(202);
      expect(again.body).toEqual({ accepted: 1, duplicates: 0 });
      expect((await postJson(server, SINGLE, refused)).body).toEqual({ accepted: 0, duplicates: 1 });

      // Nothing acknowledged was lost except what was deleted by hand.
      expect(await storedIds(server.dataDir)).toEqual([...acked.filter((id) => !deleted.has(id)), refused!.event_id]);
      text = await metrics(server);
      const now = diskUsage(server.dataDir);
      expect(metric(text, "payflux_storage_bytes")).toBe(now.bytes);
      expect(metric(text, "payflux_storage_segments")).toBe(now.segments);
      await server.stop();
    },
    20_000,
  );

  test(
    "PAYFLUX_RETENTION=2s: retention deletes old closed segments and ingest recovers by itself",
    async () => {
      const server = await startServer({
        env: { ...FAST, PAYFLUX_SEGMENT_BYTES: "4096", PAYFLUX_STORAGE_MAX_BYTES: String(CAP), PAYFLUX_RETENTION: "2s" },
      });
      const acked = new Set<string>();
      let refused: Ev[] | null = null;
      for (let i = 0; i < 300 && refused === null; i++) {
        const batch = Array.from({ length: 8 }, () => ev());
        const r = await postJson(server, BATCH, batch);
        if (r.status === 202) {
          expect(r.body).toEqual({ accepted: 8, duplicates: 0 });
          for (const e of batch) acked.add(e.event_id);
        } else {
          expect(r.status).toBe(503);
          expect(r.body.code).toBe("storage_full");
          expect(r.headers.get("retry-after")).toMatch(/^[1-9]\d*$/);
          refused = batch;
        }
      }
      expect(refused).not.toBeNull();
      const snapshot = segmentFiles(server.dataDir);
      let text = await metrics(server);
      expect(metric(text, "payflux_storage_bytes")).toBe(snapshot.reduce((n, f) => n + f.buf.length, 0));
      expect(metric(text, "payflux_storage_segments")).toBe(snapshot.length);

      // Poll with the refused batch (up to ~15 s) until retention has made room.
      let r = await postJson(server, BATCH, refused);
      for (let i = 0; i < 75 && r.status === 503; i++) {
        expect(r.body.code).toBe("storage_full");
        await Bun.sleep(200);
        r = await postJson(server, BATCH, refused);
      }
      expect(r.status).toBe(202);
      expect(r.body).toEqual({ accepted: 8, duplicates: 0 });
      for (const e of refused!) acked.add(e.event_id);

      // The gauges follow the deletion: they match the disk again, with fewer of the old
      // segments (a sweep may run between the two reads: look again then).
      let disk = { bytes: -1, segments: -1 };
      for (let i = 0; i < 5; i++) {
        text = await metrics(server);
        disk = diskUsage(server.dataDir);
        if (metric(text, "payflux_storage_bytes") === disk.bytes && metric(text, "payflux_storage_segments") === disk.segments) break;
      }
      expect(metric(text, "payflux_storage_bytes")).toBe(disk.bytes);
      expect(metric(text, "payflux_storage_segments")).toBe(disk.segments);
      expect(disk.bytes).toBeLessThanOrEqual(CAP);
      expect(await server.stop()).toBe(0);

      // Stopped: no sweep runs any more. The oldest segments went first; those left are untouched.
      const names = new Set(readdirSync(server.dataDir));
      const gone = snapshot.filter((f) => !names.has(f.name));
      expect(gone.length).toBeGreaterThan(0);
      expect(snapshot.slice(0, gone.length).map((f) => f.name)).toEqual(gone.map((f) => f.name));
      for (const f of snapshot.slice(gone.length)) {
        const now = readFileSync(f.path);
        expect(now.subarray(0, f.buf.length).equals(f.buf)).toBe(true);
      }
      // Exactly the events of the deleted segments are gone.
      const deleted = new Set(gone.flatMap((f) => idsOf(f.buf)));
      const ids = await storedIds(server.dataDir);
      expect(ids.length).toBe(new Set(ids).size);
      expect(new Set(ids)).toEqual(new Set([...acked].filter((id) => !deleted.has(id))));
    },
    25_000,
  );
});

describe("segment rollover (PAYFLUX_SEGMENT_BYTES=4096)", () => {
  test("several segments, in name order, each closed one >= 4096 bytes, events in order across them", async () => {
    const env = { ...FAST, PAYFLUX_SEGMENT_BYTES: "4096" };
    const server = await startServer({ env });
    const events = Array.from({ length: 40 }, (_, i) => ev({ retry_count: i }));
    await postAll(server, events);

    const files = segmentFiles(server.dataDir);
    expect(files.length).toBeGreaterThanOrEqual(4);
    for (const f of files) expect(f.name).toMatch(SEGMENT_NAME);
    const seqs = files.map((f) => Number(f.name.slice(8, 28)));
    for (let i = 1; i < seqs.length; i++) expect(seqs[i]!).toBeGreaterThan(seqs[i - 1]!);
    for (const f of files.slice(0, -1)) {
      expect(f.buf.length).toBeGreaterThanOrEqual(4096);
      // Closed right after crossing the limit: without its last record it was below it.
      const ls = lines(f.buf);
      expect(f.buf.length - ls.at(-1)!.length - 1).toBeLessThan(4096);
    }
    expect(files.at(-1)!.buf.length).toBeLessThan(4096);
    // In order, one after another across the files.
    expect(files.flatMap((f) => idsOf(f.buf))).toEqual(events.map((e) => e.event_id));
    expect((await storedEvents(server.dataDir)).map((e) => e.retry_count)).toEqual(events.map((_, i) => i));
    const text = await metrics(server);
    const disk = diskUsage(server.dataDir);
    expect(metric(text, "payflux_storage_segments")).toBe(files.length);
    expect(metric(text, "payflux_storage_bytes")).toBe(disk.bytes);
    expect(metric(text, "payflux_storage_flush_duration_seconds_count")).toBeGreaterThanOrEqual(1);

    // After a restart, new events continue the last segment.
    expect(await server.stop()).toBe(0);
    const again = await startServer({ dataDir: server.dataDir, env });
    expect(startedLine(again).segment).toBe(files.at(-1)!.path);
    const more = ev();
    await postAll(again, [more]);
    expect(idsOf(readFileSync(files.at(-1)!.path)).at(-1)).toBe(more.event_id);
    expect(await storedIds(server.dataDir)).toEqual([...events, more].map((e) => e.event_id));
    await again.stop();
  });
});

describe("duplicates across a restart", () => {
  test("after SIGTERM and after kill -9, stored events are still duplicates; the window is rebuilt from the log", async () => {
    const server = await startServer({ env: FAST });
    const dataDir = server.dataDir;
    const events = Array.from({ length: 6 }, () => ev());
    await postAll(server, events.slice(0, 3));
    expect((await postJson(server, BATCH, events.slice(3))).body).toEqual({ accepted: 3, duplicates: 0 });
    expect(await server.stop()).toBe(0);

    const second = await startServer({ dataDir, env: FAST });
    expect(startedLine(second).dedup_ids_restored).toBe((await storedEvents(dataDir)).length);
    expect(startedLine(second).dedup_ids_restored).toBe(6);
    for (const e of events) {
      const r = await postJson(second, SINGLE, e);
      expect(r.status).toBe(202);
      expect(r.body).toEqual({ accepted: 0, duplicates: 1 });
    }
    // Case does not matter for the id, before or after a restart.
    expect((await postJson(second, SINGLE, { ...events[0], event_id: events[0]!.event_id.toUpperCase() })).body).toEqual({
      accepted: 0,
      duplicates: 1,
    });
    expect((await postJson(second, BATCH, events)).body).toEqual({ accepted: 0, duplicates: 6 });
    const more = [ev(), ev()];
    expect((await postJson(second, BATCH, [...more, events[1]])).body).toEqual({ accepted: 2, duplicates: 1 });

    second.proc.kill("SIGKILL");
    await second.exited;
    const third = await startServer({ dataDir, env: FAST });
    expect(startedLine(third).dedup_ids_restored).toBe(8);
    for (const e of [...events, ...more]) expect((await postJson(third, SINGLE, e)).body).toEqual({ accepted: 0, duplicates: 1 });
    expect(await storedIds(dataDir)).toEqual([...events, ...more].map((e) => e.event_id));
    await third.stop();
  });

  test(
    "PAYFLUX_DEDUP_WINDOW=2s: past the window, the restarted server takes the same events as new",
    async () => {
      const env = { ...FAST, PAYFLUX_DEDUP_WINDOW: "2s" };
      const server = await startServer({ env });
      const events = [ev(), ev(), ev()];
      await postAll(server, events);
      expect(await server.stop()).toBe(0);
      const last = Math.max(...(await storedEvents(server.dataDir)).map((e) => Date.parse(e.received_at)));
      await Bun.sleep(Math.max(0, last + 2300 - Date.now()));

      const again = await startServer({ dataDir: server.dataDir, env });
      expect(startedLine(again).dedup_ids_restored).toBe(0);
      for (const e of events) expect((await postJson(again, SINGLE, e)).body).toEqual({ accepted: 1, duplicates: 0 });
      // ...and within the new window they are duplicates again.
      expect((await postJson(again, BATCH, events)).body).toEqual({ accepted: 0, duplicates: 3 });
      expect(await storedIds(server.dataDir)).toEqual([...events, ...events].map((e) => e.event_id));
      await again.stop();
    },
    15_000,
  );
});

describe("dedup memory cap (PAYFLUX_DEDUP_MAX_IDS=5)", () => {
  test("the oldest ids are forgotten early and counted; the newest are still caught, also after a restart", async () => {
    const env = { ...FAST, PAYFLUX_DEDUP_MAX_IDS: "5" };
    const server = await startServer({ env });
    const events = Array.from({ length: 8 }, () => ev());
    await postAll(server, events);
    let text = await metrics(server);
    expect(metric(text, "payflux_dedup_evicted_total")).toBe(3);
    expect(metric(text, "payflux_dedup_ids")).toBe(5);

    // The first id was evicted early: it is taken again (and evicts the next oldest).
    expect((await postJson(server, SINGLE, events[0])).body).toEqual({ accepted: 1, duplicates: 0 });
    // The last one is still remembered.
    expect((await postJson(server, SINGLE, events[7])).body).toEqual({ accepted: 0, duplicates: 1 });
    text = await metrics(server);
    expect(metric(text, "payflux_dedup_evicted_total")).toBe(4);
    expect(metric(text, "payflux_dedup_ids")).toBe(5);
    expect(await server.stop()).toBe(0);

    // On start-up at most 5 ids are rebuilt, the newest: events[4..7] and the re-sent events[0].
    const again = await startServer({ dataDir: server.dataDir, env });
    expect(startedLine(again).dedup_ids_restored).toBe(5);
    expect(metric(await metrics(again), "payflux_dedup_ids")).toBe(5);
    for (const e of [events[0]!, ...events.slice(4)]) expect((await postJson(again, SINGLE, e)).body).toEqual({ accepted: 0, duplicates: 1 });
    expect((await postJson(again, SINGLE, events[1])).body).toEqual({ accepted: 1, duplicates: 0 });
    await again.stop();
  });
});

describe("framing (unit)", () => {
  const record = JSON.stringify({ event_id: "a1", event_type: "payment_failed", n: 3 });

  test("frame/unframe round trip; the line ends with the crc member and a newline", () => {
    const line = frame([record]);
    expect(line.at(-1)).toBe(0x0a);
    expect(line.toString("utf8")).toMatch(/,"crc":"[0-9a-f]{8}"\}\n$/);
    const body = Buffer.from(record.slice(0, -1));
    expect(line.toString("utf8")).toBe(`${record.slice(0, -1)},"crc":"${zlibCrc32(body).toString(16).padStart(8, "0")}"}\n`);
    const back = unframe(line.subarray(0, line.length - 1));
    expect(back?.toString("utf8")).toBe(record);
    expect(JSON.parse(line.toString("utf8")).crc).toMatch(/^[0-9a-f]{8}$/);

    // Several records: one line each, in order.
    const many = [record, JSON.stringify({ b: 2 }), JSON.stringify({ c: [1, 2, { d: "}" }] })];
    const ls = lines(frame(many));
    expect(ls.map((l) => unframe(l)?.toString("utf8"))).toEqual(many);
  });

  test("a flipped byte anywhere fails the check", () => {
    const line = frame([record]).subarray(0, -1);
    for (let i = 0; i < line.length; i++) {
      const copy = Buffer.from(line);
      copy[i] = copy[i]! ^ 0x01;
      expect(unframe(copy)).toBeNull();
    }
  });

  test("the byte-by-byte check agrees with the textual rule on 20,000 lines with a mutated end", () => {
    // The rule as text: ends with `,"crc":"` + 8 lowercase hex + `"}`, and those hex digits are the CRC-32 of what precedes.
    const textual = (line: Buffer) => {
      const t = line.toString("latin1");
      const m = /,"crc":"([0-9a-f]{8})"\}$/.exec(t);
      return m !== null && t.length > 19 && zlibCrc32(line.subarray(0, line.length - 18)) === parseInt(m[1]!, 16);
    };
    const r = rng(7);
    const alphabet = ["a", "A", "f", "F", "0", "9", "g", '"', "}", ",", ":", "c", "r", "\\", " "];
    let intact = 0;
    for (let i = 0; i < 20_000; i++) {
      const line = frame([JSON.stringify({ event_id: crypto.randomUUID(), n: i })]).subarray(0, -1).toString("latin1");
      const cut = line.length - 1 - Math.floor(r() * 22);
      const mutated = Buffer.from(line.slice(0, cut) + (r() < 0.2 ? line.slice(cut) : mutate(r, line.slice(cut), alphabet)), "latin1");
      const want = textual(mutated);
      if (want) intact++;
      expect(isIntactLine(mutated)).toBe(want);
    }
    expect(intact).toBeGreaterThan(2000); // the untouched ones, and mutations that changed nothing
  });

  test("a truncated line fails the check", () => {
    const line = frame([record]).subarray(0, -1);
    for (let n = 0; n < line.length; n++) expect(unframe(line.subarray(0, n))).toBeNull();
    expect(unframe(Buffer.from(record))).toBeNull(); // no crc at all
  });

  test("non-ASCII (UTF-8) content round-trips", () => {
    const text = JSON.stringify({ event_id: "ü-1", merchant: "Zürich Café ☕ 日本 😀" });
    const line = frame([text]);
    const back = unframe(line.subarray(0, -1));
    expect(back?.toString("utf8")).toBe(text);
    expect(JSON.parse(back!.toString("utf8")).merchant).toBe("Zürich Café ☕ 日本 😀");
  });

  test("the crc member is zlib's CRC-32 of the UTF-8 bytes before it", () => {
    const text = JSON.stringify({ event_id: "ü-2", note: "Zürich ☕ 😀" });
    const line = frame([text]).toString("utf8");
    const body = Buffer.from(text.slice(0, -1));
    expect(line).toBe(`${text.slice(0, -1)},"crc":"${zlibCrc32(body).toString(16).padStart(8, "0")}"}\n`);
  });
});

describe("a request larger than the whole store", () => {
  test("413 payload_too_large (retrying could never help), nothing stored, other requests still fit", async () => {
    const server = await startServer({ env: { ...FAST, PAYFLUX_SEGMENT_BYTES: "4096", PAYFLUX_STORAGE_MAX_BYTES: "65536" } });
    const big = Array.from({ length: 80 }, () => ev({ padding: "p".repeat(1000) }));
    const res = await post(server, BATCH, big);
    expect(res.status).toBe(413);
    expect(res.headers.get("retry-after")).toBeNull();
    expect((await res.json()).code).toBe("payload_too_large");
    expect(await storedEvents(server.dataDir)).toEqual([]);
    expect((await post(server, SINGLE, ev())).status).toBe(202);
  });
});

describe("recovery of the last segment at start-up (in-process)", () => {
  const LIMITS = { segmentBytes: 1 << 30, retentionMs: 86_400_000, maxBytes: 2 ** 40 };
  const big = (n: number) => `{"event_id":"${crypto.randomUUID()}","pad":"${"p".repeat(n)}"}`;

  test("damaged lines before the last intact one stay (counted); damaged and partial lines after it are cut; lines longer than a read are whole", async () => {
    const dir = tempDir();
    const { EventLog, segmentName } = await import("../src/event-log.ts");
    // Intact lines of every size around the 1 MiB read, one damaged line among them, then a torn tail.
    const good = [big(10), big(3 << 20), big(10), big((1 << 20) - 80), big(2 << 20)].map((r) => frame([r]));
    const damaged = Buffer.from(frame([big(10)]).toString("latin1").replace('"pad":"p', '"pad":"q'), "latin1");
    const kept = Buffer.concat([good[0]!, good[1]!, damaged, good[2]!, good[3]!, good[4]!]);
    const torn = Buffer.concat([damaged, damaged, frame([big(5000)]).subarray(0, 3000)]);
    const path = join(dir, segmentName(1));
    appendFileSync(path, Buffer.concat([kept, torn]));
    const log = EventLog.open(dir, LIMITS);
    try {
      expect(log.recovery).toEqual({ segment: segmentName(1), truncatedBytes: torn.length, corruptLines: 1 });
      expect(readFileSync(path).equals(kept)).toBe(true);
    } finally {
      await log.close();
    }
    // Opened again: nothing more to cut, the damaged line is still counted.
    const again = EventLog.open(dir, LIMITS);
    try {
      expect(again.recovery).toEqual({ segment: segmentName(1), truncatedBytes: 0, corruptLines: 1 });
    } finally {
      await again.close();
    }
  });
});
