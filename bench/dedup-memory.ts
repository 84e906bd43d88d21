/**
 * Memory per remembered event id in the duplicate window (the README and
 * BENCHMARKS.md quote it): heap growth and the index's own array bytes, after
 * restoring `ids` random UUIDs, and the cost of one claim+commit.
 * Run: bun bench/dedup-memory.ts [ids]
 */
import { DedupIndex } from "../src/dedup.ts";

const n = Number(process.argv[2] ?? 1_000_000);
const heapUsed = () => {
  Bun.gc(true);
  return process.memoryUsage().heapUsed + process.memoryUsage().arrayBuffers;
};
const before = heapUsed();
const rssBefore = process.memoryUsage().rss;
const dedup = new DedupIndex(86_400_000, Math.max(n, 10_000_000));
const now = Date.now();
const t0 = performance.now();
for (let i = 0; i < n; i += 10_000) {
  const ids = Array.from({ length: Math.min(10_000, n - i) }, () => crypto.randomUUID());
  const claim = await dedup.claim(ids, now);
  dedup.commit(claim, now);
}
const perCommitUs = ((performance.now() - t0) * 1000) / n;
const after = heapUsed();
console.log(
  `${dedup.size} ids: ${((after - before) / 1e6).toFixed(1)} MB heap+buffers (${((after - before) / n).toFixed(1)} bytes per id), ` +
    `arrays ${(dedup.bytes / n).toFixed(1)} bytes per id, RSS +${((process.memoryUsage().rss - rssBefore) / 1e6).toFixed(0)} MB, ` +
    `${perCommitUs.toFixed(2)} µs per id claimed+committed`,
);
