import type { EventLog } from "./event-log.ts";

/**
 * Remembers event ids for the dedup window. An id counts as seen only once
 * its event is durable (`commit`); while a request is writing it, the id is
 * "in flight" and a concurrent request with the same id waits for the outcome
 * instead of guessing. A failed write (`release`) leaves the id unseen, so the
 * client's retry is stored: the old service lost events exactly there.
 */
export interface Claim {
  /** owned[i]: this request must store ids[i]; otherwise it is a duplicate. */
  owned: boolean[];
  duplicates: number;
  /** Wakes requests that wait on the ids this claim owns. */
  readonly wake: () => void;
}

export class DedupIndex {
  /** id -> expiry (ms since epoch); insertion order is expiry order, so pruning reads from the front. */
  private readonly seen = new Map<string, number>();
  private readonly inflight = new Map<string, Promise<void>>();

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

  /** Start-up: remembers ids found in the event log, oldest first. */
  restore(entries: Iterable<readonly [id: string, expiry: number]>): void {
    for (const [id, expiry] of entries) {
      this.seen.delete(id);
      this.seen.set(id, expiry);
    }
    this.prune(Date.now());
  }

  private isSeen(id: string, now: number): boolean {
    const expiry = this.seen.get(id);
    return expiry !== undefined && expiry > now;
  }

  /**
   * Decides, for each id, whether this request stores it or it is a
   * duplicate (repeats within `ids` included). Ids another request is writing
   * are waited for. All or nothing: a request takes its ids only when none of
   * them is held by another, so a waiting request holds nothing and two
   * requests can never wait on each other.
   */
  async claim(ids: string[], now = Date.now()): Promise<Claim> {
    const owned = new Array<boolean>(ids.length).fill(false);
    let duplicates = 0;
    const first = new Map<string, number>(); // id -> its first index, for ids not seen yet
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (first.has(id) || this.isSeen(id, now)) duplicates++;
      else first.set(id, i);
    }
    for (;;) {
      const held: Promise<void>[] = [];
      for (const id of first.keys()) {
        const other = this.inflight.get(id);
        if (other !== undefined) held.push(other);
      }
      if (held.length === 0) break;
      await Promise.all(held);
      const at = Date.now();
      for (const id of [...first.keys()]) {
        if (this.isSeen(id, at)) {
          first.delete(id);
          duplicates++;
        }
      }
    }
    let wake!: () => void;
    const mine = new Promise<void>((resolve) => (wake = resolve));
    for (const [id, i] of first) {
      this.inflight.set(id, mine);
      owned[i] = true;
    }
    return { owned, duplicates, wake };
  }

  /** The owned ids are durable: remember them for the window and wake waiters. */
  commit(ids: string[], claim: Claim, now = Date.now()): void {
    const expiry = now + this.windowMs;
    ids.forEach((id, i) => {
      if (!claim.owned[i]) return;
      this.seen.delete(id); // re-insert at the back to keep expiry order
      this.seen.set(id, expiry);
    });
    this.prune(now);
    this.settle(ids, claim);
  }

  /** The write failed: the owned ids stay unseen, and waiters try for themselves. */
  release(ids: string[], claim: Claim): void {
    this.settle(ids, claim);
  }

  private settle(ids: string[], claim: Claim): void {
    ids.forEach((id, i) => {
      if (claim.owned[i]) this.inflight.delete(id);
    });
    claim.wake();
  }

  /**
   * Drops expired ids from the front (bounded work per call keeps the request
   * path flat), then the oldest ids past the cap.
   */
  private prune(now: number): void {
    let budget = 1000;
    for (const [id, expiry] of this.seen) {
      if (expiry > now || budget-- === 0) break;
      this.seen.delete(id);
    }
    let evicted = 0;
    for (const id of this.seen.keys()) {
      if (this.seen.size <= this.maxIds) break;
      this.seen.delete(id);
      evicted++;
    }
    if (evicted > 0) this.onEvictedEarly(evicted);
  }

  get size(): number {
    return this.seen.size;
  }
}

/**
 * Rebuilds the duplicate window from the event log at start-up, so that a
 * restart does not let a retry through: reads segments newest first, stops
 * at the window's start or after `maxIds` ids, and returns the ids oldest first.
 */
export function idsFromLog(log: EventLog, windowMs: number, maxIds: number, now = Date.now()): [string, number][] {
  const since = now - windowMs;
  const found: [string, number][] = [];
  for (const seq of log.segments().reverse()) {
    const mtime = log.segmentMtime(seq);
    if (mtime !== null && mtime < since) break; // every record in it is older
    const records = log.segmentRecords(seq);
    for (let i = records.length - 1; i >= 0; i--) {
      let e: { event_id?: unknown; received_at?: unknown };
      try {
        e = JSON.parse(records[i]!.toString("utf8"));
      } catch {
        continue;
      }
      const at = typeof e.received_at === "string" ? Date.parse(e.received_at) : NaN;
      if (typeof e.event_id !== "string" || !(at >= since)) continue;
      found.push([e.event_id.toLowerCase(), at + windowMs]);
      if (found.length >= maxIds) return found.reverse();
    }
  }
  return found.reverse();
}
