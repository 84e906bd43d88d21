import { createHash } from "node:crypto";
import { configuredDigest, configuredDigestBytes, HASH_PREFIX, KEY_ID_PREFIX, KeyRing, keyDigest, keyIdOf } from "./auth.ts";
import { metricLabelOf, parseClientsFileSliced, type ClientSpec } from "./clients.ts";
import { readSnapshot, tornReason, unchanged, type FileSnapshot } from "./config-file.ts";
import { TrustedProxies } from "./client-address.ts";
import { parseEnvFile } from "./env-file.ts";
import { BURST_RANGE, limitsOf, RPS_RANGE } from "./limiter.ts";
import { PAUSE_EVERY, runSliced, runSync, type Sliced } from "./slices.ts";
import { loadTls, type TlsMaterial } from "./tls.ts";

/**
 * Every variable the service reads, with its default and meaning. The README,
 * systemd/payflux.env.example and this table must name the same variables (a
 * test compares them).
 */
export const VARIABLES = {
  PAYFLUX_CONFIG: { default: "", help: "env file to load (systemd EnvironmentFile syntax); its values win over the environment" },
  PAYFLUX_API_KEYS: { default: "", help: "allowed API keys (plain or sha256:<64 hex>), comma-separated (spaces trimmed)" },
  PAYFLUX_API_KEY: { default: "", help: "one more allowed key; the allowlist is the union with PAYFLUX_API_KEYS" },
  PAYFLUX_REVOKED_KEYS: { default: "", help: "revoked keys (plain, sha256:<64 hex> or key_id:<12 hex>), comma-separated; revocation wins over the allowlist" },
  PAYFLUX_CLIENTS_FILE: { default: "", help: "file of named clients (name, secret, rps= burst= not_after= revoked), re-read on SIGHUP" },
  PAYFLUX_INGEST_RPS: { default: "100", help: "token-bucket refill rate per key, requests per second" },
  PAYFLUX_INGEST_BURST: { default: "500", help: "token-bucket capacity per key, requests" },
  PAYFLUX_AUTH_FAIL_RPS: { default: "5", help: "failed authentications per second allowed per client address (refill rate); 0 disables the limit" },
  PAYFLUX_AUTH_FAIL_BURST: { default: "20", help: "failed authentications in a burst per client address; past it 429 auth_throttled; 0 disables the limit" },
  PAYFLUX_TRUST_PROXY: { default: "", help: "proxies whose X-Forwarded-For is believed: comma-separated IPv4/IPv6 addresses or CIDRs (empty: none)" },
  PAYFLUX_HOST: { default: "0.0.0.0", help: "listen address" },
  PAYFLUX_PORT: { default: "8080", help: "listen port (0 picks a free one)" },
  PAYFLUX_DATA_DIR: { default: "./data", help: "directory of the event log" },
  PAYFLUX_LOG_LEVEL: { default: "info", help: "fatal, error, warn, info, debug, trace or silent" },
  PAYFLUX_MAX_BODY_BYTES: { default: "1048576", help: "largest request body accepted, bytes" },
  PAYFLUX_MAX_BATCH: { default: "1000", help: "most events in one batch request" },
  PAYFLUX_DEDUP_WINDOW: { default: "24h", help: "how long an event_id is remembered for duplicate detection" },
  PAYFLUX_METRICS_ENABLED: { default: "true", help: "serve /metrics (false: 404)" },
  PAYFLUX_METRICS_TOKEN: { default: "", help: "if set, /metrics requires Authorization: Bearer <token>" },
  PAYFLUX_METRICS_PER_CLIENT: { default: "false", help: "export payflux_client_requests_total{client,outcome} (first 100 named clients, the rest as other)" },
  PAYFLUX_SHUTDOWN_TIMEOUT: { default: "10s", help: "how long SIGTERM waits for requests in flight before exiting 1" },
  PAYFLUX_SEGMENT_BYTES: { default: "64MiB", help: "event-log segment size; a new segment starts past it" },
  PAYFLUX_RETENTION: { default: "7d", help: "closed segments older than this (and already forwarded) are deleted" },
  PAYFLUX_STORAGE_MAX_BYTES: { default: "10GiB", help: "hard cap of the event log on disk; past it ingest answers 503 storage_full" },
  PAYFLUX_DEDUP_MAX_IDS: { default: "10000000", help: "most event ids remembered for duplicate detection; the oldest go first" },
  PAYFLUX_FORWARD_REDIS_URL: { default: "", help: "redis:// or rediss:// URL: forward every event to a Redis stream (empty: off)" },
  PAYFLUX_FORWARD_STREAM: { default: "events_stream", help: "Redis stream the events are added to (XADD)" },
  PAYFLUX_FORWARD_MAXLEN: { default: "200000", help: "approximate length the stream is trimmed to (XADD MAXLEN ~)" },
  PAYFLUX_FORWARD_CONSUMER_GROUPS: { default: "payment_consumers", help: "consumer groups of the stream whose backlog is exported as payflux_consumer_lag_messages{group}, comma-separated" },
  PAYFLUX_MAX_CONNECTIONS: { default: "16384", help: "most open client connections in all; more are closed at once (also capped below the descriptor limit)" },
  PAYFLUX_MAX_CONNECTIONS_PER_IP: { default: "256", help: "most open connections from one client address; more are closed at once" },
  PAYFLUX_TLS_CERT_FILE: { default: "", help: "PEM certificate (chain) file; with PAYFLUX_TLS_KEY_FILE the listener speaks HTTPS only; re-read on SIGHUP" },
  PAYFLUX_TLS_KEY_FILE: { default: "", help: "PEM private key of that certificate; a relative name is looked up in $CREDENTIALS_DIRECTORY (systemd LoadCredential=)" },
} as const;

