/**
 * Forwarding to Redis Streams against a real redis-server (Debian package
 * `redis-server`) that the tests start on free loopback ports: events reach
 * the stream in order with field `data`; ingest keeps answering 202 while
 * Redis is down and the forwarder catches up when it is back; a kill -9 of
 * the service re-sends only what follows the persisted checkpoint; the URL's
 * password never leaks; retention keeps segments that are not forwarded yet.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { existsSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { connect as tlsConnect } from "node:tls";
import { join } from "node:path";
import { Redis } from "ioredis";
import { unframe } from "../src/record.ts";
import {
  BATCH, event, freePort, metric, metricsText, post, runCli, SINGLE, startServer, stopAll, storedEvents, tempDir, type Server,
} from "./support/harness.ts";

const REDIS_SERVER = "/usr/bin/redis-server";
const PROMTOOL = "/usr/bin/promtool";
const DOWN_MSG = "forwarder: cannot reach Redis; events wait in the local log and are retried with backoff";
const UP_MSG = "forwarder: Redis is reachable again; catching up";

/**
 * A throw-away test CA and a server certificate for 127.0.0.1 signed by it
 * (EC P-256, valid 2020-2120), for the rediss:// test. Test material only.
 */
const TEST_CA_CERT = `-----BEGIN CERTIFICATE-----
MIIBZjCCAQ2gAwIBAgIBATAKBggqhkjOPQQDAjAaMRgwFgYDVQQDDA9wYXlmbHV4
LXRlc3QtY2EwIBcNMjAwMTAxMDAwMDAwWhgPMjEyMDAxMDEwMDAwMDBaMBoxGDAW
BgNVBAMMD3BheWZsdXgtdGVzdC1jYTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IA
BLdJ6ugxb8dM9+vUDbkt3JISZ98ylTWhoHOyYG9fbR+uT1d4MnlPGh9Asjd9sXAP
NBNFZSNeLsNn9/oqGuDpMa+jQjBAMA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/
BAQDAgEGMB0GA1UdDgQWBBTGTH6fylmRYjyv0KuN15B+gKUabDAKBggqhkjOPQQD
AgNHADBEAiBP9iwGDcvWx87SM0CWnxulEHyWtzppoNbRmn4YPOH/swIgDrB/UeBv
TAy2k2doNbIyBV7Nn8cAFVhzeku6VO90sIk=
-----END CERTIFICATE-----
`;
const TEST_SERVER_CERT = `-----BEGIN CERTIFICATE-----
MIIBnjCCAUOgAwIBAgIBAjAKBggqhkjOPQQDAjAaMRgwFgYDVQQDDA9wYXlmbHV4
LXRlc3QtY2EwIBcNMjAwMTAxMDAwMDAwWhgPMjEyMDAxMDEwMDAwMDBaMBQxEjAQ
BgNVBAMMCTEyNy4wLjAuMTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABAK7HDx+
1QSppEwxqTMEpEmLmLH+SqHKX0Jksqa46meWvZNLkFSp7P/91EXVFqytL0KUQDE7
aRctOdlzj8paf0GjfjB8MAkGA1UdEwQCMAAwGgYDVR0RBBMwEYcEfwAAAYIJbG9j
YWxob3N0MBMGA1UdJQQMMAoGCCsGAQUFBwMBMB8GA1UdIwQYMBaAFMZMfp/KWZFi
PK/Qq43XkH6ApRpsMB0GA1UdDgQWBBTtGn4GtdrRyzti5Tjjem2Bwor4iDAKBggq
hkjOPQQDAgNJADBGAiEA27K7t0ZLKaPcKSl/1qI3/BmnqBOjhsgkFnfqi1Op4IAC
IQC7lRUc7XIFZXPN1oQtEqRrBIuX87tOwvzIgtAIpxTMxA==
-----END CERTIFICATE-----
`;
const TEST_SERVER_KEY = `-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIK7Nxw0RQk/mIWm4REKIuU7U4wu7rbye8cXLK220f3dNoAoGCCqGSM49
AwEHoUQDQgAEArscPH7VBKmkTDGpMwSkSYuYsf5KocpfQmSyprjqZ5a9k0uQVKns
//3URdUWrK0vQpRAMTtpFy052XOPylp/QQ==
-----END EC PRIVATE KEY-----
`;

