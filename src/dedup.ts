import type { EventLog, LogPosition } from "./event-log.ts";
import { parseUuid } from "./events.ts";
import { storedId } from "./record.ts";

/**
 * Remembers event ids for the dedup window. An id counts as seen only once
 * its event is durable (`commit`); while a request is writing it, the id is
 * "in flight" and a concurrent request with the same id waits for the outcome
 * instead of guessing. A failed write (`release`) leaves the id unseen, so the
 * client's retry is stored: the old service lost events exactly there.
 */
export interface Claim {
  /** owned[i]: this request must store event i; otherwise it is a duplicate. */
  readonly owned: boolean[];
  readonly duplicates: number;
  /** The ids' 128 bits, 4 words each, parsed once for claim and commit. */
  readonly words: Uint32Array;
  /** Number of the claim in the in-flight set (0: it holds no id). */
  readonly owner: number;
}

export class DedupIndex {
  private readonly table = new IdTable();
  /** Ids being written, each with the number of the claim that holds it. */
  private readonly inflight = new InflightIds();
  /** Settles when the claim of that number commits or releases (requests waiting on its ids). */
  private readonly holders = new Map<number, { settled: Promise<void>; wake: () => void }>();
  private lastOwner = 0;
  private readonly words = new Uint32Array(4);
  /** Expiries are held as 10 ms ticks after this time (ms), so 32 bits last 497 days; see tick(). */
  private base = Math.floor((Date.now() - 86_400_000) / TICK_MS) * TICK_MS;

  /**
   * @param maxIds memory bound: past it the oldest ids are forgotten early
   *   (`onEvictedEarly` counts them), so a flood of new ids cannot exhaust memory.
   */
  constructor(
    private windowMs: number,
    private maxIds: number,
    private readonly onEvictedEarly: (n: number) => void = () => {},
  ) {}

  setLimits(windowMs: number, maxIds: number): void {
    this.windowMs = windowMs;
    this.maxIds = maxIds;
    this.prune(Date.now());
  }

  /** Start-up: remembers ids found in the event log, oldest first (ids that are not UUIDs are skipped). */
  restore(entries: Iterable<readonly [id: string, expiry: number]>): void {
    if (Array.isArray(entries)) this.table.reserve(Math.min(this.maxIds, entries.length));
    for (const [id, expiry] of entries) {
      const w = this.words;
      if (!parseUuid(id, w)) continue;
      this.makeRoom(0);
      this.table.add(w[0]!, w[1]!, w[2]!, w[3]!, this.tick(expiry));
    }
    this.prune(Date.now());
  }

  /** An expiry (ms since the epoch) as ticks, rounded up; rebases every expiry held when the 32 bits run out. */
  private tick(ms: number): number {
    const t = Math.max(0, Math.ceil((ms - this.base) / TICK_MS));
    if (t <= 0xffffffff) return t;
    // Windows are at most 30 days, so every expiry still live lies after the new base.
    const shift = Math.floor((ms - 40 * 86_400_000 - this.base) / TICK_MS);
    this.table.rebase(shift);
    this.base += shift * TICK_MS;
    return t - shift;
  }

  /** The ticks that have passed at `now`: an expiry at or below it is over. */
  private ticksAt(now: number): number {
    return Math.floor((now - this.base) / TICK_MS);
  }

  /** Whether the id at words[4i, 4i + 4) is held and unexpired at `now`. */
  private isSeen(words: Uint32Array, i: number, now: number): boolean {
    const o = i * 4;
    const expiry = this.table.expiryOf(words[o]!, words[o + 1]!, words[o + 2]!, words[o + 3]!);
    return expiry >= 0 && expiry > this.ticksAt(now);
  }

