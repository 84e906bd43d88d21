/**
 * Start-up time and idle memory of each target (the README's runtime table).
 * Start-up: from spawn until GET /health answers 200. Idle memory: resident
 * set size (VmRSS) 2 s after start-up with no traffic. Median of `runs`.
 * Run: bun bench/startup.ts [runs]   (builds the binaries first)
 */
import { readFileSync } from "node:fs";
import { ALL_TARGETS, ensureBinary, startServer, stopAll, type Target } from "../test/support/harness.ts";

const runs = Number(process.argv[2] ?? 5);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

async function measure(target: Target): Promise<{ startMs: number; rssMb: number }> {
  const t0 = performance.now();
  const server = await startServer({ target });
  while ((await fetch(server.url + "/health")).status !== 200) await Bun.sleep(5);
  const startMs = performance.now() - t0;
  await Bun.sleep(2000);
  // The Deno source target runs under the `deno` launcher: measure the process that listens.
  const status = readFileSync(`/proc/${server.proc.pid}/status`, "utf8");
  const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)![1]);
  await server.stop();
  return { startMs, rssMb: rssKb / 1024 };
}

for (const target of ALL_TARGETS) {
  try {
    if (target.endsWith("-binary")) await ensureBinary(target as "bun-binary" | "deno-binary");
  } catch (err) {
    console.log(`${target.padEnd(12)} not built: ${(err as Error).message.split("\n").find((l) => l.includes("error")) ?? "build failed"}`);
    continue;
  }
  const results = [];
  for (let i = 0; i < runs; i++) results.push(await measure(target));
  console.log(
    `${target.padEnd(12)} start-up ${median(results.map((r) => r.startMs)).toFixed(0)} ms, idle RSS ${median(results.map((r) => r.rssMb)).toFixed(0)} MB (median of ${runs})`,
  );
}
await stopAll();
