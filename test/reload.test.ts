/**
 * Reload on SIGHUP (source server): a broken file changes nothing, a fixed one
 * applies; a burst of 50 SIGHUPs under load ends on the file's latest content;
 * every reloadable setting takes effect on the next request; restart-only
 * settings warn and keep their running value; the one-line change summary;
 * `check-config` as the safe-reload gate; SIGTERM past the shutdown timeout.
 */
import { afterAll, beforeAll, describe, expect, test as bunTest } from "bun:test";
import { readdirSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  BATCH, event, freePort, KEY, KEY2, metric, metricsText, post, runCli, SINGLE, startServer, stopAll, storedEvents, tcpConnect, tempDir, until, type Server,
} from "./support/harness.ts";

afterAll(stopAll);

/** Reloads are awaited with their own bounds (up to 15 s); Bun's default 5 s per test would cut them short. */
const test = (name: string, fn: () => Promise<void> | void) => bunTest(name, fn, 40_000);

const KEY3 = "reload-key-cccccccccccccccccccccccccccc";
const KEY4 = "reload-key-dddddddddddddddddddddddddddd";
const RL_KEY = "reload-key-rrrrrrrrrrrrrrrrrrrrrrrrrrrr";
/** A key pasted on a line of its own (no `=`): the error must not quote it. */
const PASTED = "pasted-secret-eeeeeeeeeeeeeeeeeeeeeeee";
const METRICS_TOKEN = "metrics-token-ffffffffffffffffffffffff";
const burstKey = (i: number) => `burst-key-${String(i).padStart(2, "0")}-gggggggggggggggggggggg`;

/** Every server this file starts, for the "no secret in the logs" check at the end. */
const servers: Server[] = [];
const SECRETS = [KEY, KEY2, KEY3, KEY4, RL_KEY, PASTED, METRICS_TOKEN, ...Array.from({ length: 50 }, (_, i) => burstKey(i))];

type Vars = Record<string, string | undefined>;

