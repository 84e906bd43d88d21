/**
 * A single pass over the bytes of a JSON text, before JSON.parse builds
 * anything: refuses nesting deeper than MAX_DEPTH (so a hostile body costs
 * time proportional to its size, never a deep parse or a deep stringify), and
 * notes, for each event object, the facts JSON.parse would hide: a known
 * member written twice (JSON.parse keeps the last silently) and the literal
 * text of `retry_count` (JSON.parse turns `100.0000000000000001` into 100 and
 * `-0` into 0). It does not check the JSON otherwise: JSON.parse does, after.
 */

/** Deepest nesting accepted anywhere in a body: the outermost array or object is level 1. */
export const MAX_DEPTH = 32;

/** What the scan learnt about one event object. */
export interface EventFacts {
  /** Known members that appear more than once, each named once (shared empty array for none). */
  duplicates: readonly string[];
  /** The literal text of `retry_count` when it is a number, else null. */
  retryCount: string | null;
}

export type ScanOutcome = "ok" | "too_deep" | "too_many";

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const OPEN_OBJECT = 0x7b;
const CLOSE_OBJECT = 0x7d;
const OPEN_ARRAY = 0x5b;
const CLOSE_ARRAY = 0x5d;
const COMMA = 0x2c;
const COLON = 0x3a;

/** Almost every event has no repeated member: one frozen array for all of them, replaced on the first repeat. */
const NO_DUPLICATES: readonly string[] = Object.freeze([]);

const ascii = new TextEncoder();
const decoder = new TextDecoder();

/**
 * Scans `bytes[start, end)`. Event objects sit at `eventDepth`: 1 for a single
 * event (or one NDJSON line), 2 for the elements of a batch array. Facts go to
 * `facts[firstIndex + i]` for the i-th event; at most `maxEvents` events are
 * counted before the scan stops with "too_many".
 */
export function scanJson(
  bytes: Uint8Array,
  start: number,
  end: number,
  eventDepth: 1 | 2,
  known: KnownMembers,
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
  let current: EventFacts | null = null;
  let seen = 0; // bit set of known members seen in the current event
  let retryValueStart = -1;

  for (let i = start; i < end; i++) {
    const b = bytes[i]!;
    if (b === QUOTE) {
      const isKey = inEvent && expectKey && depth === eventDepth;
      let j = i + 1;
      // Most keys are known names as they are: matched in place, in one pass.
      let k = isKey ? known.at(bytes, j, end) : -1;
      if (k >= 0) j += known.lengthOf(k);
      else {
        // Most bytes are inside strings: skip to the closing quote in a tight loop.
        let escaped = false;
        for (; j < end; j++) {
          const c = bytes[j]!;
          if (c === QUOTE) break;
          if (c === BACKSLASH) {
            j++;
            escaped = true;
          }
        }
        if (isKey && escaped && j < end) k = known.escaped(bytes, i + 1, j);
      }
      if (isKey) {
        expectKey = false;
        retryValueStart = -1;
        if (k >= 0 && current !== null) {
          const bit = 1 << k;
          if ((seen & bit) !== 0) {
            const name = known.nameOf(k);
            if (!current.duplicates.includes(name)) current.duplicates = [...current.duplicates, name];
          }
          seen |= bit;
          if (k === known.retryCountIndex) retryValueStart = -2; // the value follows the colon
        }
      }
      i = j;
      continue;
    }
    switch (b) {
      case OPEN_OBJECT:
      case OPEN_ARRAY:
        if (++depth > MAX_DEPTH) return "too_deep";
        if (depth === 1) topIsArray = b === OPEN_ARRAY;
        if (depth === eventDepth && b === OPEN_OBJECT && (eventDepth === 1 || topIsArray)) {
          const index = firstIndex + (eventDepth === 1 ? 0 : element);
          if (index - firstIndex >= maxEvents) return "too_many";
          current = facts[index] = { duplicates: NO_DUPLICATES, retryCount: null };
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
  current.retryCount = z - a <= 16 ? shortAscii(bytes, a, z) ?? decoder.decode(bytes.subarray(a, z)) : decoder.decode(bytes.subarray(a, z));
}

/** bytes[a, z) as a string when all are ASCII (the usual `0`), else null: cheaper than a TextDecoder call. */
function shortAscii(bytes: Uint8Array, a: number, z: number): string | null {
  let s = "";
  for (let k = a; k < z; k++) {
    const c = bytes[k]!;
    if (c >= 0x80) return null;
    s += String.fromCharCode(c);
  }
  return s;
}

function isSpace(b: number): boolean {
  return b === 0x20 || b === 0x09 || b === 0x0a || b === 0x0d;
}

/** The member names whose repetition is refused, matched on raw bytes (decoded only when escaped). */
export class KnownMembers {
  private readonly names: string[];
  private readonly encoded: Uint8Array[];
  /** Index of a name by its first byte, -1 for none; `nextByFirstByte` chains names that share it. */
  private readonly byFirstByte = new Int8Array(256).fill(-1);
  private readonly nextByFirstByte = new Int8Array(32).fill(-1);
  private readonly byName = new Map<string, number>();
  readonly retryCountIndex: number;

  constructor(names: readonly string[]) {
    if (names.length > 30) throw new Error("at most 30 known members");
    this.names = [...names];
    this.encoded = this.names.map((n) => ascii.encode(n));
    this.names.forEach((n, i) => this.byName.set(n, i));
    this.encoded.forEach((e, i) => {
      if (e.length === 0 || e.includes(QUOTE) || e.includes(BACKSLASH)) throw new Error("known member names are non-empty and need no escaping");
      this.nextByFirstByte[i] = this.byFirstByte[e[0]!]!;
      this.byFirstByte[e[0]!] = i;
    });
    this.retryCountIndex = this.byName.get("retry_count") ?? -1;
  }

  /**
   * The index of the known name written as it is at bytes[a] and closed by a
   * quote right after it, or -1: any other key is unknown unless it has escapes.
   */
  at(bytes: Uint8Array, a: number, end: number): number {
    if (a >= end) return -1;
    for (let k = this.byFirstByte[bytes[a]!]!; k >= 0; k = this.nextByFirstByte[k]!) {
      const e = this.encoded[k]!;
      const z = a + e.length;
      if (z >= end || bytes[z] !== QUOTE) continue;
      let j = 1;
      while (j < e.length && bytes[a + j] === e[j]) j++;
      if (j === e.length) return k;
    }
    return -1;
  }

  lengthOf(k: number): number {
    return this.encoded[k]!.length;
  }

  /** The index of the known name that the escaped key bytes[a, z) (JSON string content) spells, or -1: `"event\u005fid"` is `event_id` to JSON.parse. */
  escaped(bytes: Uint8Array, a: number, z: number): number {
    if (z - a > 256) return -1;
    try {
      const name = JSON.parse(`"${decoder.decode(bytes.subarray(a, z))}"`) as string;
      return this.byName.get(name) ?? -1;
    } catch {
      return -1;
    }
  }

  nameOf(k: number): string {
    return this.names[k]!;
  }
}
