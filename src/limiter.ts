import type { Limits } from "./auth.ts";

/**
 * Token buckets: capacity `burst`, refilled continuously at `rps` tokens per
 * second, one token per request. Buckets are keyed by a bucket id (a key's
 * digest, or a named client's name: never a key) and exist only for
 * configured keys, so memory is bounded by the allowlist. Each request brings
 * its key's limits, so a limit edited by a reload applies from the next
 * request while the bucket keeps its tokens (a reload never refills one).
 */
export interface Decision {
  allowed: boolean;
  /** Whole tokens left after this request. */
  remaining: number;
  /** Whole seconds until a token is available again (at least 1); meaningful when refused. */
  retryAfterSeconds: number;
  /** Whole seconds until the bucket is full again. */
  resetSeconds: number;
}

/** Accepted ranges of a rate and a burst, for PAYFLUX_INGEST_RPS/BURST and the clients file alike. */
export const RPS_RANGE = { min: 0.001, max: 1_000_000 };
export const BURST_RANGE = { min: 1, max: 10_000_000 };

interface Bucket {
  tokens: number;
  updatedAt: number;
}

export class RateLimiter {
  private readonly buckets = new Map<string, Bucket>();
  private defaults: Limits;

  constructor(rps: number, burst: number) {
    this.defaults = limitsOf(rps, burst);
  }

  take(bucketId: string, now = performance.now(), limits: Limits = this.defaults): Decision {
    const { rps, burst } = limits;
    let bucket = this.buckets.get(bucketId);
    if (bucket === undefined) {
      bucket = { tokens: burst, updatedAt: now };
      this.buckets.set(bucketId, bucket);
    } else {
      // Capped at the burst in force now: a lowered burst applies at once, a raised one fills only by refill.
      bucket.tokens = Math.min(burst, bucket.tokens + ((now - bucket.updatedAt) / 1000) * rps);
      bucket.updatedAt = now;
    }
    const allowed = bucket.tokens >= 1;
    if (allowed) bucket.tokens -= 1;
    return {
      allowed,
      remaining: Math.floor(bucket.tokens),
      retryAfterSeconds: Math.max(1, Math.ceil((1 - bucket.tokens) / rps)),
      resetSeconds: Math.ceil((burst - bucket.tokens) / rps),
    };
  }

  /** Applies new default limits: buckets that stay keep their tokens (capped at their burst on next use); others are dropped. */
  reconfigure(rps: number, burst: number, isLive: (bucket: string) => boolean): void {
    this.defaults = limitsOf(rps, burst);
    // O(buckets in use), not O(keys): a reload of 100,000 keys must not stop the event loop here.
    for (const id of this.buckets.keys()) if (!isLive(id)) this.buckets.delete(id);
  }

  /** `RateLimit-Policy` value of the default limits. */
  policyHeader(): string {
    return this.defaults.policy;
  }

  get size(): number {
    return this.buckets.size;
  }
}

/** Limits with their `RateLimit-Policy` value, computed once per configuration, not per request. */
export function limitsOf(rps: number, burst: number): Limits {
  return { rps, burst, policy: policyOf(rps, burst) };
}

/** `RateLimit-Policy` (IETF httpapi ratelimit-headers draft): quota = burst, window = time to refill it. */
function policyOf(rps: number, burst: number): string {
  return `"ingest";q=${burst};w=${Math.max(1, Math.ceil(burst / rps))}`;
}

/** `RateLimit` value for one decision: r = whole tokens left, t = seconds until the bucket is full again. */
export function rateLimitHeader(d: Decision): string {
  return `"ingest";r=${d.remaining};t=${d.resetSeconds}`;
}