interface RedisProc {
  port: number;
  proc: ReturnType<typeof Bun.spawn>;
  args: string[];
}
const redisProcs = new Set<RedisProc>();
const clients = new Set<Redis>();

afterAll(async () => {
  for (const c of clients) c.disconnect();
  for (const r of redisProcs) r.proc.kill("SIGKILL");
  await Promise.all([...redisProcs].map((r) => r.proc.exited));
  await stopAll();
});

function redisBinary(): string {
  const path = existsSync(REDIS_SERVER) ? REDIS_SERVER : Bun.which("redis-server");
  if (path === null) {
    throw new Error("redis-server is not installed: run `apt-get install redis-server` (Debian package redis-server); this test must not be skipped");
  }
  return path;
}

/** True once something on `port` answers a PING (any reply, NOAUTH included). */
function answers(port: number, tls = false): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = tls ? tlsConnect({ port, host: "127.0.0.1", rejectUnauthorized: false }) : connect(port, "127.0.0.1");
    const done = (ok: boolean) => {
      sock.destroy();
      resolve(ok);
    };
    sock.once("error", () => done(false));
    sock.once(tls ? "secureConnect" : "connect", () => sock.write("PING\r\n"));
    sock.once("data", () => done(true));
    setTimeout(() => done(false), 500);
  });
}

/** Starts redis-server on `port` (a free one by default) and waits until it answers. */
async function startRedis(opts: { port?: number; extra?: string[]; tlsDir?: string } = {}): Promise<RedisProc> {
  const port = opts.port ?? (await freePort());
  const args = ["--save", "", "--appendonly", "no", "--port", String(port), "--bind", "127.0.0.1", ...(opts.extra ?? [])];
  if (opts.tlsDir !== undefined) {
    const d = opts.tlsDir;
    args.push("--port", "0", "--tls-port", String(port), "--tls-cert-file", join(d, "server.crt"), "--tls-key-file", join(d, "server.key"));
    args.push("--tls-ca-cert-file", join(d, "ca.crt"), "--tls-auth-clients", "no");
  }
  // Later options win: `extra` may turn persistence on.
  const proc = Bun.spawn([redisBinary(), ...args], { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  const r: RedisProc = { port, proc, args };
  redisProcs.add(r);
  const deadline = Date.now() + 10_000;
  while (!(await answers(port, opts.tlsDir !== undefined))) {
    if (proc.exitCode !== null) throw new Error(`redis-server exited with ${proc.exitCode}: ${await new Response(proc.stdout).text()}`);
    if (Date.now() > deadline) throw new Error(`redis-server on port ${port} did not answer`);
    await Bun.sleep(20);
  }
  return r;
}

async function killRedis(r: RedisProc, sig: NodeJS.Signals = "SIGKILL"): Promise<void> {
  r.proc.kill(sig);
  await r.proc.exited;
  redisProcs.delete(r);
}

function client(port: number, password?: string): Redis {
  const c = new Redis({ port, host: "127.0.0.1", password, lazyConnect: false, maxRetriesPerRequest: 1 });
  c.on("error", () => {});
  clients.add(c);
  return c;
}

/** The stream's entries, each as [field, value] plus the parsed event. */
async function streamEvents(c: Redis, stream: string): Promise<{ fields: string[]; event: Record<string, any> }[]> {
  const entries = (await c.xrange(stream, "-", "+")) as [string, string[]][];
  return entries.map(([, fields]) => ({ fields, event: JSON.parse(fields[1]!) }));
}

async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 15_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(50);
  }
}

async function forwardMetrics(server: Server) {
  const text = await metricsText(server);
  return {
    text,
    up: metric(text, "payflux_forward_up"),
    lag: metric(text, "payflux_forward_lag_events") ?? NaN,
    success: metric(text, 'payflux_forward_events_total{result="success"}') ?? NaN,
    failure: metric(text, 'payflux_forward_events_total{result="failure"}') ?? NaN,
  };
}

