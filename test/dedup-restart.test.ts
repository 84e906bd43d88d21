/**
 * Restart with the duplicate window: a clean shutdown, and checkpoints while
 * the service runs, save it as a snapshot that the next start loads instead
 * of re-reading the log, adding the records written after it; a damaged
 * snapshot or a changed window falls back to (or adjusts with) the log. In
 * every case a retry of an acknowledged event is still a duplicate.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { appendFileSync, existsSync, readdirSync, readFileSync, readlinkSync, unlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { DedupIndex, idsFromLog } from "../src/dedup.ts";
import { CheckpointSchedule, readSnapshot, snapshotMisfit, writeSnapshot } from "../src/dedup-snapshot.ts";
import { EventLog, segmentName } from "../src/event-log.ts";
import { parseUuid } from "../src/events.ts";
import { crc32 } from "node:zlib";
import { BATCH, event, post, startServer, stopAll, tempDir } from "./support/harness.ts";

afterAll(stopAll);

const started = (s: { logs: () => Record<string, any>[] }) => s.logs().find((l) => l.msg === "payflux listening")!;

/** A data dir where `n` events were stored and the server stopped cleanly (so it holds a snapshot). */
async function storedAndStopped(n: number) {
  const dataDir = tempDir();
  const first = await startServer({ dataDir });
  const events = Array.from({ length: n }, () => event());
  expect((await sendBatch(first, events)).body.accepted).toBe(n);
  expect(await first.stop()).toBe(0);
  return { dataDir, events };
}

async function sendBatch(server: Awaited<ReturnType<typeof startServer>>, events: Record<string, unknown>[]) {
  const res = await post(server, BATCH, events);
  return { status: res.status, body: (await res.json()) as { accepted: number; duplicates: number } };
}

describe("duplicate window across restarts", () => {
  test("a clean stop saves a snapshot; the next start loads it; after a crash it and the log written since restore the window", async () => {
    const dataDir = tempDir();
    const first = await startServer({ dataDir });
    const events = Array.from({ length: 300 }, () => event());
    expect((await sendBatch(first, events)).body).toEqual({ accepted: 300, duplicates: 0 });
    expect(await first.stop()).toBe(0);
    expect(existsSync(join(dataDir, "dedup.snapshot"))).toBe(true);

    const second = await startServer({ dataDir });
    expect(started(second)).toMatchObject({ dedup_ids_restored: 300, dedup_restored_from: "snapshot" });
    expect(existsSync(join(dataDir, "dedup.snapshot"))).toBe(true); // kept until a newer one replaces it
    expect((await sendBatch(second, events)).body).toEqual({ accepted: 0, duplicates: 300 });
    const more = Array.from({ length: 50 }, () => event());
    expect((await sendBatch(second, more)).body.accepted).toBe(50);
    await second.stop("SIGKILL"); // a crash: no new snapshot

    const third = await startServer({ dataDir });
    expect(started(third)).toMatchObject({ dedup_ids_restored: 350, dedup_restored_from: "snapshot" });
    expect((await sendBatch(third, [...events, ...more])).body).toEqual({ accepted: 0, duplicates: 350 });
  });

  test("a damaged snapshot is ignored (with a warning) and the log is read instead", async () => {
    const { dataDir, events } = await storedAndStopped(40);
    const path = join(dataDir, "dedup.snapshot");
    const buf = readFileSync(path);
    buf[buf.length - 3]! ^= 0xff;
    writeFileSync(path, buf);
    const second = await startServer({ dataDir });
    expect(started(second)).toMatchObject({ dedup_ids_restored: 40, dedup_restored_from: "log" });
    expect(second.logs().some((l) => l.level === "warn" && /dedup snapshot damaged/.test(l.msg))).toBe(true);
    expect((await sendBatch(second, events)).body.duplicates).toBe(40);
  });

  test("a snapshot whose log was deleted is ignored (with a warning): events stored before are new again", async () => {
    const { dataDir, events } = await storedAndStopped(30);
    for (const f of readdirSync(dataDir)) if (f.startsWith("segment-")) unlinkSync(join(dataDir, f));
    const second = await startServer({ dataDir });
    expect(started(second)).toMatchObject({ dedup_ids_restored: 0, dedup_restored_from: "log" });
    expect(second.logs().find((l) => /does not belong to this event log/.test(l.msg))).toMatchObject({ level: "warn", reason: "the event log ends before the snapshot's position" });
    // The snapshot it did not use is not held open (its disk space would outlive the next checkpoint's rename).
    const open = readdirSync(`/proc/${second.proc.pid}/fd`).map((fd) => { try { return readlinkSync(`/proc/${second.proc.pid}/fd/${fd}`); } catch { return ""; } });
    expect(open.some((target) => target.includes("dedup.snapshot"))).toBe(false);
    expect((await sendBatch(second, events)).body).toEqual({ accepted: 30, duplicates: 0 });
  });

  test("events written after the snapshot's position are added from the log", async () => {
    const dataDir = tempDir();
    const first = await startServer({ dataDir });
    const before = Array.from({ length: 20 }, () => event());
    await sendBatch(first, before);
    await first.stop();
    const snapshot = readFileSync(join(dataDir, "dedup.snapshot"));
    // A second run appends and crashes; the old snapshot is put back as if it had survived.
    const second = await startServer({ dataDir });
    const after = Array.from({ length: 15 }, () => event());
    await sendBatch(second, after);
    await second.stop("SIGKILL");
    writeFileSync(join(dataDir, "dedup.snapshot"), snapshot);
    const third = await startServer({ dataDir });
    expect(started(third)).toMatchObject({ dedup_ids_restored: 35, dedup_restored_from: "snapshot" });
    expect((await sendBatch(third, [...before, ...after])).body.duplicates).toBe(35);
  });

  test("a shorter window at restart shortens the snapshot's expiries", async () => {
    const dataDir = tempDir();
    const first = await startServer({ dataDir, env: { PAYFLUX_DEDUP_WINDOW: "1h" } });
    const events = Array.from({ length: 10 }, () => event());
    await sendBatch(first, events);
    await first.stop();
    await Bun.sleep(3200); // expiries are whole seconds, rounded up
    const second = await startServer({ dataDir, env: { PAYFLUX_DEDUP_WINDOW: "2s" } });
    expect(started(second)).toMatchObject({ dedup_ids_restored: 0, dedup_restored_from: "snapshot" });
    expect((await sendBatch(second, events)).body.accepted).toBe(10);
  });
});