export type VariableName = keyof typeof VARIABLES;

export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

/**
 * Keys (and the metrics token) shorter than this are refused: a short key is
 * weak, and a key cut short by a half-written file must never become valid.
 */
export const MIN_KEY_LENGTH = 16;
/** Upper bound for PAYFLUX_MAX_BODY_BYTES; the HTTP server's own hard limit sits just above it. */
export const MAX_BODY_CEILING = 64 * 1024 * 1024;

export interface Config {
  keys: KeyRing;
  ingestRps: number;
  ingestBurst: number;
  /** Failed-login limit per client address; either 0 disables it. */
  authFailRps: number;
  authFailBurst: number;
  /** PAYFLUX_TRUST_PROXY in canonical form (for change detection). */
  trustProxy: string;
  /** PAYFLUX_TRUST_PROXY parsed. */
  trustedProxies: TrustedProxies;
  host: string;
  port: number;
  dataDir: string;
  logLevel: LogLevel;
  maxBodyBytes: number;
  maxBatch: number;
  dedupWindowMs: number;
  metricsEnabled: boolean;
  /** SHA-256 of PAYFLUX_METRICS_TOKEN, or null when /metrics is open. */
  metricsTokenDigest: string | null;
  /** Path of PAYFLUX_CLIENTS_FILE, or null. */
  clientsFile: string | null;
  metricsPerClient: boolean;
  shutdownTimeoutMs: number;
  segmentBytes: number;
  retentionMs: number;
  storageMaxBytes: number;
  dedupMaxIds: number;
  /** Redis URL of the forwarder (may hold a password: never log it), or null when forwarding is off. */
  forwardRedisUrl: string | null;
  forwardStream: string;
  forwardMaxlen: number;
  /** Consumer groups watched for payflux_consumer_lag_messages, normalised "a,b" (a string, so reload diffs compare it). */
  forwardConsumerGroups: string;
  maxConnections: number;
  maxConnectionsPerIp: number;
  /** HTTPS certificate and key (key material: never log it), or null for plain HTTP. */
  tls: TlsMaterial | null;
  /** "environment" or the env file's path. */
  source: string;
  /** 12 hex characters that change whenever the effective config changes. */
  fingerprint: string;
  warnings: string[];
}

