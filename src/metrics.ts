import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import { ALLOW, INGEST_ROUTES } from "./routes.ts";
import { DENIAL_REASONS, OTHER_CLIENT, type KeyCounts, type KeyRing } from "./auth.ts";
import { keysFingerprintOf, type Config } from "./config.ts";
import { RUNTIME, VERSION } from "./version.ts";

/** The `route` label of any path that is not one of src/routes.ts (bounded cardinality). */
export const UNMATCHED_ROUTE = "unmatched";

/** Why an authenticated ingest request was refused; each is also the problem `code` of its response. */
export const REJECT_REASONS = [
  "rate_limited",
  "malformed_json",
  "incomplete_body",
  "malformed_encoding",
  "payload_too_large",
  "batch_too_large",
  "empty_batch",
  "unsupported_media_type",
  "validation_failed",
  "storage_unavailable",
  "storage_full",
] as const;
export type RejectReason = (typeof REJECT_REASONS)[number];

/** Problem code (and log key) of a 429 from the failed-login limit (PAYFLUX_AUTH_FAIL_*). */
export const AUTH_THROTTLED = "auth_throttled";

const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

export type Metrics = ReturnType<typeof createMetrics>;

/** Values read at scrape time from parts created after the metrics. */
export interface MetricSources {
  storage: () => { bytes: number; segments: number };
  dedupIds: () => number;
  /** Key counts by state now (expired keys change state with the clock, not on reload). */
  keyCounts: () => KeyCounts;
  /** The config in force (its keys_fingerprint and storage cap). */
  config: () => Config | null;
}

