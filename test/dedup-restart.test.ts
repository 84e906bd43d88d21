/**
 * Restart with the duplicate window: a clean shutdown, and checkpoints while
 * the service runs, save it as a snapshot that the next start loads instead
 * of re-reading the log, adding the records written after it; a damaged
 * snapshot or a changed window falls back to (or adjusts with) the log. In
 * every case a retry of an acknowledged event is still a duplicate.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { DedupIndex } from "../src/dedup.ts";
import { checkpointDue, readSnapshot, writeSnapshot } from "../src/dedup-snapshot.ts";
import { BATCH, event, post, startServer, stopAll, tempDir } from "./support/harness.ts";

afterAll(stopAll);

const started = (s: { logs: () => Record<string, any>[] }) => s.logs().find((l) => l.msg === "payflux listening")!;

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

  test("a damaged snapshot is ignored and the log is read instead", async () => {
    const dataDir = tempDir();
    const first = await startServer({ dataDir });
    const events = Array.from({ length: 40 }, () => event());
    await sendBatch(first, events);
    await first.stop();
    const path = join(dataDir, "dedup.snapshot");
    const buf = readFileSync(path);
    buf[buf.length - 3]! ^= 0xff;
    writeFileSync(path, buf);
    const second = await startServer({ dataDir });
    expect(started(second)).toMatchObject({ dedup_ids_restored: 40, dedup_restored_from: "log" });
    expect((await sendBatch(second, events)).body.duplicates).toBe(40);
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
    // 101,000 ids: past the checkpoint's 100,000, and at least 5 s after start-up it is written in the background.
    const deadline = Date.now() + 20_000;
    let line: Record<string, any> | undefined;
    while ((line = first.logs().find((l) => l.msg === "duplicate window checkpointed")) === undefined && Date.now() < deadline) await Bun.sleep(100);
    expect(line).toMatchObject({ ids: 101_000 });
    const after = Array.from({ length: 50 }, () => event());
    expect((await sendBatch(first, after)).body.accepted).toBe(50);
    await first.stop("SIGKILL");

    const second = await startServer({ dataDir, env });
    expect(started(second)).toMatchObject({ dedup_ids_restored: 101_050, dedup_restored_from: "snapshot" });
    const retry = [...batches[0]!.slice(0, 500), ...batches[100]!.slice(550), ...after]; // from before the checkpoint and after it
    expect((await sendBatch(second, retry)).body).toEqual({ accepted: 0, duplicates: 1000 });
  }, 60_000);

  test("the policy: a quarter of the window (100,000 to 1,000,000 ids) since the last one, at least 5 s apart", () => {
    expect(checkpointDue(99_999, 0, 60_000)).toBe(false);
    expect(checkpointDue(100_000, 0, 60_000)).toBe(true);
    expect(checkpointDue(100_000, 0, 4_999)).toBe(false);
    expect(checkpointDue(249_999, 1_000_000, 60_000)).toBe(false);
    expect(checkpointDue(250_000, 1_000_000, 60_000)).toBe(true);
    expect(checkpointDue(1_000_000, 10_000_000, 60_000)).toBe(true);
    expect(checkpointDue(999_999, 10_000_000, 60_000)).toBe(false);
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
    const writing = writeSnapshot(dataDir, window, 86_400_000, { segment: 3, offset: 42 });
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
    const restored = new DedupIndex(86_400_000, 10_000_000);
    restored.importIds(snap.chunks(), snap.count, snap.base);
    expect(restored.size).toBe(n);
    // The same ids in the same order, with the same expiries (in ms: each index counts ticks from its own base).
    expect(asMs(restored.window())).toEqual(expected);
    expect((await restored.claim(ids.slice(-5))).duplicates).toBe(5);
    expect((await restored.claim(later.slice(0, 5))).duplicates).toBe(0);

    saved[saved.length - 1]! ^= 1;
    writeFileSync(path, saved);
    expect(readSnapshot(dataDir)).toBeNull();
    writeFileSync(path, saved.subarray(0, saved.length - 20)); // an entry short
    expect(readSnapshot(dataDir)).toBeNull();
  });
});