describe("checkpoints while running", () => {
  test("a checkpoint written under load lets a crashed instance restore the window from it and the log since", async () => {
    const dataDir = tempDir();
    const env = { PAYFLUX_MAX_BATCH: "1000", PAYFLUX_INGEST_RPS: "100000", PAYFLUX_INGEST_BURST: "100000" };
    const first = await startServer({ dataDir, env });
    const batches = Array.from({ length: 101 }, () => Array.from({ length: 1000 }, () => event()));
    for (const b of batches) expect((await sendBatch(first, b)).body.accepted).toBe(1000);
    // 101,000 ids: past the checkpoint's 100,000, so it is written in the background.
    const deadline = Date.now() + 20_000;
    let line: Record<string, any> | undefined;
    while ((line = first.logs().find((l) => l.msg === "duplicate window checkpointed")) === undefined && Date.now() < deadline) await Bun.sleep(100);
    expect(line?.entries).toBeGreaterThanOrEqual(100_000); // taken once 100,000 were stored: the last batch may be after it
    const after = Array.from({ length: 50 }, () => event());
    expect((await sendBatch(first, after)).body.accepted).toBe(50);
    await first.stop("SIGKILL");

    const second = await startServer({ dataDir, env });
    expect(started(second)).toMatchObject({ dedup_ids_restored: 101_050, dedup_restored_from: "snapshot" });
    const retry = [...batches[0]!.slice(0, 500), ...batches[100]!.slice(550), ...after]; // from before the checkpoint and after it
    expect((await sendBatch(second, retry)).body).toEqual({ accepted: 0, duplicates: 1000 });
  }, 60_000);

  test("the schedule: a quarter of the window (100,000 to 1,000,000 ids) since the last one, a pause of ten times the last one's time (at least 1 s); after failures 1 to 10 minutes", () => {
    const t = 1_000_000;
    const s = new CheckpointSchedule(t, 4_294_967_000); // the id count wraps at 2^32
    expect(s.due(t + 999, 100_000, 0)).toBe(false);
    const added = (4_294_967_000 + 100_000) >>> 0;
    expect(s.due(t + 5_000, added - 1, 0)).toBe(false);
    expect(s.due(t + 5_000, added, 0)).toBe(true);
    expect(s.due(t + 5_000, added + 149_999, 1_000_000)).toBe(false); // a quarter of a million held
    expect(s.due(t + 5_000, added + 150_000, 1_000_000)).toBe(true);
    expect(s.due(t + 5_000, added + 899_999, 10_000_000)).toBe(false); // never more than a million
    expect(s.due(t + 5_000, added + 900_000, 10_000_000)).toBe(true);
    s.written(t + 6_000, added, 800); // took 0.8 s: the next not before 8 s later
    expect(s.due(t + 13_999, added + 100_000, 0)).toBe(false);
    expect(s.due(t + 14_000, added + 100_000, 0)).toBe(true);
    s.written(t + 14_000, added, 30); // a quick one: at least 1 s
    expect(s.due(t + 14_999, added + 100_000, 0)).toBe(false);
    expect(s.due(t + 15_000, added + 100_000, 0)).toBe(true);
    const pauses: number[] = [];
    let now = t + 11_000;
    for (let i = 0; i < 6; i++) {
      s.failed(now);
      let wait = 0;
      while (!s.due(now + wait, added + 100_000, 0)) wait += 1000;
      pauses.push(wait);
      now += wait;
    }
    expect(pauses).toEqual([60_000, 120_000, 240_000, 480_000, 600_000, 600_000]);
    s.written(now, added + 100_000, 100);
    s.failed(now + 5_000);
    expect(s.due(now + 64_999, added + 200_000, 0)).toBe(false); // a success resets the pause
    expect(s.due(now + 65_000, added + 200_000, 0)).toBe(true);
  });
});

