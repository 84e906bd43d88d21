/**
 * The common body read straight from its bytes, without JSON.parse, object
 * validation or JSON.stringify. An event is plain when it is written
 * compactly (no whitespace inside it), in ASCII, with no escapes, with only
 * schema members, each once, strings, `null` or a plain retry_count, and is
 * valid. For such an event JSON.stringify(JSON.parse(text)) is the text
 * itself, so its stored record is its own bytes with the service's members
 * added (src/record.ts, frameSpans). A body is plain when every event in it
 * is; any other body (null here) takes the general path in src/ingest.ts,
 * which also words every error. The reading stops at the first byte that is
 * not plain, so a hostile body costs at most one pass.
 */
import { isRfc3339, KNOWN_FIELDS, OPTIONAL_LIMITS, PROCESSORS, uuidWordsAt } from "./events.ts";
import { KnownMembers } from "./json-scan.ts";

export interface PlainEvents {
  /** The body, as a Buffer (src/record.ts frameSpans copies the events out of it). */
  bytes: Buffer;
  /** Each event's bytes: [spans[2i], spans[2i + 1]), from its `{` to just past its `}`. */
  spans: number[];
  /** Each event's event_id as 128 bits, four words each (src/dedup.ts takes them as they are). */
  words: Uint32Array;
}

/** One event (the single route), a JSON array of them (batch) or one per line (NDJSON). */
export type BodyShape = "one" | "array" | "lines";

const KNOWN = new KnownMembers(KNOWN_FIELDS);
const EVENT_TYPE = KNOWN_FIELDS.indexOf("event_type");
const EVENT_ID = KNOWN_FIELDS.indexOf("event_id");
const EVENT_TIMESTAMP = KNOWN_FIELDS.indexOf("event_timestamp");
const PROCESSOR = KNOWN_FIELDS.indexOf("processor");
const RETRY_COUNT = KNOWN_FIELDS.indexOf("retry_count");
const REQUIRED = (1 << EVENT_TYPE) | (1 << EVENT_ID) | (1 << EVENT_TIMESTAMP) | (1 << PROCESSOR);
/** Longest string each member may hold, by member index (required members: no limit here). */
const MAX_LENGTH = KNOWN_FIELDS.map((name) => OPTIONAL_LIMITS.get(name) ?? Infinity);
const PROCESSOR_BYTES = PROCESSORS.map((p) => Array.from(p, (c) => c.charCodeAt(0)));

const QUOTE = 0x22;
const COMMA = 0x2c;
const COLON = 0x3a;
const OPEN_OBJECT = 0x7b;
const CLOSE_OBJECT = 0x7d;
const LF = 0x0a;
/** 1 for the bytes a plain string holds: printable ASCII but `"` and `\` (control characters are not JSON; escapes and non-ASCII are read the general way). */
const PLAIN_STRING_BYTE = new Uint8Array(256);
for (let b = 0x20; b < 0x80; b++) if (b !== QUOTE && b !== 0x5c) PLAIN_STRING_BYTE[b] = 1;

/** The events of a plain body, or null: read it the general way. */
export function readPlainEvents(body: Uint8Array, shape: BodyShape, maxEvents: number): PlainEvents | null {
  // A Buffer view, for its native latin1 slices (a tenth of building the strings in JS).
  const bytes = Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  const out: PlainEvents = { bytes, spans: [], words: new Uint32Array(shape === "one" ? 4 : 256) };
  const n = bytes.length;
  if (shape === "lines") {
    for (let i = 0; i < n; ) {
      while (i < n && isLineSpace(bytes[i]!)) i++;
      if (i < n && bytes[i] !== LF) {
        if (out.spans.length === 2 * maxEvents) return null;
        i = readEvent(bytes, i, out);
        if (i < 0) return null;
        while (i < n && isLineSpace(bytes[i]!)) i++;
        if (i < n && bytes[i] !== LF) return null;
      }
      i++;
    }
  } else {
    let i = skipSpace(bytes, 0);
    if (shape === "array") {
      if (bytes[i] !== 0x5b /* [ */) return null;
      i = skipSpace(bytes, i + 1);
      for (;;) {
        if (out.spans.length === 2 * maxEvents) return null;
        i = readEvent(bytes, i, out);
        if (i < 0) return null;
        i = skipSpace(bytes, i);
        if (bytes[i] === 0x5d /* ] */) break;
        if (bytes[i] !== COMMA) return null;
        i = skipSpace(bytes, i + 1);
      }
      i++;
    } else {
      i = readEvent(bytes, i, out);
      if (i < 0) return null;
    }
    if (skipSpace(bytes, i) !== n) return null;
  }
  if (out.spans.length === 0) return null;
  out.words = out.words.subarray(0, 2 * out.spans.length);
  return out;
}

