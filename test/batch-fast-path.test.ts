/**
 * The batch path's fast versions (issue 9) against the code they replaced,
 * kept verbatim in test/support/batch-reference.ts: the same scan facts, the
 * same validation errors, the same stored bytes, on thousands of random and
 * mutated inputs (seeded, so a failure replays). The CRC of every framed line
 * is also checked against a bitwise CRC-32, independent of zlib.
 */
import { describe, expect, test } from "bun:test";
import { DedupIndex, type Claim } from "../src/dedup.ts";
import { isRfc3339, isUuid, KNOWN_FIELDS, PROCESSORS, validateEvent, type FieldError, type PaymentEvent } from "../src/events.ts";
import { KnownMembers, scanJson, type EventFacts } from "../src/json-scan.ts";
import { crc32 } from "node:zlib";
import { crcWithoutLast, frame, toRecord, unframe } from "../src/record.ts";
import { frameRef, isRfc3339Ref, KnownMembersRef, scanJsonRef, toRecordRef, validateEventRef } from "./support/batch-reference.ts";
import { mutate, rng } from "./support/rng.ts";

type R = () => number;
const int = (r: R, n: number) => Math.floor(r() * n);
const pick = <T>(r: R, xs: readonly T[]): T => xs[int(r, xs.length)]!;
const hexDigits = (r: R, n: number) => Array.from({ length: n }, () => "0123456789abcdefABCDEF"[int(r, 22)]).join("");
const uuid = (r: R) => `${hexDigits(r, 8)}-${hexDigits(r, 4)}-${hexDigits(r, 4)}-${hexDigits(r, 4)}-${hexDigits(r, 12)}`;

const TEXT = ["a", "é", "😀", "\u0000", "\n", '"', "\\", "[", "{", "}", "]", ",", ":", "event_id", "\ud800", " "];
const randomText = (r: R, max = 12) => Array.from({ length: int(r, max) }, () => pick(r, TEXT)).join("");

// ---- JSON texts for the pre-scan ----

const NUMBERS = ["0", "-0", "7", "100", "101", "1.0", "1e2", "100.0000000000000001", "-1", "00", " 3 ", "1é"];
const STRUCTURE = ["{", "}", "[", "]", ",", ":", '"', "\\", " ", "\n", "é", "1", "x"];

function key(r: R): string {
  const name = r() < 0.7 ? pick(r, KNOWN_FIELDS) : pick(r, ["x", "", "meta", "event_ids", "retry_count ", "é", "a\\\"b"]);
  // JSON.parse reads `event\u005fid` as event_id: the scan must too.
  return r() < 0.1 ? name.replace("_", "\\u005f") : name;
}

function value(r: R, depth: number): string {
  // Deep nesting comes as a chain (cheap); wide nesting stays shallow.
  if (r() < 0.01) return "[".repeat(28 + int(r, 8)) + "]".repeat(28 + int(r, 8));
  const k = int(r, depth > 3 ? 3 : 6);
  if (k === 0) return pick(r, NUMBERS);
  if (k === 1) return JSON.stringify(randomText(r));
  if (k === 2) return pick(r, ["true", "false", "null"]);
  if (k === 3) return object(r, depth + 1);
  if (k === 4) return `[${Array.from({ length: int(r, 3) }, () => value(r, depth + 1)).join(",")}]`;
  return r() < 0.5 ? object(r, depth + 1) : pick(r, NUMBERS);
}

function object(r: R, depth: number): string {
  const ws = () => (r() < 0.2 ? pick(r, [" ", "\n", "\t", "\r\n "]) : "");
  const members = Array.from({ length: int(r, depth > 2 ? 3 : 10) }, () => `${ws()}"${key(r)}"${ws()}:${ws()}${value(r, depth)}${ws()}`);
  return `{${members.join(",")}}`;
}

function body(r: R): string {
  const text = r() < 0.8 ? `[${Array.from({ length: int(r, 8) }, () => (r() < 0.9 ? object(r, 2) : value(r, 2))).join(",")}]` : object(r, 1);
  return r() < 0.3 ? mutate(r, text, STRUCTURE) : text;
}