export function createMetrics() {
  const registry = new Registry();
  const sources: MetricSources = {
    storage: () => ({ bytes: 0, segments: 0 }),
    dedupIds: () => 0,
    keyCounts: () => ({ active: 0, revoked: 0, expired: 0, expiringSoon: 0 }),
    config: () => null,
  };
  const m = {
    registry,
    sources,
    storageBytes: new Gauge({
      name: "payflux_storage_bytes",
      help: "Bytes of the event log on disk",
      registers: [registry],
      collect() {
        this.set(sources.storage().bytes);
      },
    }),
    storageMaxBytes: new Gauge({
      name: "payflux_storage_max_bytes",
      help: "Cap of the event log on disk (PAYFLUX_STORAGE_MAX_BYTES); past it ingest answers 503 storage_full",
      registers: [registry],
      collect() {
        const config = sources.config();
        if (config !== null) this.set(config.storageMaxBytes);
      },
    }),
    storageSegments: new Gauge({
      name: "payflux_storage_segments",
      help: "Segment files of the event log",
      registers: [registry],
      collect() {
        this.set(sources.storage().segments);
      },
    }),
    recoveredTruncations: new Counter({
      name: "payflux_storage_recovered_truncations_total",
      help: "Torn tails cut off the event log at start-up (a crash mid-write)",
      registers: [registry],
    }),
    flushDuration: new Histogram({
      name: "payflux_storage_flush_duration_seconds",
      help: "Time of one group commit: its durable (O_DSYNC) write",
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers: [registry],
    }),
    dedupIds: new Gauge({
      name: "payflux_dedup_ids",
      help: "Event ids remembered for duplicate detection",
      registers: [registry],
      collect() {
        this.set(sources.dedupIds());
      },
    }),
    dedupEvicted: new Counter({
      name: "payflux_dedup_evicted_total",
      help: "Event ids forgotten before their window ended because PAYFLUX_DEDUP_MAX_IDS was reached",
      registers: [registry],
    }),
    authDenied: new Counter({
      name: "payflux_auth_denied_total",
      help: "Ingest requests denied by authentication, by reason",
      labelNames: ["reason"] as const,
      registers: [registry],
    }),
    authThrottled: new Counter({
      name: "payflux_auth_throttled_total",
      help: "Ingest requests refused with 429 auth_throttled before authentication: their address had too many failed authentications (PAYFLUX_AUTH_FAIL_RPS/BURST)",
      registers: [registry],
    }),
    accepted: new Counter({
      name: "payflux_ingest_accepted_total",
      help: "Events stored durably (duplicates not included)",
      registers: [registry],
    }),
    rejected: new Counter({
      name: "payflux_ingest_rejected_total",
      help: "Authenticated ingest requests refused, by reason (rate limits included)",
      labelNames: ["reason"] as const,
      registers: [registry],
    }),
    rateLimited: new Counter({
      name: "payflux_ingest_rate_limited_total",
      help: "Ingest requests refused with 429 by the per-key rate limit, by route",
      labelNames: ["endpoint"] as const,
      registers: [registry],
    }),
    duplicates: new Counter({
      name: "payflux_ingest_duplicate_total",
      help: "Events not stored again because their event_id was seen within the dedup window",
      registers: [registry],
    }),
    ingestDuration: new Histogram({
      name: "payflux_ingest_duration_seconds",
      help: "Time to handle an ingest request, durable write included",
      buckets: LATENCY_BUCKETS,
      registers: [registry],
    }),
    httpRequests: new Counter({
      name: "payflux_http_requests_total",
      help: "HTTP requests by method, route template and status",
      labelNames: ["method", "route", "status"] as const,
      registers: [registry],
    }),
    httpDuration: new Histogram({
      name: "payflux_http_request_duration_seconds",
      help: "HTTP request duration by method and route template",
      labelNames: ["method", "route"] as const,
      buckets: LATENCY_BUCKETS,
      registers: [registry],
    }),
    inFlight: new Gauge({
      name: "payflux_http_requests_in_flight",
      help: "HTTP requests being handled now",
      registers: [registry],
    }),
    connectionsOpen: new Gauge({
      name: "payflux_http_connections_open",
      help: "Client connections open now",
      registers: [registry],
    }),
    connectionsRefused: new Counter({
      name: "payflux_http_connections_refused_total",
      help: "Client connections closed at accept: over PAYFLUX_MAX_CONNECTIONS_PER_IP (per_ip) or PAYFLUX_MAX_CONNECTIONS (total)",
      labelNames: ["reason"] as const,
      registers: [registry],
    }),
    apiKeys: new Gauge({
      name: "payflux_api_keys",
      help: "Configured API keys by state (expired: past the client's not_after)",
      labelNames: ["state"] as const,
      registers: [registry],
      collect() {
        const c = sources.keyCounts();
        for (const state of KEY_STATES) this.set({ state }, c[state]);
      },
    }),
    clientKeyExpiry: new Gauge({
      name: "payflux_client_key_expiry_timestamp_seconds",
      help: "Unix time of a named client's not_after (clients file), for clients that are not revoked",
      labelNames: ["client"] as const,
      registers: [registry],
    }),
    /** Labelled children of clientRequests by "client outcome", cached (prom-client hashes the label object on every call otherwise). */
    clientCounters: new Map<string, { inc(n?: number): void }>(),
    clientRequests: new Counter({
      name: "payflux_client_requests_total",
      help: "Ingest requests of named clients by outcome (PAYFLUX_METRICS_PER_CLIENT=true; past the cap and env keys: client=\"other\")",
      labelNames: ["client", "outcome"] as const,
      registers: [registry],
    }),
    reloads: new Counter({
      name: "payflux_config_reloads_total",
      help: "Config reloads (SIGHUP) by result",
      labelNames: ["result"] as const,
      registers: [registry],
    }),
    lastReloadSuccessful: new Gauge({
      name: "payflux_config_last_reload_successful",
      help: "1 if the last config reload succeeded (or none was tried), 0 if it failed",
      registers: [registry],
    }),
    lastReloadSuccessTime: new Gauge({
      name: "payflux_config_last_reload_success_timestamp_seconds",
      help: "Unix time of the last config load that succeeded (start-up counts)",
      registers: [registry],
    }),
    forwardEvents: new Counter({
      name: "payflux_forward_events_total",
      help: "Events sent to the Redis stream by result (failure: an attempt that failed; the events are retried)",
      labelNames: ["result"] as const,
      registers: [registry],
    }),
    forwardLag: new Gauge({
      name: "payflux_forward_lag_events",
      help: "Events durable in the local log that Redis has not acknowledged yet",
      registers: [registry],
    }),
    forwardLastSuccess: new Gauge({
      name: "payflux_forward_last_success_timestamp_seconds",
      help: "Unix time of the last batch Redis acknowledged",
      registers: [registry],
    }),
    forwardUp: new Gauge({
      name: "payflux_forward_up",
      help: "1 when the last exchange with Redis succeeded, 0 when the forwarder cannot reach it",
      registers: [registry],
    }),
    configInfo: new Gauge({
      name: "payflux_config_info",
      help: "Always 1; keys_fingerprint covers what every instance must agree on (keys, revocations, limits, validation, dedup)",
      labelNames: ["keys_fingerprint"] as const,
      registers: [registry],
      collect() {
        // One series: the value of the config in force (a reload replaces it).
        this.reset();
        const config = sources.config();
        if (config !== null) this.set({ keys_fingerprint: keysFingerprintOf(config) }, 1);
      },
    }),
    consumerLag: new Gauge({
      name: "payflux_consumer_lag_messages",
      help: "Entries delivered to the consumer group and not acknowledged yet (XPENDING count), read by the forwarder; no sample while the group or stream does not exist",
      labelNames: ["group"] as const,
      registers: [registry],
    }),
    consumerGroupLag: new Gauge({
      name: "payflux_consumer_group_lag_messages",
      help: "Entries of the stream not delivered to the consumer group yet (XINFO GROUPS lag), where Redis reports it",
      labelNames: ["group"] as const,
      registers: [registry],
    }),
    tlsCertExpiry: new Gauge({
      name: "payflux_tls_cert_expiry_timestamp_seconds",
      help: "Unix time the certificate served over HTTPS expires (only with PAYFLUX_TLS_CERT_FILE)",
      registers: [registry],
    }),
    buildInfo: new Gauge({
      name: "payflux_build_info",
      help: "Always 1; labels carry the version and the JavaScript runtime",
      labelNames: ["version", "runtime"] as const,
      registers: [registry],
    }),
  };
  collectDefaultMetrics({ register: registry });
  // prom-client also exports these gauges under a `_total` name, which
  // promtool rejects (only counters end in _total); the unsuffixed ones stay.
  for (const name of ["nodejs_active_handles_total", "nodejs_active_requests_total", "nodejs_active_resources_total"]) {
    registry.removeSingleMetric(name);
  }

  // The forwarder's series exist only when forwarding is on (it sets them):
  // a payflux_forward_up 0 on an instance that does not forward would fire alerts.
  for (const g of [m.forwardLag, m.forwardLastSuccess, m.forwardUp]) g.remove();
  // Likewise the certificate's expiry exists only when serving HTTPS (applyConfig sets it).
  m.tlsCertExpiry.remove();

  // Every series that can be known at start-up exists at 0, so rate() and
  // absent() behave from the first scrape.
  for (const reason of DENIAL_REASONS) m.authDenied.inc({ reason }, 0);
  for (const reason of REJECT_REASONS) m.rejected.inc({ reason }, 0);
  for (const endpoint of INGEST_ROUTES) m.rateLimited.inc({ endpoint }, 0);
  for (const result of ["success", "failure"]) m.reloads.inc({ result }, 0);
  for (const reason of ["per_ip", "total"]) m.connectionsRefused.inc({ reason }, 0);
  m.lastReloadSuccessful.set(1);
  m.lastReloadSuccessTime.set(Date.now() / 1000);
  m.buildInfo.set({ version: VERSION, runtime: RUNTIME }, 1);
  return { ...m, hot: hotSeries(m) };
}