  /**
   * Decides, for each id, whether this request stores it or it is a
   * duplicate (repeats within `ids` included). Ids another request is writing
   * are waited for. All or nothing: a request takes its ids only when none of
   * them is held by another, so a waiting request holds nothing and two
   * requests can never wait on each other. `ids` are validated UUIDs, or their
   * words (parseUuid's form, four per id) when the caller has them already.
   */
  async claim(ids: readonly string[] | Uint32Array, now = Date.now()): Promise<Claim> {
    let words: Uint32Array;
    if (ids instanceof Uint32Array) words = ids;
    else {
      words = new Uint32Array(ids.length * 4);
      for (let i = 0; i < ids.length; i++) if (!parseUuid(ids[i]!, words, i * 4)) throw new TypeError("dedup ids are validated UUIDs");
    }
    const n = words.length / 4;
    for (;;) {
      const owner = this.nextOwner();
      const owned = new Array<boolean>(n).fill(false);
      let taken = 0;
      let blocker = 0;
      for (let i = 0; i < n && blocker === 0; i++) {
        if (this.isSeen(words, i, now)) continue;
        // In the set already: a repeat within `ids` (this claim's) or another request's id.
        const holder = this.inflight.add(words, i * 4, owner);
        if (holder === 0) (owned[i] = true), taken++;
        else if (holder !== owner) blocker = holder;
      }
      if (blocker === 0) {
        if (taken === 0) return { owned, duplicates: n, words, owner: 0 };
        let wake!: () => void;
        const settled = new Promise<void>((resolve) => (wake = resolve));
        this.holders.set(owner, { settled, wake });
        return { owned, duplicates: n - taken, words, owner };
      }
      // Held elsewhere: let go of what this claim took, wait for that request, and look again.
      for (let i = 0; i < n; i++) if (owned[i]) this.inflight.delete(words, i * 4);
      await this.holders.get(blocker)!.settled;
      now = Date.now();
    }
  }

  private nextOwner(): number {
    do this.lastOwner = this.lastOwner === 0x7fffffff ? 1 : this.lastOwner + 1;
    while (this.holders.has(this.lastOwner));
    return this.lastOwner;
  }

  /** The owned ids are durable: remember them for the window and wake waiters. */
  commit(claim: Claim, now = Date.now()): void {
    const expiry = this.tick(now + this.windowMs);
    const w = claim.words;
    for (let i = 0; i < claim.owned.length; i++) {
      if (!claim.owned[i]) continue;
      this.makeRoom(now);
      this.table.add(w[i * 4]!, w[i * 4 + 1]!, w[i * 4 + 2]!, w[i * 4 + 3]!, expiry);
    }
    this.prune(now);
    this.settle(claim);
  }

  /** The write failed: the owned ids stay unseen, and waiters try for themselves. */
  release(claim: Claim): void {
    this.settle(claim);
  }

  private settle(claim: Claim): void {
    if (claim.owner === 0) return;
    for (let i = 0; i < claim.owned.length; i++) if (claim.owned[i]) this.inflight.delete(claim.words, i * 4);
    this.holders.get(claim.owner)!.wake();
    this.holders.delete(claim.owner);
  }

  /** At the cap, forgets the oldest id before another is added. */
  private makeRoom(now: number): void {
    let evicted = 0;
    while (this.table.entries >= this.maxIds) if (this.table.shift(this.ticksAt(now))) evicted++;
    if (evicted > 0) this.onEvictedEarly(evicted);
  }

  /**
   * Drops expired ids from the front (bounded work per call keeps the request
   * path flat), then the oldest ids past the cap.
   */
  private prune(now: number): void {
    let budget = 1000;
    const passed = this.ticksAt(now);
    while (budget-- > 0 && this.table.entries > 0 && this.table.oldestExpiry() <= passed) this.table.shift(passed);
    let evicted = 0;
    while (this.table.entries > this.maxIds) if (this.table.shift(passed)) evicted++;
    if (evicted > 0) this.onEvictedEarly(evicted);
  }

  get size(): number {
    return this.table.size;
  }

  /** The ids held, oldest first, 5 words each (4 id words, expiry tick after `base` ms): the shutdown snapshot. */
  exportIds(): { words: Uint32Array; base: number } {
    return { words: this.table.export(), base: this.base };
  }

  /** Start-up from a snapshot: `shiftMs` moves every expiry (the window changed since it was written). */
  importIds(words: Uint32Array, base: number, shiftMs = 0, now = Date.now()): void {
    const n = words.length / 5;
    this.table.reserve(Math.min(this.maxIds, n));
    for (let i = 0; i < n; i++) {
      const expiryMs = base + words[i * 5 + 4]! * TICK_MS + shiftMs;
      if (expiryMs <= now) continue;
      const o = i * 5;
      this.makeRoom(now);
      this.table.add(words[o]!, words[o + 1]!, words[o + 2]!, words[o + 3]!, this.tick(expiryMs));
    }
    this.prune(now);
  }

  /** Bytes held by the index's arrays (for the bench's bytes-per-id figure). */
  get bytes(): number {
    return this.table.bytes;
  }
}

