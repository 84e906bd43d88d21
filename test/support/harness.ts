/**
 * Test harness: starts the real service (source on Bun, or the compiled
 * binary) as a child process on a free loopback port, and talks to it over
 * HTTP. Nothing here is mocked.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { connect, createServer } from "node:net";
import { join, resolve } from "node:path";
import { unframe } from "../../src/record.ts";

export const ROOT = resolve(import.meta.dir, "..", "..");
export const MAIN = join(ROOT, "src", "main.ts");
export const BINARY = join(ROOT, "dist", "payflux");
export const DENO_BINARY = join(ROOT, "dist", "payflux-deno");
/** The bun that runs the tests also runs the service. */
export const BUN = process.execPath;
/** Deno from the `deno` devDependency. */
export const DENO = join(ROOT, "node_modules", ".bin", "deno");
/**
 * The permissions `npm run start:deno` grants (see README), except that
 * writing is limited to the test's own data dir.
 */
export const DENO_PERMISSIONS = ["--allow-net", "--allow-env", "--allow-sys=hostname", "--allow-read"];

/** What runs the service: the source or a compiled binary, on Bun or on Deno. */
export type Target = "bun" | "bun-binary" | "deno" | "deno-binary";
export const ALL_TARGETS: Target[] = ["bun", "bun-binary", "deno", "deno-binary"];

/**
 * Targets the end-to-end suites (auth, rate limit, ingest, metrics, health,
 * rotation) run against: PAYFLUX_TEST_TARGETS, comma-separated, or by
 * default every target that can be built here. `deno-binary` needs Deno's
 * `denort` runtime, which `deno compile` downloads from Deno's servers (not
 * reachable from these machines): it is in the default set only when
 * DENORT_BIN names a local copy.
 */
export const E2E_TARGETS: Target[] = (() => {
  const raw = process.env.PAYFLUX_TEST_TARGETS;
  if (raw === undefined || raw.trim() === "") {
    return process.env.DENORT_BIN ? ALL_TARGETS : ALL_TARGETS.filter((t) => t !== "deno-binary");
  }
  const picked = raw.split(",").map((t) => t.trim()) as Target[];
  const unknown = picked.filter((t) => !ALL_TARGETS.includes(t));
  if (unknown.length > 0) throw new Error(`PAYFLUX_TEST_TARGETS: unknown target(s) ${unknown.join(", ")}; use ${ALL_TARGETS.join(", ")}`);
  return picked;
})();

/** The `runtime` label payflux_build_info carries for a target. */
export function runtimeOf(target: Target): "bun" | "deno" {
  return target.startsWith("deno") ? "deno" : "bun";
}

export const KEY = "test-key-aaaaaaaaaaaaaaaaaaaaaaaaaaaa";
export const KEY2 = "test-key-bbbbbbbbbbbbbbbbbbbbbbbbbbbb";

const tempDirs = new Set<string>();

/** Writes `text` to a fresh env file (in a temporary directory removed by stopAll()); returns its path. */
export function envFile(text: string): string {
  const path = join(tempDir("payflux-env-"), "payflux.env");
  writeFileSync(path, text);
  return path;
}

/** A fresh temporary directory, removed by stopAll(). */
export function tempDir(prefix = "payflux-test-"): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  tempDirs.add(dir);
  return dir;
}

export interface StartOptions {
  /** Extra environment (PAYFLUX_* etc.); the child gets no other PAYFLUX_* variables. */
  env?: Record<string, string>;
  args?: string[];
  /** What runs the service (default "bun": the source on Bun). */
  target?: Target;
  /** Shorthand for target "bun-binary". */
  binary?: boolean;
  /** Defaults to a fresh temporary directory. */
  dataDir?: string;
  /** Wait for the "payflux listening" line (default true). */
  waitReady?: boolean;
  /** A command the service runs under, e.g. ["strace", "-f", "-o", file]. */
  wrap?: string[];
  /** Run under this open-file limit (soft and hard), via prlimit(1). */
  nofile?: number;
}

