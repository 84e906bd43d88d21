import { crc32 } from "node:zlib";
import { parseUuid, uuidWordsAt, type PaymentEvent } from "./events.ts";

/**
 * The stored record, in one place: how an event becomes a record, how a
 * record is framed as a line of the event log (and checked when read), and
 * how facts are read back out of it. A record is
 * `{...the event as sent...,"received_at":"<ISO 8601, 24 chars>","key_id":"<12 hex>"}`,
 * a line is the record with `,"crc":"<8 hex>"` before its closing brace and a
 * newline after it. Records are written with JSON.stringify, so member names
 * are never escaped.
 */

/** `,"crc":"xxxxxxxx"}` closes every line. */
const CRC_SUFFIX_BYTES = 18;

/** Fields the service writes into every stored record; a client's own values of these names are replaced. */
const RESERVED = ["received_at", "key_id", "crc"] as const;

/**
 * The stored form of an event: as sent, then `received_at` and `key_id` last
 * (readers rely on that order). The two members are added to `event` itself
 * (the request's own parse result, read for nothing else afterwards) when it
 * has none of the reserved names: JSON.stringify then yields the record in one
 * flat string, which frames faster than a concatenation, and puts them exactly
 * where the concatenation did (after every member, integer-like names first
 * as before). A second call gives the same record (the slow path below).
 */
export function toRecord(event: PaymentEvent, receivedAt: string, keyId: string): string {
  const e: Record<string, unknown> = event;
  if (!("received_at" in e || "key_id" in e || "crc" in e)) {
    e.received_at = receivedAt;
    e.key_id = keyId;
    return JSON.stringify(e);
  }
  const copy: Record<string, unknown> = { ...e };
  for (const f of RESERVED) delete copy[f];
  const json = JSON.stringify(copy);
  return `${json.slice(0, -1)},"received_at":"${receivedAt}","key_id":"${keyId}"}`;
}

const CRC_MEMBER = Buffer.from(',"crc":"');
const HEX_DIGITS = Buffer.from("0123456789abcdef");

/**
 * Frames records (JSON object texts, so each ends with `}`) as log lines, in
 * one buffer ready to write: each record is encoded into it once, and its CRC
 * is zlib's (native on Bun, Deno and Node) of the whole record with the
 * closing brace's step undone.
 */
export function frame(records: string[]): Buffer {
  let size = 0;
  for (const record of records) size += Buffer.byteLength(record) + CRC_SUFFIX_BYTES; // the `}` becomes the `\n`
  const out = Buffer.allocUnsafe(size);
  let o = 0;
  for (const record of records) {
    const body = out.write(record, o) - 1; // without the closing brace
    o = writeCrcSuffix(out, o + body, crcWithoutLast(crc32(record), 0x7d));
  }
  return out;
}

/** Writes `,"crc":"<8 hex>"}` and the newline at out[o]; returns where the line ends. */
function writeCrcSuffix(out: Buffer, o: number, crc: number): number {
  o += CRC_MEMBER.copy(out, o);
  for (let shift = 28; shift >= 0; shift -= 4) out[o++] = HEX_DIGITS[(crc >>> shift) & 15]!;
  out[o++] = 0x22; // "
  out[o++] = 0x7d; // }
  out[o++] = 0x0a; // \n
  return o;
}

/**
 * Frames events whose own bytes are their record text but for the service's
 * members (src/plain-events.ts): for each i with owned[i], src[spans[2i],
 * spans[2i + 1]) without its closing brace, then `received_at` and `key_id`,
 * then the CRC member. The same lines as frame([toRecord(...)]) of the parsed
 * events (test/plain-events.test.ts compares them).
 */
export function frameSpans(src: Buffer, spans: readonly number[], owned: readonly boolean[], receivedAt: string, keyId: string): Buffer {
  // Buffer.copy: a subarray per event (for set) costs several times the copy itself.
  const tail = Buffer.from(`,"received_at":"${receivedAt}","key_id":"${keyId}"`);
  let size = 0;
  for (let i = 0; i < owned.length; i++) if (owned[i]) size += spans[2 * i + 1]! - spans[2 * i]! - 1 + tail.length + CRC_SUFFIX_BYTES + 1;
  const out = Buffer.allocUnsafe(size);
  let o = 0;
  for (let i = 0; i < owned.length; i++) {
    if (!owned[i]) continue;
    const line = o;
    o += src.copy(out, o, spans[2 * i]!, spans[2 * i + 1]! - 1);
    o += tail.copy(out, o);
    o = writeCrcSuffix(out, o, crc32(out.subarray(line, o)));
  }
  return out;
}

/** The CRC-32 table (reflected 0xedb88320), and its entries by their top byte (all 256 top bytes differ). */
const CRC_TABLE = new Int32Array(256);
const BY_TOP_BYTE = new Uint8Array(256);
for (let n = 0; n < 256; n++) {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  CRC_TABLE[n] = c;
  BY_TOP_BYTE[c >>> 24] = n;
}

/**
 * The CRC-32 of some bytes without their last byte, given the CRC-32 of all
 * of them: the CRC's last step run backwards. Lets frame hash the record
 * string natively without cutting its brace off (a copy) first.
 */
export function crcWithoutLast(crc: number, last: number): number {
  const r = ~crc; // the register after the last step
  const x = BY_TOP_BYTE[r >>> 24]!; // the table index that step used
  return ~(((r ^ CRC_TABLE[x]!) << 8) | (x ^ last)) >>> 0;
}

const CRC_PREFIX = Buffer.from(',"crc":"');

