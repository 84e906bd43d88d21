/**
 * The batch path's functions as they were before the per-event speed-up
 * (issue 9), kept verbatim as references: the fast versions in src/ must
 * give the same results on random inputs (test/batch-fast-path.test.ts).
 */
import { crc32 } from "node:zlib";
import { PROCESSORS, type FieldError } from "../../src/events.ts";
import { MAX_DEPTH, type EventFacts, type ScanOutcome } from "../../src/json-scan.ts";

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_OBJECT = 0x7b;
const CLOSE_OBJECT = 0x7d;
const OPEN_ARRAY = 0x5b;
const CLOSE_ARRAY = 0x5d;
const COMMA = 0x2c;
const COLON = 0x3a;

const ascii = new TextEncoder();
const decoder = new TextDecoder();

/**
 * Scans `bytes[start, end)`. Event objects sit at `eventDepth`: 1 for a single
 * event (or one NDJSON line), 2 for the elements of a batch array. Facts go to
 * `facts[firstIndex + i]` for the i-th event; at most `maxEvents` events are
 * counted before the scan stops with "too_many".
 */
export function scanJsonRef(
  bytes: Uint8Array,
  start: number,
  end: number,
  eventDepth: 1 | 2,
  known: KnownMembersRef,
  facts: EventFacts[],
  firstIndex: number,
  maxEvents: number,
): ScanOutcome {
  let depth = 0;
  // Element index within the top-level array (batch), or 0.
  let element = 0;
  let topIsArray = false;
  let inEvent = false;
  let expectKey = false;
  let keyStart = -1;
  let keyEscaped = false;
  let current: EventFacts | null = null;
  let seen = 0; // bit set of known members seen in the current event
  let retryValueStart = -1;
  let inString = false;

  for (let i = start; i < end; i++) {
    const b = bytes[i]!;
    if (inString) {
      if (b === BACKSLASH) {
        i++;
        if (keyStart >= 0) keyEscaped = true;
      } else if (b === QUOTE) {
        inString = false;
        if (keyStart >= 0) {
          const bit = known.lookup(bytes, keyStart, i, keyEscaped);
          if (bit !== 0 && current !== null) {
            if ((seen & bit) !== 0) {
              const name = known.nameOf(bit);
              if (!current.duplicates.includes(name)) (current.duplicates as string[]).push(name);
            }
            seen |= bit;
            retryValueStart = bit === known.retryCountBit ? -2 : -1; // -2: the value follows the colon
          } else retryValueStart = -1;
          keyStart = -1;
        }
      }
      continue;
    }
    switch (b) {
      case QUOTE:
        inString = true;
        if (inEvent && expectKey && depth === eventDepth) {
          keyStart = i + 1;
          keyEscaped = false;
          expectKey = false;
        }
        break;
      case OPEN_OBJECT:
      case OPEN_ARRAY:
        if (++depth > MAX_DEPTH) return "too_deep";
        if (depth === 1) topIsArray = b === OPEN_ARRAY;
        if (depth === eventDepth && b === OPEN_OBJECT && (eventDepth === 1 || topIsArray)) {
          const index = firstIndex + (eventDepth === 1 ? 0 : element);
          if (index - firstIndex >= maxEvents) return "too_many";
          current = facts[index] = { duplicates: [], retryCount: null };
          inEvent = true;
          expectKey = true;
          seen = 0;
        }
        break;
      case CLOSE_OBJECT:
      case CLOSE_ARRAY:
        if (depth === eventDepth && inEvent) {
          endMember(bytes, retryValueStart, i, current);
          retryValueStart = -1;
          inEvent = false;
          current = null;
        }
        if (depth > 0) depth--;
        break;
      case COMMA:
        if (depth === eventDepth && inEvent) {
          endMember(bytes, retryValueStart, i, current);
          retryValueStart = -1;
          expectKey = true;
        } else if (depth === 1 && topIsArray && eventDepth === 2 && ++element >= maxEvents) {
          // One element more than allowed has started (or a trailing comma JSON.parse refuses).
          return "too_many";
        }
        break;
      case COLON:
        if (depth === eventDepth && inEvent && retryValueStart === -2) retryValueStart = i + 1;
        break;
    }
  }
  return "ok";
}

/** Records the literal of retry_count (the member that just ended) when it is a number. */
function endMember(bytes: Uint8Array, valueStart: number, valueEnd: number, current: EventFacts | null): void {
  if (valueStart < 0 || current === null) return;
  let a = valueStart;
  let z = valueEnd;
  while (a < z && isSpace(bytes[a]!)) a++;
  while (z > a && isSpace(bytes[z - 1]!)) z--;
  const first = bytes[a];
  if (first === undefined || !(first === 0x2d || (first >= 0x30 && first <= 0x39))) return;
  current.retryCount = decoder.decode(bytes.subarray(a, z));
}

