/**
 * End to end with a real Prometheus (Debian package `prometheus`): two
 * instances of the real service (the compiled binary when the targets include
 * it) on free loopback ports, one forwarding to a real redis-server with a
 * consumer group, scraped every second through the shipped prometheus.yml
 * (instance A with PAYFLUX_METRICS_TOKEN through `credentials_file`, instance
 * B open) with the shipped alert and recording rules loaded. After known
 * traffic (good requests, duplicates, each denial reason, rate-limited
 * requests, a reload and a failed reload), every query of the runbook, of the
 * dashboard and of the old ops kit is asked through Prometheus's HTTP API and
 * must return the series and values the traffic implies; every metric a query
 * names must exist (a misspelt name fails). A and B run different keys: the
 * disagreement alert's expression returns both.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Redis } from "ioredis";
import { BATCH, E2E_TARGETS, event, post, SINGLE, startServer, stopAll, tempDir, until, type Server, type Target } from "./support/harness.ts";
import {
  ALERTS, dashboardQueries, metricNames, norm, OLD_KIT_QUERIES, PROMETHEUS_YML, RETIRED_METRIC, RULES, runbookQueries, startPrometheus, startRedis,
  stopOps, type Prometheus, type Sample,
} from "./support/ops.ts";

/** One target is enough here: the compiled binary when it is among the targets, as shipped. */
const TARGET: Target = E2E_TARGETS.includes("bun-binary") ? "bun-binary" : (E2E_TARGETS[0] ?? "bun");

const K1 = "prom-test-key-one-0123456789abcdef";
const K2 = "prom-test-key-two-0123456789abcdef";
const K3 = "prom-test-key-three-0123456789abcd";
const KR = "prom-test-key-revoked-0123456789ab";
const KB = "prom-test-key-instance-b-01234567";
const KG = "prom-test-key-client-globex-01234";
/** globex's not_after: 3 days from now, whole seconds. */
const EXPIRES_AT = Math.floor(Date.now() / 1000) + 3 * 86_400;
const WRONG = "prom-test-key-wrong-0123456789abc";
const TOKEN = "prom-test-metrics-token-0123456789";
const BURST = 20;

const clients = new Set<Redis>();
afterAll(async () => {
  for (const c of clients) c.disconnect();
  await stopAll();
  await stopOps();
});

let a: Server;
let b: Server;
let prom: Prometheus;
let IA = "";
let IB = "";
let startedAt = 0;
/** When Prometheus first had both targets. */
let scrapedFrom = 0;
const health: Record<string, { keys_fingerprint: string; config_fingerprint: string }> = {};

/** Counts the traffic below implies (instance A unless named). */
const DENIED = { missing_key: 2, invalid_key: 4, revoked_key: 12 };
const ACCEPTED_A = 8;
const ACCEPTED_B = 2;
const DUPLICATES = 2;
const MALFORMED = BURST;
const RATE_LIMITED = 5;
const DEDUP_MAX = 5;
const READ_BY_CONSUMER = 3;

function envText(vars: Record<string, string>): string {
  return Object.entries(vars).map(([k, v]) => `${k}=${v}\n`).join("");
}