/** The variable behind each setting, for messages about what changed. */
export const SETTING_VARIABLE = {
  ingestRps: "PAYFLUX_INGEST_RPS",
  ingestBurst: "PAYFLUX_INGEST_BURST",
  authFailRps: "PAYFLUX_AUTH_FAIL_RPS",
  authFailBurst: "PAYFLUX_AUTH_FAIL_BURST",
  trustProxy: "PAYFLUX_TRUST_PROXY",
  host: "PAYFLUX_HOST",
  port: "PAYFLUX_PORT",
  dataDir: "PAYFLUX_DATA_DIR",
  logLevel: "PAYFLUX_LOG_LEVEL",
  maxBodyBytes: "PAYFLUX_MAX_BODY_BYTES",
  maxBatch: "PAYFLUX_MAX_BATCH",
  dedupWindowMs: "PAYFLUX_DEDUP_WINDOW",
  metricsEnabled: "PAYFLUX_METRICS_ENABLED",
  metricsTokenDigest: "PAYFLUX_METRICS_TOKEN",
  clientsFile: "PAYFLUX_CLIENTS_FILE",
  metricsPerClient: "PAYFLUX_METRICS_PER_CLIENT",
  shutdownTimeoutMs: "PAYFLUX_SHUTDOWN_TIMEOUT",
  segmentBytes: "PAYFLUX_SEGMENT_BYTES",
  retentionMs: "PAYFLUX_RETENTION",
  storageMaxBytes: "PAYFLUX_STORAGE_MAX_BYTES",
  dedupMaxIds: "PAYFLUX_DEDUP_MAX_IDS",
  forwardRedisUrl: "PAYFLUX_FORWARD_REDIS_URL",
  forwardStream: "PAYFLUX_FORWARD_STREAM",
  forwardMaxlen: "PAYFLUX_FORWARD_MAXLEN",
  forwardConsumerGroups: "PAYFLUX_FORWARD_CONSUMER_GROUPS",
  maxConnections: "PAYFLUX_MAX_CONNECTIONS",
  maxConnectionsPerIp: "PAYFLUX_MAX_CONNECTIONS_PER_IP",
} as const satisfies Partial<Record<keyof Config, VariableName>>;

export type LoadResult =
  | { ok: true; config: Config }
  | { ok: false; errors: string[]; warnings: string[] };

type Env = Record<string, string | undefined>;

/**
 * Reads the environment, then the env file (`configFile`, else PAYFLUX_CONFIG)
 * whose values win, and validates everything. Every problem is reported, none
 * of them quotes a value that could be a secret. Start-up, `check-config` and
 * SIGHUP reloads all go through here.
 */
export function loadConfig(env: Env, configFile?: string): LoadResult {
  return runSync(configSteps(env, configFile));
}

/** loadConfig in slices that let requests run in between (a SIGHUP reload of many keys; see runSliced). */
export function loadConfigInSlices(env: Env, configFile?: string, sliceMs?: number): Promise<LoadResult> {
  return runSliced(configSteps(env, configFile), sliceMs);
}