describe("scanJson gives what the previous scan gave", () => {
  const known = new KnownMembers(KNOWN_FIELDS);
  const knownRef = new KnownMembersRef(KNOWN_FIELDS);
  const asPlain = (facts: EventFacts[]) => Array.from(facts, (f) => (f === undefined ? null : { duplicates: [...f.duplicates], retryCount: f.retryCount }));

  test("15,000 random and mutated bodies, as batches and as single events", () => {
    const r = rng(1);
    const enc = new TextEncoder();
    let tooDeep = 0;
    let duplicates = 0;
    for (let n = 0; n < 15_000; n++) {
      const bytes = enc.encode(body(r));
      const depth = r() < 0.5 ? 2 : 1;
      const maxEvents = 1 + int(r, 10);
      const facts: EventFacts[] = [];
      const ref: EventFacts[] = [];
      const outcome = scanJson(bytes, 0, bytes.length, depth, known, facts, 0, maxEvents);
      expect(outcome).toBe(scanJsonRef(bytes, 0, bytes.length, depth, knownRef, ref, 0, maxEvents));
      expect(asPlain(facts)).toEqual(asPlain(ref));
      if (outcome === "too_deep") tooDeep++;
      if (facts.some((f) => f !== undefined && f.duplicates.length > 0)) duplicates++;
    }
    // The generator reaches the interesting cases.
    expect(tooDeep).toBeGreaterThan(10);
    expect(duplicates).toBeGreaterThan(1000);
  });

  test("NDJSON lines: a slice of a larger buffer, facts at an offset", () => {
    const r = rng(2);
    const enc = new TextEncoder();
    for (let n = 0; n < 5000; n++) {
      const lines = Array.from({ length: 3 }, () => (r() < 0.8 ? object(r, 1) : mutate(r, object(r, 1), STRUCTURE)));
      const bytes = enc.encode(lines.join("\n"));
      const start = enc.encode(lines[0]!).length + 1;
      const end = start + enc.encode(lines[1]!).length;
      const facts: EventFacts[] = [];
      const ref: EventFacts[] = [];
      expect(scanJson(bytes, start, end, 1, known, facts, 5, 1)).toBe(scanJsonRef(bytes, start, end, 1, knownRef, ref, 5, 1));
      expect(asPlain(facts)).toEqual(asPlain(ref));
    }
  });
});

// ---- events for validation ----

const TIMESTAMP_CHARS = ["0", "1", "2", "3", "5", "9", "-", ":", "T", "t", "Z", "z", "+", ".", " ", "٣", "２", "x", "6", "4"];

function timestamp(r: R): string {
  const d2 = () => String(int(r, 100)).padStart(2, "0");
  const year = pick(r, ["0000", "0001", "1999", "2000", "2024", "2026", "2100", "9999", String(int(r, 10000)).padStart(4, "0")]);
  const month = r() < 0.8 ? String(1 + int(r, 12)).padStart(2, "0") : d2();
  const day = r() < 0.7 ? String(1 + int(r, 31)).padStart(2, "0") : d2();
  const leap = r() < 0.3;
  const hour = leap ? pick(r, ["23", "00", "22", "01"]) : r() < 0.8 ? String(int(r, 24)).padStart(2, "0") : d2();
  const minute = leap ? pick(r, ["59", "00", "29", "30"]) : r() < 0.8 ? String(int(r, 60)).padStart(2, "0") : d2();
  const second = leap ? "60" : r() < 0.9 ? String(int(r, 60)).padStart(2, "0") : d2();
  const frac = r() < 0.3 ? `.${"1234567890".slice(0, 1 + int(r, 10))}` : r() < 0.05 ? "." : "";
  const zone = r() < 0.4 ? pick(r, ["Z", "z"]) : `${pick(r, ["+", "-"])}${pick(r, ["00", "01", "05", "23", "24", d2()])}:${pick(r, ["00", "30", "59", "60", d2()])}`;
  const s = `${year}-${month}-${day}${pick(r, ["T", "t", "T", " "])}${hour}:${minute}:${second}${frac}${zone}`;
  return r() < 0.3 ? mutate(r, s, TIMESTAMP_CHARS) : s;
}

const UUID_CHARS = ["0", "a", "F", "g", "G", "-", "é", "K", "ſ", " ", "İ"];
const LIMITED = ["merchant_id_hash", "payment_intent_id_hash", "failure_category", "geo_bucket", "amount_bucket", "channel"];

