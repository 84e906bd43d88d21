/**
 * Helpers for the ops-kit tests: a real redis-server and a real Prometheus
 * (Debian packages) on free loopback ports, Prometheus's HTTP API, the PromQL
 * of the runbook and the dashboard, and the old ops kit's queries.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { freePort, ROOT, tempDir } from "./harness.ts";

export const DEPLOY = join(ROOT, "deploy");
export const ALERTS = join(DEPLOY, "prometheus", "alerts.yml");
export const RULES = join(DEPLOY, "prometheus", "rules.yml");
export const PROMETHEUS_YML = join(DEPLOY, "prometheus", "prometheus.yml");
export const ALERTS_TEST = join(DEPLOY, "prometheus", "tests", "alerts.test.yml");
export const RULES_TEST = join(DEPLOY, "prometheus", "tests", "rules.test.yml");
export const DASHBOARD = join(DEPLOY, "grafana", "payflux-overview.json");
export const RUNBOOK = join(ROOT, "docs", "runbook.md");
/** The old service's kit, outside the repository (reference only, never copied in). */
export const OLD_KIT_DIR = join(ROOT, "..", "shared", "reference", "old-ops-kit");

/**
 * Every PromQL query of the old ops kit (its alerts.yml, the query templated
 * in PayFluxAuthDeniedSpike's description, and payflux-ops.json's panels).
 * Only the queries are listed here; the kit itself stays outside the repository.
 */
export const OLD_KIT_QUERIES = [
  'up{job="payflux"} == 0',
  "payflux_consumer_lag_messages > 1000",
  "sum(rate(payflux_ingest_rate_limited_total[5m])) > 5",
  "rate(payflux_ingest_rejected_total[5m]) > 1",
  "increase(payflux_warnings_suppressed_total[5m]) > 0",
  "sum(increase(payflux_auth_denied_total[5m])) > 50",
  "sum by (reason) (increase(payflux_auth_denied_total[5m]))",
  'increase(payflux_auth_denied_total{reason="revoked_key"}[5m]) > 5',
  "payflux_consumer_lag_messages",
  'up{job="payflux"}',
  "rate(payflux_ingest_rate_limited_total[5m])",
  "rate(payflux_ingest_rejected_total[5m])",
  "increase(payflux_warnings_suppressed_total[5m])",
  'scrape_duration_seconds{job="payflux"}',
];
/** The one old metric this service does not have; the runbook names its replacement. */
export const RETIRED_METRIC = "payflux_warnings_suppressed_total";

export const norm = (q: string) => q.replace(/\s+/g, " ").trim();

/** ```promql blocks of the runbook, one query each. */
export function runbookQueries(): string[] {
  const text = readFileSync(RUNBOOK, "utf8");
  return [...text.matchAll(/```promql\n([\s\S]*?)```/g)].map((m) => norm(m[1]!));
}

export interface Panel {
  id: number;
  type: string;
  title: string;
  datasource?: unknown;
  targets?: { refId: string; expr?: string; datasource?: unknown }[];
}

export function dashboard(): { panels: Panel[]; [k: string]: any } {
  return JSON.parse(readFileSync(DASHBOARD, "utf8"));
}

/** Every panel query of the dashboard with Grafana's `$instance` replaced by a regex that matches all instances. */
export function dashboardQueries(): string[] {
  return dashboard()
    .panels.filter((p) => p.type !== "row")
    .flatMap((p) => (p.targets ?? []).map((t) => norm(substituteVariables(t.expr ?? ""))));
}

export function substituteVariables(expr: string): string {
  return expr.replaceAll("$instance", ".+");
}

const PROMQL_WORDS = new Set([
  "sum", "min", "max", "avg", "count", "topk", "bottomk", "by", "without", "on", "ignoring", "group_left", "group_right",
  "rate", "irate", "increase", "histogram_quantile", "and", "or", "unless", "bool", "offset", "time", "absent", "count_values",
  "quantile", "stddev", "label_replace", "delta", "deriv", "abs", "clamp_min", "clamp_max", "le", "inf", "nan",
]);

/** Metric names a query selects (label matchers, strings, ranges and grouping lists removed). */
export function metricNames(query: string): string[] {
  const stripped = query
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, " ")
    .replace(/\[[^\]]*\]/g, " ")
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ");
  // An identifier followed by "(" is a function or aggregation, not a metric.
  const names = [...stripped.matchAll(/(?<![\w:.])([a-zA-Z_:][\w:]*)(\s*\()?/g)].filter((m) => m[2] === undefined).map((m) => m[1]!);
  return [...new Set(names.filter((n) => !PROMQL_WORDS.has(n.toLowerCase()) && !/^\d/.test(n)))];
}

// ---------------------------------------------------------------- processes

