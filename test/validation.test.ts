/**
 * Event validation (compat notes): every rule answers 422
 * application/problem+json, code "validation_failed", with every failing field
 * listed as {index, field, message}; nothing is stored and the rejection is
 * counted. Unit tests of validateEvent/isRfc3339 first, then the real server.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { isRfc3339, validateEvent, type FieldError } from "../src/events.ts";
import { BATCH, event, metric, metricsText, post, SINGLE, startServer, stopAll, storedEvents, type Server } from "./support/harness.ts";

// stopAll also removes the servers' temporary data dirs.
afterAll(stopAll);

const REJECTED_VALIDATION = 'payflux_ingest_rejected_total{reason="validation_failed"}';

/** Cases where exactly one field is bad: [description, overrides, failing field]. */
const BAD: [string, Record<string, unknown>, string][] = [
  ["event_id not a UUID", { event_id: "not-a-uuid" }, "event_id"],
  ["event_id one hex digit short", { event_id: "123e4567-e89b-12d3-a456-42661417400" }, "event_id"],
  ["event_id with a non-hex digit", { event_id: "g23e4567-e89b-12d3-a456-426614174000" }, "event_id"],
  ["event_id empty", { event_id: "" }, "event_id"],
  ["event_id missing", { event_id: undefined }, "event_id"],
  ["event_id a number", { event_id: 42 }, "event_id"],
  ["event_timestamp without an offset", { event_timestamp: "2026-11-22T08:00:00" }, "event_timestamp"],
  ["event_timestamp date only", { event_timestamp: "2026-11-22" }, "event_timestamp"],
  ["event_timestamp not a date", { event_timestamp: "yesterday" }, "event_timestamp"],
  ["event_timestamp in another format", { event_timestamp: "22/11/2026 08:00" }, "event_timestamp"],
  ["event_timestamp 30 February", { event_timestamp: "2026-02-30T00:00:00Z" }, "event_timestamp"],
  ["event_timestamp 29 February of a common year", { event_timestamp: "2026-02-29T00:00:00Z" }, "event_timestamp"],
  ["event_timestamp month 13", { event_timestamp: "2026-13-01T00:00:00Z" }, "event_timestamp"],
  ["event_timestamp hour 25", { event_timestamp: "2026-11-22T25:00:00Z" }, "event_timestamp"],
  ["event_timestamp a Unix number", { event_timestamp: 1795334400 }, "event_timestamp"],
  ["event_timestamp missing", { event_timestamp: undefined }, "event_timestamp"],
  ["event_type empty", { event_type: "" }, "event_type"],
  ["event_type missing", { event_type: undefined }, "event_type"],
  ["event_type a number", { event_type: 7 }, "event_type"],
  ["processor unknown", { processor: "paypal" }, "processor"],
  ["processor empty", { processor: "" }, "processor"],
  ["processor missing", { processor: undefined }, "processor"],
  ["merchant_id_hash 101 characters", { merchant_id_hash: "m".repeat(101) }, "merchant_id_hash"],
  ["payment_intent_id_hash 101 characters", { payment_intent_id_hash: "p".repeat(101) }, "payment_intent_id_hash"],
  ["failure_category 101 characters", { failure_category: "f".repeat(101) }, "failure_category"],
  ["geo_bucket 21 characters", { geo_bucket: "g".repeat(21) }, "geo_bucket"],
  ["retry_count -1", { retry_count: -1 }, "retry_count"],
  ["retry_count 101", { retry_count: 101 }, "retry_count"],
  ["retry_count 1.5", { retry_count: 1.5 }, "retry_count"],
  ['retry_count "3" (a string)', { retry_count: "3" }, "retry_count"],
  ["merchant_id_hash given a number", { merchant_id_hash: 12345 }, "merchant_id_hash"],
  ["geo_bucket given a number", { geo_bucket: 44 }, "geo_bucket"],
  ["channel given a number", { channel: 1 }, "channel"],
  ["amount_bucket given an object", { amount_bucket: { min: 100 } }, "amount_bucket"],
];