function event(r: R): { value: unknown; facts: EventFacts | undefined } {
  if (r() < 0.03) return { value: pick(r, [null, [], 3, "x", [{}]]), facts: undefined };
  const e: Record<string, unknown> = {};
  const maybe = (field: string, make: () => unknown) => {
    if (r() < 0.92) e[field] = make();
  };
  maybe("event_type", () => (r() < 0.95 ? "payment_failed" : pick(r, ["", 3, null, ["x"]])));
  maybe("event_id", () => (r() < 0.85 ? uuid(r) : r() < 0.8 ? mutate(r, uuid(r), UUID_CHARS) : pick(r, [null, 7, ""])));
  maybe("event_timestamp", () => (r() < 0.95 ? timestamp(r) : pick(r, [null, 1_700_000_000])));
  maybe("processor", () => (r() < 0.9 ? pick(r, PROCESSORS) : pick(r, ["Stripe", "", "paypal", 1, null])));
  for (const field of LIMITED) {
    if (r() < 0.3) e[field] = r() < 0.9 ? "é😀ab".repeat(int(r, 30)) : pick(r, [null, 5, true, {}]);
  }
  maybe("retry_count", () => (r() < 0.8 ? int(r, 110) : pick(r, [-1, 1.5, 100.5, "3", null, -0, 1e2])));
  const facts: EventFacts = {
    duplicates: r() < 0.05 ? [pick(r, KNOWN_FIELDS), "processor"].filter((x, i, a) => a.indexOf(x) === i) : [],
    retryCount: r() < 0.6 ? null : pick(r, ["0", "00", "7", "100", "101", "1000", "-0", "1.0", "1e2", "007", "99", ""]),
  };
  return { value: e, facts: r() < 0.9 ? facts : undefined };
}

describe("validation gives what the previous validation gave", () => {
  test("20,000 random events: the same errors, in the same order", () => {
    const r = rng(3);
    let valid = 0;
    for (let n = 0; n < 20_000; n++) {
      const { value, facts } = event(r);
      const errors: FieldError[] = [];
      const ref: FieldError[] = [];
      const index = int(r, 500);
      expect(validateEvent(value, index, errors, facts)).toBe(validateEventRef(value, index, ref, facts));
      expect(errors).toEqual(ref);
      if (ref.length === 0) valid++;
    }
    expect(valid).toBeGreaterThan(300);
  });

  test("isRfc3339 against the regex version on 100,000 generated and mutated timestamps", () => {
    const r = rng(4);
    let accepted = 0;
    for (let n = 0; n < 100_000; n++) {
      const s = timestamp(r);
      const ok = isRfc3339Ref(s);
      if (isRfc3339(s) !== ok) throw new Error(`isRfc3339(${JSON.stringify(s)}) should be ${ok}`);
      if (ok) accepted++;
    }
    expect(accepted).toBeGreaterThan(10_000);
  });

  test("isUuid is the old case-insensitive regex, for non-ASCII look-alikes too", () => {
    const re = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
    const r = rng(5);
    for (let n = 0; n < 50_000; n++) {
      const s = r() < 0.5 ? uuid(r) : mutate(r, uuid(r), UUID_CHARS);
      if (isUuid(s) !== re.test(s)) throw new Error(`isUuid(${JSON.stringify(s)})`);
    }
  });
});

// ---- stored bytes ----

const KEYS = ["event_id", "a", "0", "12", "4294967295", "-1", "__proto__", "received_at", "key_id", "crc", "é", "😀", "x\ny", "toJSON"];

function storedValue(r: R, depth: number): unknown {
  const k = int(r, depth > 3 ? 4 : 6);
  if (k === 0) return randomText(r, 20);
  if (k === 1) return pick(r, [0, -0, 1.5, 1e21, -3, 123456789]);
  if (k === 2) return pick(r, [true, false, null]);
  if (k === 3) return "é😀\u2028".repeat(int(r, 4));
  if (k === 4) return Array.from({ length: int(r, 3) }, () => storedValue(r, depth + 1));
  return storedObject(r, depth + 1);
}

function storedObject(r: R, depth: number): Record<string, unknown> {
  const o: Record<string, unknown> = {};
  for (let n = int(r, 6); n > 0; n--) o[r() < 0.6 ? pick(r, KEYS) : randomText(r, 6)] = storedValue(r, depth);
  return o;
}

