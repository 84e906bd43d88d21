import { keyIdOfBytes, type AuthResult, type DenialReason } from "./auth.ts";
import { authThrottled } from "./auth-throttle.ts";
import { readBody } from "./body.ts";
import type { Incoming, Reply } from "./exchange.ts";
import { ACCEPT_ENCODING } from "./decompress.ts";
import type { Config } from "./config.ts";
import { dedupKey, KNOWN_FIELDS, validateEvent, type FieldError, type PaymentEvent } from "./events.ts";
import { KnownMembers, MAX_DEPTH, scanJson, type EventFacts } from "./json-scan.ts";
import type { Gateway } from "./gateway.ts";
import { LargerThanStoreError, StorageFullError } from "./event-log.ts";
import { rateLimitHeader } from "./limiter.ts";
import { countClientRequest, type RejectReason } from "./metrics.ts";
import type { IngestRoute } from "./routes.ts";
import { json, problem } from "./problem.ts";
import { frame, frameSpans, toRecord } from "./record.ts";
import { readPlainEvents } from "./plain-events.ts";

/** Validation errors listed in one 422 response at most (the count is always exact). */
const MAX_LISTED_ERRORS = 1000;
const utf8 = new TextDecoder("utf-8", { fatal: true });
const KNOWN = new KnownMembers(KNOWN_FIELDS);

const DENIAL_DETAIL: Record<DenialReason, string> = {
  missing_key: "send the API key as `Authorization: Bearer <key>`",
  revoked_key: "this API key has been revoked; ask for a new one",
  invalid_key: "this API key is not valid",
};

/**
 * One ingest request, in the order that keeps attacks cheap: authenticate
 * (before the body is read), rate-limit, then read, parse and validate the
 * body, drop duplicates, and answer 202 only once the events are durable.
 */
export async function handleIngest(gw: Gateway, request: Incoming, route: IngestRoute): Promise<Reply> {
  const started = performance.now();
  try {
    const config = gw.config; // one config for the whole request, even if a reload swaps it meanwhile
    // One address lookup for the failed-login limit, and none at all when it is off.
    const ip = gw.authFailures.enabled ? (gw.clientAddress(request) ?? "unknown") : null;
    const throttled = ip === null ? null : authThrottled(gw, ip, route);
    if (throttled !== null) return throttled;
    const auth = config.keys.authenticate(request.header("authorization"));
    if (!auth.ok) {
      if (ip !== null) gw.authFailures.fail(ip);
      return deny(gw, config, request, route, auth);
    }

    const { client, limits, metricLabel } = auth.entry;
    const decision = gw.limiter.take(auth.entry.bucket, started, limits);
    const rateHeaders = { "ratelimit-policy": limits.policy, ratelimit: rateLimitHeader(decision) };
    if (!decision.allowed) {
      gw.metrics.rateLimited.inc({ endpoint: route });
      if (config.metricsPerClient) countClientRequest(gw.metrics, metricLabel, "rate_limited");
      gw.throttle.warn(
        "rate_limited",
        () => ({ key_id: auth.keyId, client: client ?? undefined, client_ip: gw.clientAddress(request), endpoint: route, retry_after: decision.retryAfterSeconds }),
        "rate limit hit",
      );
      return reject(gw, 429, "rate_limited", `rate limit of ${limits.rps}/s (burst ${limits.burst}) exceeded for this key`, {}, {
        ...rateHeaders,
        "retry-after": String(decision.retryAfterSeconds),
      });
    }
    const response = await ingestEvents(gw, config, request, route, auth.keyId, client);
    if (config.metricsPerClient) countClientRequest(gw.metrics, metricLabel, response.status === 202 ? "accepted" : "rejected");
    response.headers["ratelimit-policy"] = rateHeaders["ratelimit-policy"];
    response.headers.ratelimit = rateHeaders.ratelimit;
    return response;
  } finally {
    gw.metrics.hot.ingestDuration((performance.now() - started) / 1000);
  }
}