function* configSteps(env: Env, configFile: string | undefined): Sliced<LoadResult> {
  const errors: string[] = [];
  const warnings: string[] = [];
  const file = configFile ?? (env.PAYFLUX_CONFIG || undefined);
  let merged: Env = { ...env };
  let snapshot: FileSnapshot | null = null;
  if (file !== undefined) {
    try {
      snapshot = readSnapshot(file);
    } catch (err) {
      errors.push(`cannot read config file ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
    if (snapshot !== null) {
      const torn = tornReason(file, snapshot.text);
      if (torn !== null) errors.push(torn);
      const parsed = parseEnvFile(snapshot.text, file);
      errors.push(...parsed.errors);
      if (Object.keys(parsed.values).some((name) => !name.startsWith("PAYFLUX_"))) {
        // Not named: such a "name" may be a fragment of a wrapped key.
        warnings.push(`${file} sets variables that payflux does not read (not PAYFLUX_*); a value wrapped onto its own line looks like this`);
      }
      merged = { ...merged, ...parsed.values };
    }
  }

  for (const name of Object.keys(merged)) {
    if (name.startsWith("PAYFLUX_") && !(name in VARIABLES)) {
      warnings.push(`unknown variable ${name} is ignored${suggest(name)}`);
    }
  }

  const get = (name: VariableName): string => {
    const v = merged[name];
    return v === undefined || v.trim() === "" ? VARIABLES[name].default : v.trim();
  };

  const ingestRps = number("PAYFLUX_INGEST_RPS", get("PAYFLUX_INGEST_RPS"), RPS_RANGE, errors);
  const ingestBurst = integer("PAYFLUX_INGEST_BURST", get("PAYFLUX_INGEST_BURST"), BURST_RANGE, errors);
  const clientsFile = get("PAYFLUX_CLIENTS_FILE");
  const keys = yield* loadKeys(get, clientsFile, ingestRps, ingestBurst, errors, warnings);
  const authFailRps = number("PAYFLUX_AUTH_FAIL_RPS", get("PAYFLUX_AUTH_FAIL_RPS"), { min: 0, max: 1_000_000 }, errors);
  const authFailBurst = integer("PAYFLUX_AUTH_FAIL_BURST", get("PAYFLUX_AUTH_FAIL_BURST"), { min: 0, max: 1_000_000 }, errors);
  const trustedProxies = TrustedProxies.parse(get("PAYFLUX_TRUST_PROXY"), errors);
  const host = get("PAYFLUX_HOST");
  if (!/^[A-Za-z0-9.:\-\[\]_%]+$/.test(host)) errors.push(`PAYFLUX_HOST must be an IP address or host name`);
  const port = integer("PAYFLUX_PORT", get("PAYFLUX_PORT"), { min: 0, max: 65535 }, errors);
  const dataDir = get("PAYFLUX_DATA_DIR");
  const logLevel = get("PAYFLUX_LOG_LEVEL").toLowerCase() as LogLevel;
  if (!LOG_LEVELS.includes(logLevel)) errors.push(`PAYFLUX_LOG_LEVEL must be one of ${LOG_LEVELS.join(", ")}`);
  const maxBodyBytes = integer("PAYFLUX_MAX_BODY_BYTES", get("PAYFLUX_MAX_BODY_BYTES"), { min: 1024, max: MAX_BODY_CEILING }, errors);
  const maxBatch = integer("PAYFLUX_MAX_BATCH", get("PAYFLUX_MAX_BATCH"), { min: 1, max: 100_000 }, errors);
  const dedupWindowMs = duration("PAYFLUX_DEDUP_WINDOW", get("PAYFLUX_DEDUP_WINDOW"), { minMs: 1000, maxMs: 30 * 86_400_000 }, errors);
  const metricsEnabled = boolean("PAYFLUX_METRICS_ENABLED", get("PAYFLUX_METRICS_ENABLED"), errors);
  const metricsPerClient = boolean("PAYFLUX_METRICS_PER_CLIENT", get("PAYFLUX_METRICS_PER_CLIENT"), errors);
  const metricsToken = get("PAYFLUX_METRICS_TOKEN");
  if (metricsToken !== "" && metricsToken.length < MIN_KEY_LENGTH) {
    errors.push(`PAYFLUX_METRICS_TOKEN is shorter than ${MIN_KEY_LENGTH} characters; use \`payflux keygen\` for a strong token`);
  }
  if (/[\s,]/.test(metricsToken)) errors.push("PAYFLUX_METRICS_TOKEN must not contain spaces or commas");
  const shutdownTimeoutMs = duration("PAYFLUX_SHUTDOWN_TIMEOUT", get("PAYFLUX_SHUTDOWN_TIMEOUT"), { minMs: 1000, maxMs: 3_600_000 }, errors);
  const segmentBytes = bytes("PAYFLUX_SEGMENT_BYTES", get("PAYFLUX_SEGMENT_BYTES"), { min: 4096, max: 2 ** 30 }, errors);
  const retentionMs = duration("PAYFLUX_RETENTION", get("PAYFLUX_RETENTION"), { minMs: 1000, maxMs: 3650 * 86_400_000 }, errors);
  const storageMaxBytes = bytes("PAYFLUX_STORAGE_MAX_BYTES", get("PAYFLUX_STORAGE_MAX_BYTES"), { min: 65536, max: 2 ** 50 }, errors);
  if (storageMaxBytes < segmentBytes) errors.push("PAYFLUX_STORAGE_MAX_BYTES must be at least PAYFLUX_SEGMENT_BYTES");
  const dedupMaxIds = integer("PAYFLUX_DEDUP_MAX_IDS", get("PAYFLUX_DEDUP_MAX_IDS"), { min: 1, max: 100_000_000 }, errors);
  const forwardUrl = get("PAYFLUX_FORWARD_REDIS_URL");
  if (forwardUrl !== "" && !isRedisUrl(forwardUrl)) {
    // The URL may hold a password: describe the problem, never echo the value.
    errors.push("PAYFLUX_FORWARD_REDIS_URL must look like redis://[:password@]host[:port][/db] or rediss://... (TLS)");
  }
  const forwardStream = get("PAYFLUX_FORWARD_STREAM");
  if (!/^[\x21-\x7e]{1,256}$/.test(forwardStream)) errors.push("PAYFLUX_FORWARD_STREAM must be 1 to 256 printable characters without spaces");
  const forwardMaxlen = integer("PAYFLUX_FORWARD_MAXLEN", get("PAYFLUX_FORWARD_MAXLEN"), { min: 1, max: 1_000_000_000 }, errors);
  const forwardConsumerGroups = consumerGroups(get("PAYFLUX_FORWARD_CONSUMER_GROUPS"), errors);
  const maxConnections = integer("PAYFLUX_MAX_CONNECTIONS", get("PAYFLUX_MAX_CONNECTIONS"), { min: 1, max: 1_000_000 }, errors);
  const maxConnectionsPerIp = integer("PAYFLUX_MAX_CONNECTIONS_PER_IP", get("PAYFLUX_MAX_CONNECTIONS_PER_IP"), { min: 1, max: 1_000_000 }, errors);
  const tls = loadTls(get("PAYFLUX_TLS_CERT_FILE"), get("PAYFLUX_TLS_KEY_FILE"), merged.CREDENTIALS_DIRECTORY, errors, warnings);

  // Read again after parsing: a file that changed meanwhile may be half-written.
  if (file !== undefined && snapshot !== null && !unchanged(file, snapshot)) {
    errors.push(`${file} changed while it was being read (a write in progress?); nothing was applied: write it atomically (temporary file + rename) and reload again`);
  }
  if (errors.length > 0) return { ok: false, errors, warnings };

  const metricsTokenDigest = metricsToken === "" ? null : keyDigest(metricsToken);
  const config: Config = {
    keys, ingestRps, ingestBurst, authFailRps, authFailBurst, trustProxy: trustedProxies.text, trustedProxies, host, port, dataDir, logLevel, maxBodyBytes, maxBatch, dedupWindowMs,
    metricsEnabled, metricsTokenDigest, clientsFile: clientsFile === "" ? null : clientsFile, metricsPerClient, shutdownTimeoutMs, segmentBytes, retentionMs, storageMaxBytes, dedupMaxIds,
    forwardRedisUrl: forwardUrl === "" ? null : forwardUrl, forwardStream, forwardMaxlen, forwardConsumerGroups,
    maxConnections, maxConnectionsPerIp, tls,
    source: file ?? "environment", fingerprint: "", warnings,
  };
  yield* keys.prepare();
  config.fingerprint = fingerprintOf(config);
  return { ok: true, config };
}

/** 12 hex characters over every effective setting (keys as digests), the same on every instance. */
export function fingerprintOf(c: Config): string {
  // The clients file counts by content (in `keys`), not by path; the certificate by its digest, and the key never.
  const { keys, source: _source, fingerprint: _fingerprint, warnings: _warnings, clientsFile: _clientsFile, trustedProxies: _trusted, tls, ...settings } = c;
  const effective = { keys: keys.contentDigest(), ...settings, ...(tls ? { tls: tls.sha256 } : {}) };
  return createHash("sha256").update(JSON.stringify(effective)).digest("hex").slice(0, 12);
}

/**
 * The key ring: the env lists and the clients file (the allowlist is their
 * union), then revocations from either, which win. Env entries may be plain
 * keys or `sha256:<64 hex>`; PAYFLUX_REVOKED_KEYS also takes `key_id:<12 hex>`,
 * which must match exactly one configured key.
 */
function* loadKeys(get: (name: VariableName) => string, clientsFile: string, rps: number, burst: number, errors: string[], warnings: string[]): Sliced<KeyRing> {
  const defaults = limitsOf(rps, burst);
  const keys = new KeyRing(defaults);
  let n = 0; // pause points in the loops over clients and revocations
  for (const name of ["PAYFLUX_API_KEYS", "PAYFLUX_API_KEY"] as const) {
    const list = yield* keyList(name, get(name), errors);
    for (let i = 0; i < list.length; i += PAUSE_EVERY) {
      addKeys(keys, list, i, Math.min(list.length, i + PAUSE_EVERY));
      yield;
    }
  }

  let clients: ClientSpec[] = [];
  if (clientsFile !== "") {
    // The same rules as for the env file: a file caught mid-write is never applied.
    let snap: FileSnapshot | null = null;
    try {
      snap = readSnapshot(clientsFile);
    } catch (err) {
      errors.push(`cannot read PAYFLUX_CLIENTS_FILE ${clientsFile}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
    if (snap !== null) {
      const torn = tornReason(clientsFile, snap.text);
      if (torn !== null) errors.push(torn);
      const parsed = yield* parseClientsFileSliced(snap.text, clientsFile, MIN_KEY_LENGTH);
      errors.push(...parsed.errors);
      warnings.push(...parsed.warnings);
      clients = parsed.clients;
      if (!unchanged(clientsFile, snap)) {
        errors.push(`${clientsFile} changed while it was being read (a write in progress?); nothing was applied: write it atomically (temporary file + rename) and reload again`);
      }
    }
  }
  // A named client replaces an env entry of the same key (it has a name and options); revocation stays.
  for (const [i, c] of clients.entries()) {
    if (++n % PAUSE_EVERY === 0) yield;
    keys.addClient(Buffer.from(c.digest, "hex"), {
      digest: c.digest,
      keyId: keyIdOf(c.digest),
      client: c.name,
      revoked: c.revoked,
      notAfter: c.notAfter ?? Infinity,
      limits: c.rps === null && c.burst === null ? defaults : limitsOf(c.rps ?? rps, c.burst ?? burst),
      bucket: `client/${c.name}`,
      metricLabel: metricLabelOf(i, c.name),
    });
  }
  const allowedCount = keys.size;

  const revocations = yield* keyList("PAYFLUX_REVOKED_KEYS", get("PAYFLUX_REVOKED_KEYS"), errors);
  // key_id entries match the configured keys (not those only revoked): indexed once, not scanned per entry.
  const byKeyId = revocations.some((entry) => entry.startsWith(KEY_ID_PREFIX)) ? yield* keys.byKeyId() : new Map<number, number>();
  for (const entry of revocations) {
    if (++n % PAUSE_EVERY === 0) yield;
    if (!entry.startsWith(KEY_ID_PREFIX)) {
      keys.add(configuredDigestBytes(entry)!, true);
      continue;
    }
    // A key_id is no secret (logs show it): messages may quote it.
    const id = entry.slice(KEY_ID_PREFIX.length).toLowerCase();
    const match = byKeyId.get(parseInt(id, 16)); // 12 hex digits (checked by keyList): 48 bits, exact in a number
    if (match !== undefined && match < 0) {
      errors.push(`PAYFLUX_REVOKED_KEYS: ${KEY_ID_PREFIX}${id} matches ${-match} configured keys; revoke by the ${HASH_PREFIX} form instead`);
    } else if (match === undefined) {
      warnings.push(`PAYFLUX_REVOKED_KEYS: ${KEY_ID_PREFIX}${id} matches no configured key (such a key is refused as invalid_key anyway)`);
    } else {
      keys.revokeAt(match);
    }
  }

  if (allowedCount === 0 && errors.length === 0) {
    errors.push(
      "no API key is configured, so every request would be refused: set PAYFLUX_API_KEYS=<key>[,<key>...] or PAYFLUX_CLIENTS_FILE " +
        "(generate a key with `payflux keygen` or `openssl rand -hex 32`)",
    );
  } else if (allowedCount > 0 && !keys.someActive()) {
    warnings.push("every allowed key is also revoked: all ingest requests will be refused with revoked_key");
  }
  return keys;
}

/** What every instance of one fleet must agree on: keys, revocations, limits, validation and dedup settings. */
const SHARED_SETTINGS = ["ingestRps", "ingestBurst", "maxBodyBytes", "maxBatch", "dedupWindowMs", "dedupMaxIds"] as const;
const keysFingerprints = new WeakMap<Config, string>();

/**
 * 12 hex characters over what must agree across instances (not port, host,
 * data dir or log level): instances on one host that picked up the same
 * rotation show the same value. Computed once per config.
 */
export function keysFingerprintOf(c: Config): string {
  let fp = keysFingerprints.get(c);
  if (fp === undefined) {
    // Named clients' limits and expiry must agree too; the clients file counts by content, not path.
    const shared = { keys: c.keys.contentDigest(), ...Object.fromEntries(SHARED_SETTINGS.map((n) => [n, c[n]])) };
    fp = createHash("sha256").update(JSON.stringify(shared)).digest("hex").slice(0, 12);
    keysFingerprints.set(c, fp);
  }
  return fp;
}

/** At most this many groups (each is a label value of payflux_consumer_lag_messages). */
export const MAX_CONSUMER_GROUPS = 20;

function consumerGroups(raw: string, errors: string[]): string {
  const groups = [...new Set(raw.split(",").map((g) => g.trim()).filter((g) => g !== ""))];
  if (groups.length > MAX_CONSUMER_GROUPS || groups.some((g) => !/^[\x21-\x7e]{1,128}$/.test(g))) {
    errors.push(`PAYFLUX_FORWARD_CONSUMER_GROUPS must be 1 to ${MAX_CONSUMER_GROUPS} comma-separated group names of printable characters without spaces`);
  }
  return groups.join(",");
}

/** Splits a comma-separated key list; problems name the variable and the entry's position, never the key. */
function* keyList(name: string, raw: string, errors: string[]): Sliced<string[]> {
  if (raw === "") return [];
  const keys: string[] = [];
  const parts = raw.split(",");
  for (let i = 0; i < parts.length; i += PAUSE_EVERY) {
    checkKeys(name, parts, i, Math.min(parts.length, i + PAUSE_EVERY), keys, errors);
    yield;
  }
  return keys;
}

/**
 * keyList's work on parts[from, to) (in a plain function: JSC keeps a
 * generator's locals in a heap object, which slows a loop inside one).
 */
function checkKeys(name: string, parts: string[], from: number, to: number, keys: string[], errors: string[]): void {
  for (let i = from; i < to; i++) {
    const key = parts[i]!.trim();
    if (key === "") continue;
    if (!/^[\x21-\x7e]+$/.test(key)) {
      errors.push(`${name} entry ${i + 1} contains spaces or non-printable characters; keys must be printable ASCII`);
      continue;
    }
    if (key.startsWith(HASH_PREFIX) && configuredDigest(key) === null) {
      errors.push(`${name} entry ${i + 1} starts with ${HASH_PREFIX} but is not ${HASH_PREFIX}<64 hex digits>`);
      continue;
    }
    if (key.startsWith(KEY_ID_PREFIX)) {
      if (name !== "PAYFLUX_REVOKED_KEYS") errors.push(`${name} entry ${i + 1}: ${KEY_ID_PREFIX} names a key only in PAYFLUX_REVOKED_KEYS`);
      else if (/^[0-9a-fA-F]{12}$/.test(key.slice(KEY_ID_PREFIX.length))) keys.push(key);
      else errors.push(`${name} entry ${i + 1} must be ${KEY_ID_PREFIX}<12 hex digits>`);
      continue;
    }
    if (key.length < MIN_KEY_LENGTH) {
      // Also for revocations: a short entry is a key cut short (a half-written file) or a key that could never be used.
      errors.push(`${name} entry ${i + 1} is shorter than ${MIN_KEY_LENGTH} characters (a key cut short?); use \`payflux keygen\` for a strong key`);
      continue;
    }
    keys.push(key);
  }
}

/** Allows the keys list[from, to) (checked by keyList). */
function addKeys(keys: KeyRing, list: string[], from: number, to: number): void {
  for (let i = from; i < to; i++) keys.add(configuredDigestBytes(list[i]!)!, false);
}

function number(name: string, raw: string, range: { min: number; max: number }, errors: string[]): number {
  const n = /^\d+(\.\d+)?$/.test(raw) ? Number(raw) : NaN;
  if (!(n >= range.min && n <= range.max)) {
    errors.push(`${name} must be a number from ${range.min} to ${range.max}${got(raw)}`);
    return NaN;
  }
  return n;
}

function integer(name: string, raw: string, range: { min: number; max: number }, errors: string[]): number {
  const n = /^\d+$/.test(raw) ? Number(raw) : NaN;
  if (!(n >= range.min && n <= range.max)) {
    errors.push(`${name} must be a whole number from ${range.min} to ${range.max}${got(raw)}`);
    return NaN;
  }
  return n;
}

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Parses durations such as `24h`, `90s`, `1h30m`, `7d`. */
export function parseDuration(raw: string): number | null {
  if (!/^(\d+(\.\d+)?(ms|s|m|h|d))+$/.test(raw)) return null;
  let total = 0;
  for (const m of raw.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h|d)/g)) total += Number(m[1]) * UNIT_MS[m[2]!]!;
  return total;
}