describe("the snapshot file, in-process", () => {
  test("a window of more ids than one read chunk goes out and back whole, as it was when the write began; a damaged last chunk rejects all of it", async () => {
    const dataDir = tempDir();
    const source = new DedupIndex(86_400_000, 10_000_000);
    const n = 130_000; // two and a half chunks of 52,428
    const ids = Array.from({ length: n }, () => crypto.randomUUID());
    source.commit(await source.claim(ids));
    const asMs = (w: { chunks: () => Iterable<Uint32Array>; base: number }) => Array.from(w.chunks(), (c) => Array.from(c, (x, i) => (i % 5 === 4 ? w.base + x * 10 : x))).flat();
    const window = source.window();
    const expected = asMs(source.window());
    const writing = writeSnapshot(dataDir, window, 86_400_000, { segment: 3, offset: 42 }, 77);
    // Ids committed while the file is written belong to the log after its position, not to it.
    const later = Array.from({ length: 2000 }, () => crypto.randomUUID());
    for (let i = 0; i < later.length; i += 100) {
      source.commit(await source.claim(later.slice(i, i + 100)));
      await new Promise((r) => setImmediate(r));
    }
    await writing;
    const path = join(dataDir, "dedup.snapshot");
    const saved = readFileSync(path);

    const snap = readSnapshot(dataDir)!;
    expect(snap.count).toBe(n);
    expect(snap.position).toEqual({ segment: 3, offset: 42 });
    expect(snap.tag).toBe(77);
    const restored = new DedupIndex(86_400_000, 10_000_000);
    restored.importIds(snap.chunks(), snap.count, snap.base);
    expect(restored.size).toBe(n);
    // The same ids in the same order, with the same expiries (in ms: each index counts ticks from its own base).
    expect(asMs(restored.window())).toEqual(expected);
    expect((await restored.claim(ids.slice(-5))).duplicates).toBe(5);
    expect((await restored.claim(later.slice(0, 5))).duplicates).toBe(0);

    // A flipped bit in the last entry or in the header's position, or an entry short: rejected, and said so.
    let damaged = 0;
    for (const [at, bit] of [[saved.length - 1, 1], [24, 0x10], [32, 1]] as const) {
      const bad = Buffer.from(saved);
      bad[at]! ^= bit;
      writeFileSync(path, bad);
      expect(readSnapshot(dataDir, () => damaged++)).toBeNull();
    }
    writeFileSync(path, saved.subarray(0, saved.length - 20));
    expect(readSnapshot(dataDir, () => damaged++)).toBeNull();
    expect(damaged).toBe(4);
    // A temporary file left by a checkpoint cut short is removed.
    writeFileSync(`${path}.tmp`, "partial");
    writeFileSync(path, saved);
    expect(readSnapshot(dataDir)?.count).toBe(n);
    expect(existsSync(`${path}.tmp`)).toBe(false);
  });

  test("a snapshot belongs to the log it was taken from: not past its end, and the segment at its position is the same one", async () => {
    const dataDir = tempDir();
    const limits = { segmentBytes: 1 << 20, retentionMs: 86_400_000, maxBytes: 1 << 30 };
    let log = EventLog.open(dataDir, limits);
    await log.append(['{"n":1}', '{"n":2}']);
    const position = log.durableEnd();
    const tag = log.segmentTag(position.segment)!;
    const snap = { chunks: function* () {}, count: 0, base: 0, windowSec: 1, position, tag };
    expect(snapshotMisfit(snap, log)).toBeNull();
    await log.append(['{"n":3}']);
    expect(snapshotMisfit(snap, log)).toBeNull(); // the log went on: records after the position are read from it
    await log.close();
    // Reset by hand and written again, past the old position: a segment of the same name, other records.
    unlinkSync(log.segmentPath);
    log = EventLog.open(dataDir, limits);
    expect(snapshotMisfit(snap, log)).toBe("the event log ends before the snapshot's position");
    await log.append(['{"n":10}', '{"n":20}', '{"n":30}']);
    expect(log.segmentTag(position.segment)).not.toBe(tag);
    expect(snapshotMisfit(snap, log)).toBe("the segment at the snapshot's position is not the one it was taken in");
    expect(snapshotMisfit({ ...snap, tag: 0 }, log)).toBeNull(); // no tag (taken at a segment's very start): not checked
    // The start of the segment after the last one is the log's end too (a rollover whose empty segment a power loss took back).
    const end = log.durableEnd();
    expect(snapshotMisfit({ position: { segment: end.segment + 1, offset: 0 }, tag: 0 }, log)).toBeNull();
    expect(snapshotMisfit({ position: { segment: end.segment + 1, offset: 1 }, tag: 0 }, log)).toBe("the event log ends before the snapshot's position");
    await log.close();
  });

  test("a snapshot of the version before (PFDEDUP2: no tag, its CRC over the entries only) is read; one not used lets go of its file", async () => {
    const dataDir = tempDir();
    const ids = Array.from({ length: 3 }, () => crypto.randomUUID());
    const entries = new Uint32Array(15);
    ids.forEach((id, i) => {
      parseUuid(id, entries, 5 * i);
      entries[5 * i + 4] = 4_000_000_000; // ticks after base: far ahead
    });
    const header = Buffer.alloc(48);
    header.write("PFDEDUP2", 0, "latin1");
    header.writeUInt32LE(3, 8);
    header.writeUInt32LE(crc32(new Uint8Array(entries.buffer)), 12);
    header.writeUInt32LE(86_400, 16);
    header.writeDoubleLE(1, 24);
    header.writeDoubleLE(0, 32);
    header.writeDoubleLE(Date.now(), 40);
    writeFileSync(join(dataDir, "dedup.snapshot"), Buffer.concat([header, Buffer.from(entries.buffer)]));
    const fds = () => readdirSync("/proc/self/fd").length;
    const before = fds();
    const snap = readSnapshot(dataDir)!;
    expect({ count: snap.count, tag: snap.tag, position: snap.position }).toEqual({ count: 3, tag: 0, position: { segment: 1, offset: 0 } });
    expect(fds()).toBe(before + 1);
    snap.close();
    expect(fds()).toBe(before);
    const restored = new DedupIndex(86_400_000, 100);
    restored.importIds(readSnapshot(dataDir)!.chunks(), 3, Date.now());
    expect((await restored.claim(ids)).duplicates).toBe(3);
    expect(fds()).toBe(before); // read to the end: closed
  });

  test("the replay goes on past a closed segment's torn tail", async () => {
    const dataDir = tempDir();
    const limits = { segmentBytes: 4096, retentionMs: 86_400_000, maxBytes: 1 << 30 };
    let log = EventLog.open(dataDir, limits);
    const at = new Date().toISOString();
    const ids = Array.from({ length: 60 }, () => crypto.randomUUID());
    for (const id of ids) await log.append([`{"event_id":"${id}","pad":"${"x".repeat(200)}","received_at":"${at}","key_id":"0123456789ab"}`]);
    expect(log.segments().length).toBeGreaterThan(2);
    await log.close();
    appendFileSync(join(dataDir, segmentName(log.segments()[0]!)), '{"event_id":"torn'); // no newline
    log = EventLog.open(dataDir, limits);
    const dedup = new DedupIndex(86_400_000, 1000);
    dedup.restore(idsFromLog(log, 86_400_000));
    expect(dedup.size).toBe(60);
    await log.close();
  });
});
