/**
 * Per-key token buckets: capacity `burst`, refilled continuously at `rps`
 * tokens per second, one token per request. Buckets are keyed by the key's
 * digest (never the key) and exist only for configured keys, so memory is
 * bounded by the allowlist.
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

interface Bucket {
  tokens: number;
  updatedAt: number;
}

export class RateLimiter {
  private readonly buckets = new Map<string, Bucket>();
  private policy = "";

  constructor(
    private rps: number,
    private burst: number,
  ) {
    this.policy = policyOf(rps, burst);
  }

  take(keyDigest: string, now = performance.now()): Decision {
    let bucket = this.buckets.get(keyDigest);
    if (bucket === undefined) {
      bucket = { tokens: this.burst, updatedAt: now };
      this.buckets.set(keyDigest, bucket);
    } else {
      bucket.tokens = Math.min(this.burst, bucket.tokens + ((now - bucket.updatedAt) / 1000) * this.rps);
      bucket.updatedAt = now;
    }
    const allowed = bucket.tokens >= 1;
    if (allowed) bucket.tokens -= 1;
    return {
      allowed,
      remaining: Math.floor(bucket.tokens),
      retryAfterSeconds: Math.max(1, Math.ceil((1 - bucket.tokens) / this.rps)),
      resetSeconds: Math.ceil((this.burst - bucket.tokens) / this.rps),
    };
  }

  /** Applies new limits: buckets of keys that stay keep their tokens (capped at the new burst); others are dropped. */
  reconfigure(rps: number, burst: number, liveDigests: Iterable<string>): void {
    this.rps = rps;
    this.burst = burst;
    this.policy = policyOf(rps, burst);
    const live = new Set(liveDigests);
    for (const [digest, bucket] of this.buckets) {
      if (!live.has(digest)) this.buckets.delete(digest);
      else bucket.tokens = Math.min(bucket.tokens, burst);
    }
  }

  /** `RateLimit-Policy` value; computed once per configuration, not per request. */
  policyHeader(): string {
    return this.policy;
  }

  get size(): number {
    return this.buckets.size;
  }
}

/** `RateLimit-Policy` (IETF httpapi ratelimit-headers draft): quota = burst, window = time to refill it. */
function policyOf(rps: number, burst: number): string {
  return `"ingest";q=${burst};w=${Math.max(1, Math.ceil(burst / rps))}`;
}

/** `RateLimit` value for one decision: r = whole tokens left, t = seconds until the bucket is full again. */
export function rateLimitHeader(d: Decision): string {
  return `"ingest";r=${d.remaining};t=${d.resetSeconds}`;
}
