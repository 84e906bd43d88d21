/**
 * Attack: brute-forcing keys (issue 8, item 7). Wrong keys from one address
 * are throttled with 429 auth_throttled before the key is hashed (counted in
 * payflux_auth_throttled_total), while another address and valid keys go on;
 * the address buckets stay bounded however many addresses there are; behind a
 * trusted proxy the limit and the logs follow X-Forwarded-For.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { AddressLimiter, bucketKey } from "../src/address-limiter.ts";
import { parseAddress, formatAddress, TrustedProxies } from "../src/client-address.ts";
import { E2E_TARGETS, event, KEY, metric, metricsText, runCli, SINGLE, startServer, stopAll, type Server } from "./support/harness.ts";
import { rawRequest } from "./support/bound-client.ts";

afterAll(stopAll);

const THROTTLED = "payflux_auth_throttled_total";
const INVALID = 'payflux_auth_denied_total{reason="invalid_key"}';

describe("AddressLimiter (clock injected)", () => {
  test("burst failures, then blocked until a token refills; other addresses unaffected", () => {
    const l = new AddressLimiter(5, 20);
    for (let i = 0; i < 20; i++) {
      expect(l.blockedFor("10.0.0.1", 0)).toBe(0);
      l.fail("10.0.0.1", 0);
    }
    expect(l.blockedFor("10.0.0.1", 0)).toBe(1);
    expect(l.blockedFor("10.0.0.2", 0)).toBe(0);
    expect(l.blockedFor("10.0.0.1", 199)).toBe(1);
    expect(l.blockedFor("10.0.0.1", 200)).toBe(0); // 1 token after 1/5 s
    // Refilled completely: the bucket is gone (memory returns).
    expect(l.blockedFor("10.0.0.1", 10_000)).toBe(0);
    expect(l.size).toBe(0);
  });

  test("many addresses never grow it past its capacity; the oldest bucket goes first", () => {
    const l = new AddressLimiter(5, 2, 1000);
    l.fail("192.0.2.1", 0);
    l.fail("192.0.2.1", 0);
    expect(l.blockedFor("192.0.2.1", 0)).toBe(1);
    for (let i = 0; i < 50_000; i++) l.fail(`10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}`, 1);
    expect(l.size).toBe(1000);
    expect(l.blockedFor("192.0.2.1", 1)).toBe(0); // evicted: the oldest
    expect(l.blockedFor("10.0.195.79", 1)).toBe(0); // one failure of 2: still allowed
  });

  test("0 disables; IPv6 counts per /64", () => {
    const off = new AddressLimiter(0, 20);
    for (let i = 0; i < 100; i++) off.fail("10.0.0.1", 0);
    expect(off.blockedFor("10.0.0.1", 0)).toBe(0);
    expect(off.size).toBe(0);
    const l = new AddressLimiter(5, 3);
    for (let i = 0; i < 3; i++) l.fail(formatAddress(parseAddress(`2001:db8:1:2::${i + 1}`)!), 0);
    expect(l.blockedFor(formatAddress(parseAddress("2001:db8:1:2:ffff::9")!), 0)).toBe(1);
    expect(l.blockedFor(formatAddress(parseAddress("2001:db8:1:3::1")!), 0)).toBe(0);
    expect(bucketKey("10.0.0.1")).toBe("10.0.0.1");
  });
});

describe("TrustedProxies", () => {
  test("check-config shows the limit and the trusted proxies; a bad entry is exit 78 naming its position", () => {
    const ok = runCli(["check-config"], { PAYFLUX_API_KEYS: KEY, PAYFLUX_TRUST_PROXY: "10.0.0.0/8, 192.168.1.5" });
    expect(ok.code).toBe(0);
    expect(ok.stdout).toContain("failed auth:  5/s per address, burst 20; X-Forwarded-For believed from 10.0.0.0/8,192.168.1.5/32");
    const off = runCli(["check-config"], { PAYFLUX_API_KEYS: KEY, PAYFLUX_AUTH_FAIL_BURST: "0" });
    expect(off.stdout).toContain("failed auth:  no limit; X-Forwarded-For ignored");
    const bad = runCli(["check-config"], { PAYFLUX_API_KEYS: KEY, PAYFLUX_TRUST_PROXY: "10.0.0.1,not-an-address", PAYFLUX_AUTH_FAIL_RPS: "-1" });
    expect(bad.code).toBe(78);
    expect(bad.stderr).toContain("PAYFLUX_TRUST_PROXY entry 2 is not an IPv4 or IPv6 address");
    expect(bad.stderr).toContain("PAYFLUX_AUTH_FAIL_RPS must be a number from 0");
    expect(bad.stderr).not.toContain("not-an-address");
  });

  test("parses addresses and CIDRs (IPv4, IPv6, mapped); errors name the entry, not the text", () => {
    const errors: string[] = [];
    const t = TrustedProxies.parse("10.0.0.0/8, 192.168.1.5 ,fd00::/8,::ffff:172.16.0.1", errors);
    expect(errors).toEqual([]);
    expect(t.has(parseAddress("10.200.3.4")!)).toBe(true);
    expect(t.has(parseAddress("11.0.0.1")!)).toBe(false);
    expect(t.has(parseAddress("192.168.1.5")!)).toBe(true);
    expect(t.has(parseAddress("192.168.1.6")!)).toBe(false);
    expect(t.has(parseAddress("fd12:3456::1")!)).toBe(true);
    expect(t.has(parseAddress("fe80::1")!)).toBe(false);
    expect(t.has(parseAddress("172.16.0.1")!)).toBe(true);
    for (const bad of ["10.0.0.0/33", "300.1.1.1", "secret-looking-value", "fd00::/129", "1.2.3.4/x"]) {
      const e: string[] = [];
      TrustedProxies.parse(`10.0.0.1,${bad}`, e);
      expect(e).toEqual(["PAYFLUX_TRUST_PROXY entry 2 is not an IPv4 or IPv6 address or CIDR (such as 10.0.0.0/8 or fd00::/8)"]);
    }
  });

  test("the client is the right-most X-Forwarded-For entry that is not a trusted proxy", () => {
    const t = TrustedProxies.parse("10.0.0.0/8", []);
    expect(t.clientOf("10.0.0.5", "203.0.113.7")).toBe("203.0.113.7");
    expect(t.clientOf("10.0.0.5", "1.1.1.1, 203.0.113.7, 10.0.0.9")).toBe("203.0.113.7"); // left part is the client's own
    expect(t.clientOf("10.0.0.5", "10.0.0.8, 10.0.0.9")).toBe("10.0.0.8"); // all trusted: the left-most
    expect(t.clientOf("10.0.0.5", "nonsense, 10.0.0.9")).toBe("10.0.0.9"); // not an address: the last good hop
    expect(t.clientOf("198.51.100.1", "203.0.113.7")).toBe("198.51.100.1"); // an untrusted peer's header is ignored
    expect(t.clientOf("10.0.0.5", null)).toBe("10.0.0.5");
    expect(t.clientOf("::ffff:10.0.0.5", "[2001:db8::7]")).toBe("2001:db8:0:0:0:0:0:7");
    expect(TrustedProxies.NONE.clientOf("10.0.0.5", "203.0.113.7")).toBe("10.0.0.5");
  });
});

function ingest(server: Server, from: string, key: string | null, headers: Record<string, string> = {}) {
  return rawRequest(server.port, {
    from,
    method: "POST",
    target: SINGLE,
    headers: { "content-type": "application/json", ...(key === null ? {} : { authorization: `Bearer ${key}` }), ...headers },
    body: JSON.stringify(event()),
  });
}

for (const target of E2E_TARGETS) {
  describe(`[${target}] brute force from one address`, () => {
    test("429 auth_throttled past the burst (counted, key never checked); another address and valid keys still served", async () => {
      const server = await startServer({ target, env: { PAYFLUX_INGEST_RPS: "100000", PAYFLUX_INGEST_BURST: "100000" } });
      // Valid keys never take a failure token: 60 good requests from one address, no 429.
      for (let i = 0; i < 60; i++) expect((await ingest(server, "127.0.0.3", KEY)).status).toBe(202);

      const statuses: number[] = [];
      let retryAfter = "";
      let code = "";
      // X-Forwarded-For is not believed without PAYFLUX_TRUST_PROXY: varying it changes nothing.
      for (let i = 0; i < 60; i++) {
        const res = await ingest(server, "127.0.0.1", `wrong-key-${i}-xxxxxxxxxxxxxxxxxxxxxxxx`, { "x-forwarded-for": `198.51.100.${i}` });
        statuses.push(res.status);
        if (res.status === 429) {
          retryAfter = res.headers["retry-after"] ?? "";
          code = JSON.parse(res.body).code;
        }
      }
      const denied = statuses.filter((s) => s === 401).length;
      const throttled = statuses.filter((s) => s === 429).length;
      expect(denied + throttled).toBe(60);
      // 20 in the burst, plus at most the few that refilled (5/s) while the loop ran.
      expect(denied).toBeGreaterThanOrEqual(20);
      expect(throttled).toBeGreaterThan(0);
      expect(code).toBe("auth_throttled");
      expect(retryAfter).toBe("1");

      const m = await metricsText(server);
      expect(metric(m, THROTTLED)).toBe(throttled);
      // Throttled requests were refused before the key was checked: not counted as denials.
      expect(metric(m, INVALID)).toBe(denied);

      // Another address: a wrong key is an ordinary 401, a valid key is served.
      expect((await ingest(server, "127.0.0.2", "wrong-key-other-address-xxxxxxxxxxxx")).status).toBe(401);
      expect((await ingest(server, "127.0.0.2", KEY)).status).toBe(202);
      // The valid key from the throttled address is served once its bucket has a token again.
      const wait = Number(retryAfter) * 1000;
      await Bun.sleep(wait + 100);
      expect((await ingest(server, "127.0.0.1", KEY)).status).toBe(202);
      // The limit logged the address, never a key.
      const line = await server.waitForLog((l) => l.msg === "too many failed authentications from one address");
      expect(line.client_ip).toBe("127.0.0.1");
      expect(server.stdout.join("\n")).not.toContain("wrong-key-");
    }, 60_000);

    test("PAYFLUX_TRUST_PROXY: behind a trusted proxy the limit and the logs see the X-Forwarded-For client", async () => {
      const server = await startServer({
        target,
        env: { PAYFLUX_TRUST_PROXY: "127.0.0.1", PAYFLUX_AUTH_FAIL_RPS: "0.1", PAYFLUX_AUTH_FAIL_BURST: "5" },
      });
      const statuses: number[] = [];
      for (let i = 0; i < 10; i++) {
        // The left-most entry is the client's own (spoofed) value: ignored.
        const res = await ingest(server, "127.0.0.1", `bad-key-${i}-yyyyyyyyyyyyyyyyyyyyyyyy`, { "x-forwarded-for": `10.9.9.${i}, 203.0.113.7` });
        statuses.push(res.status);
      }
      expect(statuses).toEqual([401, 401, 401, 401, 401, 429, 429, 429, 429, 429]);
      // Another client behind the same proxy is unaffected.
      expect((await ingest(server, "127.0.0.1", "bad-key-z-yyyyyyyyyyyyyyyyyyyyyyyy", { "x-forwarded-for": "203.0.113.8" })).status).toBe(401);
      expect((await ingest(server, "127.0.0.1", KEY, { "x-forwarded-for": "203.0.113.8" })).status).toBe(202);
      // An untrusted peer (127.0.0.2) cannot pick its address with the header.
      for (let i = 0; i < 5; i++) await ingest(server, "127.0.0.2", "bad-key-peer-yyyyyyyyyyyyyyyyyyyyyyyy", { "x-forwarded-for": `192.0.2.${i}` });
      expect((await ingest(server, "127.0.0.2", "bad-key-peer-yyyyyyyyyyyyyyyyyyyyyyyy", { "x-forwarded-for": "192.0.2.99" })).status).toBe(429);
      expect(metric(await metricsText(server), THROTTLED)).toBe(6);
      const denial = await server.waitForLog((l) => l.msg === "auth denied" && l.client_ip === "203.0.113.7");
      expect(denial.reason).toBe("invalid_key");
      const limit = await server.waitForLog((l) => l.msg === "too many failed authentications from one address");
      expect(limit.client_ip).toBe("203.0.113.7");
    }, 60_000);
  });
}