/** Resolution of the expiries the index keeps. */
const TICK_MS = 10;

/** Entries per slot of the hash table at most; the table and the ring grow together past it. */
const MAX_LOAD = 0.8;
const GROWTH = 1.25;
const MIN_CAPACITY = 1024;

/**
 * An exact set of 128-bit ids with an expiry each, in insertion order: a ring
 * of entries (4 id words + expiry in seconds, 20 bytes) in arrival order, and
 * an open-addressing hash table (linear probing; a slot is 4 bytes of ring
 * position and the id's 32-bit hash) pointing into it. Both grow by 1.25x, so
 * memory follows the ids held (30-37.5 bytes each, 31 at a million), not the
 * configured cap. No false positives: ids compare in full.
 */
class IdTable {
  private ids = new Uint32Array(0);
  private expiries = new Uint32Array(0);
  private capacity = 0;
  private head = 0;
  /** Ring entries, including ones superseded by a later add of the same id. */
  entries = 0;
  /** Ring slot + 1 of each id, 0 for an empty table slot. */
  private slots = new Int32Array(0);
  /**
   * Each slot's id hash: a probe reads the ring only on a full match, and
   * growing and deleting never read it (hashing again would, a cache miss an id).
   */
  private hashes = new Uint32Array(0);
  /** Distinct ids held. */
  size = 0;

  get bytes(): number {
    return this.ids.byteLength + this.expiries.byteLength + this.slots.byteLength + this.hashes.byteLength;
  }

  /** Live ids in ring order, 5 words each (id words, expiry). */
  export(): Uint32Array {
    const out = new Uint32Array(this.size * 5);
    const live = this.liveFlags();
    let n = 0;
    for (let k = 0, at = this.head; k < this.entries; k++, at = at + 1 === this.capacity ? 0 : at + 1) {
      if (live[k] !== 1) continue;
      out.set(this.ids.subarray(at * 4, at * 4 + 4), n * 5);
      out[n * 5 + 4] = this.expiries[at]!;
      n++;
    }
    return out;
  }

  /** 1 for each ring entry (counted from the head) that the table points to, 0 for superseded ones. */
  private liveFlags(): Uint8Array {
    const live = new Uint8Array(this.entries);
    for (let i = 0; i < this.slots.length; i++) {
      const v = this.slots[i]!;
      if (v !== 0) live[(v - 1 - this.head + this.capacity) % this.capacity] = 1;
    }
    return live;
  }

  /** Makes room for `n` entries at once (start-up restore). */
  reserve(n: number): void {
    if (n > this.capacity) this.resize(n);
  }

  /** Expiry (seconds) of an id, or -1 when it is not held. */
  expiryOf(a: number, b: number, c: number, d: number): number {
    if (this.size === 0) return -1;
    const slot = this.find(a, b, c, d);
    return slot < 0 ? -1 : this.expiries[this.slots[slot]! - 1]!;
  }

  oldestExpiry(): number {
    return this.expiries[this.head]!;
  }

  /** Appends an id (or renews one held) at the back of the ring. */
  add(a: number, b: number, c: number, d: number, expiry: number): void {
    if (this.entries === this.capacity) this.resize(Math.max(MIN_CAPACITY, Math.ceil(this.capacity * GROWTH)));
    let at = this.head + this.entries;
    if (at >= this.capacity) at -= this.capacity;
    const o = at * 4;
    this.ids[o] = a;
    this.ids[o + 1] = b;
    this.ids[o + 2] = c;
    this.ids[o + 3] = d;
    this.expiries[at] = expiry;
    this.entries++;
    const slot = this.find(a, b, c, d);
    if (slot >= 0) {
      this.slots[slot] = at + 1; // the older entry stays in the ring, superseded
      return;
    }
    // Not held: the probe ended at the empty slot where it belongs.
    this.slots[~slot] = at + 1;
    this.hashes[~slot] = this.lastHash;
    this.size++;
  }

  /** Subtracts `by` from every expiry (floored at 0): the owner's time base moved. */
  rebase(by: number): void {
    for (let i = 0; i < this.capacity; i++) this.expiries[i] = Math.max(0, this.expiries[i]! - by);
  }

