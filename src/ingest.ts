import { keyIdOf, type AuthResult, type DenialReason } from "./auth.ts";
import { readBody } from "./body.ts";
import { ACCEPT_ENCODING } from "./decompress.ts";
import type { Config } from "./config.ts";
import { dedupKey, validateEvent, type FieldError, type PaymentEvent } from "./events.ts";
import type { Gateway } from "./gateway.ts";
import { LargerThanStoreError, StorageFullError } from "./event-log.ts";
import { rateLimitHeader } from "./limiter.ts";
import type { IngestRoute, RejectReason } from "./metrics.ts";
import { json, problem } from "./problem.ts";

/** Validation errors listed in one 422 response at most (the count is always exact). */
const MAX_LISTED_ERRORS = 1000;
const utf8 = new TextDecoder("utf-8", { fatal: true });

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
export async function handleIngest(gw: Gateway, request: Request, route: IngestRoute): Promise<Response> {
  const started = performance.now();
  try {
    const config = gw.config; // one config for the whole request, even if a reload swaps it meanwhile
    const auth = config.keys.authenticate(request.headers.get("authorization"));
    if (!auth.ok) return deny(gw, request, route, auth);

    const decision = gw.limiter.take(auth.digest);
    const rateHeaders = { "ratelimit-policy": gw.limiter.policyHeader(), ratelimit: rateLimitHeader(decision) };
    if (!decision.allowed) {
      gw.metrics.rateLimited.inc({ endpoint: route });
      gw.throttle.warn(
        "rate_limited",
        { key_id: auth.keyId, client_ip: gw.clientAddress(request), endpoint: route, retry_after: decision.retryAfterSeconds },
        "rate limit hit",
      );
      return reject(gw, 429, "rate_limited", `rate limit of ${config.ingestRps}/s (burst ${config.ingestBurst}) exceeded for this key`, {}, {
        ...rateHeaders,
        "retry-after": String(decision.retryAfterSeconds),
      });
    }
    const response = await ingestEvents(gw, config, request, route, auth.keyId);
    response.headers.set("ratelimit-policy", rateHeaders["ratelimit-policy"]);
    response.headers.set("ratelimit", rateHeaders.ratelimit);
    return response;
  } finally {
    gw.metrics.ingestDuration.observe((performance.now() - started) / 1000);
  }
}

function deny(gw: Gateway, request: Request, route: IngestRoute, auth: Extract<AuthResult, { ok: false }>): Response {
  const reason = auth.reason;
  gw.metrics.authDenied.inc({ reason });
  gw.throttle.warn(
    `auth_${reason}`,
    { reason, key_id: auth.digest === null ? undefined : keyIdOf(auth.digest), client_ip: gw.clientAddress(request), endpoint: route },
    "auth denied",
  );
  const challenge = reason === "missing_key" ? 'Bearer realm="payflux"' : 'Bearer realm="payflux", error="invalid_token"';
  return problem(401, reason, DENIAL_DETAIL[reason], {}, { "www-authenticate": challenge });
}

function reject(
  gw: Gateway,
  status: number,
  reason: RejectReason,
  detail: string,
  extra: Record<string, unknown> = {},
  headers: Record<string, string> = {},
): Response {
  gw.metrics.rejected.inc({ reason });
  return problem(status, reason, detail, extra, headers);
}