/** Whether one line (without its newline) is whole and its CRC matches (byte by byte: no string per line). */
export function isIntactLine(line: Uint8Array): boolean {
  const n = line.length;
  if (n <= CRC_SUFFIX_BYTES + 1 || line[n - 1] !== 0x7d /* } */ || line[n - 2] !== 0x22 /* " */) return false;
  const p = n - CRC_SUFFIX_BYTES;
  if (!startsAt(line, p, CRC_PREFIX)) return false;
  let crc = 0;
  for (let i = p + 8; i < p + 16; i++) {
    const c = line[i]!;
    const v = c >= 48 && c <= 57 ? c - 48 : c >= 97 && c <= 102 ? c - 87 : -1; // lowercase hex, as frame writes it
    if (v < 0) return false;
    crc = crc * 16 + v;
  }
  return crc32(line.subarray(0, p)) === crc;
}

/** The record of one line (without its newline), with the crc member removed; null if the line is damaged. */
export function unframe(line: Uint8Array): Buffer | null {
  if (!isIntactLine(line)) return null;
  const n = line.length;
  const record = Buffer.allocUnsafe(n - CRC_SUFFIX_BYTES + 1);
  record.set(line.subarray(0, n - CRC_SUFFIX_BYTES));
  record[n - CRC_SUFFIX_BYTES] = 0x7d;
  return record;
}


const TAIL = Buffer.from(',"received_at":"');
/** `,"received_at":"` + 24 + `","key_id":"` + 12 + `"}` */
const TAIL_BYTES = 16 + 24 + 12 + 12 + 2;
const ID_MEMBER = Buffer.from('"event_id":"');

/**
 * The event_id (its 128 bits, into out[at..at + 4]) and received_at (ms) of
 * an intact log line (isIntactLine), read where they lie: the return value is
 * received_at, or NaN when the record has no such pair (an id that is not a
 * UUID included). Fast path: received_at sits at a fixed place from the end,
 * and a record whose text holds `"event_id":"` exactly once has it as its
 * top-level member (string values cannot hold the unescaped quotes; a nested
 * object with its own event_id makes it appear twice, and then the record is
 * parsed).
 */
export function storedId(line: Uint8Array, out: Uint32Array, at: number): number {
  const end = line.length - CRC_SUFFIX_BYTES; // where the record's closing brace was
  // The log's reads are Buffers already: no view to make per line (the crc suffix cannot hold the member searched for).
  const text = Buffer.isBuffer(line) ? line : Buffer.from(line.buffer, line.byteOffset, line.length);
  const tail = end + 1 - TAIL_BYTES;
  if (tail > 0 && startsAt(text, tail, TAIL)) {
    const first = text.indexOf(ID_MEMBER);
    if (first >= 0 && first < end && text.indexOf(ID_MEMBER, first + 1) < 0) {
      const start = first + ID_MEMBER.length;
      const receivedAt = isoMs(text, tail + 16);
      if (text[start + 36] === 0x22 /* " */ && receivedAt === receivedAt) return uuidWordsAt(text, start, out, at) ? receivedAt : NaN;
    }
  }
  let e: { event_id?: unknown; received_at?: unknown };
  try {
    e = JSON.parse(`${text.toString("utf8", 0, end)}}`);
  } catch {
    return NaN;
  }
  const receivedAt = typeof e.received_at === "string" ? Date.parse(e.received_at) : NaN;
  return typeof e.event_id === "string" && parseUuid(e.event_id, out, at) ? receivedAt : NaN;
}

/** Whether `b` holds `what` at `p` (a loop: the native compare costs more for 16 bytes). */
function startsAt(b: Uint8Array, p: number, what: Uint8Array): boolean {
  for (let i = 0; i < what.length; i++) if (b[p + i] !== what[i]) return false;
  return true;
}

/** The decimal number of b[p, p + digits), or NaN. */
function digitsAt(b: Uint8Array, p: number, digits: number): number {
  let v = 0;
  for (let i = p; i < p + digits; i++) {
    const c = b[i]! - 48;
    if (c < 0 || c > 9) return NaN;
    v = v * 10 + c;
  }
  return v;
}

/** The last day isoMs met (a replay reads mostly one day's records): yyyymmdd as a number, and its Date.UTC. */
let lastDay = NaN;
let lastDayMs = NaN;

/** Milliseconds of the `YYYY-MM-DDTHH:MM:SS.mmmZ` (toISOString's form) at b[p..p + 24], or NaN. */
function isoMs(b: Uint8Array, p: number): number {
  if (b[p + 4] !== 0x2d || b[p + 7] !== 0x2d || b[p + 10] !== 0x54 || b[p + 13] !== 0x3a || b[p + 16] !== 0x3a || b[p + 19] !== 0x2e || b[p + 23] !== 0x5a) return NaN; // - - T : : . Z
  const year = digitsAt(b, p, 4);
  if (year < 100) return NaN; // Date.UTC reads years 0-99 as 1900-1999: the caller parses those
  const month = digitsAt(b, p + 5, 2);
  const day = digitsAt(b, p + 8, 2);
  const key = year * 10000 + month * 100 + day;
  if (key !== lastDay) {
    lastDayMs = Date.UTC(year, month - 1, day); // out-of-range months and days roll over, as before
    lastDay = key;
  }
  return lastDayMs + ((digitsAt(b, p + 11, 2) * 60 + digitsAt(b, p + 14, 2)) * 60 + digitsAt(b, p + 17, 2)) * 1000 + digitsAt(b, p + 20, 3);
}
