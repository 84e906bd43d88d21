/**
 * Validation of payment events, compatible with the old PayFlux service:
 * required event_type, event_timestamp (RFC 3339), event_id (UUID) and
 * processor; string fields with length limits; retry_count 0..100. Unknown
 * fields are kept, not rejected. Every failing field is reported.
 */
export interface FieldError {
  /** Position of the event in its request (0 for a single event). */
  index: number;
  field: string;
  message: string;
}

export const PROCESSORS = ["stripe", "adyen", "checkout", "internal"] as const;

/** Optional string fields and their length limits in characters (Infinity: no limit). */
const OPTIONAL_STRINGS: readonly (readonly [string, number])[] = [
  ["merchant_id_hash", 100],
  ["payment_intent_id_hash", 100],
  ["failure_category", 100],
  ["geo_bucket", 20],
  ["amount_bucket", Infinity],
  ["system_source", Infinity],
  ["payment_method_bucket", Infinity],
  ["channel", Infinity],
  ["retry_result", Infinity],
  ["failure_origin", Infinity],
];

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-](\d{2}):(\d{2}))$/;

export type PaymentEvent = Record<string, unknown> & { event_id: string };

/** Appends the problems of `value` to `errors`; returns true when it is a valid event. */
export function validateEvent(value: unknown, index: number, errors: FieldError[]): value is PaymentEvent {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    errors.push({ index, field: "", message: "an event must be a JSON object" });
    return false;
  }
  const before = errors.length;
  const e = value as Record<string, unknown>;
  const fail = (field: string, message: string) => errors.push({ index, field, message });

  if (typeof e.event_type !== "string" || e.event_type === "") fail("event_type", "required, a non-empty string");
  if (typeof e.event_id !== "string" || !UUID.test(e.event_id)) fail("event_id", "required, a UUID such as 123e4567-e89b-12d3-a456-426614174000");
  if (typeof e.event_timestamp !== "string" || !isRfc3339(e.event_timestamp)) {
    fail("event_timestamp", "required, an RFC 3339 timestamp such as 2026-11-22T08:00:00Z");
  }
  if (typeof e.processor !== "string" || !(PROCESSORS as readonly string[]).includes(e.processor)) {
    fail("processor", `required, one of ${PROCESSORS.join(", ")}`);
  }
  for (const [field, max] of OPTIONAL_STRINGS) {
    const v = e[field];
    if (v === undefined || v === null) continue;
    if (typeof v !== "string") fail(field, "must be a string");
    // .length counts UTF-16 units, an upper bound of characters: count code points only past it.
    else if (v.length > max && [...v].length > max) fail(field, `at most ${max} characters`);
  }
  const rc = e.retry_count;
  if (rc !== undefined && rc !== null && !(Number.isInteger(rc) && (rc as number) >= 0 && (rc as number) <= 100)) {
    fail("retry_count", "must be an integer from 0 to 100");
  }
  return errors.length === before;
}

const DAYS_IN_MONTH = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/** RFC 3339 date-time with real calendar ranges (no 2026-02-30, no 25:00). */
export function isRfc3339(s: string): boolean {
  const m = RFC3339.exec(s);
  if (m === null) return false;
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number) as [number, number, number, number, number, number];
  const leap = (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0;
  const maxDay = month === 2 && leap ? 29 : DAYS_IN_MONTH[month - 1];
  if (maxDay === undefined || day < 1 || day > maxDay) return false;
  if (hour > 23 || minute > 59 || second > 60) return false;
  if (m[9] !== undefined && (Number(m[9]) > 23 || Number(m[10]) > 59)) return false;
  return true;
}

/** Dedup identity of an event: UUIDs compare case-insensitively. */
export function dedupKey(event: PaymentEvent): string {
  return event.event_id.toLowerCase();
}