type Proc = ReturnType<typeof Bun.spawn>;
const procs = new Set<Proc>();

/** Kills the redis-server and prometheus processes this file started. */
export async function stopOps(): Promise<void> {
  for (const p of procs) p.kill("SIGKILL");
  await Promise.all([...procs].map((p) => p.exited));
  procs.clear();
}

function binary(name: string, pkg: string): string {
  const path = existsSync(`/usr/bin/${name}`) ? `/usr/bin/${name}` : Bun.which(name);
  if (path === null) throw new Error(`${name} is not installed: run \`apt-get install ${pkg}\`; this test must not be skipped`);
  return path;
}

export const PROMTOOL = () => binary("promtool", "prometheus");

/** Runs promtool with `args`; returns its exit code and output. */
export async function promtool(args: string[], cwd?: string): Promise<{ code: number; output: string }> {
  const p = Bun.spawn([PROMTOOL(), ...args], { cwd, stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => p.kill("SIGKILL"), 60_000);
  const [code, out, err] = await Promise.all([p.exited, new Response(p.stdout).text(), new Response(p.stderr).text()]);
  clearTimeout(timer);
  return { code, output: out + err };
}

function answers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect(port, "127.0.0.1");
    const done = (ok: boolean) => {
      sock.destroy();
      resolve(ok);
    };
    sock.once("error", () => done(false));
    sock.once("connect", () => sock.write("PING\r\n"));
    sock.once("data", () => done(true));
    setTimeout(() => done(false), 500);
  });
}

/** A throw-away redis-server on a free loopback port, without persistence. */
export async function startRedis(): Promise<{ port: number; url: string }> {
  const port = await freePort();
  const proc = Bun.spawn([binary("redis-server", "redis-server"), "--save", "", "--appendonly", "no", "--port", String(port), "--bind", "127.0.0.1"], {
    stdout: "pipe",
    stderr: "pipe",
    stdin: "ignore",
  });
  procs.add(proc);
  const deadline = Date.now() + 10_000;
  while (!(await answers(port))) {
    if (proc.exitCode !== null) throw new Error(`redis-server exited with ${proc.exitCode}`);
    if (Date.now() > deadline) throw new Error(`redis-server on port ${port} did not answer`);
    await Bun.sleep(20);
  }
  return { port, url: `redis://127.0.0.1:${port}` };
}

export interface Prometheus {
  url: string;
  query: (q: string) => Promise<Sample[]>;
  api: (path: string) => Promise<any>;
  logs: () => string;
}
export interface Sample {
  metric: Record<string, string>;
  value: number;
}

/**
 * Starts a real Prometheus with `config` (an object, written as YAML's JSON
 * subset) on a free loopback port with its own temporary storage, and waits
 * until it is ready.
 */
export async function startPrometheus(config: unknown): Promise<Prometheus> {
  const dir = tempDir("payflux-prom-");
  const data = join(dir, "data");
  mkdirSync(data);
  const file = join(dir, "prometheus.yml");
  writeFileSync(file, JSON.stringify(config, null, 2));
  const port = await freePort();
  const proc = Bun.spawn(
    [
      binary("prometheus", "prometheus"),
      `--config.file=${file}`,
      `--storage.tsdb.path=${data}`,
      `--web.listen-address=127.0.0.1:${port}`,
      "--storage.tsdb.retention.time=1h",
      "--log.level=warn",
    ],
    { stdout: "pipe", stderr: "pipe", stdin: "ignore" },
  );
  procs.add(proc);
  let stderr = "";
  (async () => {
    const dec = new TextDecoder();
    for await (const chunk of proc.stderr as unknown as AsyncIterable<Uint8Array>) stderr += dec.decode(chunk, { stream: true });
  })();
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (proc.exitCode !== null) throw new Error(`prometheus exited with ${proc.exitCode}:\n${stderr}`);
    const ok = await fetch(`${url}/-/ready`).then((r) => r.ok, () => false);
    if (ok) break;
    if (Date.now() > deadline) throw new Error(`prometheus did not become ready:\n${stderr}`);
    await Bun.sleep(100);
  }
  const api = async (path: string) => {
    const res = await fetch(url + path);
    const body = (await res.json()) as { status: string; data: any; error?: string };
    if (body.status !== "success") throw new Error(`${path}: ${res.status} ${body.error}`);
    return body.data;
  };
  const query = async (q: string): Promise<Sample[]> => {
    const data = await api(`/api/v1/query?query=${encodeURIComponent(q)}`);
    if (data.resultType === "scalar") return [{ metric: {}, value: Number(data.result[1]) }];
    return (data.result as { metric: Record<string, string>; value: [number, string] }[]).map((r) => ({ metric: r.metric, value: Number(r.value[1]) }));
  };
  return { url, query, api, logs: () => stderr };
}