function duration(name: string, raw: string, range: { minMs: number; maxMs: number }, errors: string[]): number {
  const ms = parseDuration(raw);
  if (ms === null || ms < range.minMs || ms > range.maxMs) {
    errors.push(`${name} must be a duration from ${formatMs(range.minMs)} to ${formatMs(range.maxMs)} such as 90s, 15m or 24h${got(raw)}`);
    return NaN;
  }
  return ms;
}

const BYTE_UNITS: Record<string, number> = { "": 1, b: 1, k: 1024, kib: 1024, m: 1024 ** 2, mib: 1024 ** 2, g: 1024 ** 3, gib: 1024 ** 3, t: 1024 ** 4, tib: 1024 ** 4 };

/** Parses sizes such as `65536`, `64MiB`, `10GiB`, `512k` (binary units). */
export function parseBytes(raw: string): number | null {
  const m = /^(\d+(?:\.\d+)?)\s*([a-z]*)$/i.exec(raw);
  const unit = m === null ? undefined : BYTE_UNITS[m[2]!.toLowerCase()];
  return unit === undefined ? null : Math.floor(Number(m![1]) * unit);
}

function bytes(name: string, raw: string, range: { min: number; max: number }, errors: string[]): number {
  const n = parseBytes(raw);
  if (n === null || n < range.min || n > range.max) {
    errors.push(`${name} must be a size from ${range.min} bytes such as 65536, 64MiB or 10GiB${got(raw)}`);
    return NaN;
  }
  return n;
}