export interface Server {
  url: string;
  port: number;
  dataDir: string;
  proc: ReturnType<typeof Bun.spawn>;
  /** Every stdout line so far (JSON log lines). */
  stdout: string[];
  stderr: () => string;
  /** Parsed JSON log lines so far. */
  logs: () => Record<string, any>[];
  waitForLog: (pred: (line: Record<string, any>) => boolean, timeoutMs?: number) => Promise<Record<string, any>>;
  signal: (sig: NodeJS.Signals) => void;
  /** Sends SIGTERM (or `sig`) and resolves with the exit code. */
  stop: (sig?: NodeJS.Signals) => Promise<number>;
  exited: Promise<number>;
}

const running = new Set<Server>();

/** The command line that starts `payflux` for a target; Deno may write only to `dataDir`. */
export function command(target: Target = "bun", dataDir?: string): string[] {
  switch (target) {
    case "bun":
      return [BUN, MAIN];
    case "bun-binary":
      return [BINARY];
    case "deno":
      return [DENO, "run", "--no-prompt", ...DENO_PERMISSIONS, dataDir ? `--allow-write=${dataDir}` : "--allow-write", MAIN];
    case "deno-binary":
      return [DENO_BINARY];
  }
}

export function baseEnv(extra: Record<string, string> = {}): Record<string, string> {
  return { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: process.env.HOME ?? "/tmp", NO_COLOR: "1", ...extra };
}

export async function startServer(opts: StartOptions = {}): Promise<Server> {
  const dataDir = opts.dataDir ?? tempDir();
  const env = baseEnv({
    PAYFLUX_API_KEYS: KEY,
    PAYFLUX_HOST: "127.0.0.1",
    PAYFLUX_PORT: "0",
    PAYFLUX_DATA_DIR: dataDir,
    ...opts.env,
  });
  const target = opts.target ?? (opts.binary ? "bun-binary" : "bun");
  if (target.endsWith("-binary")) await ensureBinary(target as "bun-binary" | "deno-binary");
  const limit = opts.nofile === undefined ? [] : ["prlimit", `--nofile=${opts.nofile}:${opts.nofile}`, "--"];
  const proc = Bun.spawn([...(opts.wrap ?? []), ...limit, ...command(target, dataDir), ...(opts.args ?? [])], { env, stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  const stdout: string[] = [];
  let stderrText = "";
  const waiters = new Set<() => void>();
  const notify = () => waiters.forEach((w) => w());
  (async () => {
    const decoder = new TextDecoder();
    let buf = "";
    for await (const chunk of proc.stdout as unknown as AsyncIterable<Uint8Array>) {
      buf += decoder.decode(chunk, { stream: true });
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        stdout.push(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
      }
      notify();
    }
    if (buf) stdout.push(buf);
    notify();
  })();
  (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of proc.stderr as unknown as AsyncIterable<Uint8Array>) stderrText += decoder.decode(chunk, { stream: true });
  })();
  const exited = proc.exited.then((code) => {
    notify();
    return code;
  });
  let exitCode: number | null = null;
  exited.then((c) => (exitCode = c));

  const logs = () =>
    stdout.flatMap((l) => {
      try {
        return [JSON.parse(l)];
      } catch {
        return [];
      }
    });
  const waitForLog = (pred: (line: Record<string, any>) => boolean, timeoutMs = 15_000) =>
    new Promise<Record<string, any>>((resolveLine, reject) => {
      const check = () => {
        const hit = logs().find(pred);
        if (hit) {
          cleanup();
          resolveLine(hit);
        } else if (exitCode !== null) {
          cleanup();
          reject(new Error(`server exited with ${exitCode}\nstdout:\n${stdout.join("\n")}\nstderr:\n${stderrText}`));
        }
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`timed out waiting for a log line\nstdout:\n${stdout.join("\n")}\nstderr:\n${stderrText}`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        waiters.delete(check);
      };
      waiters.add(check);
      check();
    });

  const server: Server = {
    url: "",
    port: 0,
    dataDir,
    proc,
    stdout,
    stderr: () => stderrText,
    logs,
    waitForLog,
    signal: (sig) => proc.kill(sig),
    stop: async (sig = "SIGTERM") => {
      if (exitCode === null) proc.kill(sig);
      const code = await exited;
      running.delete(server);
      return code;
    },
    exited,
  };
  running.add(server);
  if (opts.waitReady !== false) {
    const ready = await waitForLog((l) => l.msg === "payflux listening");
    server.port = ready.port;
    server.url = `http://127.0.0.1:${ready.port}`;
  }
  return server;
}

