/**
 * The plain-body path (src/plain-events.ts) against the general one: whenever
 * it takes a body, the general path (scan, JSON.parse, validateEvent,
 * toRecord, frame) must accept the same events and store the same bytes under
 * the same dedup ids; and the bodies clients send (compact, ASCII, schema
 * members) must be taken, or the path is dead code. Seeded, so a failure replays.
 */
import { describe, expect, test } from "bun:test";
import { dedupKey, KNOWN_FIELDS, parseUuid, validateEvent, type FieldError, type PaymentEvent } from "../src/events.ts";
import { KnownMembers, scanJson, type EventFacts } from "../src/json-scan.ts";
import { readPlainEvents, type BodyShape } from "../src/plain-events.ts";
import { frame, frameSpans, toRecord } from "../src/record.ts";
import { lineCounter } from "../src/ingest.ts";
import { mutate, rng } from "./support/rng.ts";

type R = () => number;
const int = (r: R, n: number) => Math.floor(r() * n);
const pick = <T>(r: R, xs: readonly T[]): T => xs[int(r, xs.length)]!;
const hex = (r: R, n: number) => Array.from({ length: n }, () => "0123456789abcdefABCDEF"[int(r, 22)]).join("");
const KNOWN = new KnownMembers(KNOWN_FIELDS);
const RECEIVED = "2026-11-22T21:30:00.123Z";
const KEY_ID = "0123456789ab";

/** A valid, compact event, members in a random order, optional ones sometimes left out or null. */
function validEvent(r: R): Record<string, unknown> {
  const e: Record<string, unknown> = {
    event_type: pick(r, ["payment_failed", "x", "refund issued", "a".repeat(300)]),
    event_id: `${hex(r, 8)}-${hex(r, 4)}-${hex(r, 4)}-${hex(r, 4)}-${hex(r, 12)}`,
    event_timestamp: pick(r, ["2026-11-22T08:00:00Z", "2024-02-29T23:59:59.123456+05:30", "2016-12-31T23:59:60Z", "1999-01-01t00:00:00z"]),
    processor: pick(r, ["stripe", "adyen", "checkout", "internal"]),
  };
  const optional = ["merchant_id_hash", "payment_intent_id_hash", "failure_category", "geo_bucket", "amount_bucket", "system_source", "channel", "retry_result", "failure_origin", "payment_method_bucket"];
  for (const f of optional) if (r() < 0.6) e[f] = r() < 0.1 ? null : pick(r, ["m_4f2a", "EU", "", "card declined!", "x".repeat(int(r, 21)), "~`<>{}[]:,'"]);
  if (r() < 0.6) e.retry_count = r() < 0.1 ? null : pick(r, [0, 1, 9, 10, 42, 99, 100]);
  const names = Object.keys(e);
  for (let i = names.length - 1; i > 0; i--) {
    const j = int(r, i + 1);
    [names[i], names[j]] = [names[j]!, names[i]!];
  }
  return Object.fromEntries(names.map((n) => [n, e[n]]));
}

function bodyOf(events: string[], shape: BodyShape, r: R): string {
  if (shape === "one") return events[0]!;
  if (shape === "lines") return events.map((e) => (r() < 0.2 ? ` ${e}\r` : e)).join(r() < 0.2 ? "\n\n" : "\n") + (r() < 0.5 ? "\n" : "");
  return `[${events.join(r() < 0.3 ? ", " : ",")}]${r() < 0.3 ? "\n" : ""}`;
}

