/**
 * Restart with the duplicate window: a clean shutdown saves it as a snapshot
 * that the next start loads instead of re-reading the log; a crash, a damaged
 * snapshot or a changed window falls back to (or adjusts with) the log. In
 * every case a retry of an acknowledged event is still a duplicate.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { DedupIndex } from "../src/dedup.ts";
import { takeSnapshot, writeSnapshot } from "../src/dedup-snapshot.ts";
import { BATCH, event, post, startServer, stopAll, tempDir } from "./support/harness.ts";

afterAll(stopAll);

const started = (s: { logs: () => Record<string, any>[] }) => s.logs().find((l) => l.msg === "payflux listening")!;

async function sendBatch(server: Awaited<ReturnType<typeof startServer>>, events: Record<string, unknown>[]) {
  const res = await post(server, BATCH, events);
  return { status: res.status, body: (await res.json()) as { accepted: number; duplicates: number } };
}

describe("duplicate window across restarts", () => {
  test("a clean stop saves a snapshot; the next start loads it, and retries stay duplicates", async () => {
    const dataDir = tempDir();
    const first = await startServer({ dataDir });
    const events = Array.from({ length: 300 }, () => event());
    expect((await sendBatch(first, events)).body).toEqual({ accepted: 300, duplicates: 0 });
    expect(await first.stop()).toBe(0);
    expect(existsSync(join(dataDir, "dedup.snapshot"))).toBe(true);

    const second = await startServer({ dataDir });
    expect(started(second)).toMatchObject({ dedup_ids_restored: 300, dedup_restored_from: "snapshot" });
    expect(existsSync(join(dataDir, "dedup.snapshot"))).toBe(false); // loaded once, never stale
    expect((await sendBatch(second, events)).body).toEqual({ accepted: 0, duplicates: 300 });
    const more = Array.from({ length: 50 }, () => event());
    expect((await sendBatch(second, more)).body.accepted).toBe(50);
    await second.stop("SIGKILL"); // a crash: no snapshot

    const third = await startServer({ dataDir });
    expect(started(third)).toMatchObject({ dedup_ids_restored: 350, dedup_restored_from: "log" });
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

describe("the snapshot file, in-process", () => {
  test("a window of more ids than one read chunk goes out and back whole, and a damaged last chunk rejects all of it", async () => {
    const dataDir = tempDir();
    const source = new DedupIndex(86_400_000, 10_000_000);
    const n = 130_000; // two and a half chunks of 52,428
    const ids = Array.from({ length: n }, () => crypto.randomUUID());
    source.commit(await source.claim(ids));
    const exported = source.exportIds();
    writeSnapshot(dataDir, exported, 86_400_000, { segment: 3, offset: 42 });
    const path = join(dataDir, "dedup.snapshot");
    const saved = readFileSync(path);

    const snap = takeSnapshot(dataDir)!;
    expect(existsSync(path)).toBe(false);
    expect(snap.count).toBe(n);
    expect(snap.position).toEqual({ segment: 3, offset: 42 });
    const restored = new DedupIndex(86_400_000, 10_000_000);
    restored.importIds(snap.chunks(), snap.count, snap.base);
    expect(restored.size).toBe(n);
    // The same ids in the same order, with the same expiries (in ms: each index counts ticks from its own base).
    const asMs = ({ words, base }: { words: Uint32Array; base: number }) => Array.from(words, (w, i) => (i % 5 === 4 ? base + w * 10 : w));
    expect(asMs(restored.exportIds())).toEqual(asMs(exported));
    expect((await restored.claim(ids.slice(-5))).duplicates).toBe(5);

    saved[saved.length - 1]! ^= 1;
    writeFileSync(path, saved);
    expect(takeSnapshot(dataDir)).toBeNull();
    writeFileSync(path, saved.subarray(0, saved.length - 20)); // an entry short
    expect(takeSnapshot(dataDir)).toBeNull();
  });
});
