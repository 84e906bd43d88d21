/**
 * The client's address, for the failed-login limit and the logs. The TCP
 * peer is the client unless it is a trusted proxy (PAYFLUX_TRUST_PROXY);
 * then X-Forwarded-For is read from the right, skipping trusted proxies, and
 * the first address that is not one is the client. Everything to the left of
 * it was written by the client and is ignored (a client can put anything
 * there). Off by default: X-Forwarded-For is never believed.
 */

/** An address as 16 bytes (IPv4 as ::ffff:a.b.c.d) in a bigint, and its family. */
interface Parsed {
  value: bigint;
  v4: boolean;
}

const V4_MAPPED = 0xffffn << 32n;

function parseV4(s: string): bigint | null {
  const parts = s.split(".");
  if (parts.length !== 4) return null;
  let v = 0n;
  for (const p of parts) {
    if (!/^\d{1,3}$/.test(p) || Number(p) > 255 || (p.length > 1 && p[0] === "0")) return null;
    v = (v << 8n) | BigInt(Number(p));
  }
  return v;
}

function parseV6(s: string): bigint | null {
  if (s.length > 45 || !/^[0-9a-fA-F:.]+$/.test(s)) return null;
  let tail: bigint | null = null;
  let text = s;
  // An embedded IPv4 address takes the last 32 bits.
  const lastColon = s.lastIndexOf(":");
  if (s.indexOf(".", lastColon) >= 0) {
    tail = parseV4(s.slice(lastColon + 1));
    if (tail === null) return null;
    text = s.slice(0, lastColon + 1) + "0:0";
  }
  const halves = text.split("::");
  if (halves.length > 2) return null;
  const groups = (h: string) => (h === "" ? [] : h.split(":"));
  const head = groups(halves[0]!);
  const rest = halves.length === 2 ? groups(halves[1]!) : [];
  const missing = 8 - head.length - rest.length;
  if (halves.length === 1 ? missing !== 0 : missing < 1) return null;
  const all = [...head, ...Array<string>(halves.length === 2 ? missing : 0).fill("0"), ...rest];
  let v = 0n;
  for (const g of all) {
    if (!/^[0-9a-fA-F]{1,4}$/.test(g)) return null;
    v = (v << 16n) | BigInt(parseInt(g, 16));
  }
  if (tail !== null) v = (v & ~0xffffffffn) | tail;
  return v;
}

/** Parses an IPv4 or IPv6 address (brackets, a zone and an IPv4-mapped form allowed); null if it is none. */
export function parseAddress(raw: string): Parsed | null {
  let s = raw.trim();
  if (s.startsWith("[") && s.endsWith("]")) s = s.slice(1, -1);
  const zone = s.indexOf("%");
  if (zone >= 0) s = s.slice(0, zone);
  if (s.includes(":")) {
    const v = parseV6(s);
    if (v === null) return null;
    return (v >> 32n) === 0xffffn ? { value: v, v4: true } : { value: v, v4: false };
  }
  const v = parseV4(s);
  return v === null ? null : { value: V4_MAPPED | v, v4: true };
}

/** Canonical text of an address: dotted IPv4 (mapped ones too), or IPv6 in full lower-case groups. */
export function formatAddress(a: Parsed): string {
  if (a.v4) {
    const v = Number(a.value & 0xffffffffn);
    return [v >>> 24, (v >>> 16) & 255, (v >>> 8) & 255, v & 255].join(".");
  }
  const groups: string[] = [];
  for (let i = 7; i >= 0; i--) groups.push(((a.value >> BigInt(i * 16)) & 0xffffn).toString(16));
  return groups.join(":");
}

interface Cidr {
  value: bigint;
  mask: bigint;
}

/** The trusted proxies of PAYFLUX_TRUST_PROXY; an empty list trusts nobody. */
export class TrustedProxies {
  private constructor(
    private readonly cidrs: Cidr[],
    /** Canonical form, for the config's fingerprint and change detection. */
    readonly text: string,
  ) {}

  static readonly NONE = new TrustedProxies([], "");

  /** Parses `addr[/prefix],...`; problems name the entry's position only. */
  static parse(raw: string, errors: string[], name = "PAYFLUX_TRUST_PROXY"): TrustedProxies {
    const cidrs: Cidr[] = [];
    const canonical: string[] = [];
    raw.split(",").forEach((part, i) => {
      const entry = part.trim();
      if (entry === "") return;
      const slash = entry.indexOf("/");
      const addr = parseAddress(slash < 0 ? entry : entry.slice(0, slash));
      const bits = addr === null ? 0 : addr.v4 ? 32 : 128;
      const prefix = slash < 0 ? bits : /^\d{1,3}$/.test(entry.slice(slash + 1)) ? Number(entry.slice(slash + 1)) : -1;
      if (addr === null || prefix < 0 || prefix > bits) {
        errors.push(`${name} entry ${i + 1} is not an IPv4 or IPv6 address or CIDR (such as 10.0.0.0/8 or fd00::/8)`);
        return;
      }
      const hostBits = BigInt(bits - prefix);
      const mask = ((1n << 128n) - 1n) ^ ((1n << hostBits) - 1n);
      cidrs.push({ value: addr.value & mask, mask });
      canonical.push(`${formatAddress(addr)}/${prefix}`);
    });
    return cidrs.length === 0 ? TrustedProxies.NONE : new TrustedProxies(cidrs, canonical.join(","));
  }

  get enabled(): boolean {
    return this.cidrs.length > 0;
  }

  has(a: Parsed): boolean {
    for (const c of this.cidrs) if ((a.value & c.mask) === c.value) return true;
    return false;
  }

  /**
   * The client of a request that came from `peer`: the peer itself unless
   * it is trusted; then the right-most X-Forwarded-For entry that is not a
   * trusted proxy (or the left-most one if all are). An entry that is not an
   * address ends the walk at the last hop known good.
   */
  clientOf(peer: string | null, forwardedFor: string | null): string | null {
    if (peer === null) return null;
    // The common case costs nothing: an IPv4 peer and no proxy to believe.
    if (!this.enabled && !peer.includes(":")) return peer;
    const p = parseAddress(peer);
    if (p === null) return peer;
    if (!this.enabled || forwardedFor === null || !this.has(p)) return formatAddress(p);
    let client = p;
    // Bounded: a header is at most a few KiB, and the walk stops at the first untrusted hop.
    const hops = forwardedFor.split(",");
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = parseAddress(hops[i]!);
      if (hop === null) break;
      client = hop;
      if (!this.has(hop)) break;
    }
    return formatAddress(client);
  }
}