/** The series every ingest request touches, as direct handles (see `series`). */
function hotSeries(m: { inFlight: Gauge<string>; accepted: Counter<string>; duplicates: Counter<string>; ingestDuration: Histogram<string>; authDenied: Counter<string> }) {
  const denied = new Map(DENIAL_REASONS.map((reason) => [reason, series(m.authDenied, { reason })]));
  return {
    inFlight: series(m.inFlight),
    accepted: series(m.accepted),
    duplicates: series(m.duplicates),
    ingestDuration: histogramSeries(m.ingestDuration),
    authDenied: (reason: (typeof DENIAL_REASONS)[number]) => denied.get(reason)!(1),
  };
}

/**
 * prom-client keeps each series in `hashMap` (prom-client 15: `{ value,
 * labels }` for counters and gauges, `{ bucketValues, sum, count, labels }`
 * for histograms) and exports from it. Its inc() and observe() validate and
 * hash the label object on every call, which on the ingest path cost more
 * than validating the event: these handles find their series once and add to
 * it directly. Any change of that structure fails test/metrics.test.ts.
 */
interface HashMapped {
  hashMap: Record<string, { labels: Record<string, string | number>; value: number; bucketValues: Record<number, number>; sum: number; count: number }>;
  upperBounds?: number[];
}

