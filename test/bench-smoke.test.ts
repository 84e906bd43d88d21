/**
 * `npm run bench -- --smoke`: proves the benchmark harness runs end to end
 * (binary, baseline, wrk, every scenario, the JSON report). It asserts what
 * the runs must show whatever the machine's speed: every scenario served
 * requests, the good-key scenarios had no failures (a SIGHUP every second
 * included), the wrong key got only refusals. No figure is compared to a target.
 */
import { afterAll, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { ensureBinary, ROOT, stopAll } from "./support/harness.ts";

afterAll(stopAll);

test("the benchmark harness runs every scenario in smoke mode", async () => {
  await ensureBinary();
  const p = Bun.spawn([process.execPath, join(ROOT, "bench", "run.ts"), "--smoke", "--no-build"], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => p.kill("SIGKILL"), 150_000);
  const [code, out, err] = await Promise.all([p.exited, new Response(p.stdout).text(), new Response(p.stderr).text()]);
  clearTimeout(timer);
  expect({ code, err: code === 0 ? "" : err }).toEqual({ code: 0, err: "" });
  const file = /results: (.*\.json)/.exec(err)![1]!;
  const result = JSON.parse(readFileSync(file, "utf8"));
  const byName = Object.fromEntries(result.rows.map((r: any) => [r.scenario, r]));
  const scenarios = [
    "single c=1", "single c=8", "single c=32", "single c=128", "batch500 json c=8", "batch500 ndjson c=8", "batch500 gzip c=8",
    "wrong key c=32", "keys=10 c=32", "keys=10000 c=32", "SIGHUP every 1s c=32", "forwarding on c=32",
  ];
  expect(Object.keys(byName).sort()).toEqual([...scenarios].sort());
  for (const name of scenarios) {
    const row = byName[name];
    expect(row.payflux.reqPerSec).toBeGreaterThan(0);
    if (name === "wrong key c=32") expect(row.payflux.non2xx).toBeGreaterThan(0);
    else expect(row.payflux.non2xx + row.payflux.socketErrors).toBe(0);
    if (!/^(keys=|SIGHUP|batch500 gzip)/.test(name)) expect(row.ratio).toBeGreaterThan(0);
  }
  expect(byName["batch500 json c=8"].payflux.eventsPerSec).toBe(byName["batch500 json c=8"].payflux.reqPerSec * 500);
  expect(result.restart.clean).toMatchObject({ from: "snapshot", ids: result.restart.ids });
  // After kill -9: from the checkpoint the fill left and the log since, or from the log alone if none was written yet.
  expect(["snapshot", "log"]).toContain(result.restart.crash.from);
  expect(result.restart.crash.ids).toBe(result.restart.ids);
  expect(result.reload.keys).toBe(10_000);
  expect(result.dedup_bytes_per_id).toBeGreaterThan(16);
  expect(out).toContain("| scenario | payflux req/s |");
}, 180_000);