/** Reads the plain, valid event at bytes[at] into `out`; returns where it ends, or -1. */
function readEvent(bytes: Buffer, at: number, out: PlainEvents): number {
  const n = bytes.length;
  if (bytes[at] !== OPEN_OBJECT) return -1;
  let i = at + 1;
  let seen = 0;
  let idAt = -1;
  for (;;) {
    if (bytes[i] !== QUOTE) return -1;
    const k = KNOWN.at(bytes, i + 1, n);
    if (k < 0) return -1;
    const bit = 1 << k;
    if ((seen & bit) !== 0) return -1;
    seen |= bit;
    i += 2 + KNOWN.lengthOf(k); // past the name's closing quote
    if (bytes[i++] !== COLON) return -1;
    const c = bytes[i];
    if (c === QUOTE) {
      const from = ++i;
      while (PLAIN_STRING_BYTE[bytes[i]!] === 1) i++; // undefined past the end stops it too
      if (bytes[i] !== QUOTE) return -1;
      const length = i - from;
      i++;
      if (k === EVENT_ID) {
        if (length !== 36) return -1;
        idAt = from;
      } else if (k === EVENT_TIMESTAMP) {
        if (length > 64 || !isRfc3339(bytes.toString("latin1", from, i - 1))) return -1;
      } else if (k === PROCESSOR) {
        if (!isProcessor(bytes, from, length)) return -1;
      } else if (k === EVENT_TYPE) {
        if (length === 0) return -1;
      } else if (k === RETRY_COUNT || length > MAX_LENGTH[k]!) return -1;
    } else if (c === 0x6e /* n */) {
      // null: allowed where the member is optional.
      if ((REQUIRED & bit) !== 0 || bytes[i + 1] !== 0x75 || bytes[i + 2] !== 0x6c || bytes[i + 3] !== 0x6c) return -1;
      i += 4;
    } else if (k === RETRY_COUNT && c !== undefined && c >= 0x30 && c <= 0x39) {
      // 0..100 in plain digits, as the general path requires.
      let v = 0;
      const from = i;
      while (i < n && bytes[i]! >= 0x30 && bytes[i]! <= 0x39) v = v * 10 + (bytes[i++]! - 0x30);
      if ((c === 0x30 && i - from > 1) || i - from > 3 || v > 100) return -1;
    } else return -1;
    const next = bytes[i++];
    if (next === CLOSE_OBJECT) break;
    if (next !== COMMA) return -1;
  }
  if ((seen & REQUIRED) !== REQUIRED) return -1;
  const index = out.spans.length / 2;
  if (out.words.length < 4 * (index + 1)) {
    const grown = new Uint32Array(out.words.length * 2);
    grown.set(out.words);
    out.words = grown;
  }
  if (!uuidWordsAt(bytes, idAt, out.words, 4 * index)) return -1;
  out.spans.push(at, i);
  return i;
}

/** Whether bytes[from, from + length) is one of the processors. */
function isProcessor(bytes: Uint8Array, from: number, length: number): boolean {
  for (const p of PROCESSOR_BYTES) {
    if (p.length !== length) continue;
    let j = 0;
    while (j < length && bytes[from + j] === p[j]) j++;
    if (j === length) return true;
  }
  return false;
}

/** JSON whitespace. */
function skipSpace(bytes: Uint8Array, i: number): number {
  const n = bytes.length;
  while (i < n) {
    const b = bytes[i]!;
    if (b !== 0x20 && b !== 0x0a && b !== 0x0d && b !== 0x09) break;
    i++;
  }
  return i;
}

/** Whitespace within an NDJSON line (its LF ends it). */
function isLineSpace(b: number): boolean {
  return b === 0x20 || b === 0x0d || b === 0x09;
}
