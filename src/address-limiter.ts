/**
 * Token buckets per client address for failed authentications
 * (PAYFLUX_AUTH_FAIL_RPS, PAYFLUX_AUTH_FAIL_BURST): each failure takes a
 * token; an address without one is refused before its key is even hashed.
 *
 * Memory is bounded: at most `capacity` buckets, kept in a Map in order of
 * their last failure; past the capacity the oldest goes. A bucket that has
 * refilled is the same as none and is dropped when seen. IPv6 addresses share
 * one bucket per /64 (one host usually holds a whole /64, so rotating through
 * it buys nothing). An attacker with more addresses than the capacity can
 * push out other addresses' buckets, but never grow the memory.
 */
export const ADDRESS_BUCKETS = 65_536;

interface Bucket {
  tokens: number;
  updatedAt: number;
}

export class AddressLimiter {
  private readonly buckets = new Map<string, Bucket>();

  constructor(
    private rps: number,
    private burst: number,
    readonly capacity = ADDRESS_BUCKETS,
  ) {}

  get enabled(): boolean {
    return this.rps > 0 && this.burst > 0;
  }

  get size(): number {
    return this.buckets.size;
  }

  /** Whole seconds until `address` may try again, 0 when it may now. Takes nothing. */
  blockedFor(address: string, now = performance.now()): number {
    if (!this.enabled) return 0;
    const bucket = this.refill(bucketKey(address), now);
    if (bucket === undefined || bucket.tokens >= 1) return 0;
    return Math.max(1, Math.ceil((1 - bucket.tokens) / this.rps));
  }

  /** Counts one failed authentication from `address`. */
  fail(address: string, now = performance.now()): void {
    if (!this.enabled) return;
    const key = bucketKey(address);
    let bucket = this.refill(key, now);
    if (bucket === undefined) {
      bucket = { tokens: this.burst, updatedAt: now };
    } else {
      this.buckets.delete(key); // re-inserted last: the Map stays in order of the last failure
    }
    bucket.tokens = Math.max(0, bucket.tokens - 1);
    this.buckets.set(key, bucket);
    while (this.buckets.size > this.capacity) this.buckets.delete(this.buckets.keys().next().value!);
  }

  /** New limits; buckets keep their tokens (capped at the new burst); 0 disables and forgets all. */
  reconfigure(rps: number, burst: number): void {
    this.rps = rps;
    this.burst = burst;
    if (!this.enabled) this.buckets.clear();
    for (const b of this.buckets.values()) b.tokens = Math.min(b.tokens, burst);
  }

  /** The bucket of `key` brought up to `now`; a full one is dropped (undefined). */
  private refill(key: string, now: number): Bucket | undefined {
    const bucket = this.buckets.get(key);
    if (bucket === undefined) return undefined;
    bucket.tokens = Math.min(this.burst, bucket.tokens + (Math.max(0, now - bucket.updatedAt) / 1000) * this.rps);
    bucket.updatedAt = now;
    if (bucket.tokens >= this.burst) {
      this.buckets.delete(key);
      return undefined;
    }
    return bucket;
  }
}

/** The bucket an address counts against: itself, or its /64 for IPv6 (canonical 8-group form). */
export function bucketKey(address: string): string {
  if (!address.includes(":")) return address;
  return address.split(":", 4).join(":") + "::/64";
}
