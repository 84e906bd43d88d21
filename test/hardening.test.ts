/** Defects found in review, each pinned by a test: they must not come back. */
import { afterAll, describe, expect, test } from "bun:test";
import { rmSync } from "node:fs";
import { DedupIndex } from "../src/dedup.ts";
import { event, metric, metricsText, post, runCli, SINGLE, startServer, stopAll, storedEvents } from "./support/harness.ts";

afterAll(stopAll);

describe("one process per data directory", () => {
  test("a second server on the same data dir exits 73 before touching the log; the first keeps serving", async () => {
    const first = await startServer();
    const ev = event();
    expect((await post(first, SINGLE, ev)).status).toBe(202);
    const second = await startServer({ dataDir: first.dataDir, waitReady: false });
    expect(await second.exited).toBe(73);
    expect(second.logs().some((l) => l.level === "fatal" && /in use/.test(l.msg) && l.data_dir === first.dataDir)).toBe(true);
    expect((await post(first, SINGLE, event())).status).toBe(202);
    expect((await storedEvents(first.dataDir)).length).toBe(2);
    // The lock dies with its process, even on kill -9: a restart is never blocked by a stale lock.
    await first.stop("SIGKILL");
    const third = await startServer({ dataDir: first.dataDir });
    expect(await (await post(third, SINGLE, ev)).json()).toEqual({ accepted: 0, duplicates: 1 });
  });
});

describe("paths are matched exactly", () => {
  test("/metrics/ and /health/ are 404 (a proxy rule for /metrics must not be bypassed) and count as unmatched", async () => {
    const server = await startServer();
    for (const path of ["/metrics/", "/health/", "/v1/events/payment_exhaust/"]) {
      const res = await fetch(server.url + path, { method: path.startsWith("/v1") ? "POST" : "GET" });
      expect([path, res.status]).toEqual([path, 404]);
    }
    const text = await metricsText(server);
    expect(metric(text, 'payflux_http_requests_total{method="GET",route="unmatched",status="404"}')).toBe(2);
  });
});

describe("an event that cannot be serialised", () => {
  test("is refused with 400 before its id is claimed, so a valid retry with the same id is stored at once", async () => {
    const server = await startServer();
    const ev = event();
    const deep = JSON.stringify({ ...ev, nested: 0 }).replace('"nested":0', `"nested":${"[".repeat(100_000)}${"]".repeat(100_000)}`);
    const bad = await post(server, SINGLE, deep);
    expect(bad.status).toBe(400);
    expect((await bad.json()).code).toBe("malformed_json");
    const retry = await post(server, SINGLE, ev, { headers: {} });
    expect(await retry.json()).toEqual({ accepted: 1, duplicates: 0 });
    expect(await server.stop()).toBe(0); // nothing left in flight
  });
});

describe("retention survives an unreadable data directory", () => {
  test("the data dir vanishing does not crash the process at the next sweep", async () => {
    const server = await startServer();
    expect((await post(server, SINGLE, event())).status).toBe(202);
    rmSync(server.dataDir, { recursive: true, force: true });
    await Bun.sleep(6000); // the sweep runs every 5 s
    expect(server.proc.exitCode).toBeNull();
    await server.waitForLog((l) => l.msg?.startsWith("retention could not read the data directory"));
    expect((await fetch(server.url + "/metrics")).status).toBe(200);
  }, 20_000);
});

describe("duplicate claims cannot deadlock", () => {
  test("a request waiting for one of its ids holds none of them", async () => {
    const dedup = new DedupIndex(60_000, 1000);
    const [x, y] = [crypto.randomUUID(), crypto.randomUUID()];
    const c = await dedup.claim([y]); // C is writing y
    const a = dedup.claim([x, y]); // A waits for y, and must not hold x meanwhile
    await Bun.sleep(5);
    dedup.release(c); // C's write failed
    const e = await dedup.claim([y, x]); // E, in the same tick, takes both
    expect(e.owned).toEqual([true, true]);
    dedup.commit(e);
    const claimA = await Promise.race([a, Bun.sleep(2000).then(() => "deadlock" as const)]);
    expect(claimA).not.toBe("deadlock");
    expect(claimA).toMatchObject({ owned: [false, false], duplicates: 2 });
  });
});

describe("secrets in the Redis URL", () => {
  test("a password in the query string is masked in check-config output", () => {
    const r = runCli(["check-config"], {
      PAYFLUX_API_KEYS: "test-key-aaaaaaaaaaaaaaaaaaaaaaaaaaaa",
      PAYFLUX_FORWARD_REDIS_URL: "redis://127.0.0.1:6390/0?password=TopSecret99&family=4",
    });
    expect(r.code).toBe(0);
    expect(r.stdout + r.stderr).not.toContain("TopSecret99");
    expect(r.stdout).toContain("password=***");
    expect(r.stdout).toContain("family=4");
  });
});