/** Waits until everything is forwarded (lag 0, up 1). */
async function caughtUp(server: Server, timeoutMs = 15_000): Promise<void> {
  await waitFor("the forwarder to catch up", async () => {
    const m = await forwardMetrics(server);
    return m.up === 1 && m.lag === 0;
  }, timeoutMs);
}

async function health(server: Server): Promise<{ status: number; body: Record<string, any> }> {
  const res = await fetch(server.url + "/health");
  return { status: res.status, body: await res.json() };
}

async function postBatch(server: Server, events: Record<string, unknown>[]): Promise<void> {
  const res = await post(server, BATCH, events);
  expect(res.status).toBe(202);
  expect(await res.json()).toEqual({ accepted: events.length, duplicates: 0 });
}

function forwardEnv(port: number, extra: Record<string, string> = {}, password?: string): Record<string, string> {
  const auth = password === undefined ? "" : `:${password}@`;
  return { PAYFLUX_FORWARD_REDIS_URL: `redis://${auth}127.0.0.1:${port}/0`, ...extra };
}

function readCheckpoint(dataDir: string): { segment: number; offset: number } {
  return JSON.parse(readFileSync(join(dataDir, "forward.checkpoint"), "utf8"));
}

/** event_ids of the records at or after `cp` in the data dir's segments. */
function idsAfter(dataDir: string, cp: { segment: number; offset: number }): Set<string> {
  const ids = new Set<string>();
  for (const name of readdirSync(dataDir).filter((n) => n.startsWith("segment-")).sort()) {
    const seq = Number(name.slice(8, 28));
    if (seq < cp.segment) continue;
    const buf = readFileSync(join(dataDir, name));
    for (let start = 0, nl = buf.indexOf(10); nl >= 0; start = nl + 1, nl = buf.indexOf(10, start)) {
      if (seq === cp.segment && start < cp.offset) continue;
      const record = unframe(buf.subarray(start, nl));
      if (record !== null) ids.add(JSON.parse(record.toString("utf8")).event_id);
    }
  }
  return ids;
}

function counts(ids: string[]): Map<string, number> {
  const m = new Map<string, number>();
  for (const id of ids) m.set(id, (m.get(id) ?? 0) + 1);
  return m;
}

function segmentFiles(dir: string): string[] {
  return readdirSync(dir).filter((n) => n.startsWith("segment-")).sort();
}