function isSpace(b: number): boolean {
  return b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d;
}

/** The member names whose repetition is refused, matched on raw bytes (decoded only when escaped). */
export class KnownMembersRef {
  private readonly names: string[];
  private readonly encoded: Uint8Array[];
  private readonly byName = new Map<string, number>();
  readonly retryCountBit: number;

  constructor(names: readonly string[]) {
    if (names.length > 30) throw new Error("at most 30 known members");
    this.names = [...names];
    this.encoded = this.names.map((n) => ascii.encode(n));
    this.names.forEach((n, i) => this.byName.set(n, 1 << i));
    this.retryCountBit = this.byName.get("retry_count") ?? 0;
  }

  /** The bit of the member named by bytes[a, z) (JSON string content), or 0. */
  lookup(bytes: Uint8Array, a: number, z: number, escaped: boolean): number {
    if (escaped) {
      // `"event\u005fid"` is `event_id` to JSON.parse: decode the (short) key to compare.
      if (z - a > 256) return 0;
      try {
        const name = JSON.parse(`"${decoder.decode(bytes.subarray(a, z))}"`) as string;
        return this.byName.get(name) ?? 0;
      } catch {
        return 0;
      }
    }
    const len = z - a;
    for (let k = 0; k < this.encoded.length; k++) {
      const e = this.encoded[k]!;
      if (e.length !== len) continue;
      let same = true;
      for (let j = 0; j < len; j++) {
        if (bytes[a + j] !== e[j]) {
          same = false;
          break;
        }
      }
      if (same) return 1 << k;
    }
    return 0;
  }

  nameOf(bit: number): string {
    return this.names[31 - Math.clz32(bit)]!;
  }
}

// ---- src/events.ts ----

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

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-](\d{2}):(\d{2}))$/;

type PaymentEvent = Record<string, unknown> & { event_id: string };

/**
 * Appends the problems of `value` to `errors`; returns true when it is a
 * valid event. `facts` (from the pre-scan of the body, src/json-scan.ts)
 * adds what JSON.parse hides: repeated members and retry_count's literal.
 */
export function validateEventRef(value: unknown, index: number, errors: FieldError[], facts?: EventFacts): value is PaymentEvent {
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    errors.push({ index, field: "", message: "an event must be a JSON object" });
    return false;
  }
  const before = errors.length;
  const e = value as Record<string, unknown>;
  const fail = (field: string, message: string) => errors.push({ index, field, message });

  if (typeof e.event_type !== "string" || e.event_type === "") fail("event_type", "required, a non-empty string");
  if (typeof e.event_id !== "string" || !UUID.test(e.event_id)) fail("event_id", "required, a UUID such as 123e4567-e89b-12d3-a456-426614174000");
  if (typeof e.event_timestamp !== "string" || !isRfc3339Ref(e.event_timestamp)) {
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

const DAYS_IN_MONTH = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];

/**
 * RFC 3339 date-time, strictly: real calendar dates (no 2026-02-30), years
 * 0001-9999, hours 00-23, offsets up to ±23:59, and second 60 only for a leap
 * second, which is 23:59:60 UTC on the last day of a month (so 00:59:60+01:00
 * on the 1st of the next month is one too).
 */
export function isRfc3339Ref(s: string): boolean {
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


// ---- src/record.ts ----

/** Fields the service writes into every stored record; a client's own values of these names are replaced. */
const RESERVED = ["received_at", "key_id", "crc"] as const;

/** The stored form of an event: as sent, then `received_at` and `key_id` last (readers rely on that order). */
export function toRecordRef(event: Record<string, unknown>, receivedAt: string, keyId: string): string {
  let e: Record<string, unknown> = event;
  if (RESERVED.some((f) => f in e)) {
    e = { ...e };
    for (const f of RESERVED) delete e[f];
  }
  const json = JSON.stringify(e);
  return `${json.slice(0, -1)},"received_at":"${receivedAt}","key_id":"${keyId}"}`;
}

/** Frames records (JSON object texts) as log lines. zlib's crc32 is native on Bun, Deno and Node. */
export function frameRef(records: string[]): string {
  let out = "";
  for (const record of records) {
    const body = record.slice(0, -1); // without the closing brace
    out += `${body},"crc":"${crc32(body).toString(16).padStart(8, "0")}"}\n`;
  }
  return out;
}