function deny(gw: Gateway, config: Config, request: Incoming, route: IngestRoute, auth: Extract<AuthResult, { ok: false }>): Reply {
  const reason = auth.reason;
  gw.metrics.hot.authDenied(reason);
  if (auth.entry !== null && config.metricsPerClient) countClientRequest(gw.metrics, auth.entry.metricLabel, "revoked_key");
  gw.throttle.warn(
    `auth_${reason}`,
    () => ({
      reason,
      key_id: auth.presented === null ? undefined : keyIdOfBytes(auth.presented),
      client: auth.entry?.client ?? undefined,
      expired: auth.expired,
      client_ip: gw.clientAddress(request),
      endpoint: route,
    }),
    "auth denied",
  );
  return DENIALS[reason];
}

/** The three denials, made once: saying no should cost nothing it need not. */
const DENIALS = Object.fromEntries(
  (Object.keys(DENIAL_DETAIL) as DenialReason[]).map((reason) => {
    const challenge = reason === "missing_key" ? 'Bearer realm="payflux"' : 'Bearer realm="payflux", error="invalid_token"';
    return [reason, problem(401, reason, DENIAL_DETAIL[reason], {}, { "www-authenticate": challenge })];
  }),
) as Record<DenialReason, Reply>;

function reject(
  gw: Gateway,
  status: number,
  reason: RejectReason,
  detail: string,
  extra: Record<string, unknown> = {},
  headers: Record<string, string> = {},
): Reply {
  gw.metrics.rejected.inc({ reason });
  return problem(status, reason, detail, extra, headers);
}

async function ingestEvents(gw: Gateway, config: Config, request: Incoming, route: IngestRoute, keyId: string, client: string | null): Promise<Reply> {
  const batch = route === "/v1/events/batch";
  const mediaType = (request.header("content-type") ?? "").split(";", 1)[0]!.trim().toLowerCase();
  const ndjson = batch && (mediaType === "application/x-ndjson" || mediaType === "application/jsonl");
  // No Content-Type is accepted as JSON: the old service never checked it and its clients rely on that.
  const isJson = mediaType === "" || mediaType === "application/json" || (mediaType.startsWith("application/") && mediaType.endsWith("+json"));
  if (!ndjson && !isJson) {
    const allowed = batch ? "application/json or application/x-ndjson" : "application/json";
    return reject(gw, 415, "unsupported_media_type", `Content-Type must be ${allowed}`);
  }

  // NDJSON lines are counted as they arrive: one past the batch limit stops the read.
  const body = await readBody(request, config.maxBodyBytes, ndjson ? lineCounter(config.maxBatch) : undefined);
  if (!body.ok && body.reason === "stopped") return reject(gw, 413, "batch_too_large", `a batch holds at most ${config.maxBatch} events`);
  if (!body.ok && body.reason === "too_large") return reject(gw, 413, "payload_too_large", `request body is larger than ${config.maxBodyBytes} bytes`);
  if (!body.ok && body.reason === "unsupported_encoding") {
    return reject(gw, 415, "unsupported_media_type", `Content-Encoding must be one of ${ACCEPT_ENCODING} (or none)`, {}, { "accept-encoding": ACCEPT_ENCODING });
  }
  if (!body.ok && body.reason === "corrupt_encoding") return reject(gw, 400, "malformed_encoding", "the compressed request body cannot be decompressed; nothing was stored");
  if (!body.ok) return reject(gw, 400, "incomplete_body", "the request body ended before it was complete; nothing was stored");
  // Most bodies are plain (src/plain-events.ts): their records are their own bytes.
  const plain = readPlainEvents(body.bytes, ndjson ? "lines" : batch ? "array" : "one", config.maxBatch);
  if (plain !== null) return store(gw, plain.words, keyId, client, (owned) => frameSpans(plain.bytes, plain.spans, owned, receivedNow(), keyId));
  const parsed = ndjson ? parseNdjson(body.bytes, config.maxBatch) : parseJson(body.bytes, batch, config.maxBatch);
  if (!parsed.ok) {
    if (parsed.status === 413) return reject(gw, 413, "batch_too_large", `a batch holds at most ${config.maxBatch} events`);
    if (parsed.status === 422) return reject(gw, 422, "validation_failed", parsed.detail, { errors: [{ index: 0, field: "", message: "expected a JSON array" }] });
    return reject(gw, 400, "malformed_json", parsed.detail);
  }
  const { values, facts } = parsed;
  if (values.length === 0) return reject(gw, 422, "empty_batch", "the batch holds no events");
  if (values.length > config.maxBatch) {
    return reject(gw, 413, "batch_too_large", `a batch holds at most ${config.maxBatch} events, this one has ${values.length}`);
  }

  const errors: FieldError[] = [];
  values.forEach((v, i) => validateEvent(v, i, errors, facts[i]));
  if (errors.length > 0) {
    return reject(gw, 422, "validation_failed", `${errors.length} field(s) failed validation; nothing was stored`, {
      errors: errors.slice(0, MAX_LISTED_ERRORS),
      ...(errors.length > MAX_LISTED_ERRORS ? { errors_truncated: true } : {}),
    });
  }
  const events = values as PaymentEvent[];
  // Serialised before any id is claimed: an event that cannot be (nested too deeply) changes nothing.
  const receivedAt = receivedNow();
  let records: string[];
  try {
    records = events.map((e) => toRecord(e, receivedAt, keyId));
  } catch {
    return reject(gw, 400, "malformed_json", "an event is nested too deeply to be stored");
  }
  return store(gw, events.map(dedupKey), keyId, client, (owned) => frame(records.filter((_, i) => owned[i])));
}

