/** The pre-scan of JSON bodies (src/json-scan.ts), in-process. */
import { describe, expect, test } from "bun:test";
import { KNOWN_FIELDS } from "../src/events.ts";
import { KnownMembers, MAX_DEPTH, scanJson, type EventFacts } from "../src/json-scan.ts";

const KNOWN = new KnownMembers(KNOWN_FIELDS);
const bytes = (s: string) => new TextEncoder().encode(s);

function scan(text: string, eventDepth: 1 | 2 = 1, maxEvents = 1000) {
  const b = bytes(text);
  const facts: EventFacts[] = [];
  const outcome = scanJson(b, 0, b.length, eventDepth, KNOWN, facts, 0, maxEvents);
  return { outcome, facts };
}

describe("scanJson", () => {
  test(`nesting: ${MAX_DEPTH} levels pass, ${MAX_DEPTH + 1} are too deep, for arrays and objects alike`, () => {
    expect(scan("[".repeat(MAX_DEPTH) + "]".repeat(MAX_DEPTH)).outcome).toBe("ok");
    expect(scan("[".repeat(MAX_DEPTH + 1) + "]".repeat(MAX_DEPTH + 1)).outcome).toBe("too_deep");
    expect(scan('{"a":'.repeat(MAX_DEPTH + 1) + "1" + "}".repeat(MAX_DEPTH + 1)).outcome).toBe("too_deep");
    // Unbalanced: refused as soon as the depth passes, whatever follows.
    expect(scan("[".repeat(1_000_000)).outcome).toBe("too_deep");
  });

  test("brackets and quotes inside strings are data, escapes included", () => {
    expect(scan(JSON.stringify({ a: "[".repeat(100) + '{"\\' + "]".repeat(5) })).outcome).toBe("ok");
    expect(scan(`{"a":"\\\\"}`).outcome).toBe("ok");
    expect(scan(`{"a":"\\"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}`).outcome).toBe("ok");
  });

  test("a known member twice is noted once, escaped spellings included; unknown and nested members are not", () => {
    expect(scan('{"event_id":"a","processor":"b","event_id":"c","event_id":"d"}').facts[0]!.duplicates).toEqual(["event_id"]);
    expect(scan('{"event_id":"a","event\\u005fid":"c"}').facts[0]!.duplicates).toEqual(["event_id"]);
    expect(scan('{"x":1,"x":2,"meta":{"event_id":1,"event_id":2}}').facts[0]!.duplicates).toEqual([]);
    // A value equal to a member name is not a member.
    expect(scan('{"event_id":"event_id","a":"event_id"}').facts[0]!.duplicates).toEqual([]);
  });

  test("retry_count's literal is kept as written when it is a number", () => {
    expect(scan('{"retry_count": 100.0000000000000001 }').facts[0]!.retryCount).toBe("100.0000000000000001");
    expect(scan('{"retry_count":-0,"a":1}').facts[0]!.retryCount).toBe("-0");
    expect(scan('{"retry_count":"3"}').facts[0]!.retryCount).toBeNull();
    expect(scan('{"meta":{"retry_count":1e2}}').facts[0]!.retryCount).toBeNull();
  });

  test("in a batch array, facts go to each element's index; maxEvents + 1 elements stop the scan", () => {
    const { outcome, facts } = scan('[{"event_id":1},7,{"processor":1,"processor":2,"retry_count":1.0}]', 2);
    expect(outcome).toBe("ok");
    expect(facts[0]).toEqual({ duplicates: [], retryCount: null });
    expect(facts[1]).toBeUndefined();
    expect(facts[2]).toEqual({ duplicates: ["processor"], retryCount: "1.0" });
    expect(scan(`[${"1,".repeat(10)}1]`, 2, 10).outcome).toBe("too_many");
    expect(scan(`[${"1,".repeat(9)}1]`, 2, 10).outcome).toBe("ok");
    // Commas inside nested arrays are not elements.
    expect(scan(`[[${"1,".repeat(50)}1]]`, 2, 10).outcome).toBe("ok");
  });

  test("large inputs at the limit: 4 MB of 31-deep arrays in a batch and a 2 MB run of escapes scan to ok", () => {
    const unit = "[".repeat(31) + "]".repeat(31) + ",";
    const big = `[${unit.repeat(Math.floor(4_000_000 / unit.length))}1]`;
    expect(scan(big, 1).outcome).toBe("ok");
    expect(scan(JSON.stringify({ s: "\\".repeat(2_000_000) })).outcome).toBe("ok");
  });
});