/** The general path's verdict: the events' records framed, with their dedup ids, or null when it would not store them all. */
function general(bytes: Uint8Array, shape: BodyShape, maxBatch: number): { lines: Buffer; ids: string[] } | null {
  const facts: EventFacts[] = [];
  let values: unknown[] = [];
  try {
    if (shape === "lines") {
      const text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
      let from = 0;
      for (const line of text.split("\n")) {
        const at = Buffer.byteLength(text.slice(0, from));
        from += line.length + 1;
        if (/^[ \t\r]*$/.test(line)) continue;
        const end = at + Buffer.byteLength(line);
        if (scanJson(bytes, at, end, 1, KNOWN, facts, values.length, 1) !== "ok") return null;
        values.push(JSON.parse(line));
      }
    } else {
      if (scanJson(bytes, 0, bytes.length, shape === "array" ? 2 : 1, KNOWN, facts, 0, shape === "array" ? maxBatch : 1) !== "ok") return null;
      const value = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
      if (shape === "one") values = [value];
      else if (Array.isArray(value)) values = value;
      else return null;
    }
  } catch {
    return null;
  }
  if (values.length === 0 || values.length > maxBatch) return null;
  const errors: FieldError[] = [];
  values.forEach((v, i) => validateEvent(v, i, errors, facts[i]));
  if (errors.length > 0) return null;
  const events = values as PaymentEvent[];
  return { ids: events.map(dedupKey), lines: frame(events.map((e) => toRecord(e, RECEIVED, KEY_ID))) };
}

/** Checks that a body the plain path takes is one the general path stores the same way. */
function agree(bytes: Uint8Array, shape: BodyShape, maxBatch: number): boolean {
  const plain = readPlainEvents(bytes, shape, maxBatch);
  if (plain === null) {
    return false;
  }
  const ref = general(bytes, shape, maxBatch);
  expect(ref).not.toBeNull();
  // The words are the general path's dedup ids (lowercased event_id) as parsed.
  const words = new Uint32Array(ref!.ids.length * 4);
  ref!.ids.forEach((id, i) => parseUuid(id, words, i * 4));
  expect([...plain.words]).toEqual([...words]);
  expect(plain.spans.length).toBe(2 * ref!.ids.length);
  const all = ref!.ids.map(() => true);
  expect(frameSpans(plain.bytes, plain.spans, all, RECEIVED, KEY_ID).toString("latin1")).toBe(ref!.lines.toString("latin1"));
  // Only the owned events are framed (duplicates are left out).
  const some = ref!.ids.map((_, i) => i % 2 === 0);
  const refSome = frame(ref!.lines.toString("latin1").split("\n").filter((_, i) => some[i]).map((l) => `${l.slice(0, l.lastIndexOf(',"crc":'))}}`));
  expect(frameSpans(plain.bytes, plain.spans, some, RECEIVED, KEY_ID).equals(refSome)).toBe(true);
  return true;
}

const SHAPES: BodyShape[] = ["one", "array", "lines"];

