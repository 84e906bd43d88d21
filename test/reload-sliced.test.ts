/**
 * A SIGHUP reload of many keys runs in slices (issue 9: no request waits
 * behind the whole reload), in-process and without timing: that other
 * callbacks run before the loading finishes, that the sliced result is the
 * synchronous one, the key diff, the limiter's bucket check, that the
 * fingerprint's bytes did not change, and how SIGHUPs coalesce.
 */
import { describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { keyIdOfBytes } from "../src/auth.ts";
import { loadConfig, loadConfigInSlices, type Config } from "../src/config.ts";
import { coalescedReloads, keyChanges } from "../src/reload.ts";
import { runSliced, runSync } from "../src/slices.ts";
import { tempDir } from "./support/harness.ts";

const hex = (key: string) => createHash("sha256").update(key).digest("hex");
const keys = (salt: string, n: number) => Array.from({ length: n }, (_, i) => `unit-${salt}-${String(i).padStart(6, "0")}-abcdefabcdef`);
const ok = (r: ReturnType<typeof loadConfig>): Config => {
  if (!r.ok) throw new Error(r.errors.join("\n"));
  return r.config;
};
/** Lets queued callbacks (setImmediate, timers at 0) run, a bounded number of times, until `done`. */
async function settle(done: () => boolean, rounds = 200): Promise<void> {
  for (let i = 0; i < rounds && !done(); i++) await new Promise((r) => setTimeout(r, 0));
}

describe("loadConfigInSlices", () => {
  const file = join(tempDir("payflux-unit-"), "payflux.env");
  writeFileSync(file, `PAYFLUX_API_KEYS=${keys("a", 5000).join(",")}\nPAYFLUX_REVOKED_KEYS=${keys("a", 3).join(",")}\n`);

  test("other callbacks run before it finishes (it yields), and the result is loadConfig's", async () => {
    let ticks = 0;
    let running = true;
    const tick = () => {
      if (!running) return;
      ticks++;
      setImmediate(tick);
    };
    setImmediate(tick);
    const sliced = ok(await loadConfigInSlices({}, file, 0));
    running = false;
    // A loader that never yields would finish before the first setImmediate callback.
    expect(ticks).toBeGreaterThan(1);
    const sync = ok(loadConfig({}, file));
    expect(sliced.fingerprint).toBe(sync.fingerprint);
    expect(sliced.keys.counts()).toEqual({ active: 4997, revoked: 3, expired: 0, expiringSoon: 0 });
  });

  test("a bad file changes nothing the same way: errors, not a config", async () => {
    const bad = join(tempDir("payflux-unit-"), "payflux.env");
    writeFileSync(bad, `PAYFLUX_API_KEYS=${keys("a", 2000).join(",")},short\n`);
    const r = await loadConfigInSlices({}, bad, 0);
    expect(r.ok).toBe(false);
    expect(!r.ok && r.errors.join()).toContain("PAYFLUX_API_KEYS entry 2001 is shorter than 16 characters");
  });
});

describe("the key ring", () => {
  const dir = tempDir("payflux-unit-");
  const clients = join(dir, "clients");
  writeFileSync(
    clients,
    `acme sha256:${hex("unit-secret-acme-aaaaaaaaaaaaaaaa")} rps=3 burst=9 not_after=2027-03-31T00:00:00Z\n` +
      `globex unit-secret-globex-bbbbbbbbbbbbbb revoked\ninitech unit-secret-initech-cccccccccccc\n`,
  );
  const config = ok(
    loadConfig({ PAYFLUX_CLIENTS_FILE: clients, PAYFLUX_API_KEYS: keys("b", 50).join(","), PAYFLUX_REVOKED_KEYS: keys("b", 2).join(","), PAYFLUX_INGEST_RPS: "7" }),
  );

  test("the content digest hashes the same bytes as before slicing (one line per key in digest order), so fingerprints stay comparable across versions", () => {
    const sha = createHash("sha256");
    for (const e of config.keys.all().sort((a, b) => (a.digest < b.digest ? -1 : 1))) {
      sha.update(`${e.digest} ${e.client ?? ""} ${e.revoked ? 1 : 0} ${e.notAfter} ${e.limits.rps} ${e.limits.burst}\n`);
    }
    expect(config.keys.contentDigest()).toBe(sha.digest("hex"));
  });

  test("the content digest orders digests that share their first hex digits (the numeric sort's ties) and mixed line ends as the plain sort does", () => {
    // 600 digests over 6 prefixes of 7 digits, the rest random; a third revoked (another line end), some plain keys.
    const digit = () => "0123456789abcdef"[Math.floor(Math.random() * 16)]!;
    const prefixes = Array.from({ length: 6 }, () => Array.from({ length: 7 }, digit).join(""));
    const digests = Array.from({ length: 600 }, (_, i) => prefixes[i % 6]! + (i % 5 === 0 ? "0" : "") + Array.from({ length: 57 }, digit).join("")).map((d) => d.slice(0, 64));
    const plain = keys("t", 40);
    const ring = ok(
      loadConfig({
        PAYFLUX_API_KEYS: [...digests.map((d) => `sha256:${d}`), ...plain].join(","),
        PAYFLUX_REVOKED_KEYS: digests.filter((_, i) => i % 3 === 0).map((d) => `sha256:${d}`).join(","),
      }),
    ).keys;
    const sha = createHash("sha256");
    for (const e of ring.all().sort((a, b) => (a.digest < b.digest ? -1 : 1))) {
      sha.update(`${e.digest} ${e.client ?? ""} ${e.revoked ? 1 : 0} ${e.notAfter} ${e.limits.rps} ${e.limits.burst}\n`);
    }
    expect(ring.size).toBe(640);
    expect(ring.contentDigest()).toBe(sha.digest("hex"));
  });

  test("hasLiveBucket: an env key's digest and a named client's bucket while not revoked", () => {
    const ring = config.keys;
    expect(ring.hasLiveBucket(hex(keys("b", 50)[10]!))).toBe(true);
    expect(ring.hasLiveBucket(hex(keys("b", 50)[0]!))).toBe(false); // revoked
    expect(ring.hasLiveBucket("client/acme")).toBe(true);
    expect(ring.hasLiveBucket("client/initech")).toBe(true);
    expect(ring.hasLiveBucket("client/globex")).toBe(false); // revoked
    expect(ring.hasLiveBucket(hex("unit-secret-initech-cccccccccccc"))).toBe(false); // a named client draws from client/initech
    expect(ring.hasLiveBucket(hex("never-configured-key-000000"))).toBe(false);
  });

  test("a ring grown through several doublings finds each configured key with its state, and no other (digests sharing their first 32 bits included)", () => {
    const plain = keys("g", 20_000);
    // 300 digests in threes that share their first 8 hex digits (the table's slot key) and differ in one digit of one later word, a different word from group to group.
    const crafted = Array.from({ length: 300 }, (_, i) => {
      const group = Math.floor(i / 3);
      const at = 8 * (1 + (group % 7)) + (group % 8);
      const d = `${String(group).padStart(8, "0")}${"ab".repeat(28)}`;
      return d.slice(0, at) + "cde"[i % 3] + d.slice(at + 1);
    });
    const revokedPlain = plain.filter((_, i) => i % 7 === 0);
    const config = ok(
      loadConfig({
        PAYFLUX_API_KEYS: [...plain, ...plain.slice(0, 500), ...crafted.filter((_, i) => i % 2 === 0).map((d) => `sha256:${d}`)].join(","),
        PAYFLUX_REVOKED_KEYS: [...revokedPlain, ...crafted.filter((_, i) => i % 4 === 0).map((d) => `sha256:${d}`), `key_id:${hex(plain[1]!).slice(0, 12)}`].join(","),
      }),
    );
    const ring = config.keys;
    const revoked = new Set([...revokedPlain, plain[1]!]);
    expect(ring.size).toBe(20_000 + 150);
    for (const key of plain) {
      const r = ring.authenticate(`Bearer ${key}`);
      if (revoked.has(key)) expect(r).toMatchObject({ ok: false, reason: "revoked_key" });
      else expect(r).toMatchObject({ ok: true, keyId: hex(key).slice(0, 12), entry: { digest: hex(key), bucket: hex(key), client: null } });
    }
    for (const [i, d] of crafted.entries()) {
      const e = ring.get(d);
      if (i % 2 === 1) expect(e).toBeUndefined();
      else expect(e).toMatchObject({ digest: d, revoked: i % 4 === 0 });
    }
    const unknown = ring.authenticate("Bearer unit-unknown-key-0000000000");
    expect(unknown).toMatchObject({ ok: false, reason: "invalid_key", entry: null });
    // The log line's key_id of a denied key is its digest's first 12 hex digits, as for a configured one.
    expect(!unknown.ok && unknown.presented !== null && keyIdOfBytes(unknown.presented)).toBe(hex("unit-unknown-key-0000000000").slice(0, 12));
    const nRevoked = revoked.size + 75;
    expect(ring.counts()).toEqual({ active: ring.size - nRevoked, revoked: nRevoked, expired: 0, expiringSoon: 0 });
    expect(new Set(ring.all().map((e) => e.digest)).size).toBe(ring.size);
    // Digests are looked up as keyDigest writes them; a loaded ring (its order and content digest taken) is not changed again.
    expect(ring.get(crafted[0]!.toUpperCase())).toBeUndefined();
    expect(ring.get(`${crafted[0]}0`)).toBeUndefined();
    expect(() => ring.add(new Uint8Array(32), false)).toThrow("not changed once read");
  });

  test("a ring of 100,000 keys takes a few MB (digests in typed arrays: no object or string per key until one is used)", () => {
    const entries = Array.from({ length: 100_000 }, (_, i) => `sha256:${hex(`unit-memory-${i}`)}`).join(",");
    const used = () => {
      Bun.gc(true);
      const m = process.memoryUsage();
      return m.heapUsed + m.arrayBuffers;
    };
    ok(loadConfig({ PAYFLUX_API_KEYS: entries })); // warm: the loader's own code and caches
    const before = used();
    const held = ok(loadConfig({ PAYFLUX_API_KEYS: entries }));
    const grew = used() - before;
    expect(held.keys.size).toBe(100_000);
    // A Map of entry objects with their digest strings took ~27 MB here; the typed ring (with its sort order kept for the next diff) ~11.
    expect(grew).toBeLessThan(16e6);
  });

  test("keyChanges counts each key once: added, removed, revoked, un-revoked", async () => {
    const prev = ok(loadConfig({ PAYFLUX_API_KEYS: keys("c", 3000).join(","), PAYFLUX_REVOKED_KEYS: keys("c", 10).join(",") }));
    // keep 0..1999 (un-revoke 0..4, revoke 10..19), drop 2000..2999, add d0..d499, revoke an unknown key
    const kept = keys("c", 2000);
    const next = ok(
      loadConfig({
        PAYFLUX_API_KEYS: [...kept, ...keys("d", 500)].join(","),
        PAYFLUX_REVOKED_KEYS: [...kept.slice(5, 10), ...kept.slice(10, 20), "unit-unknown-key-000000000000"].join(","),
      }),
    );
    const expected = { keys_added: 500, keys_removed: 1000, keys_revoked: 11, keys_unrevoked: 5 };
    expect(runSync(keyChanges(prev, next))).toEqual(expected);
    expect(await runSliced(keyChanges(prev, next), 0)).toEqual(expected);
  });

  test("keyChanges (a walk of both rings in digest order) agrees with a lookup per key on random rings", () => {
    const pool = keys("r", 400);
    const pick = () => {
      const allowed = pool.filter(() => Math.random() < 0.6);
      const revoked = pool.filter(() => Math.random() < 0.15);
      return ok(loadConfig({ PAYFLUX_API_KEYS: allowed.join(","), PAYFLUX_REVOKED_KEYS: revoked.join(",") }));
    };
    for (let round = 0; round < 20; round++) {
      const prev = pick();
      const next = pick();
      const want = { keys_added: 0, keys_removed: 0, keys_revoked: 0, keys_unrevoked: 0 };
      for (const now of next.keys.all()) {
        const was = prev.keys.get(now.digest);
        if (!now.revoked && was === undefined) want.keys_added++;
        else if (!now.revoked && was!.revoked) want.keys_unrevoked++;
        else if (now.revoked && was?.revoked !== true) want.keys_revoked++;
      }
      for (const was of prev.keys.all()) if (next.keys.get(was.digest) === undefined) want.keys_removed++;
      expect(runSync(keyChanges(prev, next))).toEqual(want);
    }
  });
});

describe("coalescedReloads (the SIGHUP handler)", () => {
  /** Steps whose settle and apply finish only when the test says so. */
  function harness() {
    const log: string[] = [];
    let active = 0;
    let maxActive = 0;
    const pending: { settle: ((quiet: boolean) => void)[]; apply: (() => void)[] } = { settle: [], apply: [] };
    const trigger = coalescedReloads({
      settle: () => new Promise<boolean>((r) => pending.settle.push(r)),
      apply: async () => {
        maxActive = Math.max(maxActive, ++active);
        log.push("apply");
        await new Promise<void>((r) => pending.apply.push(r));
        active--;
      },
      unsettled: () => log.push("unsettled"),
    });
    return { log, trigger, pending, maxActive: () => maxActive };
  }

  test("signals delivered together make one reload", async () => {
    const h = harness();
    h.trigger();
    h.trigger();
    h.trigger();
    await settle(() => h.pending.settle.length > 0);
    h.pending.settle.shift()!(true);
    await settle(() => h.pending.apply.length > 0);
    h.pending.apply.shift()!();
    await settle(() => false, 20);
    expect(h.log).toEqual(["apply"]);
    expect(h.pending.settle).toEqual([]);
  });

  test("signals during the quiet-file wait are covered by the read after it: no second reload", async () => {
    const h = harness();
    h.trigger();
    await settle(() => h.pending.settle.length > 0);
    h.trigger();
    h.trigger();
    h.pending.settle.shift()!(true);
    await settle(() => h.pending.apply.length > 0);
    h.pending.apply.shift()!();
    await settle(() => false, 20);
    expect(h.log).toEqual(["apply"]);
  });

  test("signals during a reload run it exactly once more after it, never two at once", async () => {
    const h = harness();
    h.trigger();
    await settle(() => h.pending.settle.length > 0);
    h.pending.settle.shift()!(true);
    await settle(() => h.pending.apply.length > 0);
    for (let i = 0; i < 5; i++) h.trigger(); // the file may have changed after it was read
    await settle(() => false, 20);
    expect(h.pending.settle).toEqual([]); // nothing starts while the first reload runs
    h.pending.apply.shift()!();
    await settle(() => h.pending.settle.length > 0);
    h.pending.settle.shift()!(true);
    await settle(() => h.pending.apply.length > 0);
    h.pending.apply.shift()!();
    await settle(() => false, 20);
    expect(h.log).toEqual(["apply", "apply"]);
    expect(h.maxActive()).toBe(1);
    // And the handler is ready for the next signal.
    h.trigger();
    await settle(() => h.pending.settle.length > 0);
    h.pending.settle.shift()!(false);
    await settle(() => h.log.length === 3);
    expect(h.log).toEqual(["apply", "apply", "unsettled"]);
  });
});
