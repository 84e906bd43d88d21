/**
 * In-process micro-benchmark of the batch path's per-event stages: a body of
 * 500 events (the shape of bench/wrk/events.lua, unique event_ids) through
 * the pre-scan, decode + JSON.parse, validation, dedup claim + commit,
 * toRecord and frame (CRC-32), and the UTF-8 encoding the event log does
 * before writing. Prints µs per event per stage, the median of the rounds
 * (wall time: on a shared machine compare runs made close together, and take
 * the best of several).
 * Run: bun bench/batch-micro.ts [rounds=30] [json|ndjson]
 * (add --cpu-prof to profile it). No disk, no network.
 * `bun bench/batch-micro.ts grow` instead times dedup claim + commit alone
 * while the index grows to 2 million ids (the micro-benchmark's index stays
 * small, so cache misses and growth are felt there), and the longest batch.
 */
import { KNOWN_FIELDS, dedupKey, validateEvent, type FieldError, type PaymentEvent } from "../src/events.ts";
import { KnownMembers, scanJson, type EventFacts } from "../src/json-scan.ts";
import { DedupIndex } from "../src/dedup.ts";
import { frame, toRecord } from "../src/record.ts";

const EVENTS = 500;
const rounds = Number(process.argv[2] ?? 30);
const ndjson = process.argv[3] === "ndjson";
const KNOWN = new KnownMembers(KNOWN_FIELDS);
const utf8 = new TextDecoder("utf-8", { fatal: true });
const hex = (n: number, w: number) => n.toString(16).padStart(w, "0");

let counter = 0;
const prefix = hex((Math.random() * 0x7fffffff) >>> 0, 8);
const rand = (max: number) => Math.floor(Math.random() * (max + 1));
function event(): string {
  counter++;
  const id = `${prefix}-${hex(rand(0xffff), 4)}-4${hex(rand(0xfff), 3)}-a${hex(rand(0xfff), 3)}-${hex(rand(0xffff), 4)}${hex(counter, 8)}`;
  return (
    `{"event_type":"payment_failed","event_timestamp":"2026-11-22T08:00:00Z","event_id":"${id}",` +
    '"merchant_id_hash":"m_4f2a","payment_intent_id_hash":"pi_9c1d","processor":"stripe","failure_category":"card_declined",' +
    '"retry_count":0,"geo_bucket":"EU","amount_bucket":"100-500","system_source":"checkout-api","payment_method_bucket":"card",' +
    '"channel":"web","retry_result":"none","failure_origin":"issuer"}'
  );
}
function body(): Uint8Array {
  const parts = Array.from({ length: EVENTS }, event);
  return new TextEncoder().encode(ndjson ? parts.join("\n") + "\n" : `[${parts.join(",")}]`);
}

/** As src/ingest.ts parseJson / parseNdjson do it (scan, then decode + parse), split into two timed stages. */
function scan(bytes: Uint8Array, facts: EventFacts[]): void {
  if (!ndjson) {
    if (scanJson(bytes, 0, bytes.length, 2, KNOWN, facts, 0, EVENTS) !== "ok") throw new Error("scan");
    return;
  }
  let n = 0;
  for (let start = 0; start < bytes.length; ) {
    let end = bytes.indexOf(0x0a, start);
    if (end < 0) end = bytes.length;
    if (scanJson(bytes, start, end, 1, KNOWN, facts, n++, 1) !== "ok") throw new Error("scan");
    start = end + 1;
  }
}
function parse(bytes: Uint8Array): unknown[] {
  if (!ndjson) return JSON.parse(utf8.decode(bytes)) as unknown[];
  const values: unknown[] = [];
  for (let start = 0; start < bytes.length; ) {
    let end = bytes.indexOf(0x0a, start);
    if (end < 0) end = bytes.length;
    values.push(JSON.parse(utf8.decode(bytes.subarray(start, end))));
    start = end + 1;
  }
  return values;
}

const STAGES = ["scan", "parse", "validate", "dedup", "toRecord", "frame", "encode"] as const;
const times: Record<string, number[]> = Object.fromEntries(STAGES.map((s) => [s, []]));
const dedup = new DedupIndex(86_400_000, 10_000_000);
let sink = 0;

async function round(measure: boolean): Promise<void> {
  const bytes = body();
  const t: number[] = [performance.now()];
  const facts: EventFacts[] = [];
  scan(bytes, facts);
  t.push(performance.now());
  const values = parse(bytes);
  t.push(performance.now());
  const errors: FieldError[] = [];
  for (let i = 0; i < values.length; i++) validateEvent(values[i], i, errors, facts[i]);
  if (errors.length > 0) throw new Error(JSON.stringify(errors[0]));
  t.push(performance.now());
  const events = values as PaymentEvent[];
  const ids = events.map(dedupKey);
  const claim = await dedup.claim(ids);
  dedup.commit(claim);
  if (claim.duplicates !== 0) throw new Error("duplicates");
  t.push(performance.now());
  const receivedAt = new Date().toISOString();
  const records = events.map((e) => toRecord(e, receivedAt, "0123456789ab"));
  t.push(performance.now());
  const data: string | Buffer = frame(records);
  t.push(performance.now());
  // What EventLog.append + write did with frame's string (it returns the bytes since issue 9).
  sink += typeof data === "string" ? Buffer.byteLength(data) + Buffer.from(data).length : data.length;
  t.push(performance.now());
  if (measure) STAGES.forEach((s, i) => times[s]!.push(((t[i + 1]! - t[i]!) * 1000) / EVENTS));
}

if (process.argv[2] === "grow") {
  const index = new DedupIndex(86_400_000, 10_000_000);
  let spent = 0;
  let worst = 0;
  for (let b = 0; b < 4000; b++) {
    const ids = Array.from({ length: EVENTS }, (_, i) => `${hex((Math.random() * 2 ** 32) >>> 0, 8)}-1234-4123-a123-${hex(b, 4)}${hex(i, 8)}`);
    const t = performance.now();
    index.commit(await index.claim(ids));
    const took = performance.now() - t;
    spent += took;
    worst = Math.max(worst, took);
  }
  console.log(
    `dedup claim + commit growing to ${index.size} ids: ${((spent * 1000) / index.size).toFixed(3)} µs per id, ` +
      `longest batch of ${EVENTS} ${worst.toFixed(1)} ms, ${(index.bytes / index.size).toFixed(1)} bytes per id`,
  );
  process.exit(0);
}

for (let i = 0; i < 20; i++) await round(false); // warm up the JIT
for (let i = 0; i < rounds; i++) await round(true);

let total = 0;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[xs.length >> 1]!;
console.log(`batch of ${EVENTS} (${ndjson ? "ndjson" : "json"}), median of ${rounds} rounds, µs per event:`);
for (const s of STAGES) {
  const m = median(times[s]!);
  total += m;
  console.log(`  ${s.padEnd(9)} ${m.toFixed(3)}`);
}
console.log(`  ${"total".padEnd(9)} ${total.toFixed(3)}`);
if (sink === 0) console.log("nothing was framed"); // keeps the framed bytes observable