  /** Drops the oldest ring entry; true when it was a live id whose expiry is past `passed`. */
  shift(passed: number): boolean {
    const at = this.head;
    this.head = at + 1 === this.capacity ? 0 : at + 1;
    this.entries--;
    const o = at * 4;
    const slot = this.find(this.ids[o]!, this.ids[o + 1]!, this.ids[o + 2]!, this.ids[o + 3]!);
    if (slot < 0 || this.slots[slot] !== at + 1) return false; // superseded
    this.remove(slot);
    this.size--;
    return this.expiries[at]! > passed;
  }

  /** Hash of the id last hashed by `home`. */
  private lastHash = 0;

  /** The id's home slot; its hash is left in `lastHash`. */
  private home(a: number, b: number, c: number, d: number): number {
    this.lastHash = idHash(a, b, c, d);
    return homeOf(this.lastHash, this.slots.length);
  }

  /**
   * The slot holding the id, or ~slot of the empty slot where its probe
   * ended. The ring is read only where the slot's hash matches: a probe passes
   * other ids without touching their 16 bytes (a cache miss each in a large table).
   */
  private find(a: number, b: number, c: number, d: number): number {
    const n = this.slots.length;
    if (n === 0) return -1;
    const ids = this.ids;
    const slots = this.slots;
    const hashes = this.hashes;
    let i = this.home(a, b, c, d);
    const hash = this.lastHash;
    for (; ; i = i + 1 === n ? 0 : i + 1) {
      const v = slots[i]!;
      if (v === 0) return ~i;
      if (hashes[i] !== hash) continue;
      const o = (v - 1) * 4;
      if (ids[o] === a && ids[o + 1] === b && ids[o + 2] === c && ids[o + 3] === d) return i;
    }
  }

  /** Backward-shift deletion: no tombstones, so lookups stay short however long the process runs. */
  private remove(slot: number): void {
    const n = this.slots.length;
    let hole = slot;
    for (let j = hole + 1 === n ? 0 : hole + 1; this.slots[j] !== 0; j = j + 1 === n ? 0 : j + 1) {
      if (staysPut(hole, j, homeOf(this.hashes[j]!, n))) continue;
      this.slots[hole] = this.slots[j]!;
      this.hashes[hole] = this.hashes[j]!;
      hole = j;
    }
    this.slots[hole] = 0;
  }

  /**
   * Copies the ring in order into new arrays and rebuilds the table from the
   * old one (amortised O(1) per add). Both arrays are read and written front
   * to back: a slot's home is its hash's top bits, so the old table's order is
   * nearly the new one's, and the ring is never read.
   */
  private resize(capacity: number): void {
    const ids = new Uint32Array(capacity * 4);
    const expiries = new Uint32Array(capacity);
    // The ring is at most two runs: head to the end of the arrays, then from their start.
    const run = Math.min(this.entries, this.capacity - this.head);
    ids.set(this.ids.subarray(this.head * 4, (this.head + run) * 4));
    ids.set(this.ids.subarray(0, (this.entries - run) * 4), run * 4);
    expiries.set(this.expiries.subarray(this.head, this.head + run));
    expiries.set(this.expiries.subarray(0, this.entries - run), run);
    const { slots: oldSlots, hashes: oldHashes, head, capacity: oldCapacity } = this;
    this.ids = ids;
    this.expiries = expiries;
    this.capacity = capacity;
    this.head = 0;
    const slots = (this.slots = new Int32Array(Math.ceil(capacity / MAX_LOAD)));
    const hashes = (this.hashes = new Uint32Array(slots.length));
    const n = slots.length;
    for (let j = 0; j < oldSlots.length; j++) {
      const v = oldSlots[j]!;
      if (v === 0) continue;
      const h = oldHashes[j]!;
      let i = homeOf(h, n);
      while (slots[i] !== 0) i = i + 1 === n ? 0 : i + 1;
      const at = v - 1 - head; // where the entry moved in the ring
      slots[i] = (at < 0 ? at + oldCapacity : at) + 1;
      hashes[i] = h;
    }
  }
}

/**
 * The ids requests are writing (a few thousand at most): a small
 * open-addressing set of 128-bit ids, each with the number of the claim that
 * holds it, instead of a Map keyed by id strings (no string per id).
 */
class InflightIds {
  private ids = new Uint32Array(4 * 1024);
  /** Claim number per slot, 0 for an empty slot. */
  private owners = new Int32Array(1024);
  size = 0;