function isRedisUrl(raw: string): boolean {
  try {
    const url = new URL(raw);
    return (url.protocol === "redis:" || url.protocol === "rediss:") && url.hostname !== "";
  } catch {
    return false;
  }
}

/** Query parameters that may carry a secret (ioredis reads `?password=` too). */
const SECRET_PARAM = /pass|secret|token|key|auth/i;

/** A Redis URL with its password and secret-looking query parameters masked, for logs. */
export function redactUrl(raw: string): string {
  try {
    const url = new URL(raw);
    if (url.password !== "") url.password = "***";
    for (const name of [...url.searchParams.keys()]) if (SECRET_PARAM.test(name)) url.searchParams.set(name, "***");
    return url.toString().replaceAll("%2A%2A%2A", "***");
  } catch {
    return "(invalid URL)";
  }
}

/** The secrets a Redis URL carries (raw and decoded), so that no message can repeat them. */
export function urlSecrets(raw: string): string[] {
  const out = new Set<string>();
  try {
    const url = new URL(raw);
    const values = [url.password, ...[...url.searchParams].filter(([name]) => SECRET_PARAM.test(name)).map(([, v]) => v)];
    for (const v of values) {
      if (v === "") continue;
      out.add(v);
      out.add(encodeURIComponent(v));
      try {
        out.add(decodeURIComponent(v));
      } catch {
        // keep the other forms
      }
    }
  } catch {
    // an invalid URL never reaches the forwarder
  }
  return [...out];
}