describe(`a real Prometheus scraping the service (${TARGET})`, () => {
  let configFile = "";
  let baseVars: Record<string, string> = {};

  test("set-up: Redis with the consumer group, two instances, Prometheus from the shipped prometheus.yml and rules", async () => {
    startedAt = Date.now() / 1000;
    const redis = await startRedis();
    const admin = new Redis(redis.url, { lazyConnect: true });
    clients.add(admin);
    await admin.connect();
    await admin.xgroup("CREATE", "events_stream", "payment_consumers", "$", "MKSTREAM");

    const dir = tempDir("payflux-promtest-");
    configFile = join(dir, "a.env");
    baseVars = {
      PAYFLUX_API_KEYS: `${K1},${K2}`,
      PAYFLUX_REVOKED_KEYS: KR,
      PAYFLUX_INGEST_RPS: "0.001",
      PAYFLUX_INGEST_BURST: String(BURST),
      PAYFLUX_METRICS_TOKEN: TOKEN,
      PAYFLUX_FORWARD_REDIS_URL: redis.url,
      PAYFLUX_DEDUP_MAX_IDS: String(DEDUP_MAX),
    };
    writeFileSync(configFile, envText(baseVars), { mode: 0o600 });
    // B has one named client whose key retires itself in 3 days (PayFluxClientKeyExpiringSoon's series).
    const clientsFile = join(dir, "clients");
    writeFileSync(clientsFile, `globex sha256:${createHash("sha256").update(KG).digest("hex")} not_after=${new Date(EXPIRES_AT * 1000).toISOString()}\n`, { mode: 0o600 });
    [a, b] = await Promise.all([
      startServer({ target: TARGET, args: ["--config", configFile] }),
      startServer({ target: TARGET, env: { PAYFLUX_API_KEYS: KB, PAYFLUX_CLIENTS_FILE: clientsFile } }),
    ]);
    IA = `127.0.0.1:${a.port}`;
    IB = `127.0.0.1:${b.port}`;
    // A's /metrics needs the token: Prometheus can only scrape it through credentials_file.
    expect((await fetch(`${a.url}/metrics`)).status).toBe(401);

    const tokenFile = join(dir, "metrics-token");
    writeFileSync(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
    const config = Bun.YAML.parse(readFileSync(PROMETHEUS_YML, "utf8")) as any;
    config.global = { scrape_interval: "1s", scrape_timeout: "1s", evaluation_interval: "1s" };
    config.rule_files = [ALERTS, RULES];
    const open = config.scrape_configs.find((j: any) => j.authorization === undefined);
    const withToken = config.scrape_configs.find((j: any) => j.authorization?.credentials_file !== undefined);
    open.static_configs = [{ targets: [IB] }];
    withToken.static_configs = [{ targets: [IA] }];
    withToken.authorization.credentials_file = tokenFile;
    prom = await startPrometheus(config);

    // Both instances scraped, as one job "payflux" (the token job is relabeled), before any traffic.
    await until("both targets scraped", async () => {
      const up = await prom.query('up{job="payflux"} == 1');
      return up.length === 2 && (await prom.query("payflux_build_info")).length === 2;
    }, 30_000);
    scrapedFrom = Date.now();
  }, 90_000);

  test("traffic: good requests, duplicates, each denial reason, rate limiting, a reload and a failed reload", async () => {
    const events = Array.from({ length: ACCEPTED_A }, () => event());
    for (const ev of events.slice(0, 5)) expect((await post(a, SINGLE, ev, { key: K1 })).status).toBe(202);
    expect(await (await post(a, BATCH, events.slice(5), { key: K1 })).json()).toEqual({ accepted: 3, duplicates: 0 });
    // The dedup cap (5) forgot the three oldest ids; the two newest are still duplicates.
    for (const ev of events.slice(-DUPLICATES)) expect(await (await post(a, SINGLE, ev, { key: K1 })).json()).toEqual({ accepted: 0, duplicates: 1 });
    for (let i = 0; i < DENIED.missing_key; i++) expect((await post(a, SINGLE, event(), { key: null })).status).toBe(401);
    for (let i = 0; i < DENIED.invalid_key; i++) expect((await post(a, SINGLE, event(), { key: WRONG })).status).toBe(401);
    for (let i = 0; i < DENIED.revoked_key; i++) expect((await post(a, SINGLE, event(), { key: KR })).status).toBe(401);
    const statuses: number[] = [];
    for (let i = 0; i < MALFORMED + RATE_LIMITED; i++) statuses.push((await post(a, SINGLE, "{not json", { key: K2 })).status);
    expect(statuses).toEqual([...Array(MALFORMED).fill(400), ...Array(RATE_LIMITED).fill(429)]);
    for (let i = 0; i < ACCEPTED_B; i++) expect((await post(b, SINGLE, event(), { key: KB })).status).toBe(202);

    // A reload that adds K3, then one that fails.
    writeFileSync(configFile, envText({ ...baseVars, PAYFLUX_API_KEYS: `${K1},${K2},${K3}` }));
    a.signal("SIGHUP");
    const ok = await a.waitForLog((l) => l.msg === "config reloaded");
    expect([ok.keys_added, ok.keys_removed, ok.keys_revoked, ok.keys_unrevoked]).toEqual([1, 0, 0, 0]);
    writeFileSync(configFile, envText({ ...baseVars, PAYFLUX_INGEST_RPS: "fast" }));
    a.signal("SIGHUP");
    await a.waitForLog((l) => typeof l.msg === "string" && l.msg.startsWith("config reload failed"));

    // A consumer reads 3 of the 8 forwarded events and acknowledges none.
    const admin = [...clients][0]!;
    await until("events forwarded", async () => (await admin.xlen("events_stream")) === ACCEPTED_A, 15_000);
    const read = (await admin.xreadgroup("GROUP", "payment_consumers", "c1", "COUNT", READ_BY_CONSUMER, "STREAMS", "events_stream", ">")) as [string, unknown[]][];
    expect(read[0]![1].length).toBe(READ_BY_CONSUMER);

    for (const s of [a, b]) {
      const h = (await (await fetch(`${s.url}/health`)).json()) as any;
      health[s === a ? IA : IB] = h;
    }

    // At least 12 s of samples: increase() extrapolates by up to one scrape interval past the
    // last sample, so the counts below stay within a few percent of the exact traffic.
    await Bun.sleep(Math.max(0, scrapedFrom + 12_000 - Date.now()));
    // Prometheus has scraped the final state and the rules have evaluated on it.
    const total = (q: string) => prom.query(q).then((r) => r[0]?.value);
    await until("Prometheus has the traffic", async () =>
      (await total("sum(payflux_ingest_accepted_total)")) === ACCEPTED_A + ACCEPTED_B &&
      (await total("sum(payflux_auth_denied_total)")) === 18 &&
      (await total("sum(payflux_ingest_rejected_total)")) === MALFORMED + RATE_LIMITED &&
      (await total(`payflux_config_last_reload_successful{instance="${IA}"}`)) === 0 &&
      (await total('payflux_consumer_lag_messages{group="payment_consumers"}')) === READ_BY_CONSUMER &&
      (await total('payflux_consumer_group_lag_messages{group="payment_consumers"}')) === ACCEPTED_A - READ_BY_CONSUMER &&
      ((await total("sum(instance_reason:payflux_auth_denied:rate5m) * 300")) ?? 0) >= 18 * 0.999 &&
      ((await total("sum(instance:payflux_ingest_accepted:rate5m) * 300")) ?? 0) >= (ACCEPTED_A + ACCEPTED_B) * 0.999,
    30_000);
  }, 90_000);

  // ------------------------------------------------------------ expectations

  const ALL_REJECT_REASONS = ["rate_limited", "malformed_json", "incomplete_body", "malformed_encoding", "payload_too_large", "batch_too_large", "empty_batch", "unsupported_media_type", "validation_failed", "storage_unavailable", "storage_full"];
  /** An increase() over a window that holds the whole series: the exact count, or a little more (Prometheus extrapolates to the window's end, at most ~1 s of 12 s or more). */
  const approx = (what: string, value: number | undefined, exact: number) => {
    expect([what, value !== undefined && value >= exact * 0.999 && value <= exact * 1.25 + 1e-9, value]).toEqual([what, true, value]);
  };
  const perSecond = (what: string, value: number | undefined, exact: number) => approx(what, value === undefined ? undefined : value * 300, exact);
  const by = (r: Sample[], label: string) => Object.fromEntries(r.map((s) => [s.metric[label] ?? "", s.value]));
  const one = (r: Sample[]) => {
    expect(r.length).toBe(1);
    return r[0]!.value;
  };
  const empty = (r: Sample[]) => expect(r).toEqual([]);
  const instances = (r: Sample[]) => r.map((s) => s.metric.instance).sort();
  const onA = (r: Sample[]) => {
    expect(instances(r)).toEqual([IA]);
    return r[0]!.value;
  };
  const both = (r: Sample[]) => {
    expect(instances(r)).toEqual([IA, IB].sort());
    return Object.fromEntries(r.map((s) => [s.metric.instance === IA ? "A" : "B", s.value]));
  };
  const deniedByReason = (r: Sample[]) => {
    const v = by(r, "reason");
    expect(Object.keys(v).sort()).toEqual(Object.keys(DENIED).sort());
    for (const [reason, n] of Object.entries(DENIED)) approx(reason, v[reason], n);
  };
  const rejectedByReason = (r: Sample[], scale = 1) => {
    const v = by(r, "reason");
    expect(Object.keys(v).sort()).toEqual([...ALL_REJECT_REASONS].sort());
    approx("malformed_json", v.malformed_json! * scale, MALFORMED);
    approx("rate_limited", v.rate_limited! * scale, RATE_LIMITED);
    for (const reason of ALL_REJECT_REASONS.filter((x) => x !== "malformed_json" && x !== "rate_limited")) expect([reason, v[reason]]).toEqual([reason, 0]);
  };
  const disagree = (r: Sample[]) => {
    expect(instances(r)).toEqual([IA, IB].sort());
    for (const s of r) {
      expect(s.value).toBe(2);
      expect(s.metric.job).toBe("payflux");
      expect(s.metric.keys_fingerprint).toBe(health[s.metric.instance!]!.keys_fingerprint);
    }
    expect(r[0]!.metric.keys_fingerprint).not.toBe(r[1]!.metric.keys_fingerprint);
  };
  const finitePositive = (r: Sample[]) => {
    for (const s of r) expect([s.metric.instance, Number.isFinite(s.value) && s.value > 0 && s.value <= 5]).toEqual([s.metric.instance, true]);
  };
  const rateLimitedByEndpoint = (r: Sample[], scale: number) => {
    for (const s of r) {
      if (s.metric.instance === IA && s.metric.endpoint === SINGLE) approx("429s", s.value * scale, RATE_LIMITED);
      else expect([s.metric, s.value]).toEqual([s.metric, 0]);
    }
  };

  const I = '{instance=~".+"}';
  const EXPECT: Record<string, (r: Sample[]) => void> = {
    // --- the runbook
    "sum(increase(payflux_auth_denied_total[5m]))": (r) => approx("denials", one(r), 18),
    "sum by (reason) (increase(payflux_auth_denied_total[5m]))": deniedByReason,
    "rate(payflux_auth_denied_total[1m])": (r) => {
      expect(r.length).toBe(6);
      for (const s of r) expect([s.metric.instance, s.metric.reason, s.value > 0]).toEqual([s.metric.instance, s.metric.reason, s.metric.instance === IA]);
    },
    "sum(increase(payflux_auth_denied_total[5m])) > 50": empty,
    "topk(1, sum by (reason) (rate(payflux_auth_denied_total[5m])))": (r) => {
      expect(r.map((s) => s.metric.reason)).toEqual(["revoked_key"]);
      perSecond("revoked", r[0]!.value, DENIED.revoked_key);
    },
    "sum by (endpoint) (increase(payflux_ingest_rate_limited_total[5m]))": (r) => {
      const v = by(r, "endpoint");
      expect(Object.keys(v).sort()).toEqual([BATCH, SINGLE]);
      approx("429s", v[SINGLE], RATE_LIMITED);
      expect(v[BATCH]).toBe(0);
    },
    "sum by (reason) (increase(payflux_ingest_rejected_total[5m]))": (r) => rejectedByReason(r),
    "sum(increase(payflux_ingest_accepted_total[5m]))": (r) => approx("accepted", one(r), ACCEPTED_A + ACCEPTED_B),
    "sum(increase(payflux_ingest_duplicate_total[5m]))": (r) => approx("duplicates", one(r), DUPLICATES),
    "histogram_quantile(0.99, sum by (le) (rate(payflux_ingest_duration_seconds_bucket[5m])))": (r) => (one(r), finitePositive(r)),
    // --- the alerts (as the runbook quotes them): what this traffic makes them return
    "rate(payflux_auth_denied_total[5m]) > 0.1": empty,
    "sum(increase(payflux_auth_denied_total[1m])) > 100": empty,
    'increase(payflux_auth_denied_total{reason="revoked_key"}[15m]) > 10': (r) => approx("revoked", onA(r), DENIED.revoked_key),
    'up{job="payflux"} == 0': empty,
    "(count by (job) (count by (job, keys_fingerprint) (payflux_config_info)) > 1) * on (job) group_right () payflux_config_info": disagree,
    "payflux_config_last_reload_successful == 0": (r) => expect(onA(r)).toBe(0),
    "sum by (job, instance) (rate(payflux_ingest_rate_limited_total[5m])) > 5": empty,
    'sum by (job, instance, reason) (rate(payflux_ingest_rejected_total{reason!="rate_limited"}[5m])) > 1': empty,
    'sum by (job, instance) (rate(payflux_http_requests_total{status=~"5.."}[5m])) / sum by (job, instance) (rate(payflux_http_requests_total[5m])) > 0.05': empty,
    // A slow disk may legitimately push one request past 0.5 s: only the series' shape is certain.
    "histogram_quantile(0.99, sum by (le, instance) (rate(payflux_ingest_duration_seconds_bucket[5m]))) > 0.5": (r) => {
      for (const s of r) expect(s.value).toBeGreaterThan(0.5);
    },
    "payflux_storage_bytes / payflux_storage_max_bytes > 0.9": empty,
    "increase(payflux_dedup_evicted_total[15m]) > 0": (r) => approx("evicted", onA(r), ACCEPTED_A - DEDUP_MAX),
    "payflux_forward_up == 0": empty,
    "payflux_forward_lag_events > 10000": empty,
    "payflux_consumer_lag_messages > 1000": empty,
    'count by (keys_fingerprint) (payflux_config_info{job="payflux"})': (r) => {
      expect(r.map((s) => s.value)).toEqual([1, 1]);
      expect(r.map((s) => s.metric.keys_fingerprint).sort()).toEqual([health[IA]!.keys_fingerprint, health[IB]!.keys_fingerprint].sort());
    },
    "sum by (instance, endpoint) (rate(payflux_ingest_rate_limited_total[5m]))": (r) => (expect(r.length).toBe(4), rateLimitedByEndpoint(r, 300)),
    "payflux_storage_bytes / payflux_storage_max_bytes": (r) => {
      for (const v of Object.values(both(r))) expect(v > 0 && v < 0.01).toBe(true);
    },
    payflux_forward_up: (r) => expect(onA(r)).toBe(1),
    payflux_forward_lag_events: (r) => expect(onA(r)).toBe(0),
    "max by (group) (payflux_consumer_lag_messages)": (r) => expect(by(r, "group")).toEqual({ payment_consumers: READ_BY_CONSUMER }),
    // --- the dashboard ($instance matching every instance)
    [`sum by (reason) (instance_reason:payflux_auth_denied:rate5m${I})`]: (r) => deniedByReason(r.map((s) => ({ ...s, value: s.value * 300 }))),
    [`sum(increase(payflux_auth_denied_total${I}[5m]))`]: (r) => approx("denials", one(r), 18),
    [`topk(1, sum by (reason) (rate(payflux_auth_denied_total${I}[5m])))`]: (r) => expect(r.map((s) => s.metric.reason)).toEqual(["revoked_key"]),
    [`sum(instance:payflux_ingest_accepted:rate5m${I})`]: (r) => perSecond("accepted", one(r), ACCEPTED_A + ACCEPTED_B),
    'sum(instance_reason:payflux_ingest_rejected:rate5m{instance=~".+",reason!="rate_limited"})': (r) => perSecond("rejected", one(r), MALFORMED),
    [`sum(instance:payflux_ingest_rate_limited:rate5m${I})`]: (r) => perSecond("rate limited", one(r), RATE_LIMITED),
    [`sum(instance:payflux_ingest_duplicate:rate5m${I})`]: (r) => perSecond("duplicates", one(r), DUPLICATES),
    [`sum by (reason) (instance_reason:payflux_ingest_rejected:rate5m${I})`]: (r) => rejectedByReason(r, 300),
    [`instance:payflux_ingest_duration_seconds:p50_5m${I}`]: (r) => (both(r), finitePositive(r)),
    [`instance:payflux_ingest_duration_seconds:p99_5m${I}`]: (r) => (both(r), finitePositive(r)),
    [`sum by (instance) (payflux_http_requests_in_flight${I})`]: (r) => {
      for (const v of Object.values(both(r))) expect(v >= 0 && v <= 2).toBe(true);
    },
    [`instance:payflux_http_requests_5xx:ratio_rate5m${I}`]: (r) => expect(both(r)).toEqual({ A: 0, B: 0 }),
    [`payflux_config_last_reload_successful${I}`]: (r) => expect(both(r)).toEqual({ A: 0, B: 1 }),
    [`payflux_config_last_reload_success_timestamp_seconds${I} * 1000`]: (r) => {
      for (const v of Object.values(both(r))) expect(v >= (startedAt - 60) * 1000 && v <= Date.now()).toBe(true);
    },
    [`sum by (result) (increase(payflux_config_reloads_total${I}[1h]))`]: (r) => {
      const v = by(r, "result");
      approx("reload success", v.success, 1);
      approx("reload failure", v.failure, 1);
    },
    [`sum by (instance, state) (payflux_api_keys${I})`]: (r) => {
      expect(Object.fromEntries(r.map((s) => [`${s.metric.instance === IA ? "A" : "B"} ${s.metric.state}`, s.value]))).toEqual({
        "A active": 3, "A expired": 0, "A revoked": 1, "B active": 2, "B expired": 0, "B revoked": 0,
      });
    },
    [`payflux_config_info${I}`]: (r) => {
      expect(both(r)).toEqual({ A: 1, B: 1 });
      for (const s of r) expect(s.metric.keys_fingerprint).toBe(health[s.metric.instance!]!.keys_fingerprint);
    },
    "count by (job) (count by (job, keys_fingerprint) (payflux_config_info))": (r) => expect(by(r, "job")).toEqual({ payflux: 2 }),
    [`payflux_storage_bytes${I}`]: (r) => {
      for (const v of Object.values(both(r))) expect(v).toBeGreaterThan(0);
    },
    [`payflux_storage_max_bytes${I}`]: (r) => expect(both(r)).toEqual({ A: 10 * 1024 ** 3, B: 10 * 1024 ** 3 }),
    [`payflux_dedup_ids${I}`]: (r) => expect(both(r)).toEqual({ A: DEDUP_MAX, B: ACCEPTED_B }),
    [`sum(increase(payflux_dedup_evicted_total${I}[1h]))`]: (r) => approx("evicted", one(r), ACCEPTED_A - DEDUP_MAX),
    [`payflux_forward_up${I}`]: (r) => expect(onA(r)).toBe(1),
    [`payflux_forward_lag_events${I}`]: (r) => expect(onA(r)).toBe(0),
    [`max by (group) (payflux_consumer_lag_messages${I})`]: (r) => expect(by(r, "group")).toEqual({ payment_consumers: READ_BY_CONSUMER }),
    [`max by (group) (payflux_consumer_group_lag_messages${I})`]: (r) => expect(by(r, "group")).toEqual({ payment_consumers: ACCEPTED_A - READ_BY_CONSUMER }),
    'up{job="payflux",instance=~".+"}': (r) => expect(both(r)).toEqual({ A: 1, B: 1 }),
    'scrape_duration_seconds{job="payflux",instance=~".+"}': (r) => {
      for (const v of Object.values(both(r))) expect(v).toBeGreaterThan(0);
    },
    // --- the old ops kit
    "sum(rate(payflux_ingest_rate_limited_total[5m])) > 5": empty,
    "rate(payflux_ingest_rejected_total[5m]) > 1": empty,
    'increase(payflux_auth_denied_total{reason="revoked_key"}[5m]) > 5': (r) => approx("revoked", onA(r), DENIED.revoked_key),
    payflux_consumer_lag_messages: (r) => {
      expect(r.map((s) => s.metric)).toEqual([{ __name__: "payflux_consumer_lag_messages", group: "payment_consumers", instance: IA, job: "payflux" }]);
      expect(r[0]!.value).toBe(READ_BY_CONSUMER);
    },
    'up{job="payflux"}': (r) => expect(both(r)).toEqual({ A: 1, B: 1 }),
    // Both instances speak plain HTTP: they export no certificate expiry, so the alert cannot fire on them
    // (its value on an HTTPS instance is checked in test/tls.test.ts, its threshold by promtool).
    "payflux_tls_cert_expiry_timestamp_seconds - time() < 14 * 86400": empty,
    "(min by (client) (payflux_client_key_expiry_timestamp_seconds) - time()) < 7 * 86400 > 0": (r) => {
      expect(r.map((s) => s.metric)).toEqual([{ client: "globex" }]);
      expect(Math.abs(r[0]!.value - (EXPIRES_AT - Date.now() / 1000))).toBeLessThan(120);
    },
    "rate(payflux_ingest_rate_limited_total[5m])": (r) => (expect(r.length).toBe(4), rateLimitedByEndpoint(r, 300)),
    "rate(payflux_ingest_rejected_total[5m])": (r) => {
      expect(r.length).toBe(2 * ALL_REJECT_REASONS.length);
      rejectedByReason(r.filter((s) => s.metric.instance === IA), 300);
      for (const s of r.filter((x) => x.metric.instance === IB)) expect(s.value).toBe(0);
    },
    'scrape_duration_seconds{job="payflux"}': (r) => {
      for (const v of Object.values(both(r))) expect(v).toBeGreaterThan(0);
    },
  };

  /** Metrics only an HTTPS instance exports. */
  const ABSENT_ON_PLAIN_HTTP = new Set(["payflux_tls_cert_expiry_timestamp_seconds"]);

  /** Asks Prometheus `q`: it parses, every metric it names has series, and the result is what the traffic implies. */
  async function check(q: string): Promise<void> {
    const expectation = EXPECT[q];
    expect([q, expectation === undefined]).toEqual([q, false]);
    for (const name of metricNames(q)) {
      const series = await prom.query(`count({__name__="${name}"})`);
      expect([q, name, series.length]).toEqual([q, name, ABSENT_ON_PLAIN_HTTP.has(name) ? 0 : 1]);
    }
    const result = await prom.query(q);
    try {
      expectation!(result);
    } catch (err) {
      throw new Error(`query ${q}\nreturned ${JSON.stringify(result)}\n${(err as Error).message}`);
    }
  }

  test("every runbook query answers with what the traffic implies", async () => {
    const queries = runbookQueries();
    expect(queries.length).toBeGreaterThan(25);
    for (const q of queries) await check(q);
  }, 60_000);

  test("every dashboard panel query answers with what the traffic implies", async () => {
    const queries = dashboardQueries();
    expect(queries.length).toBeGreaterThan(25);
    for (const q of queries) await check(q);
  }, 60_000);

  test(`every query of the old ops kit answers, except ${RETIRED_METRIC} (named in the runbook with its replacement)`, async () => {
    for (const q of OLD_KIT_QUERIES.map(norm)) {
      if (q.includes(RETIRED_METRIC)) {
        expect(await prom.query(q)).toEqual([]);
        continue;
      }
      await check(q);
    }
  }, 60_000);

  test("a misspelt metric fails the check", async () => {
    EXPECT["sum(increase(payflux_auth_denied_totl[5m]))"] = () => {};
    await expect(check("sum(increase(payflux_auth_denied_totl[5m]))")).rejects.toThrow();
  });

  test("Prometheus loaded every rule without evaluation errors, and the alerts this traffic triggers are pending or firing", async () => {
    const groups = (await prom.api("/api/v1/rules")).groups as { name: string; rules: { name: string; health: string; lastError?: string }[] }[];
    const rules = groups.flatMap((g) => g.rules);
    expect(rules.length).toBeGreaterThan(20);
    expect(rules.filter((r) => r.health !== "ok").map((r) => [r.name, r.health, r.lastError])).toEqual([]);
    const alerts = (await prom.api("/api/v1/alerts")).alerts as { labels: Record<string, string>; state: string }[];
    const active = (name: string) => alerts.filter((x) => x.labels.alertname === name).map((x) => x.labels.instance).sort();
    expect(active("PayFluxKeysDisagree")).toEqual([IA, IB].sort());
    expect(active("PayFluxConfigReloadFailed")).toEqual([IA]);
    expect(active("RevokedKeyStillInUse")).toEqual([IA]);
    expect(active("PayFluxDedupEvictingEarly")).toEqual([IA]);
    expect(active("PayFluxInstanceDown")).toEqual([]);
    expect(active("PayFluxForwarderDown")).toEqual([]);
  });
});