/** Kills every server a test file started and removes its temporary directories (call from afterAll). */
export async function stopAll(): Promise<void> {
  await Promise.all([...running].map((s) => s.stop("SIGKILL")));
  for (const dir of tempDirs) {
    try {
      rmSync(dir, { recursive: true, force: true });
      tempDirs.delete(dir);
    } catch {
      // Still mounted or busy: the test that made it cleans up, or the OS does.
    }
  }
}

/**
 * Runs the CLI (the source on Bun, or another target) to completion on a free
 * loopback port with a temp data dir. A process still running after `timeoutMs` (it started a server when it
 * should have refused) is killed, so the test fails instead of hanging.
 */
export async function runBounded(args: string[], env: Record<string, string>, timeoutMs = 10_000, target: Target = "bun") {
  if (target.endsWith("-binary")) await ensureBinary(target as "bun-binary" | "deno-binary");
  const dataDir = tempDir();
  const p = Bun.spawn([...command(target, dataDir), ...args], {
    env: baseEnv({ PAYFLUX_HOST: "127.0.0.1", PAYFLUX_PORT: "0", PAYFLUX_DATA_DIR: dataDir, ...env }),
    stdout: "pipe",
    stderr: "pipe",
    stdin: "ignore",
  });
  const timer = setTimeout(() => p.kill("SIGKILL"), timeoutMs);
  const [code, stdout, stderr] = await Promise.all([p.exited, new Response(p.stdout).text(), new Response(p.stderr).text()]);
  clearTimeout(timer);
  return { code, stdout, stderr };
}

