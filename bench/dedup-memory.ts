/**
 * Memory per remembered event id in the duplicate window (the README quotes it).
 * Run: bun bench/dedup-memory.ts [ids]
 */
import { DedupIndex } from "../src/dedup.ts";

const n = Number(process.argv[2] ?? 1_000_000);
const heapUsed = () => {
  Bun.gc(true);
  return process.memoryUsage().heapUsed;
};
const before = heapUsed();
const dedup = new DedupIndex(86_400_000, n);
const now = Date.now();
dedup.restore((function* () {
  for (let i = 0; i < n; i++) yield [crypto.randomUUID(), now + 86_400_000] as const;
})());
const after = heapUsed();
console.log(`${dedup.size} ids: ${((after - before) / 1e6).toFixed(1)} MB heap, ${((after - before) / n).toFixed(0)} bytes per id`);