/** Writes the env file atomically (temp file + rename), so a reload never reads half of it. */
function writeEnv(file: string, vars: Vars, extraLines: string[] = []): void {
  const lines = Object.entries(vars)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${k}=${v}`);
  const tmp = `${file}.tmp`;
  writeFileSync(tmp, [...lines, ...extraLines].join("\n") + "\n", { mode: 0o600 });
  renameSync(tmp, file);
}

async function health(server: Server): Promise<{ status: number; body: Record<string, any> }> {
  const res = await fetch(server.url + "/health");
  return { status: res.status, body: (await res.json()) as Record<string, any> };
}

async function fingerprint(server: Server): Promise<string> {
  const h = await health(server);
  expect(h.status).toBe(200);
  return h.body.config_fingerprint as string;
}

const isReloadResult = (l: Record<string, any>) =>
  l.msg === "config reloaded" || (typeof l.msg === "string" && l.msg.startsWith("config reload failed"));

/** Rewrites the env file, sends SIGHUP and waits for the reload's own log line (success or failure). */
async function reload(server: Server, file: string, vars: Vars, extraLines: string[] = []): Promise<Record<string, any>> {
  const before = server.logs().filter(isReloadResult).length;
  writeEnv(file, vars, extraLines);
  server.signal("SIGHUP");
  return until("a reload log line", () => server.logs().filter(isReloadResult)[before], 15_000);
}

/**
 * Starts a source server on an env file. Unless `early` is set, one /health
 * round trip follows, so SIGHUPs of the test do not race the start-up (that
 * race has its own test below).
 */
async function startWithFile(vars: Vars, early = false): Promise<{ server: Server; file: string }> {
  const file = join(tempDir("payflux-reload-"), "payflux.env");
  writeEnv(file, vars);
  const server = await startServer({ args: ["--config", file] });
  servers.push(server);
  if (!early) expect((await health(server)).status).toBe(200);
  return { server, file };
}

async function code(res: Response): Promise<string | undefined> {
  return ((await res.json()) as { code?: string }).code;
}

/** The env a `check-config` run needs to describe the same effective config as `server` (restart-only settings included). */
function sameEnvAs(server: Server): Record<string, string> {
  return { PAYFLUX_HOST: "127.0.0.1", PAYFLUX_PORT: "0", PAYFLUX_DATA_DIR: server.dataDir };
}

function printedFingerprint(stdout: string): string {
  const m = stdout.match(/fingerprint:\s+([0-9a-f]{12})\b/);
  if (!m) throw new Error(`no fingerprint in check-config output:\n${stdout}`);
  return m[1]!;
}

const RELOADS_OK = 'payflux_config_reloads_total{result="success"}';
const RELOADS_FAILED = 'payflux_config_reloads_total{result="failure"}';
const LAST_OK = "payflux_config_last_reload_successful";
const LAST_OK_TIME = "payflux_config_last_reload_success_timestamp_seconds";

describe("a reload with a broken file", () => {
  const good: Vars = { PAYFLUX_API_KEYS: KEY, PAYFLUX_INGEST_RPS: "1000", PAYFLUX_INGEST_BURST: "1000" };
  // PAYFLUX_INGEST_RPS is invalid, line 3 has no `=` (a key pasted by mistake), and KEY2 is added.
  const brokenVars: Vars = { PAYFLUX_API_KEYS: `${KEY},${KEY2}`, PAYFLUX_INGEST_RPS: "abc" };
  const brokenExtra = [PASTED, "PAYFLUX_INGEST_BURST=1000"];
  const fixed: Vars = { PAYFLUX_API_KEYS: `${KEY},${KEY2}`, PAYFLUX_INGEST_RPS: "500", PAYFLUX_INGEST_BURST: "1000" };
  let server: Server;
  let file: string;
  beforeAll(async () => {
    ({ server, file } = await startWithFile(good));
  });

  test("keeps serving with the old config, says so in metrics and one error line; fixing the file and reloading applies it", async () => {
    const fp0 = await fingerprint(server);
    const m0 = await metricsText(server);
    expect(metric(m0, RELOADS_OK)).toBe(0);
    expect(metric(m0, RELOADS_FAILED)).toBe(0);
    expect(metric(m0, LAST_OK)).toBe(1);
    const startedAt = metric(m0, LAST_OK_TIME)!;
    expect(startedAt).toBeGreaterThan(0);
    expect((await post(server, SINGLE, event())).status).toBe(202);
    const before = await post(server, SINGLE, event(), { key: KEY2 });
    expect(before.status).toBe(401);
    expect(await code(before)).toBe("invalid_key");

    const line = await reload(server, file, brokenVars, brokenExtra);
    expect(line.level).toBe("error");
    expect(line.msg).toStartWith("config reload failed");
    expect(line.msg).toContain("PAYFLUX_INGEST_RPS");
    expect(line.msg).toContain(`${file}:3: expected KEY=VALUE`);
    expect(line.errors).toBeArray();
    for (const secret of [KEY, KEY2, PASTED]) expect(JSON.stringify(line)).not.toContain(secret);

    // Still alive, still the old config: KEY works, KEY2 (only in the broken file) does not.
    expect(server.proc.exitCode).toBeNull();
    expect((await post(server, SINGLE, event())).status).toBe(202);
    const during = await post(server, SINGLE, event(), { key: KEY2 });
    expect(during.status).toBe(401);
    expect(await code(during)).toBe("invalid_key");
    expect(await fingerprint(server)).toBe(fp0);
    const m1 = await metricsText(server);
    expect(metric(m1, RELOADS_FAILED)).toBe(1);
    expect(metric(m1, RELOADS_OK)).toBe(0);
    expect(metric(m1, LAST_OK)).toBe(0);
    expect(metric(m1, LAST_OK_TIME)).toBe(startedAt);

    const ok = await reload(server, file, fixed);
    expect(ok.msg).toBe("config reloaded");
    expect(ok.keys_added).toBe(1);
    expect(ok.changed_settings).toEqual(["PAYFLUX_INGEST_RPS"]);
    const after = await post(server, SINGLE, event(), { key: KEY2 });
    expect(after.status).toBe(202);
    expect(after.headers.get("ratelimit-policy")).toBe('"ingest";q=1000;w=2');
    const fp2 = await fingerprint(server);
    expect(fp2).not.toBe(fp0);
    expect(ok.config_fingerprint).toBe(fp2);
    const m2 = await metricsText(server);
    expect(metric(m2, RELOADS_OK)).toBe(1);
    expect(metric(m2, RELOADS_FAILED)).toBe(1);
    expect(metric(m2, LAST_OK)).toBe(1);
    expect(metric(m2, LAST_OK_TIME)!).toBeGreaterThan(startedAt);
  });

  test("check-config: exit 78 on the broken file, 0 on the fixed one, with the fingerprint the server reports", async () => {
    writeEnv(file, brokenVars, brokenExtra);
    const bad = runCli(["check-config", "--config", file], sameEnvAs(server));
    expect(bad.code).toBe(78);
    expect(bad.stderr).toContain("PAYFLUX_INGEST_RPS");
    expect(bad.stderr).toContain(`${file}:3: expected KEY=VALUE`);
    for (const secret of [KEY, KEY2, PASTED]) expect(bad.stdout + bad.stderr).not.toContain(secret);

    writeEnv(file, fixed);
    const good = runCli(["check-config", "--config", file], sameEnvAs(server));
    expect(good.code).toBe(0);
    expect(good.stdout).toContain("2 active, 0 revoked");
    for (const secret of [KEY, KEY2]) expect(good.stdout + good.stderr).not.toContain(secret);
    // The fixed file is the config in force (previous test): same validation, same fingerprint.
    expect(printedFingerprint(good.stdout)).toBe(await fingerprint(server));
  });
});

describe("50 SIGHUPs in a burst under load", () => {
  const version = (i: number): Vars => ({
    PAYFLUX_API_KEYS: `${KEY},${burstKey(i)}`,
    PAYFLUX_INGEST_RPS: String(100_000 - i),
    PAYFLUX_INGEST_BURST: String(100_000 + i),
  });
  let server: Server;
  let file: string;
  beforeAll(async () => {
    ({ server, file } = await startWithFile({ PAYFLUX_API_KEYS: KEY, PAYFLUX_INGEST_RPS: "100000", PAYFLUX_INGEST_BURST: "100000" }));
  });

  test("no failed request for a key valid in every version; the process stays healthy; the latest file wins", async () => {
    const statuses: string[] = [];
    let running = true;
    const loop = async () => {
      while (running) {
        try {
          const res = await fetch(server.url + SINGLE, {
            method: "POST",
            headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
            body: JSON.stringify(event()),
            signal: AbortSignal.timeout(5000),
          });
          statuses.push(res.status === 202 ? "202" : `${res.status} ${await code(res)}`);
          if (res.status === 202) await res.arrayBuffer().catch(() => {});
        } catch (err) {
          statuses.push(`error ${(err as Error).name}`);
        }
      }
    };
    const loops = [loop(), loop(), loop(), loop()];
    try {
      await until("some requests before the burst", () => statuses.length >= 20);
      for (let i = 0; i < 50; i++) {
        writeEnv(file, version(i));
        server.proc.kill("SIGHUP");
        if (i % 5 === 4) await Bun.sleep(1); // let the clients' requests interleave
      }
      const expected = printedFingerprint(runCli(["check-config", "--config", file], sameEnvAs(server)).stdout);
      await until("the latest file's fingerprint on /health", async () => (await fingerprint(server)) === expected);
      const seen = statuses.length;
      await until("requests after the burst", () => statuses.length >= seen + 20);
    } finally {
      running = false;
      await Promise.all(loops);
    }

    expect(statuses.length).toBeGreaterThan(40);
    expect(statuses.filter((s) => s !== "202")).toEqual([]);
    expect(server.proc.exitCode).toBeNull();
    expect((await health(server)).status).toBe(200);

    const latest = await post(server, SINGLE, event(), { key: burstKey(49) });
    expect(latest.status).toBe(202);
    expect(latest.headers.get("ratelimit-policy")).toBe(`"ingest";q=${100_000 + 49};w=2`);
    for (const old of [burstKey(48), burstKey(0)]) {
      const res = await post(server, SINGLE, event(), { key: old });
      expect(res.status).toBe(401);
      expect(await code(res)).toBe("invalid_key");
    }
    const m = await metricsText(server);
    expect(metric(m, RELOADS_FAILED)).toBe(0);
    expect(metric(m, RELOADS_OK)!).toBeGreaterThanOrEqual(1);
    expect(metric(m, RELOADS_OK)!).toBeLessThanOrEqual(50);
    expect(metric(m, LAST_OK)).toBe(1);
    expect(server.logs().filter((l) => l.level === "error" || l.level === "fatal")).toEqual([]);
  });
});

describe("reloaded settings take effect on the next request", () => {
  const base: Vars = { PAYFLUX_API_KEYS: `${KEY},${RL_KEY}`, PAYFLUX_INGEST_RPS: "1000", PAYFLUX_INGEST_BURST: "1000" };
  let server: Server;
  let file: string;
  beforeAll(async () => {
    ({ server, file } = await startWithFile(base));
  });

  test("PAYFLUX_INGEST_BURST lowered: the bucket is capped at the new burst, 429 comes sooner", async () => {
    expect((await reload(server, file, { ...base, PAYFLUX_INGEST_RPS: "0.001", PAYFLUX_INGEST_BURST: "20" })).msg).toBe("config reloaded");
    for (let i = 0; i < 5; i++) expect((await post(server, SINGLE, event(), { key: RL_KEY })).status).toBe(202);
    // 15 tokens left under burst 20; the new burst caps them at 3.
    const line = await reload(server, file, { ...base, PAYFLUX_INGEST_RPS: "0.001", PAYFLUX_INGEST_BURST: "3" });
    expect(line.changed_settings).toEqual(["PAYFLUX_INGEST_BURST"]);
    for (let i = 0; i < 3; i++) {
      const res = await post(server, SINGLE, event(), { key: RL_KEY });
      expect(res.status).toBe(202);
      expect(res.headers.get("ratelimit-policy")).toStartWith('"ingest";q=3;');
    }
    const limited = await post(server, SINGLE, event(), { key: RL_KEY });
    expect(limited.status).toBe(429);
    expect(limited.headers.get("retry-after")).not.toBeNull();
    expect(await code(limited)).toBe("rate_limited");
  });

  test("PAYFLUX_METRICS_TOKEN added: /metrics requires it; removed: open again", async () => {
    expect((await fetch(server.url + "/metrics")).status).toBe(200);
    const line = await reload(server, file, { ...base, PAYFLUX_METRICS_TOKEN: METRICS_TOKEN });
    expect(line.changed_settings).toContain("PAYFLUX_METRICS_TOKEN");
    const bare = await fetch(server.url + "/metrics");
    expect(bare.status).toBe(401);
    expect(await code(bare)).toBe("metrics_unauthorized");
    const wrong = await fetch(server.url + "/metrics", { headers: { authorization: `Bearer ${KEY}` } });
    expect(wrong.status).toBe(401);
    const withToken = await fetch(server.url + "/metrics", { headers: { authorization: `Bearer ${METRICS_TOKEN}` } });
    expect(withToken.status).toBe(200);
    expect(await withToken.text()).toContain(RELOADS_OK);

    await reload(server, file, base);
    expect((await fetch(server.url + "/metrics")).status).toBe(200);
  });

  test("PAYFLUX_MAX_BATCH lowered: a batch over it gets 413 batch_too_large", async () => {
    expect((await post(server, BATCH, [event(), event(), event()])).status).toBe(202);
    const line = await reload(server, file, { ...base, PAYFLUX_MAX_BATCH: "2" });
    expect(line.changed_settings).toEqual(["PAYFLUX_MAX_BATCH"]);
    const tooMany = await post(server, BATCH, [event(), event(), event()]);
    expect(tooMany.status).toBe(413);
    expect(await code(tooMany)).toBe("batch_too_large");
    const two = await post(server, BATCH, [event(), event()]);
    expect(two.status).toBe(202);
    expect(await two.json()).toEqual({ accepted: 2, duplicates: 0 });
  });

  test("PAYFLUX_LOG_LEVEL=debug: `events accepted` debug lines appear", async () => {
    await reload(server, file, base);
    expect((await post(server, SINGLE, event())).status).toBe(202);
    const line = await reload(server, file, { ...base, PAYFLUX_LOG_LEVEL: "debug" });
    expect(line.changed_settings).toEqual(["PAYFLUX_LOG_LEVEL"]);
    // At info, the 202 above logged no debug line (it would sit before the reload line).
    expect(server.logs().some((l) => l.msg === "events accepted")).toBe(false);
    expect((await post(server, SINGLE, event())).status).toBe(202);
    const debug = await server.waitForLog((l) => l.msg === "events accepted", 5000);
    expect(debug.level).toBe("debug");
    expect(debug.accepted).toBe(1);
    expect(debug.key_id).toMatch(/^[0-9a-f]{12}$/);
  });

  test("restart-only settings: PAYFLUX_PORT and PAYFLUX_DATA_DIR changes warn and keep the running value; the rest applies", async () => {
    const otherDir = tempDir("payflux-other-data-");
    const otherPort = await freePort();
    const fp0 = await fingerprint(server);
    const warnedBefore = server.logs().filter((l) => l.level === "warn").length;
    const line = await reload(server, file, {
      ...base,
      PAYFLUX_API_KEYS: `${KEY},${RL_KEY},${KEY3}`,
      PAYFLUX_PORT: String(otherPort),
      PAYFLUX_DATA_DIR: otherDir,
    });
    expect(line.msg).toBe("config reloaded");
    expect(line.keys_added).toBe(1);
    expect(line.changed_settings).not.toContain("PAYFLUX_PORT");
    expect(line.changed_settings).not.toContain("PAYFLUX_DATA_DIR");
    const warnings = server.logs().filter((l) => l.level === "warn").slice(warnedBefore);
    expect(warnings.some((l) => l.variable === "PAYFLUX_PORT" && /restart/.test(l.msg))).toBe(true);
    expect(warnings.some((l) => l.variable === "PAYFLUX_DATA_DIR" && /restart/.test(l.msg))).toBe(true);

    // Still on the old port, nothing on the new one; the new key works; events go to the old data dir.
    expect((await health(server)).status).toBe(200);
    expect(await tcpConnect(otherPort)).toBe("ECONNREFUSED");
    const ev = event();
    expect((await post(server, SINGLE, ev, { key: KEY3 })).status).toBe(202);
    expect((await storedEvents(server.dataDir)).some((e) => e.event_id === ev.event_id)).toBe(true);
    expect(readdirSync(otherDir)).toEqual([]);
    const fp1 = await fingerprint(server);
    expect(fp1).not.toBe(fp0);
    expect(line.config_fingerprint).toBe(fp1);
  });

  test("the `config reloaded` line: counts of keys added, removed, revoked and the names of changed settings", async () => {
    await reload(server, file, { ...base, PAYFLUX_API_KEYS: `${KEY},${KEY2}` });
    // Active {KEY, KEY2} -> allow KEY, KEY3, KEY4 and revoke KEY2: 2 added, 1 revoked (not also "removed").
    const line = await reload(server, file, {
      ...base,
      PAYFLUX_API_KEYS: `${KEY},${KEY3},${KEY4}`,
      PAYFLUX_REVOKED_KEYS: KEY2,
      PAYFLUX_INGEST_RPS: "900",
      PAYFLUX_MAX_BODY_BYTES: "2048",
      PAYFLUX_METRICS_TOKEN: METRICS_TOKEN,
    });
    expect(line.level).toBe("info");
    expect(line.msg).toBe("config reloaded");
    expect(line.keys_added).toBe(2);
    expect(line.keys_removed).toBe(0);
    expect(line.keys_revoked).toBe(1);
    expect(line.keys_unrevoked).toBe(0);
    expect([...line.changed_settings].sort()).toEqual(["PAYFLUX_INGEST_RPS", "PAYFLUX_MAX_BODY_BYTES", "PAYFLUX_METRICS_TOKEN"]);
    expect(line.config_fingerprint).toBe(await fingerprint(server));
    const revoked = await post(server, SINGLE, event(), { key: KEY2 });
    expect(revoked.status).toBe(401);
    expect(await code(revoked)).toBe("revoked_key");
    expect((await post(server, SINGLE, event(), { key: KEY4 })).status).toBe(202);
    const big = await post(server, SINGLE, { ...event(), pad: "y".repeat(3000) });
    expect(big.status).toBe(413);
    expect(await code(big)).toBe("payload_too_large");
    const text = JSON.stringify(line);
    for (const secret of SECRETS) expect(text).not.toContain(secret);
  });
});

describe("SIGHUP right after start-up", () => {
  // `systemctl reload` may come as soon as the service runs (Type=exec): the
  // signal must reload, never kill the process (SIGHUP's default action).
  test("a SIGHUP sent as soon as `payflux listening` is logged applies the file; the process survives (5 starts)", async () => {
    for (let i = 0; i < 5; i++) {
      const { server, file } = await startWithFile({ PAYFLUX_API_KEYS: KEY }, true);
      writeEnv(file, { PAYFLUX_API_KEYS: `${KEY},${KEY3}` });
      server.signal("SIGHUP");
      const accepted = await until(`start ${i}: KEY3 accepted after the early SIGHUP`, async () => {
        if (server.proc.exitCode !== null || server.proc.signalCode !== null) {
          throw new Error(`start ${i}: the server died on an early SIGHUP (exit ${server.proc.exitCode}, signal ${server.proc.signalCode})`);
        }
        const res = await post(server, SINGLE, event(), { key: KEY3 });
        return res.status === 202;
      }, 5000);
      expect(accepted).toBe(true);
      expect((await health(server)).status).toBe(200);
      await server.stop("SIGTERM");
    }
  });
});

describe("SIGTERM past PAYFLUX_SHUTDOWN_TIMEOUT", () => {
  test("a request that never finishes sending its body is cut: exit 1, `request(s) cut` with cut_requests >= 1", async () => {
    const { server } = await startWithFile({ PAYFLUX_API_KEYS: KEY, PAYFLUX_SHUTDOWN_TIMEOUT: "1s" });
    const json = JSON.stringify(event());
    const body = new ReadableStream<Uint8Array>({
      start(controller) {
        controller.enqueue(new TextEncoder().encode(json.slice(0, 20)));
        // ...and never the rest.
      },
    });
    const stalled = fetch(server.url + SINGLE, {
      method: "POST",
      headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
      body,
      duplex: "half",
      signal: AbortSignal.timeout(15_000),
    } as RequestInit).catch((err: Error) => err);
    // The stalled request plus the scrape itself.
    await until("the stalled request in flight", async () => {
      const res = await fetch(server.url + "/metrics", { headers: { connection: "close" } });
      return metric(await res.text(), "payflux_http_requests_in_flight") === 2;
    });

    server.signal("SIGTERM");
    expect(await server.exited).toBe(1);
    // The pipe may still be draining after the exit.
    const cut = await until("the `request(s) cut` line", () =>
      server.logs().find((l) => typeof l.msg === "string" && l.msg.includes("request(s) cut")), 5000);
    expect(cut.level).toBe("error");
    expect(cut.cut_requests).toBeGreaterThanOrEqual(1);
    expect(server.logs().some((l) => l.msg === "stopped")).toBe(false);
    const outcome = await stalled;
    expect(outcome instanceof Response ? outcome.status : "no response").not.toBe(202);
  });
});

describe("logs", () => {
  test("no API key, pasted secret or metrics token appears anywhere in any server's output", () => {
    expect(servers.length).toBeGreaterThanOrEqual(4);
    for (const s of servers) {
      const out = s.stdout.join("\n") + s.stderr();
      expect(s.stdout.length).toBeGreaterThan(0);
      for (const secret of SECRETS) expect(out).not.toContain(secret);
    }
  });
});

