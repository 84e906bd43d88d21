import type { WindowSource } from "./dedup-snapshot.ts";
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
  private readonly holders = new Map<number, { claim: Claim; settled: Promise<void>; wake: () => void }>();
  private lastOwner = 0;
  /** Times the expiries were rebased (see tick): a snapshot taken before one is stale. */
  private rebases = 0;
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

  /** Start-up: remembers ids found in the event log, oldest first, a chunk at a time (idsSince). */
  restore(chunks: Iterable<IdChunk>): void {
    for (const { words: w, expiries, count } of chunks) {
      for (let i = 0; i < count; i++) {
        this.makeRoom(0);
        this.table.add(w[4 * i]!, w[4 * i + 1]!, w[4 * i + 2]!, w[4 * i + 3]!, this.tick(expiries[i]!));
      }
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
    this.rebases++;
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
        const claim = { owned, duplicates: n - taken, words, owner };
        this.holders.set(owner, { claim, settled, wake });
        return claim;
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

  /** Once per claim: a release after a commit (something failed after it) changes nothing. */
  private settle(claim: Claim): void {
    const holder = this.holders.get(claim.owner);
    if (holder?.claim !== claim) return; // settled already (its number may be another claim's by now)
    for (let i = 0; i < claim.owned.length; i++) if (claim.owned[i]) this.inflight.delete(claim.words, i * 4);
    holder.wake();
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

  /** Ids committed so far, mod 2^32 (what the checkpoint policy counts). */
  get added(): number {
    return this.table.added;
  }

  /**
   * The window as it is now, for a snapshot written in the background:
   * entries oldest first, 5 words each (4 id words, expiry tick after `base`
   * ms), read in chunks later (IdTable.frozen). `stale()` turns true if the
   * expiries were rebased meanwhile (once in 497 days): such a snapshot is dropped.
   */
  window(): WindowSource {
    const rebases = this.rebases;
    return { ...this.table.frozen(), base: this.base, stale: () => this.rebases !== rebases };
  }

  /**
   * Start-up from a snapshot of `count` entries, read in chunks of 5 words each
   * (window()'s form): `shiftMs` moves every expiry (the window changed since it was written).
   */
  importIds(chunks: Iterable<Uint32Array>, count: number, base: number, shiftMs = 0, now = Date.now()): void {
    this.table.reserve(Math.min(this.maxIds, count));
    for (const words of chunks) {
      for (let o = 0; o < words.length; o += 5) {
        const expiryMs = base + words[o + 4]! * TICK_MS + shiftMs;
        if (expiryMs <= now) continue;
        this.makeRoom(now);
        this.table.add(words[o]!, words[o + 1]!, words[o + 2]!, words[o + 3]!, this.tick(expiryMs));
      }
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

/** Ids per slot of the hash table at most; past it the table grows by GROWTH, a few slots per add. */
const MAX_LOAD = 0.8;
const GROWTH = 1.25;
const MIN_SLOTS = 1024;
/** Old slots moved to the new table per add while it grows: the move ends before the new table is 0.75 full. */
const MOVE_PER_ADD = 8;
/** A load the new table never reaches while MOVE_PER_ADD keeps up; past it the rest moves at once. */
const FULL = 0.9;
/** The ring is kept in blocks of 2^12 entries (80 KiB): it grows and shrinks a block at a time, never copied. */
const BLOCK_BITS = 12;
const BLOCK = 1 << BLOCK_BITS;

/** One open-addressing table (linear probing): each slot holds a ring entry's number and the id's hash (0: empty). */
class Slots {
  readonly seqs: Uint32Array;
  readonly hashes: Uint32Array;
  constructor(readonly length: number) {
    this.seqs = new Uint32Array(length);
    this.hashes = new Uint32Array(length);
  }
}

/**
 * An exact set of 128-bit ids with an expiry each, in insertion order: a ring
 * of entries (4 id words + expiry, 20 bytes) in arrival order, in blocks, and
 * an open-addressing hash table (linear probing) whose slots hold an entry's
 * number (mod 2^32) and the id's 32-bit hash. Memory follows the ids held
 * (about 30-33 bytes each), not the configured cap, and nothing grows in one
 * step: the ring gains a block, and a full table is replaced by a 1.25x one
 * while adds move MOVE_PER_ADD old slots each (a step once copied millions of
 * ids and stalled every request for a quarter of a second). No false
 * positives: ids compare in full.
 */
export class IdTable {
  private idBlocks: Uint32Array[] = [];
  private expiryBlocks: Uint32Array[] = [];
  /** Number (mod 2^32) of the entry at the head, and its place in the first block. */
  private headSeq = 0;
  private headAt = 0;
  /** Ring entries, including ones superseded by a later add of the same id. */
  entries = 0;
  /** Distinct ids held. */
  size = 0;
  private slots = new Slots(MIN_SLOTS);
  /** While the table grows: the previous one, emptied from `moved` upwards; [0, moved) is empty. */
  private old: Slots | null = null;
  private moved = 0;

  get bytes(): number {
    const table = (s: Slots | null) => (s === null ? 0 : s.length * 8);
    return this.idBlocks.length * BLOCK * 20 + table(this.slots) + table(this.old);
  }

  /** Entries appended so far, mod 2^32 (the number the next one gets). */
  get added(): number {
    return (this.headSeq + this.entries) >>> 0;
  }

  /**
   * The ring as it is now, oldest first, 5 words per entry (id words,
   * expiry), superseded entries included (adding them back in order renews
   * each id to its newest expiry). Read in chunks of `blocksPerChunk` blocks
   * while the table goes on changing: an entry is never written again once
   * appended, and a block dropped from the head stays readable through this
   * view, so later adds and shifts do not change what it yields (a rebase
   * does: see DedupIndex.window).
   */
  frozen(blocksPerChunk = 16): { count: number; chunks: () => Generator<Uint32Array> } {
    const ids = this.idBlocks.slice();
    const expiries = this.expiryBlocks.slice();
    const first = this.headAt;
    const count = this.entries;
    return {
      count,
      chunks: function* () {
        const out = new Uint32Array(blocksPerChunk * BLOCK * 5);
        for (let r = 0; r < count; r += blocksPerChunk * BLOCK) {
          const n = Math.min(count - r, blocksPerChunk * BLOCK);
          copyEntries(ids, expiries, first + r, n, out);
          yield out.subarray(0, n * 5);
        }
      },
    };
  }

  /** Sizes the table for `n` ids at once (start-up restore into an empty table). */
  reserve(n: number): void {
    const length = Math.ceil(n / MAX_LOAD);
    if (this.size === 0 && this.old === null && length > this.slots.length) this.slots = new Slots(length);
  }

  /** Expiry of an id, or -1 when it is not held. */
  expiryOf(a: number, b: number, c: number, d: number): number {
    if (this.size === 0) return -1;
    const slot = this.locate(a, b, c, d, idHash(a, b, c, d));
    if (slot < 0) return -1;
    const p = this.position(this.located.seqs[slot]!);
    return this.expiryBlocks[p >>> BLOCK_BITS]![p & (BLOCK - 1)]!;
  }

  /** The table that held the id `locate` found last. */
  private located = this.slots;

  /** The id's slot in whichever table holds it (left in `located`), or -1. */
  private locate(a: number, b: number, c: number, d: number, hash: number): number {
    const slot = this.find((this.located = this.slots), a, b, c, d, hash);
    if (slot >= 0 || this.old === null) return slot;
    return this.find((this.located = this.old), a, b, c, d, hash);
  }

  /** An entry's place counted from the start of the first block. */
  private position(seq: number): number {
    return this.headAt + ((seq - this.headSeq) >>> 0);
  }

  oldestExpiry(): number {
    return this.expiryBlocks[0]![this.headAt]!;
  }

  /** Appends an id (or renews one held) at the back of the ring. */
  add(a: number, b: number, c: number, d: number, expiry: number): void {
    if (this.old !== null) this.moveSome(this.size + 1 > this.slots.length * FULL ? Infinity : MOVE_PER_ADD);
    else if (this.size + 1 > this.slots.length * MAX_LOAD) {
      this.old = this.slots;
      this.moved = 0;
      this.slots = new Slots(Math.ceil(this.slots.length * GROWTH));
    }
    const seq = this.append(a, b, c, d, expiry);
    const hash = idHash(a, b, c, d);
    const slot = this.find(this.slots, a, b, c, d, hash);
    if (slot >= 0) {
      this.slots.seqs[slot] = seq; // the older entry stays in the ring, superseded
      return;
    }
    // Held in the old table: it moves to the new one now, renewed.
    const before = this.old === null ? -1 : this.find(this.old, a, b, c, d, hash);
    if (before >= 0) this.remove(this.old!, before);
    else this.size++;
    // The probe in the new table ended at the empty slot where the id belongs.
    this.slots.seqs[~slot] = seq;
    this.slots.hashes[~slot] = hash;
  }

  /** Subtracts `by` from every expiry (floored at 0): the owner's time base moved. */
  rebase(by: number): void {
    for (const e of this.expiryBlocks) for (let i = 0; i < e.length; i++) e[i] = Math.max(0, e[i]! - by);
  }

  /** Drops the oldest ring entry; true when it was a live id whose expiry is past `passed`. */
  shift(passed: number): boolean {
    const ids = this.idBlocks[0]!;
    const o = this.headAt * 4;
    const a = ids[o]!;
    const b = ids[o + 1]!;
    const c = ids[o + 2]!;
    const d = ids[o + 3]!;
    const slot = this.locate(a, b, c, d, idHash(a, b, c, d));
    const t = this.located;
    // A superseded entry (its id's slot names a later one) leaves the table as it is.
    const live = slot >= 0 && t.seqs[slot] === this.headSeq;
    const evicted = live && this.expiryBlocks[0]![this.headAt]! > passed;
    if (live) {
      this.remove(t, slot);
      this.size--;
    }
    this.headSeq = (this.headSeq + 1) >>> 0;
    this.entries--;
    if (++this.headAt === BLOCK) {
      this.idBlocks.shift();
      this.expiryBlocks.shift();
      this.headAt = 0;
    }
    return evicted;
  }

  /** Writes an entry at the ring's back; returns its number. */
  private append(a: number, b: number, c: number, d: number, expiry: number): number {
    const p = this.headAt + this.entries;
    const block = p >>> BLOCK_BITS;
    if (block === this.idBlocks.length) {
      this.idBlocks.push(new Uint32Array(BLOCK * 4));
      this.expiryBlocks.push(new Uint32Array(BLOCK));
    }
    const at = p & (BLOCK - 1);
    const ids = this.idBlocks[block]!;
    ids[at * 4] = a;
    ids[at * 4 + 1] = b;
    ids[at * 4 + 2] = c;
    ids[at * 4 + 3] = d;
    this.expiryBlocks[block]![at] = expiry;
    return (this.headSeq + this.entries++) >>> 0;
  }

  /**
   * The slot of `t` holding the id, or ~slot of the empty slot where its
   * probe ended. The ring is read only where the slot's hash matches: a probe
   * passes other ids without touching their 16 bytes (a cache miss each).
   */
  private find(t: Slots, a: number, b: number, c: number, d: number, hash: number): number {
    const n = t.length;
    const { seqs, hashes } = t;
    for (let i = homeOf(hash, n); ; i = i + 1 === n ? 0 : i + 1) {
      const h = hashes[i]!;
      if (h === 0) return ~i;
      if (h !== hash) continue;
      const p = this.position(seqs[i]!);
      const ids = this.idBlocks[p >>> BLOCK_BITS]!;
      const o = (p & (BLOCK - 1)) * 4;
      if (ids[o] === a && ids[o + 1] === b && ids[o + 2] === c && ids[o + 3] === d) return i;
    }
  }

  /** Backward-shift deletion: no tombstones, so lookups stay short however long the process runs. */
  private remove(t: Slots, slot: number): void {
    const n = t.length;
    const { seqs, hashes } = t;
    let hole = slot;
    for (let j = hole + 1 === n ? 0 : hole + 1; hashes[j] !== 0; j = j + 1 === n ? 0 : j + 1) {
      if (staysPut(hole, j, homeOf(hashes[j]!, n))) continue;
      seqs[hole] = seqs[j]!;
      hashes[hole] = hashes[j]!;
      hole = j;
    }
    hashes[hole] = 0;
  }

  /**
   * Moves at least `atLeast` slots of the old table to the new one, and on
   * to the end of a cluster: an old slot below `moved` is always empty, so a
   * probe of the old table that starts there finds nothing (its id moved),
   * and one that starts above never crosses into the moved part.
   */
  private moveSome(atLeast: number): void {
    const old = this.old!;
    const { seqs, hashes } = this.slots;
    const n = this.slots.length;
    let i = this.moved;
    for (let count = 0; i < old.length && (count < atLeast || old.hashes[i] !== 0); i++, count++) {
      const h = old.hashes[i]!;
      if (h === 0) continue;
      let j = homeOf(h, n);
      while (hashes[j] !== 0) j = j + 1 === n ? 0 : j + 1;
      seqs[j] = old.seqs[i]!;
      hashes[j] = h;
      old.hashes[i] = 0;
    }
    this.moved = i;
    if (i === old.length) this.old = null;
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

/**
 * Ring entries [from, from + n) into `out`, 5 words each (frozen's chunks; a
 * plain function: a loop inside a generator runs slower on JSC).
 */
function copyEntries(ids: Uint32Array[], expiries: Uint32Array[], from: number, n: number, out: Uint32Array): void {
  for (let k = 0; k < n; k++) {
    const p = from + k;
    const block = p >>> BLOCK_BITS;
    const at = p & (BLOCK - 1);
    const src = ids[block]!;
    out[k * 5] = src[at * 4]!;
    out[k * 5 + 1] = src[at * 4 + 1]!;
    out[k * 5 + 2] = src[at * 4 + 2]!;
    out[k * 5 + 3] = src[at * 4 + 3]!;
    out[k * 5 + 4] = expiries[block]![at]!;
  }
}

/** A 32-bit hash of a 128-bit id, never 0 (IdTable's mark of an empty slot). */
function idHash(a: number, b: number, c: number, d: number): number {
  let h = Math.imul(a ^ Math.imul(b, 0x85ebca6b) ^ Math.imul(c, 0xc2b2ae35) ^ Math.imul(d, 0x27d4eb2f), 0x9e3779b1);
  h ^= h >>> 15;
  return h >>> 0 || 1;
}

/** The home slot of a hash in a table of `n` slots: its top bits (the multiply-shift range reduction). */
function homeOf(hash: number, n: number): number {
  return Math.floor((hash / 4294967296) * n);
}

/** Ids with their expiries (ms): words[4i, 4i + 4) and expiries[i] for i < count (the arrays are reused by the next chunk). */
export interface IdChunk {
  words: Uint32Array;
  expiries: Float64Array;
  count: number;
}

/** The ids of `lines` received since `since` into `chunk` (a plain function: a loop inside a generator runs slower on JSC). */
function collectIds(lines: Uint8Array[], chunk: IdChunk, since: number, windowMs: number): void {
  chunk.count = 0;
  for (let i = 0; i < lines.length; i++) {
    const receivedAt = storedId(lines[i]!, chunk.words, 4 * chunk.count);
    if (receivedAt >= since) chunk.expiries[chunk.count++] = receivedAt + windowMs; // NaN (no id) never is
  }
}

/**
 * Rebuilds the duplicate window from the event log at start-up (no snapshot,
 * e.g. after a crash), so that a restart does not let a retry through. Reads
 * forward from the first segment written within the window, in 1 MiB chunks,
 * yielding ids oldest first: memory stays flat however large the window.
 */
export function* idsFromLog(log: EventLog, windowMs: number, now = Date.now()): Generator<IdChunk> {
  const since = now - windowMs;
  // A segment last written before the window holds only older records.
  const first = log.segments().find((seq) => (log.segmentMtime(seq) ?? Infinity) >= since);
  if (first !== undefined) yield* idsSince(log, { segment: first, offset: 0 }, windowMs, now);
}

/**
 * Ids of the records from `from` to the log's durable end (after a snapshot,
 * or the window's start), oldest first, with their expiries: read from each
 * line where they lie (no record is copied or turned into a string; records
 * whose id is not a UUID are skipped).
 */
export function* idsSince(log: EventLog, from: LogPosition, windowMs: number, now = Date.now()): Generator<IdChunk> {
  const since = now - windowMs;
  let chunk: IdChunk = { words: new Uint32Array(0), expiries: new Float64Array(0), count: 0 };
  let at = from;
  for (;;) {
    const { records: lines, next } = log.readLines(at, 1 << 20);
    // No record but progress: a closed segment's torn tail, or a run of damaged lines, was passed.
    if (lines.length === 0 && next.segment === at.segment && next.offset === at.offset) return;
    if (lines.length > chunk.expiries.length) chunk = { words: new Uint32Array(4 * lines.length), expiries: new Float64Array(lines.length), count: 0 };
    collectIds(lines, chunk, since, windowMs);
    yield chunk;
    at = next;
  }
}