/** Runs the CLI to completion (`binary`: dist/payflux, built beforehand with ensureBinary()). */
export function runCli(args: string[], env: Record<string, string> = {}, binary = false) {
  const r = Bun.spawnSync([...command(binary ? "bun-binary" : "bun"), ...args], { env: baseEnv(env), stdout: "pipe", stderr: "pipe" });
  return { code: r.exitCode, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

const builds = new Map<string, Promise<void>>();
/** Builds a binary once per test run, with the package's own script (`npm run build` or `npm run build:deno`). */
export function ensureBinary(target: "bun-binary" | "deno-binary" = "bun-binary"): Promise<void> {
  const script = target === "bun-binary" ? "build" : "build:deno";
  let built = builds.get(script);
  if (built === undefined) {
    built = (async () => {
      const p = Bun.spawn(["npm", "run", "--silent", script], { cwd: ROOT, stdout: "pipe", stderr: "pipe" });
      const code = await p.exited;
      if (code !== 0) throw new Error(`npm run ${script} failed: ${await new Response(p.stderr).text()}`);
    })();
    builds.set(script, built);
  }
  return built;
}

/** A valid payment event with a fresh event_id. */
export function event(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    event_type: "payment_failed",
    event_timestamp: "2026-11-22T08:00:00Z",
    event_id: crypto.randomUUID(),
    merchant_id_hash: "m_4f2a",
    payment_intent_id_hash: "pi_9c1d",
    processor: "stripe",
    failure_category: "card_declined",
    retry_count: 0,
    geo_bucket: "EU",
    amount_bucket: "100-500",
    system_source: "checkout-api",
    payment_method_bucket: "card",
    channel: "web",
    retry_result: "none",
    failure_origin: "issuer",
    ...overrides,
  };
}

export interface PostOptions {
  key?: string | null;
  contentType?: string | null;
  headers?: Record<string, string>;
}

/** POSTs `body` (JSON-encoded unless a string) with `Authorization: Bearer <key>` (KEY by default). */
export function post(server: Server, path: string, body: unknown, opts: PostOptions = {}): Promise<Response> {
  const headers: Record<string, string> = { ...opts.headers };
  const key = opts.key === undefined ? KEY : opts.key;
  if (key !== null) headers.authorization = `Bearer ${key}`;
  const ct = opts.contentType === undefined ? "application/json" : opts.contentType;
  if (ct !== null) headers["content-type"] = ct;
  return fetch(server.url + path, { method: "POST", headers, body: typeof body === "string" ? body : JSON.stringify(body) });
}

export const SINGLE = "/v1/events/payment_exhaust";
export const BATCH = "/v1/events/batch";

export async function metricsText(server: Server, token?: string): Promise<string> {
  const res = await fetch(server.url + "/metrics", token ? { headers: { authorization: `Bearer ${token}` } } : {});
  return res.text();
}

/** Value of one sample in a Prometheus exposition, e.g. metric(text, 'payflux_auth_denied_total{reason="invalid_key"}'). */
export function metric(text: string, series: string): number | undefined {
  for (const line of text.split("\n")) {
    if (line.startsWith(series + " ")) return Number(line.slice(series.length + 1));
  }
  return undefined;
}

/** All lines of all segment files in a data dir, parsed. */
/**
 * All records of all segment files in a data dir, parsed, with their framing
 * (the trailing "crc" member) checked and removed. A damaged line throws.
 */
export async function storedEvents(dataDir: string): Promise<Record<string, any>[]> {
  const { readdirSync, readFileSync } = await import("node:fs");
  return readdirSync(dataDir)
    .filter((n) => n.startsWith("segment-"))
    .sort()
    .flatMap((n) => {
      const buf = readFileSync(join(dataDir, n));
      const lines: Record<string, any>[] = [];
      let start = 0;
      for (let nl = buf.indexOf(10); nl >= 0; start = nl + 1, nl = buf.indexOf(10, start)) {
        const record = unframe(buf.subarray(start, nl));
        if (record === null) throw new Error(`damaged line in ${n} at byte ${start}`);
        lines.push(JSON.parse(record.toString("utf8")));
      }
      if (start !== buf.length) throw new Error(`${n} ends without a newline`);
      return lines;
    });
}

/** Opens a raw TCP connection: "connected", or the error code (ECONNREFUSED when nothing listens). */
export function tcpConnect(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    socket.setTimeout(5000, () => {
      socket.destroy();
      resolve("timeout");
    });
    socket.on("connect", () => {
      socket.destroy();
      resolve("connected");
    });
    socket.on("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

/** Polls /metrics (each on a fresh connection) until payflux_http_requests_in_flight reaches `n`. */
export async function waitInFlight(server: Server, n: number): Promise<void> {
  let last: number | undefined;
  for (let i = 0; i < 250; i++) {
    const res = await fetch(server.url + "/metrics", { headers: { connection: "close" } });
    last = metric(await res.text(), "payflux_http_requests_in_flight");
    if (last === n) return;
    await Bun.sleep(20);
  }
  throw new Error(`payflux_http_requests_in_flight never reached ${n} (last ${last})`);
}

/** A POST whose body sends the first half of `json` now and the rest when `release()` is called (`base`: another origin, e.g. https://; `init`: more fetch options, e.g. tls). */
export function slowPost(server: Server, json: string, opts: { base?: string; init?: RequestInit } = {}) {
  const enc = new TextEncoder();
  const half = Math.floor(json.length / 2);
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const body = new ReadableStream<Uint8Array>({
    async start(controller) {
      controller.enqueue(enc.encode(json.slice(0, half)));
      await gate;
      controller.enqueue(enc.encode(json.slice(half)));
      controller.close();
    },
  });
  const response = fetch((opts.base ?? server.url) + SINGLE, {
    method: "POST",
    headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
    body,
    duplex: "half",
    ...opts.init,
  } as RequestInit);
  return { response, release };
}

/** Polls `fn` until it returns something other than undefined/false (bounded by `timeoutMs`). */
export async function until<T>(what: string, fn: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined && v !== false) return v as T;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(10);
  }
}

/** A free TCP port on 127.0.0.1 (for a service the test starts itself, e.g. redis-server). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}
