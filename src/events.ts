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

/** The optional string members' length limits, by name. */
export const OPTIONAL_LIMITS: ReadonlyMap<string, number> = new Map(OPTIONAL_STRINGS);

const OPTIONAL_NAMES = OPTIONAL_STRINGS.map(([f]) => f);
const OPTIONAL_MAX = OPTIONAL_STRINGS.map(([, max]) => max);
const PROCESSOR_LIST = `required, one of ${PROCESSORS.join(", ")}`;

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

  const type = e.event_type;
  if (typeof type !== "string" || type === "") errors.push({ index, field: "event_type", message: "required, a non-empty string" });
  const id = e.event_id;
  if (typeof id !== "string" || !isUuid(id)) {
    errors.push({ index, field: "event_id", message: "required, a UUID such as 123e4567-e89b-12d3-a456-426614174000" });
  }
  const ts = e.event_timestamp;
  if (typeof ts !== "string" || !isRfc3339(ts)) {
    errors.push({ index, field: "event_timestamp", message: "required, an RFC 3339 timestamp such as 2026-11-22T08:00:00Z" });
  }
  const processor = e.processor;
  if (typeof processor !== "string" || !(PROCESSORS as readonly string[]).includes(processor)) {
    errors.push({ index, field: "processor", message: PROCESSOR_LIST });
  }
  for (let k = 0; k < OPTIONAL_NAMES.length; k++) {
    const v = e[OPTIONAL_NAMES[k]!];
    if (v === undefined || v === null) continue;
    const max = OPTIONAL_MAX[k]!;
    if (typeof v !== "string") errors.push({ index, field: OPTIONAL_NAMES[k]!, message: "must be a string" });
    // .length counts UTF-16 units, an upper bound of characters: count code points only past it.
    else if (v.length > max && [...v].length > max) errors.push({ index, field: OPTIONAL_NAMES[k]!, message: `at most ${max} characters` });
  }
  const rc = e.retry_count;
  if (rc !== undefined && rc !== null) {
    // Written as plain digits: `100.0000000000000001`, `1e2`, `100.0` and `-0` parse to
    // numbers that would be stored as something the client did not send.
    const literal = facts?.retryCount;
    const literalOk = literal == null || isSmallPlainInteger(literal);
    if (!(literalOk && Number.isInteger(rc) && (rc as number) >= 0 && (rc as number) <= 100)) {
      errors.push({ index, field: "retry_count", message: "must be an integer from 0 to 100" });
    }
  }
  if (facts !== undefined) {
    for (const name of facts.duplicates) errors.push({ index, field: name, message: "appears more than once in this event; send each member once" });
  }
  return errors.length === before;
}

/** 0, or 1 to 3 digits without a leading zero (what /^(0|[1-9][0-9]{0,2})$/ matches). */
function isSmallPlainInteger(s: string): boolean {
  const n = s.length;
  if (n === 0 || n > 3) return false;
  if (s.charCodeAt(0) === 0x30) return n === 1;
  for (let i = 0; i < n; i++) if (!isDigit(s.charCodeAt(i))) return false;
  return true;
}

function isDigit(c: number): boolean {
  return c >= 0x30 && c <= 0x39;
}

/** 8-4-4-4-12 hex digits, either case (the old service's /^[0-9a-f]{8}-...-[0-9a-f]{12}$/i), without a regex. */
export function isUuid(s: string): boolean {
  return parseUuid(s, SCRATCH);
}
const SCRATCH = new Uint32Array(4);

/** Hex digit values by character code, -1 for anything else. */
const HEX = new Int8Array(128).fill(-1);
for (let i = 0; i < 16; i++) HEX["0123456789abcdef".charCodeAt(i)] = HEX["0123456789ABCDEF".charCodeAt(i)] = i;

/** A UUID's 128 bits as four 32-bit words at out[at..]; false for anything that is not 8-4-4-4-12 hex digits. One pass, no allocation. */
export function parseUuid(id: string, out: Uint32Array, at = 0): boolean {
  if (id.length !== 36) return false;
  for (let i = 0; i < 36; i++) {
    const c = id.charCodeAt(i);
    UUID_TEXT[i] = c < 128 ? c : 0xff;
  }
  return uuidWordsAt(UUID_TEXT, 0, out, at);
}
const UUID_TEXT = new Uint8Array(36);

/** The same for the 36 ASCII bytes at bytes[from..] (src/plain-events.ts reads ids where they lie). */
export function uuidWordsAt(bytes: Uint8Array, from: number, out: Uint32Array, at: number): boolean {
  let word = 0;
  let hexDigits = 0;
  for (let i = 0; i < 36; i++) {
    const c = bytes[from + i]!;
    if (i === 8 || i === 13 || i === 18 || i === 23) {
      if (c !== 45 /* - */) return false;
      continue;
    }
    const v = c < 128 ? HEX[c]! : -1;
    if (v < 0) return false;
    word = (word << 4) | v;
    if ((++hexDigits & 7) === 0) {
      out[at + (hexDigits >> 3) - 1] = word;
      word = 0;
    }
  }
  return true;
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
  // YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM), read by position (as fast as it gets without a regex).
  const n = s.length;
  if (n < 20) return false;
  const year = digits(s, 0, 4);
  const month = digits(s, 5, 2);
  const day = digits(s, 8, 2);
  const hour = digits(s, 11, 2);
  const minute = digits(s, 14, 2);
  const second = digits(s, 17, 2);
  if ((year | month | day | hour | minute | second) < 0) return false;
  if (s.charCodeAt(4) !== 0x2d || s.charCodeAt(7) !== 0x2d || s.charCodeAt(13) !== 0x3a || s.charCodeAt(16) !== 0x3a) return false;
  const t = s.charCodeAt(10);
  if (t !== 0x54 /* T */ && t !== 0x74 /* t */) return false;
  let i = 19;
  if (s.charCodeAt(i) === 0x2e /* . */) {
    const from = ++i;
    while (i < n && isDigit(s.charCodeAt(i))) i++;
    if (i === from) return false;
  }
  let offsetMinutes = 0;
  const z = s.charCodeAt(i);
  if (z === 0x5a /* Z */ || z === 0x7a /* z */) {
    if (i !== n - 1) return false;
  } else if ((z === 0x2b /* + */ || z === 0x2d /* - */) && i === n - 6 && s.charCodeAt(i + 3) === 0x3a) {
    const oh = digits(s, i + 1, 2);
    const om = digits(s, i + 4, 2);
    if (oh < 0 || om < 0 || oh > 23 || om > 59) return false;
    offsetMinutes = (z === 0x2d ? -1 : 1) * (oh * 60 + om);
  } else return false;

  if (year < 1) return false;
  const maxDay = daysInMonth(year, month);
  if (maxDay === undefined || day < 1 || day > maxDay) return false;
  if (hour > 23 || minute > 59 || second > 60) return false;
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

/** The decimal value of the `count` ASCII digits at s[at], or -1 if one is not a digit (the caller checks the length). */
function digits(s: string, at: number, count: number): number {
  let v = 0;
  for (let i = at; i < at + count; i++) {
    const c = s.charCodeAt(i);
    if (!isDigit(c)) return -1;
    v = v * 10 + (c - 0x30);
  }
  return v;
}

function daysInMonth(year: number, month: number): number | undefined {
  const leap = (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0;
  return month === 2 && leap ? 29 : DAYS_IN_MONTH[month - 1];
}

/** Dedup identity of an event: UUIDs compare case-insensitively. */
export function dedupKey(event: PaymentEvent): string {
  return event.event_id.toLowerCase();
}