  /** Adds the id at words[o, o + 4) for `owner` and answers 0, or the claim that holds it already. */
  add(words: Uint32Array, o: number, owner: number): number {
    if (2 * (this.size + 1) > this.owners.length) this.rehash(this.owners.length * 2);
    const slot = this.find(words, o);
    if (slot >= 0) return this.owners[slot]!;
    const q = 4 * ~slot;
    this.ids[q] = words[o]!;
    this.ids[q + 1] = words[o + 1]!;
    this.ids[q + 2] = words[o + 2]!;
    this.ids[q + 3] = words[o + 3]!;
    this.owners[~slot] = owner;
    this.size++;
    return 0;
  }

  delete(words: Uint32Array, o: number): void {
    const slot = this.find(words, o);
    if (slot < 0) return;
    const n = this.owners.length;
    let hole = slot;
    for (let j = (hole + 1) & (n - 1); this.owners[j] !== 0; j = (j + 1) & (n - 1)) {
      if (staysPut(hole, j, this.homeAt(j))) continue;
      this.ids.copyWithin(4 * hole, 4 * j, 4 * j + 4);
      this.owners[hole] = this.owners[j]!;
      hole = j;
    }
    this.owners[hole] = 0;
    this.size--;
  }

  /** The id's slot, or ~slot of the empty slot where its probe ended. */
  private find(words: Uint32Array, o: number): number {
    const a = words[o]!;
    const b = words[o + 1]!;
    const c = words[o + 2]!;
    const d = words[o + 3]!;
    const n = this.owners.length;
    for (let i = homeOf(idHash(a, b, c, d), n); ; i = (i + 1) & (n - 1)) {
      if (this.owners[i] === 0) return ~i;
      const q = 4 * i;
      if (this.ids[q] === a && this.ids[q + 1] === b && this.ids[q + 2] === c && this.ids[q + 3] === d) return i;
    }
  }

  private homeAt(slot: number): number {
    const q = 4 * slot;
    return homeOf(idHash(this.ids[q]!, this.ids[q + 1]!, this.ids[q + 2]!, this.ids[q + 3]!), this.owners.length);
  }

  private rehash(slots: number): void {
    const { ids, owners } = this;
    this.ids = new Uint32Array(4 * slots);
    this.owners = new Int32Array(slots);
    this.size = 0;
    for (let i = 0; i < owners.length; i++) if (owners[i] !== 0) this.add(ids, 4 * i, owners[i]!);
  }
}

/** Backward-shift deletion: the entry at j, whose home is k, may not move into the hole when k lies cyclically in (hole, j]. */
function staysPut(hole: number, j: number, k: number): boolean {
  return hole <= j ? hole < k && k <= j : hole < k || k <= j;
}

/** A 32-bit hash of a 128-bit id. */
function idHash(a: number, b: number, c: number, d: number): number {
  let h = Math.imul(a ^ Math.imul(b, 0x85ebca6b) ^ Math.imul(c, 0xc2b2ae35) ^ Math.imul(d, 0x27d4eb2f), 0x9e3779b1);
  h ^= h >>> 15;
  return h >>> 0;
}

/** The home slot of a hash in a table of `n` slots: its top bits (the multiply-shift range reduction). */
function homeOf(hash: number, n: number): number {
  return Math.floor((hash / 4294967296) * n);
}

/**
 * Rebuilds the duplicate window from the event log at start-up (no snapshot,
 * e.g. after a crash), so that a restart does not let a retry through. Reads
 * forward from the first segment written within the window, in 1 MiB chunks,
 * yielding ids oldest first: memory stays flat however large the window.
 */
export function* idsFromLog(log: EventLog, windowMs: number, now = Date.now()): Generator<[string, number]> {
  const since = now - windowMs;
  // A segment last written before the window holds only older records.
  const first = log.segments().find((seq) => (log.segmentMtime(seq) ?? Infinity) >= since);
  if (first !== undefined) yield* idsSince(log, { segment: first, offset: 0 }, windowMs, now);
}

/** Ids of the records from `from` to the log's durable end (after a snapshot, or the window's start), oldest first. */
export function* idsSince(log: EventLog, from: LogPosition, windowMs: number, now = Date.now()): Generator<[string, number]> {
  const since = now - windowMs;
  let at = from;
  for (;;) {
    const { records, next } = log.read(at, 1 << 20);
    if (records.length === 0) return;
    for (const r of records) {
      const stored = storedId(r);
      if (stored !== null && stored.receivedAt >= since) yield [stored.id, stored.receivedAt + windowMs];
    }
    at = next;
  }
}
