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

/** Every member the schema knows: one written twice in an event is refused (JSON.parse would keep the last silently). */
export const KNOWN_FIELDS: readonly string[] = ["event_type", "event_id", "event_timestamp", "processor", "retry_count", ...OPTIONAL_STRINGS.map(([f]) => f)];

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-](\d{2}):(\d{2}))$/;

export type PaymentEvent = Record<string, unknown> & { event_id: string };

/**
 * Appends the problems of `value` to `errors`; returns true when it is a
 * valid event. `facts` (from the pre-scan of the body, src/json-scan.ts)
 * adds what JSON.parse hides: repeated members and retry_count's literal.
 */
export function validateEvent(value: unknown, index: number, errors: FieldError[], facts?: EventFacts): value is PaymentEvent {
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
  // Written as plain digits: `100.0000000000000001`, `1e2`, `100.0` and `-0` parse to
  // numbers that would be stored as something the client did not send.
  const literalOk = facts?.retryCount == null || /^(0|[1-9][0-9]{0,2})$/.test(facts.retryCount);
  if (rc !== undefined && rc !== null && !(literalOk && Number.isInteger(rc) && (rc as number) >= 0 && (rc as number) <= 100)) {
    fail("retry_count", "must be an integer from 0 to 100");
  }
  for (const name of facts?.duplicates ?? []) fail(name, "appears more than once in this event; send each member once");
  return errors.length === before;
}

import type { EventFacts } from "./json-scan.ts";

const DAYS_IN_MONTH = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/**
 * RFC 3339 date-time, strictly: real calendar dates (no 2026-02-30), years
 * 0001-9999, hours 00-23, offsets up to ±23:59, and second 60 only for a leap
 * second, which is 23:59:60 UTC on the last day of a month (so 00:59:60+01:00
 * on the 1st of the next month is one too).
 */
export function isRfc3339(s: string): boolean {
  const m = RFC3339.exec(s);
  if (m === null) return false;
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number) as [number, number, number, number, number, number];
  if (year < 1) return false;
  const maxDay = daysInMonth(year, month);
  if (maxDay === undefined || day < 1 || day > maxDay) return false;
  if (hour > 23 || minute > 59 || second > 60) return false;
  const offsetMinutes = m[9] === undefined ? 0 : (m[8]![0] === "-" ? -1 : 1) * (Number(m[9]) * 60 + Number(m[10]));
  if (m[9] !== undefined && (Number(m[9]) > 23 || Number(m[10]) > 59)) return false;
  if (second === 60) {
    // The same instant in UTC must be 23:59:60 on a month's last day.
    const utc = new Date(0);
    utc.setUTCFullYear(year, month - 1, day); // not Date.UTC: it reads years 0-99 as 1900-1999
    utc.setUTCHours(hour, minute - offsetMinutes);
    if (utc.getUTCHours() !== 23 || utc.getUTCMinutes() !== 59) return false;
    if (utc.getUTCDate() !== daysInMonth(utc.getUTCFullYear(), utc.getUTCMonth() + 1)) return false;
  }
  return true;
}

function daysInMonth(year: number, month: number): number | undefined {
  const leap = (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0;
  return month === 2 && leap ? 29 : DAYS_IN_MONTH[month - 1];
}

/** Dedup identity of an event: UUIDs compare case-insensitively. */
export function dedupKey(event: PaymentEvent): string {
  return event.event_id.toLowerCase();
}
