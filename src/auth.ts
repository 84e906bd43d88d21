import { createHash, hash, timingSafeEqual } from "node:crypto";
import { PAUSE_EVERY, runSync, type Sliced } from "./slices.ts";

/** The runbook's three denial reasons, exactly. */
export const DENIAL_REASONS = ["missing_key", "revoked_key", "invalid_key"] as const;
export type DenialReason = (typeof DENIAL_REASONS)[number];

/** SHA-256 of a key, hex. Keys are only ever held, compared and logged in this form. */
export function keyDigest(key: string): string {
  // The one-shot form: about 3x faster than createHash() on Bun (100,000 plain keys on a reload; every request).
  return hash("sha256", key, "hex");
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

/** How a secret is written to stand for a key without holding it: `sha256:<64 hex>`. */
export const HASH_PREFIX = "sha256:";
/** How a revocation names a key by its fingerprint: `key_id:<12 hex>` (as logs and stored events show it). */
export const KEY_ID_PREFIX = "key_id:";

/**
 * The digest a configured secret stands for: a `sha256:<64 hex>` entry is the
 * digest itself (the service never needs the plain key), anything else is a
 * plain key and is hashed. null when the entry has the prefix but not the form.
 */
export function configuredDigest(entry: string): string | null {
  if (!entry.startsWith(HASH_PREFIX)) return keyDigest(entry);
  const hex = entry.slice(HASH_PREFIX.length);
  return /^[0-9a-fA-F]{64}$/.test(hex) ? hex.toLowerCase() : null;
}

/** Per-client metric label of keys without a name of their own; reserved as a client name. */
export const OTHER_CLIENT = "other";

/** Token-bucket limits of one key; `policy` is its `RateLimit-Policy` value, computed once per configuration. */
export interface Limits {
  rps: number;
  burst: number;
  policy: string;
}

/** What the service knows about one configured key (never the key itself). */
export interface KeyEntry {
  digest: string;
  keyId: string;
  /** Name from the clients file, or null for a key from the env lists. */
  client: string | null;
  revoked: boolean;
  /** Epoch ms from which the key is refused as expired (`not_after`); Infinity when it never expires. */
  notAfter: number;
  limits: Limits;
  /** Token bucket this key draws from: a named client keeps its bucket when its secret changes. */
  bucket: string;
  /** `client` label of payflux_client_requests_total: the name, or OTHER_CLIENT (env keys, clients past the cap). */
  metricLabel: string;
}

export type AuthResult =
  | { ok: true; keyId: string; entry: KeyEntry }
  /** `presented`: the SHA-256 of the token presented (see keyIdOfBytes), null when there was none. */
  | { ok: false; reason: DenialReason; presented: Uint8Array | null; entry: KeyEntry | null; expired?: true };

export interface KeyCounts {
  active: number;
  revoked: number;
  expired: number;
  /** Active keys whose not_after is within EXPIRING_SOON_MS (a subset of active). */
  expiringSoon: number;
}

/** "Expiring soon" for check-config: within a week, as the alert warns. */
export const EXPIRING_SOON_MS = 7 * 86_400_000;

/** keyIdOf for a digest in bytes (a denied request's key, only when its log line is written). */
export function keyIdOfBytes(digest: Uint8Array): string {
  return Buffer.from(digest.buffer, digest.byteOffset, 6).toString("hex");
}

const DIGEST_BYTES = 32;
const WORDS = DIGEST_BYTES / 4;
/** Bits of KeyRing.flags. */
const REVOKED = 1;
const NAMED = 2;
/** Where a presented digest is copied to be compared a word at a time (the same byte order as the ring's words). */
const probe = new Uint8Array(DIGEST_BYTES);
const probeWords = new Uint32Array(probe.buffer);
const UTF8 = new TextEncoder();
const HEX_DIGITS = UTF8.encode("0123456789abcdef");

/**
 * The configured keys, held as digests. A lookup hashes the presented token
 * once and probes one table, then compares the entry's own expiry with the
 * clock, so its cost does not depend on how many keys are configured, and no
 * comparison ever runs on a secret: equal-length digests of an unknown
 * preimage reveal nothing through timing.
 *
 * The digests sit in one byte array (32 bytes each, in the order they were
 * configured), with a flag byte each and an open-addressing table of their
 * positions keyed by their first 32 bits (SHA-256's bits are uniform): a ring
 * of 100,000 keys is a few MB in four arrays, not 100,000 objects, strings
 * and Map entries to build on every reload. An entry object is made for a
 * key the first time it is used (named clients' at loading).
 *
 * Built by the config loader (add, addClient, revokeAt), then never changed.
 */
export class KeyRing {
  private n = 0;
  private bytes = new Uint8Array(64 * DIGEST_BYTES);
  private words = new Uint32Array(this.bytes.buffer);
  private flags = new Uint8Array(64);
  /** Position + 1 of each digest, 0 for empty; at most half full. */
  private slots = new Int32Array(128);
  /** Named clients' entries (from loading), and env keys' entries once used. */
  private readonly entries = new Map<number, KeyEntry>();
  private canonical: string | null = null;
  private clientBuckets: Set<string> | null = null;
  private ordered: DigestOrder | null = null;

  /** `defaults`: the limits of keys from the env lists. */
  constructor(private readonly defaults: Limits) {}

  get size(): number {
    return this.n;
  }

  /** Allows a key from the env lists (or revokes it: revocation wins and stays). */
  add(digest: Uint8Array, revoked: boolean): void {
    this.building();
    let i = this.indexOf(digest);
    if (i < 0) i = this.append(digest);
    if (revoked) this.revokeAt(i);
  }

  /** Makes the key a named client's (its name and options; revocations are applied after the clients). */
  addClient(digest: Uint8Array, entry: KeyEntry): void {
    this.building();
    let i = this.indexOf(digest);
    if (i < 0) i = this.append(digest);
    this.flags[i] = (entry.revoked ? REVOKED : 0) | NAMED;
    this.entries.set(i, entry);
  }

  revokeAt(i: number): void {
    this.building();
    this.flags[i]! |= REVOKED;
    const named = this.entries.get(i);
    if (named !== undefined) named.revoked = true;
  }

  /**
   * The keys by key_id (their digest's first 48 bits as a number), for
   * revocations that name one: a key's position, or minus the number of keys
   * that share the key_id (no array per key).
   */
  *byKeyId(): Sliced<Map<number, number>> {
    const index = new Map<number, number>();
    for (let i = 0; i < this.n; i += PAUSE_EVERY) {
      this.indexKeyIds(index, i, Math.min(this.n, i + PAUSE_EVERY));
      yield;
    }
    return index;
  }

  private indexKeyIds(index: Map<number, number>, from: number, to: number): void {
    const b = this.bytes;
    for (let i = from; i < to; i++) {
      const o = i * DIGEST_BYTES;
      const id = (b[o]! * 0x1000000 + b[o + 1]! * 0x10000 + b[o + 2]! * 0x100 + b[o + 3]!) * 0x10000 + b[o + 4]! * 0x100 + b[o + 5]!;
      const seen = index.get(id);
      index.set(id, seen === undefined ? i : seen >= 0 ? -2 : seen - 1);
    }
  }

  /** Loading is over once anything is derived from the ring (its order, content digest or live buckets are kept). */
  private building(): void {
    if (this.ordered !== null || this.clientBuckets !== null) throw new Error("the key ring is not changed once read");
  }

  /** Whether some key is allowed and not revoked. */
  someActive(): boolean {
    for (let i = 0; i < this.n; i++) if (!(this.flags[i]! & REVOKED)) return true;
    return false;
  }

  /** Position of a digest, or -1. */
  private indexOf(digest: Uint8Array): number {
    for (let k = 0; k < DIGEST_BYTES; k++) probe[k] = digest[k]!; // not set(): a native call costs more than 32 bytes
    const w = probeWords;
    const words = this.words;
    const mask = this.slots.length - 1;
    for (let s = w[0]! & mask; ; s = (s + 1) & mask) {
      const v = this.slots[s]!;
      if (v === 0) return -1;
      const o = (v - 1) * WORDS;
      if (words[o] === w[0] && words[o + 1] === w[1] && words[o + 2] === w[2] && words[o + 3] === w[3] &&
          words[o + 4] === w[4] && words[o + 5] === w[5] && words[o + 6] === w[6] && words[o + 7] === w[7]) return v - 1;
    }
  }

  private append(digest: Uint8Array): number {
    if (this.n === this.flags.length) this.grow();
    const i = this.n++;
    for (let k = 0, o = i * DIGEST_BYTES; k < DIGEST_BYTES; k++) this.bytes[o + k] = digest[k]!;
    this.place(i);
    return i;
  }

  private place(i: number): void {
    const mask = this.slots.length - 1;
    let s = this.words[i * WORDS]! & mask;
    while (this.slots[s] !== 0) s = (s + 1) & mask;
    this.slots[s] = i + 1;
  }

  private grow(): void {
    const cap = this.flags.length * 2;
    const bytes = new Uint8Array(cap * DIGEST_BYTES);
    bytes.set(this.bytes);
    const flags = new Uint8Array(cap);
    flags.set(this.flags);
    this.bytes = bytes;
    this.words = new Uint32Array(bytes.buffer);
    this.flags = flags;
    this.slots = new Int32Array(cap * 2);
    for (let i = 0; i < this.n; i++) this.place(i);
  }

  /** The entry of the key at a position, made at its first use. */
  private entryAt(i: number): KeyEntry {
    let e = this.entries.get(i);
    if (e === undefined) {
      const digest = Buffer.from(this.bytes.buffer, i * DIGEST_BYTES, DIGEST_BYTES).toString("hex");
      this.entries.set(i, (e = anonymousEntry(digest, (this.flags[i]! & REVOKED) !== 0, this.defaults)));
    }
    return e;
  }

  /** Every entry (O(keys) objects, kept: for tests and tools, never per request, reload or scrape). */
  all(): KeyEntry[] {
    return Array.from({ length: this.n }, (_, i) => this.entryAt(i));
  }

  /** Named clients' entries. */
  named(): KeyEntry[] {
    const list: KeyEntry[] = [];
    for (const [i, e] of this.entries) if (this.flags[i]! & NAMED) list.push(e);
    return list;
  }

  /** The entry of a digest (64 lowercase hex digits, as keyDigest writes it), if configured. */
  get(digest: string): KeyEntry | undefined {
    if (!/^[0-9a-f]{64}$/.test(digest)) return undefined;
    const i = this.indexOf(Buffer.from(digest, "hex"));
    return i < 0 ? undefined : this.entryAt(i);
  }

  /**
   * SHA-256 (hex) over every key's digest, client, revocation, expiry and
   * limits, in digest order: what the fingerprints need of the keys, computed
   * once per ring. The bytes are one line per key, `<digest hex> <client>
   * <0|1> <not_after ms|Infinity> <rps> <burst>`, as in every version since
   * fingerprints exist, so instances of different versions compare.
   */
  contentDigest(): string {
    return (this.canonical ??= runSync(this.hashContent()));
  }

  /**
   * Whether a bucket may still be used (a key that is not revoked draws from
   * it), for the limiter to keep it across a reload: a lookup, so that a
   * reload costs O(buckets in use), not O(keys).
   */
  hasLiveBucket(bucket: string): boolean {
    const e = this.get(bucket); // an env key's bucket is its digest
    if (e !== undefined && e.bucket === bucket) return !e.revoked;
    return (this.clientBuckets ??= this.liveClientBuckets()).has(bucket);
  }

  /** Computes what a reload needs of the ring in advance, in slices (see runSliced). */
  *prepare(): Sliced<void> {
    this.canonical ??= yield* this.hashContent();
    this.clientBuckets ??= this.liveClientBuckets(); // O(named clients)
  }

  /** Buckets of named clients that are not revoked. */
  private liveClientBuckets(): Set<string> {
    return new Set(this.named().filter((c) => !c.revoked).map((c) => c.bucket));
  }

  /** The positions in digest order (kept for the next reload's diff, see keyChanges). */
  *inOrder(): Sliced<DigestOrder> {
    return (this.ordered ??= yield* this.sortByDigest());
  }

  isRevokedAt(i: number): boolean {
    return (this.flags[i]! & REVOKED) !== 0;
  }

  /** Digest order of this ring's key at `i` and `other`'s at `j`: < 0, 0 (the same key) or > 0. */
  compareAt(i: number, other: KeyRing, j: number): number {
    const a = this.bytes;
    const b = other.bytes;
    for (let k = 0, x = i * DIGEST_BYTES, y = j * DIGEST_BYTES; k < DIGEST_BYTES; k++, x++, y++) {
      if (a[x] !== b[y]) return a[x]! - b[y]!;
    }
    return 0;
  }

  private *hashContent(): Sliced<string> {
    const { order } = yield* this.inOrder();
    const sha = createHash("sha256");
    const { rps, burst } = this.defaults;
    // An env key's line end is one of two (not revoked, revoked); a named client's is its own.
    const out = { buf: new Uint8Array(PAUSE_EVERY * 96), plain: [UTF8.encode(`  0 Infinity ${rps} ${burst}\n`), UTF8.encode(`  1 Infinity ${rps} ${burst}\n`)] };
    for (let k = 0; k < order.length; k += PAUSE_EVERY) {
      sha.update(this.contentLines(order.subarray(k, k + PAUSE_EVERY), out));
      yield;
    }
    return sha.digest("hex");
  }

  /**
   * The content digest's lines of the keys at `positions`, written into one
   * reused buffer (a plain method, not inside the slicing generator: JSC
   * keeps a generator's locals in a heap object, which makes a byte loop
   * inside one several times slower).
   */
  private contentLines(positions: Int32Array, out: { buf: Uint8Array; plain: Uint8Array[] }): Uint8Array {
    const b = this.bytes;
    let o = 0;
    for (let k = 0; k < positions.length; k++) {
      const i = positions[k]!;
      const f = this.flags[i]!;
      let end = out.plain[f & REVOKED]!;
      if (f & NAMED) {
        const e = this.entries.get(i)!;
        end = UTF8.encode(` ${e.client ?? ""} ${e.revoked ? 1 : 0} ${e.notAfter} ${e.limits.rps} ${e.limits.burst}\n`);
      }
      if (o + 2 * DIGEST_BYTES + end.length > out.buf.length) {
        const bigger = new Uint8Array(2 * (out.buf.length + end.length));
        bigger.set(out.buf.subarray(0, o));
        out.buf = bigger;
      }
      for (let x = i * DIGEST_BYTES, stop = x + DIGEST_BYTES; x < stop; x++) {
        out.buf[o++] = HEX_DIGITS[b[x]! >> 4]!;
        out.buf[o++] = HEX_DIGITS[b[x]! & 15]!;
      }
      for (let t = 0; t < end.length; t++) out.buf[o++] = end[t]!;
    }
    return out.buf.subarray(0, o);
  }

  /** A digest's first 7 hex digits as a number (its first 28 bits): digests with smaller prefixes sort first. */
  private prefixAt(i: number): number {
    const o = i * DIGEST_BYTES;
    const b = this.bytes;
    return b[o]! * 0x100000 + b[o + 1]! * 0x1000 + b[o + 2]! * 0x10 + (b[o + 3]! >> 4);
  }

  /**
   * The positions in digest order without comparing 100,000 digests one by
   * one: each digest's first 28 bits as a number, with its position below
   * them, sorted natively; digests sharing those 28 bits (a few pairs among
   * 100,000) are ordered by their bytes.
   */
  private *sortByDigest(): Sliced<DigestOrder> {
    const n = this.n;
    const byBytes = (x: number, y: number) => this.compareAt(x, this, y);
    if (n > INDEX_SPAN) {
      // Beyond the packed form's reach.
      const order = Int32Array.from({ length: n }, (_, i) => i).sort(byBytes);
      return { order, prefixes: Uint32Array.from(order, (i) => this.prefixAt(i)) };
    }
    const packed = new Float64Array(n);
    for (let i = 0; i < n; i += PAUSE_EVERY) {
      this.packPrefixes(packed, i, Math.min(n, i + PAUSE_EVERY));
      yield;
    }
    packed.sort();
    yield;
    const order = new Int32Array(n);
    const prefixes = new Uint32Array(n);
    for (let i = 0; i < n; ) {
      i = this.unpack(packed, i, Math.min(n, i + PAUSE_EVERY), order, prefixes);
      yield;
    }
    return { order, prefixes };
  }

  /** Each digest's prefix with its position below it (the work of sortByDigest's slices is in plain methods: see contentLines). */
  private packPrefixes(packed: Float64Array, from: number, to: number): void {
    for (let i = from; i < to; i++) packed[i] = this.prefixAt(i) * INDEX_SPAN + i;
  }

  /** Positions and prefixes from the sorted packed form, from `from` to at least `to` (a run of equal prefixes is not split); returns where it stopped. */
  private unpack(packed: Float64Array, from: number, to: number, order: Int32Array, prefixes: Uint32Array): number {
    const n = packed.length;
    let i = from;
    while (i < to) {
      const p = Math.floor(packed[i]! / INDEX_SPAN);
      let j = i;
      for (; j < n && packed[j]! < (p + 1) * INDEX_SPAN; j++) {
        order[j] = packed[j]! - p * INDEX_SPAN;
        prefixes[j] = p;
      }
      if (j - i > 1) order.subarray(i, j).sort((x, y) => this.compareAt(x, this, y));
      i = j;
    }
    return i;
  }

  /** Counts by state at `now` (O(keys): for scrapes and check-config, never per request). */
  counts(now = Date.now()): KeyCounts {
    const c: KeyCounts = { active: 0, revoked: 0, expired: 0, expiringSoon: 0 };
    for (let i = 0; i < this.n; i++) {
      const f = this.flags[i]!;
      if (f & REVOKED) c.revoked++;
      else if (!(f & NAMED)) c.active++; // env keys never expire
      else {
        const notAfter = this.entries.get(i)!.notAfter;
        if (now >= notAfter) c.expired++;
        else {
          c.active++;
          if (notAfter - now <= EXPIRING_SOON_MS) c.expiringSoon++;
        }
      }
    }
    return c;
  }

  authenticate(authorizationHeader: string | null, now = Date.now()): AuthResult {
    const token = bearerToken(authorizationHeader);
    if (token === null) return { ok: false, reason: "missing_key", presented: null, entry: null };
    const presented = hash("sha256", token, "buffer") as Uint8Array;
    const i = this.indexOf(presented);
    if (i < 0) return { ok: false, reason: "invalid_key", presented, entry: null };
    const entry = this.entryAt(i);
    if (entry.revoked) return { ok: false, reason: "revoked_key", presented, entry };
    // An expired key is a deliberately retired one: the runbook's revoked_key.
    if (now >= entry.notAfter) return { ok: false, reason: "revoked_key", presented, entry, expired: true };
    return { ok: true, keyId: entry.keyId, entry };
  }
}

/** A ring's positions in digest order, with each digest's first 28 bits to compare them cheaply. */
interface DigestOrder {
  order: Int32Array;
  prefixes: Uint32Array;
}

/** Room below a digest prefix for a position in sortByDigest's packed form (2^28 * 2^25 < 2^53). */
const INDEX_SPAN = 2 ** 25;

/** A configured secret's digest in bytes (see configuredDigest), or null when malformed. */
export function configuredDigestBytes(entry: string): Uint8Array | null {
  if (!entry.startsWith(HASH_PREFIX)) return hash("sha256", entry, "buffer") as Uint8Array;
  const hex = configuredDigest(entry);
  return hex === null ? null : Buffer.from(hex, "hex");
}

/** The entry of a key from the env lists: no name, the default limits, its own bucket. */
function anonymousEntry(digest: string, revoked: boolean, limits: Limits): KeyEntry {
  return { digest, keyId: keyIdOf(digest), client: null, revoked, notAfter: Infinity, limits, bucket: digest, metricLabel: OTHER_CLIENT };
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