/**
 * What a bad value looks like, without the value: any variable can end up
 * holding a secret (a key pasted into the wrong variable, or joined to it by
 * a trailing backslash), so values are never quoted, only their length.
 */
function got(raw: string): string {
  return `; the value given (${raw.length} characters) is not one`;
}

function formatMs(ms: number): string {
  for (const [unit, size] of [["d", 86_400_000], ["h", 3_600_000], ["m", 60_000], ["s", 1000]] as const) {
    if (ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${ms}ms`;
}

function boolean(name: string, raw: string, errors: string[]): boolean {
  const v = raw.toLowerCase();
  if (["true", "1", "yes", "on"].includes(v)) return true;
  if (["false", "0", "no", "off"].includes(v)) return false;
  errors.push(`${name} must be true or false${got(raw)}`);
  return false;
}

/** Names the old docs used, and near-misses, mapped to the variable meant. */
function suggest(name: string): string {
  const aliases: Record<string, string> = {
    PAYFLUX_RATELIMIT_RPS: "PAYFLUX_INGEST_RPS",
    PAYFLUX_RATELIMIT_BURST: "PAYFLUX_INGEST_BURST",
  };
  const meant = aliases[name] ?? Object.keys(VARIABLES).find((v) => editDistance(v, name) <= 2);
  return meant ? ` (did you mean ${meant}?)` : "";
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const cur = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = cur;
    }
  }
  return row[b.length]!;
}