type Parsed =
  | { ok: true; values: unknown[]; facts: (EventFacts | undefined)[] }
  | { ok: false; status: 400 | 413 | 422; detail: string };

const TOO_DEEP = `the body is nested more than ${MAX_DEPTH} levels deep`;

/**
 * A JSON body: one event, or an array of them on the batch route. The
 * pre-scan refuses deep nesting and over-long batches in one pass over the
 * bytes, before JSON.parse builds anything.
 */
function parseJson(bytes: Uint8Array, batch: boolean, maxBatch: number): Parsed {
  const facts: EventFacts[] = [];
  const scan = scanJson(bytes, 0, bytes.length, batch ? 2 : 1, KNOWN, facts, 0, batch ? maxBatch : 1);
  if (scan === "too_deep") return { ok: false, status: 400, detail: TOO_DEEP };
  if (scan === "too_many") return { ok: false, status: 413, detail: "" };
  let text: string;
  try {
    text = utf8.decode(bytes);
  } catch {
    return { ok: false, status: 400, detail: "request body is not valid UTF-8" };
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    return { ok: false, status: 400, detail: `request body is not valid JSON: ${(err as Error).message}` };
  }
  if (!batch) return { ok: true, values: [value], facts };
  if (!Array.isArray(value)) return { ok: false, status: 422, detail: "the batch body must be a JSON array of events" };
  return { ok: true, values: value, facts };
}

/**
 * NDJSON: one event per non-blank line. Lines are found on the bytes and
 * counted as they are found: the (maxBatch + 1)-th stops the split, so a body
 * of millions of tiny lines costs one pass and no strings.
 */
function parseNdjson(bytes: Uint8Array, maxBatch: number): Parsed {
  const values: unknown[] = [];
  const facts: EventFacts[] = [];
  let line = 0;
  for (let start = 0; start < bytes.length; line++) {
    let end = bytes.indexOf(0x0a, start);
    if (end < 0) end = bytes.length;
    const from = start;
    start = end + 1;
    if (isBlank(bytes, from, end)) continue;
    if (values.length === maxBatch) return { ok: false, status: 413, detail: "" };
    const scan = scanJson(bytes, from, end, 1, KNOWN, facts, values.length, 1);
    if (scan === "too_deep") return { ok: false, status: 400, detail: `line ${line + 1}: ${TOO_DEEP}` };
    if (scan === "too_many") return { ok: false, status: 400, detail: `line ${line + 1} is not valid JSON` };
    let text: string;
    try {
      text = utf8.decode(bytes.subarray(from, end));
    } catch {
      return { ok: false, status: 400, detail: `line ${line + 1} is not valid UTF-8` };
    }
    try {
      values.push(JSON.parse(text));
    } catch {
      return { ok: false, status: 400, detail: `line ${line + 1} is not valid JSON` };
    }
  }
  return { ok: true, values, facts };
}