describe("forwarding to a Redis stream", () => {
  test("events reach events_stream with field data, in acknowledged order; a batch of 500 arrives whole", async () => {
    const redis = await startRedis();
    const c = client(redis.port);
    const server = await startServer({ env: forwardEnv(redis.port) });
    expect(server.logs().find((l) => l.msg === "payflux listening")!.forward).toEqual({
      stream: "events_stream",
      url: `redis://127.0.0.1:${redis.port}/0`,
    });

    const sent: string[] = [];
    for (let i = 0; i < 20; i++) {
      const e = event({ retry_count: i % 5, custom_field: `c${i}` });
      expect((await post(server, SINGLE, e)).status).toBe(202);
      sent.push(e.event_id as string);
    }
    const batch = Array.from({ length: 500 }, () => event());
    await postBatch(server, batch);
    sent.push(...batch.map((e) => e.event_id as string));

    await waitFor("520 entries", async () => (await c.xlen("events_stream")) === 520);
    await caughtUp(server);
    const entries = await streamEvents(c, "events_stream");
    expect(entries.map((e) => e.event.event_id)).toEqual(sent);
    for (const e of entries) {
      expect(e.fields.length).toBe(2);
      expect(e.fields[0]).toBe("data");
      expect(e.event).not.toHaveProperty("crc");
      expect(e.event.received_at).toMatch(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/);
      expect(e.event.key_id).toMatch(/^[0-9a-f]{12}$/);
    }
    // Exactly what the local log holds, record for record (crc removed), unknown fields kept.
    expect(entries.map((e) => e.event)).toEqual(await storedEvents(server.dataDir));
    expect(entries[0]!.event.custom_field).toBe("c0");
    // The `data` value is the record's bytes as stored (key order kept, received_at and key_id last).
    expect(Object.keys(entries[0]!.event).slice(-2)).toEqual(["received_at", "key_id"]);

    const m = await forwardMetrics(server);
    expect(m.up).toBe(1);
    expect(m.success).toBe(520);
    expect(m.failure).toBe(0);
    expect(metric(m.text, "payflux_forward_last_success_timestamp_seconds")).toBeGreaterThan(Date.now() / 1000 - 60);
    const h = await health(server);
    expect(h.status).toBe(200);
    expect(h.body.status).toBe("ok");
    expect(h.body.forwarder).toEqual({ state: "up", lag_events: 0, stream: "events_stream" });
    expect(readCheckpoint(server.dataDir)).toEqual({ segment: 1, offset: readFileSync(join(server.dataDir, segmentFiles(server.dataDir)[0]!)).length });

    // The exposition with forwarding on still passes promtool.
    const promtool = existsSync(PROMTOOL) ? PROMTOOL : Bun.which("promtool");
    if (promtool === null) throw new Error("promtool is not installed: run `apt-get install prometheus`");
    const p = Bun.spawn([promtool, "check", "metrics"], { stdin: new Blob([m.text]), stdout: "pipe", stderr: "pipe" });
    const [code, out, err] = await Promise.all([p.exited, new Response(p.stdout).text(), new Response(p.stderr).text()]);
    expect((out + err).trim()).toBe("");
    expect(code).toBe(0);
  });

  test("custom PAYFLUX_FORWARD_STREAM; MAXLEN ~ keeps the stream near PAYFLUX_FORWARD_MAXLEN", async () => {
    const redis = await startRedis({ extra: ["--stream-node-max-entries", "10"] });
    const c = client(redis.port);
    const server = await startServer({ env: forwardEnv(redis.port, { PAYFLUX_FORWARD_STREAM: "payflux:custom.stream", PAYFLUX_FORWARD_MAXLEN: "50" }) });
    let last = "";
    for (let i = 0; i < 6; i++) {
      const batch = Array.from({ length: 100 }, () => event());
      await postBatch(server, batch);
      last = batch.at(-1)!.event_id as string;
    }
    await caughtUp(server);
    expect((await forwardMetrics(server)).success).toBe(600);
    expect(await c.exists("events_stream")).toBe(0);
    const len = await c.xlen("payflux:custom.stream");
    expect(len).toBeGreaterThanOrEqual(50);
    expect(len).toBeLessThanOrEqual(70); // approximate trimming: whole nodes of 10 entries
    const entries = await streamEvents(c, "payflux:custom.stream");
    expect(entries.at(-1)!.event.event_id).toBe(last);
    expect((await health(server)).body.forwarder.stream).toBe("payflux:custom.stream");
  });

  test("Redis killed mid-load: ingest keeps answering 202, degraded, one warn line; after restart every event is in the stream", async () => {
    // This Redis persists every write (AOF, fsync always), so a restart keeps what it had acknowledged.
    const dir = tempDir("payflux-redis-");
    const persist = ["--appendonly", "yes", "--appendfsync", "always", "--dir", dir];
    let redis = await startRedis({ extra: persist });
    const c = client(redis.port);
    const server = await startServer({ env: forwardEnv(redis.port) });

    const acked: string[] = [];
    const statuses: number[] = [];
    let loading = true;
    const loader = (async () => {
      while (loading) {
        const batch = Array.from({ length: 5 }, () => event());
        const res = await post(server, BATCH, batch);
        statuses.push(res.status);
        await res.text();
        if (res.status === 202) acked.push(...batch.map((e) => e.event_id as string));
        await Bun.sleep(10);
      }
    })();

    try {
      await waitFor("some events forwarded", async () => (await forwardMetrics(server)).success >= 50);
      await killRedis(redis);
      const down = await waitFor("payflux_forward_up 0", async () => {
        const m = await forwardMetrics(server);
        return m.up === 0 ? m : undefined;
      });
      const h = await health(server);
      expect(h.status).toBe(200);
      expect(h.body.status).toBe("degraded");
      expect(h.body.forwarder.state).toBe("down");
      await Bun.sleep(2500); // several retries with backoff while the load goes on
      const later = await forwardMetrics(server);
      expect(later.up).toBe(0);
      expect(later.lag).toBeGreaterThan(down.lag);
      expect(later.failure).toBeGreaterThan(0);
      expect((await health(server)).body.forwarder.lag_events).toBeGreaterThan(0);
      expect(server.logs().filter((l) => l.msg === DOWN_MSG)).toHaveLength(1);
      const downLine = server.logs().find((l) => l.msg === DOWN_MSG)!;
      expect(downLine.level).toBe("warn");
      // The cause (refused, or the connection closed under a batch), not ioredis's fail-fast internals.
      expect(downLine.err).toMatch(/ECONNREFUSED|ECONNRESET|EPIPE|connection to Redis (closed|lost)/);
      expect(downLine.err).not.toMatch(/enableOfflineQueue|maxRetriesPerRequest/);

      redis = await startRedis({ port: redis.port, extra: persist });
      await Bun.sleep(500);
    } finally {
      loading = false;
      await loader;
    }
    expect(statuses.length).toBeGreaterThan(20);
    expect(statuses.every((s) => s === 202)).toBe(true);

    await caughtUp(server);
    const inStream = (await streamEvents(c, "events_stream")).map((e) => e.event.event_id as string);
    const streamIds = new Set(inStream);
    expect(acked.filter((id) => !streamIds.has(id))).toEqual([]);
    expect(streamIds.size).toBe(acked.length);
    const up = server.logs().filter((l) => l.msg === UP_MSG);
    expect(up).toHaveLength(1);
    expect(up[0]!.level).toBe("warn");
    expect(up[0]!.down_s).toBeGreaterThan(2);
    expect(up[0]!.lag_events).toBeGreaterThan(0);
    expect(server.logs().filter((l) => l.msg === DOWN_MSG)).toHaveLength(1);
    expect((await health(server)).body).toMatchObject({ status: "ok", forwarder: { state: "up", lag_events: 0 } });
    await killRedis(redis);
  });

  test("kill -9 and restart: resumes from the checkpoint, re-sends only what follows it; a clean stop re-sends nothing", async () => {
    const dir = tempDir("payflux-redis-");
    const persist = ["--appendonly", "yes", "--appendfsync", "always", "--dir", dir];
    let redis = await startRedis({ extra: persist });
    const c = client(redis.port);
    const dataDir = tempDir();
    const env = forwardEnv(redis.port, { PAYFLUX_FORWARD_STREAM: "crash_stream" });
    const acked: string[] = [];
    const ids = (events: Record<string, unknown>[]) => events.map((e) => e.event_id as string);

    // 1. Forwarded, then Redis goes down and more are acknowledged: they are pending at the kill.
    let server = await startServer({ env, dataDir });
    const first = Array.from({ length: 200 }, () => event());
    await postBatch(server, first);
    acked.push(...ids(first));
    await caughtUp(server);
    const cpForwarded = readCheckpoint(dataDir);
    await killRedis(redis);
    await waitFor("payflux_forward_up 0", async () => (await forwardMetrics(server)).up === 0);
    const pending = Array.from({ length: 300 }, () => event());
    await postBatch(server, pending);
    acked.push(...ids(pending));
    server.signal("SIGKILL");
    await server.exited;
    const cp1 = readCheckpoint(dataDir);
    expect(cp1).toEqual(cpForwarded);
    expect(idsAfter(dataDir, cp1)).toEqual(new Set(ids(pending)));

    redis = await startRedis({ port: redis.port, extra: persist });
    server = await startServer({ env, dataDir });
    await caughtUp(server);
    let stream = (await streamEvents(c, "crash_stream")).map((e) => e.event.event_id as string);
    expect(stream).toEqual(acked); // nothing before the checkpoint was sent twice
    expect((await forwardMetrics(server)).success).toBe(300);

    // 2. A burst right before the kill: whatever was in flight may arrive twice, but only after the checkpoint.
    const burst = await Promise.all(
      Array.from({ length: 4 }, async () => {
        const b = Array.from({ length: 500 }, () => event());
        await postBatch(server, b);
        return ids(b);
      }),
    );
    acked.push(...burst.flat());
    server.signal("SIGKILL");
    await server.exited;
    const cp2 = readCheckpoint(dataDir);
    const after2 = idsAfter(dataDir, cp2);
    server = await startServer({ env, dataDir });
    await caughtUp(server);
    stream = (await streamEvents(c, "crash_stream")).map((e) => e.event.event_id as string);
    const streamIds = new Set(stream);
    expect(acked.filter((id) => !streamIds.has(id))).toEqual([]);
    const duplicated = [...counts(stream)].filter(([, n]) => n > 1).map(([id]) => id);
    expect(duplicated.filter((id) => !after2.has(id))).toEqual([]);
    expect(Math.max(...counts(stream).values())).toBeLessThanOrEqual(2);
    expect((await forwardMetrics(server)).success).toBe(after2.size);

    // 3. A clean SIGTERM after catching up, then a restart: nothing is sent again.
    const xlen = await c.xlen("crash_stream");
    expect(await server.stop()).toBe(0);
    server = await startServer({ env, dataDir });
    await caughtUp(server);
    await Bun.sleep(1500);
    expect(await c.xlen("crash_stream")).toBe(xlen);
    const m = await forwardMetrics(server);
    expect(m.success).toBe(0);
    expect(m.lag).toBe(0);
    await server.stop();
    await killRedis(redis);
  });

  test("password in the URL: forwards, never printed or reported; a wrong password keeps the forwarder down while ingest works", async () => {
    const password = "s3cret-Pa55-forward-7f3a";
    const redis = await startRedis({ extra: ["--requirepass", password] });
    const c = client(redis.port, password);
    const server = await startServer({ env: forwardEnv(redis.port, {}, password) });
    const e = event();
    expect((await post(server, SINGLE, e)).status).toBe(202);
    await caughtUp(server);
    expect((await streamEvents(c, "events_stream")).map((x) => x.event.event_id)).toEqual([e.event_id]);

    const wrong = "wrong-Pa55-forward-c0de";
    const bad = await startServer({ env: forwardEnv(redis.port, {}, wrong) });
    for (let i = 0; i < 3; i++) expect((await post(bad, SINGLE, event())).status).toBe(202);
    await waitFor("a down forwarder", async () => (await forwardMetrics(bad)).up === 0);
    const h = await health(bad);
    expect(h.status).toBe(200);
    expect(h.body.status).toBe("degraded");
    expect(h.body.forwarder).toEqual({ state: "down", lag_events: 3, stream: "events_stream" });
    await Bun.sleep(1500);
    expect((await forwardMetrics(bad)).up).toBe(0);
    const downLines = bad.logs().filter((l) => l.msg === DOWN_MSG);
    expect(downLines).toHaveLength(1);
    expect(downLines[0]!.err).toMatch(/WRONGPASS|NOAUTH|invalid/i);
    expect(downLines[0]!.url).toBe(`redis://:***@127.0.0.1:${redis.port}/0`);
    expect(await c.xlen("events_stream")).toBe(1);

    const check = runCli(["check-config"], { PAYFLUX_API_KEYS: "test-key-aaaaaaaaaaaaaaaaaaaaaaaaaaaa", ...forwardEnv(redis.port, {}, password) });
    expect(check.code).toBe(0);
    expect(check.stdout).toContain(`forward:      redis://:***@127.0.0.1:${redis.port}/0 -> events_stream (maxlen 200000)`);
    expect(runCli(["check-config"], { PAYFLUX_API_KEYS: "test-key-aaaaaaaaaaaaaaaaaaaaaaaaaaaa" }).stdout).toContain("forward:      off");

    const exposed = [
      JSON.stringify((await health(server)).body),
      JSON.stringify(h.body),
      await metricsText(server),
      await metricsText(bad),
      check.stdout + check.stderr,
    ];
    expect(await server.stop()).toBe(0);
    const t0 = Date.now();
    expect(await bad.stop()).toBe(0); // a forwarder that is down does not hold up a clean stop
    expect(Date.now() - t0).toBeLessThan(3000);
    for (const s of [server, bad]) exposed.push(s.stdout.join("\n"), s.stderr());
    for (const text of exposed) {
      expect(text).not.toContain(password);
      expect(text).not.toContain(wrong);
    }
    await killRedis(redis);
  });

  test("rediss:// (TLS): forwards when the server certificate verifies, stays down (degraded) when it does not", async () => {
    const dir = tempDir("payflux-tls-");
    writeFileSync(join(dir, "ca.crt"), TEST_CA_CERT);
    writeFileSync(join(dir, "server.crt"), TEST_SERVER_CERT);
    writeFileSync(join(dir, "server.key"), TEST_SERVER_KEY);
    const redis = await startRedis({ tlsDir: dir });
    const url = `rediss://127.0.0.1:${redis.port}/0`;
    // A private CA is trusted through NODE_EXTRA_CA_CERTS (honoured by Bun and Node).
    const server = await startServer({ env: { PAYFLUX_FORWARD_REDIS_URL: url, NODE_EXTRA_CA_CERTS: join(dir, "ca.crt") } });
    const e = event();
    expect((await post(server, SINGLE, e)).status).toBe(202);
    await caughtUp(server);
    const c = new Redis({ port: redis.port, host: "127.0.0.1", tls: { ca: TEST_CA_CERT }, maxRetriesPerRequest: 1 });
    c.on("error", () => {});
    clients.add(c);
    expect((await streamEvents(c, "events_stream")).map((x) => x.event.event_id)).toEqual([e.event_id]);

    const untrusted = await startServer({ env: { PAYFLUX_FORWARD_REDIS_URL: url } });
    expect((await post(untrusted, SINGLE, event())).status).toBe(202);
    // payflux_forward_up is 0 from start-up: wait for what proves a failed TLS exchange, the log line itself.
    const down = await untrusted.waitForLog((l) => l.msg === DOWN_MSG, 15_000);
    expect(down.err).toMatch(/certificate/i);
    expect((await forwardMetrics(untrusted)).up).toBe(0);
    expect((await health(untrusted)).body).toMatchObject({ status: "degraded", forwarder: { state: "down", lag_events: 1 } });
    expect(await c.xlen("events_stream")).toBe(1);
    await killRedis(redis);
  });

  test("retention keeps segments until they are forwarded, then deletes them", async () => {
    const port = await freePort(); // nothing listens there yet: Redis is down from the start
    const server = await startServer({ env: forwardEnv(port, { PAYFLUX_SEGMENT_BYTES: "4096", PAYFLUX_RETENTION: "1s" }) });
    const all: string[] = [];
    for (let i = 0; i < 12; i++) {
      const batch = Array.from({ length: 10 }, () => event());
      await postBatch(server, batch);
      all.push(...batch.map((e) => e.event_id as string));
    }
    const before = segmentFiles(server.dataDir);
    expect(before.length).toBeGreaterThanOrEqual(10);
    expect((await health(server)).body.status).toBe("degraded");
    // Older than PAYFLUX_RETENTION and past at least one sweep (every 5 s): still all there.
    await Bun.sleep(6000);
    expect(segmentFiles(server.dataDir)).toEqual(before);

    const redis = await startRedis({ port });
    const c = client(port);
    await caughtUp(server);
    expect((await streamEvents(c, "events_stream")).map((e) => e.event.event_id)).toEqual(all);
    const after = await waitFor("old segments deleted", () => {
      const now = segmentFiles(server.dataDir);
      return now.length === 1 ? now : undefined;
    }, 12_000);
    expect(after).toEqual([before.at(-1)!]);
    await killRedis(redis);
  });
});
