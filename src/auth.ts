import { createHash, timingSafeEqual } from "node:crypto";

/** The runbook's three denial reasons, exactly. */
export const DENIAL_REASONS = ["missing_key", "revoked_key", "invalid_key"] as const;
export type DenialReason = (typeof DENIAL_REASONS)[number];

/** SHA-256 of a key, hex. Keys are only ever held, compared and logged in this form. */
export function keyDigest(key: string): string {
  return createHash("sha256").update(key).digest("hex");
}

/**
 * Short, non-reversible name of a key for logs and the event log: the first
 * 12 hex characters of its digest (48 bits), the same on every instance.
 */
export function keyIdOf(digest: string): string {
  return digest.slice(0, 12);
}

/**
 * The token of an `Authorization: Bearer <token>` header, or null when the
 * header is absent, uses another scheme (matched case-insensitively) or
 * carries an empty token. Query-string tokens are deliberately not read: a
 * key in a URL ends up in proxy and access logs.
 */
export function bearerToken(header: string | null): string | null {
  if (header === null || header.length < 7) return null;
  if (header.slice(0, 7).toLowerCase() !== "bearer ") return null;
  const token = header.slice(7).trim();
  return token === "" ? null : token;
}

export type AuthResult =
  | { ok: true; digest: string; keyId: string }
  | { ok: false; reason: DenialReason; digest: string | null };

/**
 * The allowed and revoked keys, held as digests. A lookup hashes the presented
 * token once and probes one map, so its cost does not depend on how many keys
 * are configured, and no comparison ever runs on a secret: equal-length
 * digests of an unknown preimage reveal nothing through timing.
 */
export class KeyRing {
  /** digest -> revoked? */
  private readonly states = new Map<string, boolean>();
  readonly activeCount: number;
  readonly revokedCount: number;

  constructor(allowedDigests: Iterable<string>, revokedDigests: Iterable<string>) {
    for (const d of allowedDigests) this.states.set(d, false);
    // Revocation wins over the allowlist: a key in both is revoked.
    for (const d of revokedDigests) this.states.set(d, true);
    let active = 0;
    let revoked = 0;
    for (const isRevoked of this.states.values()) isRevoked ? revoked++ : active++;
    this.activeCount = active;
    this.revokedCount = revoked;
  }

  /** Digests of the keys that are allowed now (for reload diffs and the limiter). */
  activeDigests(): string[] {
    return [...this.states].filter(([, revoked]) => !revoked).map(([d]) => d);
  }

  revokedDigests(): string[] {
    return [...this.states].filter(([, revoked]) => revoked).map(([d]) => d);
  }

  authenticate(authorizationHeader: string | null): AuthResult {
    const token = bearerToken(authorizationHeader);
    if (token === null) return { ok: false, reason: "missing_key", digest: null };
    const digest = keyDigest(token);
    const revoked = this.states.get(digest);
    if (revoked === undefined) return { ok: false, reason: "invalid_key", digest };
    if (revoked) return { ok: false, reason: "revoked_key", digest };
    return { ok: true, digest, keyId: keyIdOf(digest) };
  }
}

/**
 * Constant-time check of a presented secret against a stored digest: both
 * sides are 32-byte digests, so neither length nor content ends it early.
 */
export function secretMatches(presented: string | null, expectedDigest: string): boolean {
  if (presented === null) return false;
  const a = createHash("sha256").update(presented).digest();
  const b = Buffer.from(expectedDigest, "hex");
  return timingSafeEqual(a, b);
}