function keyOf(metric: HashMapped, labels: Record<string, string>): string {
  const names = Object.keys(labels);
  for (const key in metric.hashMap) {
    const l = metric.hashMap[key]!.labels;
    if (Object.keys(l).length === names.length && names.every((n) => l[n] === labels[n])) return key;
  }
  throw new Error("prom-client's series layout changed (see HashMapped in src/metrics.ts)");
}

/** Adds to one series of a counter or gauge: `add(n)`. */
export function series(metric: Counter<string> | Gauge<string>, labels: Record<string, string> = {}): (n: number) => void {
  const m = metric as unknown as HashMapped;
  const create = () => (metric as Counter<string>).inc(labels, 0);
  create();
  const key = keyOf(m, labels);
  return (n) => {
    let entry = m.hashMap[key];
    if (entry === undefined) {
      create(); // reset() since
      entry = m.hashMap[key]!;
    }
    entry.value += n;
  };
}

/** Observes into one series of a histogram. */
export function histogramSeries(metric: Histogram<string>, labels: Record<string, string> = {}): (value: number) => void {
  const m = metric as unknown as HashMapped;
  metric.zero(labels);
  const key = keyOf(m, labels);
  const bounds = m.upperBounds!;
  return (value) => {
    let entry = m.hashMap[key];
    if (entry === undefined) {
      metric.zero(labels);
      entry = m.hashMap[key]!;
    }
    for (const b of bounds) {
      if (value <= b) {
        entry.bucketValues[b]!++;
        break;
      }
    }
    entry.sum += value;
    entry.count++;
  };
}

const KEY_STATES = ["active", "revoked", "expired"] as const;

/** Outcomes of payflux_client_requests_total; revoked_key includes expired keys (as payflux_auth_denied_total does). */
export const CLIENT_OUTCOMES = ["accepted", "rate_limited", "revoked_key", "rejected"] as const;
export type ClientOutcome = (typeof CLIENT_OUTCOMES)[number];

/**
 * Per-client series for a new key ring: the expiry gauge always; request
 * counters only when enabled, every client's at 0 from the start (so rate()
 * works from the first scrape), removed for clients that left the file, all
 * removed when turned off. Counters of clients that stay keep counting.
 */
export function setClientSeries(m: Metrics, keys: KeyRing, perClient: boolean): void {
  m.sources.keyCounts = () => keys.counts();
  m.clientKeyExpiry.reset();
  const labels = new Set<string>();
  const named = keys.named();
  if (perClient && keys.size > named.length) labels.add(OTHER_CLIENT); // keys from the env lists
  for (const e of named) {
    if (!e.revoked && Number.isFinite(e.notAfter)) m.clientKeyExpiry.set({ client: e.client! }, e.notAfter / 1000);
    if (perClient) labels.add(e.metricLabel);
  }
  for (const id of [...m.clientCounters.keys()]) {
    const [client, outcome] = id.split(" ") as [string, ClientOutcome];
    if (!labels.has(client)) {
      m.clientRequests.remove(client, outcome);
      m.clientCounters.delete(id);
    }
  }
  for (const client of labels) for (const outcome of CLIENT_OUTCOMES) clientCounter(m, client, outcome).inc(0);
}

function clientCounter(m: Metrics, client: string, outcome: ClientOutcome): { inc(n?: number): void } {
  const id = `${client} ${outcome}`;
  let c = m.clientCounters.get(id);
  if (c === undefined) m.clientCounters.set(id, (c = m.clientRequests.labels(client, outcome)));
  return c;
}

/** Counts one request of a key when per-client metrics are on (the caller checks). */
export function countClientRequest(m: Metrics, client: string, outcome: ClientOutcome): void {
  clientCounter(m, client, outcome).inc();
}

/** Label value for a request path: the route template, or one shared value for anything else. */
export function routeLabel(path: string): string {
  return Object.hasOwn(ALLOW, path) ? path : UNMATCHED_ROUTE;
}

const METHODS = new Set(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]);
export function methodLabel(method: string): string {
  return METHODS.has(method) ? method : "OTHER";
}