async function ingestEvents(gw: Gateway, config: Config, request: Request, route: IngestRoute, keyId: string): Promise<Response> {
  const batch = route === "/v1/events/batch";
  const mediaType = (request.headers.get("content-type") ?? "").split(";", 1)[0]!.trim().toLowerCase();
  const ndjson = batch && (mediaType === "application/x-ndjson" || mediaType === "application/jsonl");
  // No Content-Type is accepted as JSON: the old service never checked it and its clients rely on that.
  const isJson = mediaType === "" || mediaType === "application/json" || (mediaType.startsWith("application/") && mediaType.endsWith("+json"));
  if (!ndjson && !isJson) {
    const allowed = batch ? "application/json or application/x-ndjson" : "application/json";
    return reject(gw, 415, "unsupported_media_type", `Content-Type must be ${allowed}`);
  }

  const body = await readBody(request, config.maxBodyBytes);
  if (!body.ok && body.reason === "too_large") return reject(gw, 413, "payload_too_large", `request body is larger than ${config.maxBodyBytes} bytes`);
  if (!body.ok && body.reason === "unsupported_encoding") {
    return reject(gw, 415, "unsupported_media_type", `Content-Encoding must be one of ${ACCEPT_ENCODING} (or none)`, {}, { "accept-encoding": ACCEPT_ENCODING });
  }
  if (!body.ok && body.reason === "corrupt_encoding") return reject(gw, 400, "malformed_encoding", "the compressed request body cannot be decompressed; nothing was stored");
  if (!body.ok) return reject(gw, 400, "incomplete_body", "the request body ended before it was complete; nothing was stored");
  let text: string;
  try {
    text = utf8.decode(body.bytes);
  } catch {
    return reject(gw, 400, "malformed_json", "request body is not valid UTF-8");
  }

  let values: unknown[];
  if (ndjson) {
    values = [];
    const lines = text.split("\n");
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i]!.trim();
      if (line === "") continue;
      try {
        values.push(JSON.parse(line));
      } catch {
        return reject(gw, 400, "malformed_json", `line ${i + 1} is not valid JSON`);
      }
    }
  } else {
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch (err) {
      return reject(gw, 400, "malformed_json", `request body is not valid JSON: ${(err as Error).message}`);
    }
    if (batch && !Array.isArray(parsed)) {
      return reject(gw, 422, "validation_failed", "the batch body must be a JSON array of events", {
        errors: [{ index: 0, field: "", message: "expected a JSON array" }],
      });
    }
    values = batch ? (parsed as unknown[]) : [parsed];
  }
  if (values.length === 0) return reject(gw, 422, "empty_batch", "the batch holds no events");
  if (values.length > config.maxBatch) {
    return reject(gw, 413, "batch_too_large", `a batch holds at most ${config.maxBatch} events, this one has ${values.length}`);
  }

  const errors: FieldError[] = [];
  values.forEach((v, i) => validateEvent(v, i, errors));
  if (errors.length > 0) {
    return reject(gw, 422, "validation_failed", `${errors.length} field(s) failed validation; nothing was stored`, {
      errors: errors.slice(0, MAX_LISTED_ERRORS),
      ...(errors.length > MAX_LISTED_ERRORS ? { errors_truncated: true } : {}),
    });
  }
  return store(gw, values as PaymentEvent[], keyId);
}

/** Drops duplicates, appends the rest to the event log, and answers 202 once they are durable. */
async function store(gw: Gateway, events: PaymentEvent[], keyId: string): Promise<Response> {
  // Serialised before any id is claimed: an event that cannot be (nested too deeply) changes nothing.
  const receivedAt = new Date().toISOString();
  let records: string[];
  try {
    records = events.map((e) => toRecord(e, receivedAt, keyId));
  } catch {
    return reject(gw, 400, "malformed_json", "an event is nested too deeply to be stored");
  }
  const ids = events.map(dedupKey);
  const claim = await gw.dedup.claim(ids);
  try {
    const owned = records.filter((_, i) => claim.owned[i]);
    if (owned.length > 0) await gw.log.append(owned);
    gw.dedup.commit(ids, claim);
    gw.metrics.accepted.inc(owned.length);
    gw.metrics.duplicates.inc(claim.duplicates);
    gw.logger.debug({ key_id: keyId, accepted: owned.length, duplicates: claim.duplicates }, "events accepted");
    return json(202, { accepted: owned.length, duplicates: claim.duplicates });
  } catch (err) {
    // Whatever failed, the ids stay unseen and requests waiting on them go on.
    gw.dedup.release(ids, claim);
    return storageFailure(gw, err);
  }
}

function storageFailure(gw: Gateway, err: unknown): Response {
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

/** Fields the service writes into every stored record; a client's own values of these names are replaced. */
const RESERVED = ["received_at", "key_id", "crc"] as const;

/** The stored form of an event: as sent, then `received_at` and `key_id` last (readers rely on that order). */
function toRecord(event: PaymentEvent, receivedAt: string, keyId: string): string {
  let e: Record<string, unknown> = event;
  if (RESERVED.some((f) => f in e)) {
    e = { ...e };
    for (const f of RESERVED) delete e[f];
  }
  const json = JSON.stringify(e);
  return `${json.slice(0, -1)},"received_at":"${receivedAt}","key_id":"${keyId}"}`;
}