/** Cases at the edge of a rule that must be accepted. */
const GOOD: [string, Record<string, unknown>][] = [
  ["merchant_id_hash 100 characters", { merchant_id_hash: "m".repeat(100) }],
  ["payment_intent_id_hash 100 characters", { payment_intent_id_hash: "p".repeat(100) }],
  ["failure_category 100 characters", { failure_category: "f".repeat(100) }],
  ["failure_category 100 two-byte characters (characters, not bytes)", { failure_category: "é".repeat(100) }],
  ["geo_bucket 20 characters", { geo_bucket: "g".repeat(20) }],
  ["retry_count 0", { retry_count: 0 }],
  ["retry_count 100", { retry_count: 100 }],
  ["processor adyen", { processor: "adyen" }],
  ["processor checkout", { processor: "checkout" }],
  ["processor internal", { processor: "internal" }],
  ["event_id in upper case", { event_id: crypto.randomUUID().toUpperCase() }],
  ["event_timestamp with fraction and offset", { event_timestamp: "2026-11-22T08:00:00.123456+05:30" }],
  ["event_timestamp 29 February of a leap year", { event_timestamp: "2028-02-29T23:59:59Z" }],
];

/** A valid event with `overrides` applied; an override of `undefined` removes the field. */
function eventWith(overrides: Record<string, unknown>): Record<string, unknown> {
  const e = event(overrides);
  for (const [k, v] of Object.entries(overrides)) if (v === undefined) delete e[k];
  return e;
}

describe("validateEvent / isRfc3339 (unit)", () => {
  test("isRfc3339 accepts real RFC 3339 date-times", () => {
    for (const s of [
      "2026-11-22T08:00:00Z",
      "2026-11-22t08:00:00z",
      "2026-11-22T08:00:00.5Z",
      "2026-11-22T08:00:00.123456789-07:00",
      "2028-02-29T00:00:00Z",
      "2000-02-29T00:00:00+00:00",
      "2026-12-31T23:59:60Z",
      "2016-12-31T23:59:60Z",
      "2026-06-30T23:59:60.5Z",
      // The same leap second in local time: 23:59:60 UTC.
      "2027-01-01T00:59:60+01:00",
      "2026-12-31T18:59:60-05:00",
      "0001-01-01T00:00:00Z",
      "9999-12-31T23:59:59Z",
    ]) {
      expect([s, isRfc3339(s)]).toEqual([s, true]);
    }
  });

  test("isRfc3339 refuses other formats and impossible dates", () => {
    for (const s of [
      "",
      "2026-11-22",
      "2026-11-22T08:00:00",
      "2026-11-22T08:00Z",
      "2026-11-22T8:00:00Z",
      "26-11-22T08:00:00Z",
      "2026-02-30T00:00:00Z",
      "2026-02-29T00:00:00Z",
      "1900-02-29T00:00:00Z",
      "2026-04-31T00:00:00Z",
      "2026-00-10T00:00:00Z",
      "2026-13-01T00:00:00Z",
      "2026-11-00T00:00:00Z",
      "2026-11-22T24:00:00Z",
      "2026-11-22T23:60:00Z",
      "2026-11-22T23:59:61Z",
      "2026-11-22T08:00:00+24:00",
      "2026-11-22T08:00:00+05:60",
      "2026-11-22T08:00:00+0530",
      " 2026-11-22T08:00:00Z",
      "2026-11-22T08:00:00Z ",
      // No year 0000; a leap second only at 23:59:60 UTC on a month's last day.
      "0000-01-01T00:00:00Z",
      "0000-12-31T23:59:59Z",
      "2026-11-22T08:00:60Z",
      "2026-11-22T23:59:60Z",
      "2026-12-31T23:58:60Z",
      "2026-12-31T23:59:60+01:00",
      "2027-01-01T00:00:60Z",
    ]) {
      expect([s, isRfc3339(s)]).toEqual([s, false]);
    }
  });

  test.each(BAD)("validateEvent flags %s", (_name, overrides, field) => {
    const errors: FieldError[] = [];
    expect(validateEvent(eventWith(overrides), 3, errors)).toBe(false);
    expect(errors.map((e) => [e.index, e.field])).toEqual([[3, field]]);
    expect(errors[0]!.message.length).toBeGreaterThan(0);
  });

  test.each(GOOD)("validateEvent accepts %s", (_name, overrides) => {
    const errors: FieldError[] = [];
    expect(validateEvent(eventWith(overrides), 0, errors)).toBe(true);
    expect(errors).toEqual([]);
  });

  test("validateEvent reports every failing field and keeps earlier errors", () => {
    const errors: FieldError[] = [{ index: 0, field: "x", message: "earlier" }];
    const ok = validateEvent(eventWith({ event_id: "nope", processor: "paypal", retry_count: 101 }), 1, errors);
    expect(ok).toBe(false);
    expect(errors.slice(1).map((e) => [e.index, e.field]).sort()).toEqual([
      [1, "event_id"],
      [1, "processor"],
      [1, "retry_count"],
    ]);
    expect(errors[0]).toEqual({ index: 0, field: "x", message: "earlier" });
  });

  test("validateEvent refuses a non-object and accepts unknown fields", () => {
    for (const v of [null, 42, "event", [event()]]) {
      const errors: FieldError[] = [];
      expect(validateEvent(v, 0, errors)).toBe(false);
      expect(errors.length).toBe(1);
    }
    expect(validateEvent(event({ something_new: { nested: [1, 2] } }), 0, [])).toBe(true);
  });
});