describe("plain bodies", () => {
  test("compact ASCII events with schema members are taken, in every shape, and stored as the general path stores them", () => {
    const r = rng(9);
    for (let n = 0; n < 3000; n++) {
      const shape = SHAPES[n % 3]!;
      const events = Array.from({ length: shape === "one" ? 1 : 1 + int(r, 20) }, () => JSON.stringify(validEvent(r)));
      const bytes = Buffer.from(bodyOf(events, shape, r));
      if (!agree(bytes, shape, 1000)) throw new Error(`a plain ${shape} body was not taken: ${bytes.toString().slice(0, 300)}`);
    }
  });

  test("the benchmark's body is taken (a 500-event batch, as JSON and as NDJSON)", () => {
    const r = rng(3);
    const events = Array.from({ length: 500 }, () => JSON.stringify({ ...validEvent(r), retry_count: 0 }));
    expect(agree(Buffer.from(`[${events.join(",")}]`), "array", 1000)).toBe(true);
    expect(agree(Buffer.from(`${events.join("\n")}\n`), "lines", 1000)).toBe(true);
  });

  test("anything else is left to the general path", () => {
    const e = JSON.stringify(validEvent(rng(4)));
    const bodies: [BodyShape, string][] = [
      ["one", e.replace(":", ": ")], // whitespace inside the event
      ["one", e.replace('"processor"', '"proc\\u0065ssor"')], // an escape
      ["one", e.replace("{", '{"note":"é",')], // non-ASCII, and an unknown member
      ["one", e.replace("{", '{"x":1,')], // an unknown member
      ["one", e.replace("{", '{"processor":"adyen",')], // a member twice
      ["one", e.replace("{", '{"retry_count":1.0,').replace(/"retry_count":(null|\d+),/, "")],
      ["one", e.replace("{", '{"retry_count":-0,').replace(/,"retry_count":(null|\d+)/, "")],
      ["one", e.replace("{", '{"retry_count":101,').replace(/,"retry_count":(null|\d+)/, "")],
      ["one", e.replace("{", '{"retry_count":"1",').replace(/,"retry_count":(null|\d+)/, "")],
      ["one", e.replace(/"processor":"[a-z]+"/, '"processor":"paypal"')],
      ["one", e.replace(/"processor":"[a-z]+"/, '"processor":null')],
      ["one", e.replace(/"event_timestamp":"[^"]+"/, '"event_timestamp":"2026-02-30T00:00:00Z"')],
      ["one", e.replace(/"event_id":"[^"]+"/, '"event_id":"not-a-uuid"')],
      ["one", e.replace(/"event_type":"[^"]+"/, '"event_type":""')],
      ["one", e.replace(/"event_type":"[^"]+",?/, "").replace(",}", "}")],
      ["one", `[${e}]`],
      ["one", `${e}x`],
      ["array", "[]"],
      ["array", `[${e},]`],
      ["array", `[${e}`],
      ["array", `[${e},${e}] []`],
      ["array", `{"events":[${e}]}`],
      ["lines", `${e} ${e}\n`],
      ["lines", "\n \r\n"],
    ];
    for (const [shape, text] of bodies) expect({ text, plain: readPlainEvents(Buffer.from(text), shape, 1000) }).toEqual({ text, plain: null });
    // More events than a batch may hold: the general path answers 413.
    expect(readPlainEvents(Buffer.from(`[${e},${e},${e}]`), "array", 2)).toBeNull();
    expect(readPlainEvents(Buffer.from(`${e}\n${e}\n${e}\n`), "lines", 2)).toBeNull();
  });

  test("mutated bodies: whatever the plain path takes, the general path stores the same way", () => {
    const r = rng(11);
    const alphabet = ["{", "}", "[", "]", ",", ":", '"', "\\", " ", "\n", "\t", "é", "0", "1", "9", "-", ".", "e", "n", "u", "l", "x", "A", "\u0001", "\u007f"];
    let taken = 0;
    for (let n = 0; n < 20000; n++) {
      const shape = SHAPES[n % 3]!;
      const events = Array.from({ length: shape === "one" ? 1 : 1 + int(r, 4) }, () => JSON.stringify(validEvent(r)));
      const text = mutate(r, bodyOf(events, shape, r), alphabet);
      if (agree(Buffer.from(text), shape, 3)) taken++;
    }
    // Some mutations keep a body plain (a changed letter in a value): those were compared too.
    expect(taken).toBeGreaterThan(1000);
  });
});

describe("NDJSON line counting while the body arrives", () => {
  /** The byte-by-byte rule lineCounter implements with native LF searches. */
  function lineCounterRef(maxBatch: number): (chunk: Uint8Array) => boolean {
    let lines = 0;
    let content = false;
    return (chunk) => {
      for (const b of chunk) {
        if (b === 0x0a) {
          if (content) lines++;
          content = false;
        } else if (!content && b !== 0x20 && b !== 0x09 && b !== 0x0d) {
          if (lines === maxBatch) return false;
          content = true;
        }
      }
      return true;
    };
  }

  test("stops at the same chunk as the byte-by-byte count, however the body is cut", () => {
    const r = rng(21);
    const parts = ["{}", "x", " ", "\t", "\r", "\n", "\n\n", " \r\n", "{\"a\":1}\n"];
    let stopped = 0;
    for (let n = 0; n < 5000; n++) {
      const body = Buffer.from(Array.from({ length: int(r, 40) }, () => pick(r, parts)).join(""));
      const max = 1 + int(r, 6);
      const mine = lineCounter(max);
      const ref = lineCounterRef(max);
      for (let at = 0; at < body.length; ) {
        const next = Math.min(body.length, at + 1 + int(r, 12));
        const chunk = body.subarray(at, next);
        const want = ref(chunk);
        expect({ body: body.toString(), at, got: mine(chunk) }).toEqual({ body: body.toString(), at, got: want });
        if (!want) {
          stopped++;
          break;
        }
        at = next;
      }
    }
    expect(stopped).toBeGreaterThan(500);
  });
});