/** CRC-32 (IEEE, reflected), bit by bit: the definition, not zlib. */
function crcBitwise(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

describe("stored bytes are what the previous toRecord + frame wrote", () => {
  test("2,000 batches of random events (reserved and integer-like names, non-ASCII, nesting) frame to the same bytes", () => {
    const r = rng(6);
    for (let n = 0; n < 2000; n++) {
      // The event as JSON.parse gives it to the service (own __proto__ members included).
      const texts = Array.from({ length: 1 + int(r, 4) }, () => JSON.stringify({ event_id: uuid(r), ...storedObject(r, 0) }));
      const receivedAt = new Date(int(r, 4e12)).toISOString();
      const keyId = hexDigits(r, 12).toLowerCase();
      const expected = Buffer.from(frameRef(texts.map((t) => toRecordRef(JSON.parse(t), receivedAt, keyId))));
      const events = texts.map((t) => JSON.parse(t) as PaymentEvent);
      const records = events.map((e) => toRecord(e, receivedAt, keyId));
      expect(frame(records).equals(expected)).toBe(true);
      // A second call on the same (now extended) event gives the same record.
      expect(events.map((e) => toRecord(e, receivedAt, keyId))).toEqual(records);
    }
  });

  test("crcWithoutLast: the CRC-32 of random buffers but their last byte, from zlib's CRC of all of them", () => {
    const r = rng(8);
    for (let n = 0; n < 5000; n++) {
      const bytes = Uint8Array.from({ length: 1 + int(r, 300) }, () => int(r, 256));
      const expected = crcBitwise(bytes.subarray(0, bytes.length - 1));
      expect(crcWithoutLast(crc32(bytes), bytes[bytes.length - 1]!)).toBe(expected);
    }
  });

  test("each line's crc is the CRC-32 of the line up to it, and unframe reads the record back", () => {
    const r = rng(7);
    for (let n = 0; n < 500; n++) {
      const records = Array.from({ length: 1 + int(r, 5) }, () => toRecord({ event_id: uuid(r), ...storedObject(r, 0) }, new Date(0).toISOString(), "0123456789ab"));
      const out = frame(records);
      let start = 0;
      for (const record of records) {
        const nl = out.indexOf(0x0a, start);
        const line = out.subarray(start, nl);
        const crc = Number.parseInt(line.toString("latin1", line.length - 10, line.length - 2), 16);
        expect(crc).toBe(crcBitwise(line.subarray(0, line.length - 18)));
        expect(unframe(line)?.toString("utf8")).toBe(record);
        start = nl + 1;
      }
      expect(start).toBe(out.length);
    }
  });
});

describe("dedup index", () => {
  test("growing while the ring wraps keeps every live id, in order", async () => {
    const dedup = new DedupIndex(1000, 1_000_000);
    const t0 = Date.now();
    const ids = (n: number, tag: number) => Array.from({ length: n }, (_, i) => `${tag.toString(16).padStart(8, "0")}-0000-4000-8000-${i.toString(16).padStart(12, "0")}`);
    const add = async (batch: string[], now: number) => dedup.commit(await dedup.claim(batch, now), now);
    const old = ids(512, 1);
    const mid = ids(512, 2);
    await add(old, t0); // expires at t0 + 1000
    await add(mid, t0 + 900); // fills the first 1024 entries
    const late = ids(901, 3);
    await add(late.slice(0, 1), t0 + 1500); // grows to 1280 entries, then drops `old` from the head
    await add(late.slice(1), t0 + 1500); // wraps past the end of the arrays, and grows again while wrapped
    const peek = async (batch: string[], now: number) => {
      const claim = await dedup.claim(batch, now);
      dedup.release(claim);
      return claim.owned;
    };
    expect((await peek(old, t0 + 1600)).every((o) => o)).toBe(true);
    expect((await peek([...mid, ...late], t0 + 1600)).some((o) => o)).toBe(false);
    expect(dedup.size).toBe(1413);
    // The snapshot lists them oldest first.
    const words = Array.from(dedup.window().chunks(), (c) => [...c]).flat();
    expect(words[0]).toBe(2);
    expect(words[words.length - 5]).toBe(3);
  });

  test("a claim waits for ids another request holds; repeats within a request count as duplicates", async () => {
    const dedup = new DedupIndex(60_000, 100);
    const x = crypto.randomUUID();
    const y = crypto.randomUUID();
    const z = crypto.randomUUID();
    const now = Date.now();
    const a = await dedup.claim([x, y], now);
    let b: Claim | null = null;
    const pending = dedup.claim([y, z, z], now).then((c) => (b = c));
    await new Promise((resolve) => setTimeout(resolve, 5));
    expect(b).toBeNull(); // y is in flight
    dedup.commit(a, now);
    await pending;
    expect(b!.owned).toEqual([false, true, false]);
    expect(b!.duplicates).toBe(2);

    dedup.commit(b!, now);
    const c = await dedup.claim([x, z], now); // both seen now
    expect(c.owned).toEqual([false, false]);
    const fresh = crypto.randomUUID();
    const d = await dedup.claim([fresh], now);
    const e = dedup.claim([fresh, fresh], now);
    dedup.release(d); // the write failed: the waiter stores it
    expect((await e).owned).toEqual([true, false]);
  });
});