/**
 * A body watcher that refuses (returns false) once a chunk starts non-blank
 * line number maxBatch + 1. Inside a line it jumps to the next LF natively;
 * only the bytes that start a line are looked at in JS.
 */
export function lineCounter(maxBatch: number): (chunk: Uint8Array) => boolean {
  let lines = 0;
  let content = false; // the current line has a byte other than space, tab or CR
  return (chunk) => {
    const n = chunk.length;
    for (let i = 0; i < n; ) {
      if (!content) {
        let b = chunk[i]!;
        while (b === 0x20 || b === 0x09 || b === 0x0d) {
          if (++i === n) return true;
          b = chunk[i]!;
        }
        if (b === 0x0a) {
          i++;
          continue;
        }
        if (lines === maxBatch) return false;
        content = true;
      }
      const lf = chunk.indexOf(0x0a, i);
      if (lf < 0) return true;
      lines++;
      content = false;
      i = lf + 1;
    }
    return true;
  };
}

/** Only spaces, tabs and CRs (a CRLF line ending leaves its CR). */
function isBlank(bytes: Uint8Array, from: number, end: number): boolean {
  for (let i = from; i < end; i++) {
    const b = bytes[i]!;
    if (b !== 0x20 && b !== 0x09 && b !== 0x0d) return false;
  }
  return true;
}

/**
 * Drops duplicates, appends the rest (framed by `lines` as log lines) to the
 * event log, and answers 202 once they are durable. `ids` are the events'
 * dedup ids, or their words (src/plain-events.ts reads them from the bytes).
 */
async function store(gw: Gateway, ids: string[] | Uint32Array, keyId: string, client: string | null, lines: (owned: readonly boolean[]) => Buffer): Promise<Reply> {
  const claim = await gw.dedup.claim(ids);
  try {
    const count = claim.owned.length - claim.duplicates;
    if (count > 0) await gw.log.appendFramed(lines(claim.owned), count);
    gw.dedup.commit(claim);
    gw.metrics.hot.accepted(count);
    gw.metrics.hot.duplicates(claim.duplicates);
    gw.logger.debug({ key_id: keyId, client: client ?? undefined, accepted: count, duplicates: claim.duplicates }, "events accepted");
    return json(202, { accepted: count, duplicates: claim.duplicates });
  } catch (err) {
    // Whatever failed, the ids stay unseen and requests waiting on them go on.
    gw.dedup.release(claim);
    return storageFailure(gw, err);
  }
}

let receivedMs = -1;
let receivedText = "";
/** The time of receipt as stored (ISO 8601, ms), formatted once per millisecond. */
function receivedNow(): string {
  const now = Date.now();
  if (now !== receivedMs) {
    receivedMs = now;
    receivedText = new Date(now).toISOString();
  }
  return receivedText;
}

function storageFailure(gw: Gateway, err: unknown): Reply {
  if (err instanceof LargerThanStoreError) {
    // Retrying could never help: this is not back-pressure.
    return reject(gw, 413, "payload_too_large", "these events are larger than the whole event store (PAYFLUX_STORAGE_MAX_BYTES)");
  }
  if (err instanceof StorageFullError) {
    gw.throttle.warn("storage_full", { storage_bytes: gw.log.stats.bytes }, "event log is at PAYFLUX_STORAGE_MAX_BYTES; refusing events");
    return reject(gw, 503, "storage_full", "the event store is full; nothing was stored, retry later", {}, { "retry-after": "5" });
  }
  gw.throttle.error("storage", { err: (err as Error).message, data_dir: gw.log.dir }, "event log write failed");
  return reject(gw, 503, "storage_unavailable", "events could not be stored durably; nothing was stored, retry later", {}, { "retry-after": "1" });
}
