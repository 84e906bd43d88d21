/**
 * The pure parts of named clients, in-process: the clients-file parser, RFC
 * 3339 parsing, the key ring's expiry against an injected clock (to the
 * millisecond), `sha256:`/`key_id:` handling in the loader, and token buckets
 * with per-client limits.
 */
import { describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { loadConfig } from "../src/config.ts";
import { parseClientsFile, parseRfc3339 } from "../src/clients.ts";
import { limitsOf, RateLimiter } from "../src/limiter.ts";
import { tempDir } from "./support/harness.ts";

const hex = (key: string) => createHash("sha256").update(key).digest("hex");
const ACME = "unit-secret-acme-aaaaaaaaaaaaaaaaaaaa";
const GLOBEX = "unit-secret-globex-bbbbbbbbbbbbbbbbbb";

describe("parseRfc3339", () => {
  test("zones, fractions, and impossible dates", () => {
    expect(parseRfc3339("2027-03-31T00:00:00Z")).toBe(Date.UTC(2027, 2, 31));
    expect(parseRfc3339("2027-03-31T02:00:00+02:00")).toBe(Date.UTC(2027, 2, 31));
    expect(parseRfc3339("2027-03-30T19:30:00.250-04:30")).toBe(Date.UTC(2027, 2, 31, 0, 0, 0, 250));
    expect(parseRfc3339("2028-02-29T00:00:00Z")).toBe(Date.UTC(2028, 1, 29));
    for (const bad of ["2027-02-29T00:00:00Z", "2027-04-31T00:00:00Z", "2027-03-31T00:00:00", "2027-03-31", "2027-13-01T00:00:00Z", "2027-03-31T24:00:00Z", "tomorrow"]) {
      expect([bad, parseRfc3339(bad)]).toEqual([bad, null]);
    }
  });
});

describe("parseClientsFile", () => {
  test("names, secrets in both forms, options, comments and CRLF", () => {
    const text = [
      "# name secret options",
      `acme\tsha256:${hex(ACME).toUpperCase()}   rps=2.5 burst=7 # comment`,
      `globex ${GLOBEX} not_after=2027-03-31T00:00:00Z revoked\r`,
      "",
    ].join("\n");
    const r = parseClientsFile(text, "clients", 16);
    expect(r.errors).toEqual([]);
    expect(r.clients).toEqual([
      { name: "acme", line: 2, digest: hex(ACME), rps: 2.5, burst: 7, notAfter: null, revoked: false },
      { name: "globex", line: 3, digest: hex(GLOBEX), rps: null, burst: null, notAfter: Date.UTC(2027, 2, 31), revoked: true },
    ]);
    expect(r.warnings.join()).toContain("1 secret(s) in plain text");
  });

  test("each problem names its line; the whole file is refused; no secret in any message", () => {
    const lines = [
      `acme ${ACME} rps=0`,
      `acme2 ${ACME} burst=1.5`,
      `a ${GLOBEX} rps=1 rps=2`,
      `b sha256:${hex(GLOBEX)} revoked=yes`,
      `${"x".repeat(65)} sha256:${hex("z")}`,
      `c sha256:${hex(GLOBEX)}`,
      `d sha256:${hex(GLOBEX)}`,
    ];
    const r = parseClientsFile(lines.join("\n"), "f", 16);
    const text = r.errors.join("\n");
    for (const n of [1, 3, 4, 5, 7]) expect(text).toContain(`f:${n}:`);
    expect(text).toContain("f:1: rps must be a number");
    expect(text).toContain("f:3: option rps is given twice");
    expect(text).toContain("f:4: unknown option revoked");
    expect(text).toContain("f:7: the same secret as line 6");
    for (const s of [ACME, GLOBEX, hex(GLOBEX), hex(ACME)]) expect(text).not.toContain(s);
    // Line 2 is fine on its own: a burst error would be line 2 (1.5 is not whole).
    expect(text).toContain("f:2: burst must be a whole number");
  });
});

describe("key ring and expiry (injected clock)", () => {
  const notAfter = Date.UTC(2027, 2, 31);
  function load(extra: Record<string, string> = {}) {
    const file = join(tempDir("payflux-unit-"), "clients");
    writeFileSync(file, `globex sha256:${hex(GLOBEX)} not_after=2027-03-31T00:00:00Z rps=3 burst=9\nacme ${ACME}\n`);
    return loadConfig({ PAYFLUX_CLIENTS_FILE: file, ...extra });
  }

  test("accepted up to the millisecond before not_after, revoked_key (expired) from that millisecond", () => {
    const r = load();
    if (!r.ok) throw new Error(r.errors.join("\n"));
    const keys = r.config.keys;
    const before = keys.authenticate(`Bearer ${GLOBEX}`, notAfter - 1);
    expect(before.ok).toBe(true);
    expect(before.ok && before.entry).toMatchObject({ client: "globex", limits: { rps: 3, burst: 9 }, bucket: "client/globex" });
    expect(keys.authenticate(`Bearer ${GLOBEX}`, notAfter)).toMatchObject({ ok: false, reason: "revoked_key", expired: true });
    expect(keys.authenticate(`Bearer ${ACME}`, notAfter + 1e12).ok).toBe(true);
    expect(keys.counts(notAfter - 86_400_000)).toEqual({ active: 2, revoked: 0, expired: 0, expiringSoon: 1 });
    expect(keys.counts(notAfter)).toEqual({ active: 1, revoked: 0, expired: 1, expiringSoon: 0 });
  });

  test("key_id revokes a client; revoked wins over expired; an unknown key_id is a warning; a key_id form in the allowlist is an error", () => {
    const r = load({ PAYFLUX_REVOKED_KEYS: `key_id:${hex(GLOBEX).slice(0, 12)}, key_id:000000000000` });
    if (!r.ok) throw new Error(r.errors.join("\n"));
    expect(r.config.keys.authenticate(`Bearer ${GLOBEX}`, 0)).toMatchObject({ ok: false, reason: "revoked_key" });
    expect(r.config.keys.authenticate(`Bearer ${GLOBEX}`, notAfter + 1)).not.toHaveProperty("expired");
    expect(r.config.warnings.join()).toContain("key_id:000000000000 matches no configured key");
    const bad = loadConfig({ PAYFLUX_API_KEYS: `key_id:${hex(GLOBEX).slice(0, 12)}` });
    expect(bad.ok).toBe(false);
  });

  test("the fingerprint changes with a client's options", () => {
    const a = load();
    const b = load({ PAYFLUX_INGEST_BURST: "500" }); // same effective config
    expect(a.ok && b.ok && a.config.fingerprint === b.config.fingerprint).toBe(true);
    const file = join(tempDir("payflux-unit-"), "clients");
    writeFileSync(file, `globex sha256:${hex(GLOBEX)} not_after=2027-03-31T00:00:00Z rps=3 burst=10\nacme ${ACME}\n`);
    const c = loadConfig({ PAYFLUX_CLIENTS_FILE: file });
    expect(a.ok && c.ok && a.config.fingerprint !== c.config.fingerprint).toBe(true);
  });
});

describe("token buckets with per-client limits", () => {
  test("each bucket uses the limits of the request; a raised burst does not refill; a lowered one caps", () => {
    const rl = new RateLimiter(1, 2);
    const small = limitsOf(0.001, 2);
    const big = limitsOf(0.001, 100);
    expect([0, 0, 0].map(() => rl.take("client/acme", 0, small).allowed)).toEqual([true, true, false]);
    expect(rl.take("client/acme", 0, big).allowed).toBe(false); // still empty under the raised burst
    const many = Array.from({ length: 5 }, () => rl.take("client/globex", 0, big).allowed);
    expect(many).toEqual([true, true, true, true, true]); // 95 left
    expect([0, 0, 0].map(() => rl.take("client/globex", 0, small).allowed)).toEqual([true, true, false]); // capped at 2
    expect(limitsOf(0.001, 2).policy).toBe('"ingest";q=2;w=2000');
  });
});