describe("validation over HTTP (real server)", () => {
  let server: Server;
  beforeAll(async () => {
    server = await startServer({ env: { PAYFLUX_INGEST_BURST: "100000", PAYFLUX_INGEST_RPS: "100000" } });
  });

  /** Checks a 422 validation_failed problem and returns its errors. */
  async function expect422(res: Response): Promise<FieldError[]> {
    const text = await res.text();
    expect([res.status, text]).toEqual([422, expect.any(String)]);
    expect(res.headers.get("content-type")).toStartWith("application/problem+json");
    const body = JSON.parse(text);
    expect(body.code).toBe("validation_failed");
    expect(body.status).toBe(422);
    expect(Array.isArray(body.errors)).toBe(true);
    for (const e of body.errors) {
      expect(Object.keys(e).sort()).toEqual(["field", "index", "message"]);
      expect(typeof e.index).toBe("number");
      expect(typeof e.field).toBe("string");
      expect(typeof e.message).toBe("string");
      expect(e.message.length).toBeGreaterThan(0);
    }
    return body.errors;
  }

  test.each(BAD)("422 for %s", async (_name, overrides, field) => {
    const before = metric(await metricsText(server), REJECTED_VALIDATION)!;
    const stored = (await storedEvents(server.dataDir)).length;
    const errors = await expect422(await post(server, SINGLE, eventWith(overrides)));
    expect(errors.map((e) => [e.index, e.field])).toEqual([[0, field]]);
    expect(metric(await metricsText(server), REJECTED_VALIDATION)).toBe(before + 1);
    expect((await storedEvents(server.dataDir)).length).toBe(stored);
  });

  test.each(GOOD)("202 for %s", async (_name, overrides) => {
    const ev = eventWith(overrides);
    const res = await post(server, SINGLE, ev);
    expect([res.status, await res.json()]).toEqual([202, { accepted: 1, duplicates: 0 }]);
    const onDisk = (await storedEvents(server.dataDir)).filter((e) => e.event_id === ev.event_id);
    expect(onDisk.length).toBe(1);
  });

  test("every failing field of an event is reported, not just the first", async () => {
    const bad = eventWith({ event_id: "not-a-uuid", event_timestamp: "2026-02-30T00:00:00Z", retry_count: "3" });
    const errors = await expect422(await post(server, SINGLE, bad));
    expect(errors.map((e) => [e.index, e.field]).sort()).toEqual([
      [0, "event_id"],
      [0, "event_timestamp"],
      [0, "retry_count"],
    ]);
  });

  test("an event with every rule broken lists every field", async () => {
    const bad = {
      event_type: "",
      event_timestamp: "2026-11-22",
      event_id: "x",
      processor: "paypal",
      merchant_id_hash: "m".repeat(101),
      payment_intent_id_hash: "p".repeat(101),
      failure_category: "f".repeat(101),
      geo_bucket: "g".repeat(21),
      retry_count: -1,
      channel: 3,
    };
    const errors = await expect422(await post(server, SINGLE, bad));
    expect(errors.map((e) => e.field).sort()).toEqual(
      ["channel", "event_id", "event_timestamp", "event_type", "failure_category", "geo_bucket", "merchant_id_hash", "payment_intent_id_hash", "processor", "retry_count"],
    );
    expect(new Set(errors.map((e) => e.index))).toEqual(new Set([0]));
  });

  test("in a batch, errors carry the index of each bad event; nothing is stored", async () => {
    const before = metric(await metricsText(server), REJECTED_VALIDATION)!;
    const stored = (await storedEvents(server.dataDir)).length;
    const batch = [event(), eventWith({ processor: "paypal" }), event(), eventWith({ geo_bucket: "g".repeat(21), retry_count: 1.5 })];
    const errors = await expect422(await post(server, BATCH, batch));
    expect(errors.map((e) => [e.index, e.field]).sort()).toEqual([
      [1, "processor"],
      [3, "geo_bucket"],
      [3, "retry_count"],
    ]);
    expect(metric(await metricsText(server), REJECTED_VALIDATION)).toBe(before + 1);
    expect((await storedEvents(server.dataDir)).length).toBe(stored);
    // The good events of the refused batch were not marked seen either.
    const res = await post(server, BATCH, [batch[0], batch[2]]);
    expect([res.status, await res.json()]).toEqual([202, { accepted: 2, duplicates: 0 }]);
  });

  test("NDJSON batches are validated the same way", async () => {
    const stored = (await storedEvents(server.dataDir)).length;
    const body = [event(), eventWith({ event_type: "" })].map((e) => JSON.stringify(e)).join("\n") + "\n";
    const errors = await expect422(await post(server, BATCH, body, { contentType: "application/x-ndjson" }));
    expect(errors.map((e) => [e.index, e.field])).toEqual([[1, "event_type"]]);
    expect((await storedEvents(server.dataDir)).length).toBe(stored);
  });

  test("a 422 stores nothing and counts exactly one validation_failed rejection", async () => {
    const textBefore = await metricsText(server);
    const stored = (await storedEvents(server.dataDir)).length;
    const ev = eventWith({ retry_count: 101 });
    await expect422(await post(server, SINGLE, ev));
    const textAfter = await metricsText(server);
    expect(metric(textAfter, REJECTED_VALIDATION)).toBe(metric(textBefore, REJECTED_VALIDATION)! + 1);
    expect(metric(textAfter, "payflux_ingest_accepted_total")).toBe(metric(textBefore, "payflux_ingest_accepted_total")!);
    expect(metric(textAfter, "payflux_ingest_duplicate_total")).toBe(metric(textBefore, "payflux_ingest_duplicate_total")!);
    expect((await storedEvents(server.dataDir)).length).toBe(stored);
    // The refused id was not marked seen: once fixed, the same id is stored.
    const res = await post(server, SINGLE, { ...ev, retry_count: 100 });
    expect([res.status, await res.json()]).toEqual([202, { accepted: 1, duplicates: 0 }]);
  });

  test("unknown fields are accepted and kept in the log", async () => {
    const ev = event({ schema_version: 2, new_field: "kept", nested: { a: [1, "two", null], b: true } });
    const res = await post(server, SINGLE, ev);
    expect([res.status, await res.json()]).toEqual([202, { accepted: 1, duplicates: 0 }]);
    const onDisk = (await storedEvents(server.dataDir)).filter((e) => e.event_id === ev.event_id);
    expect(onDisk.length).toBe(1);
    const { received_at, key_id, ...rest } = onDisk[0]!;
    expect(rest).toEqual(ev);
    expect(typeof received_at).toBe("string");
    expect(typeof key_id).toBe("string");
  });
});
