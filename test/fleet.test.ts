/**
 * A fleet view of rotations: `keys_fingerprint` (in /health, in the start-up
 * and reload log lines, and as payflux_config_info{keys_fingerprint} 1) is the
 * same on instances that share keys, revocations, limits, validation and
 * dedup settings, whatever their port, data dir or log level, while
 * `config_fingerprint` keeps covering everything. The reload line counts each
 * key once by how it moved: added, removed, revoked, un-revoked.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { E2E_TARGETS, metricsText, startServer, stopAll, tempDir, type Server } from "./support/harness.ts";

afterAll(stopAll);

const K1 = "fleet-key-one-0123456789abcdef0123";
const K2 = "fleet-key-two-0123456789abcdef0123";
const K3 = "fleet-key-three-0123456789abcdef01";
const K4 = "fleet-key-four-0123456789abcdef012";

async function health(s: Server): Promise<{ keys_fingerprint: string; config_fingerprint: string }> {
  return (await fetch(`${s.url}/health`)).json() as any;
}

/** The keys_fingerprint label of payflux_config_info, checking there is exactly one such series at 1. */
async function infoFingerprint(s: Server): Promise<string> {
  const lines = (await metricsText(s)).split("\n").filter((l) => l.startsWith("payflux_config_info{"));
  expect(lines.length).toBe(1);
  const m = /^payflux_config_info\{keys_fingerprint="([0-9a-f]{12})"\} 1$/.exec(lines[0]!);
  expect(m).not.toBeNull();
  return m![1]!;
}

for (const target of E2E_TARGETS) {
  describe(`keys_fingerprint (${target})`, () => {
    test("instances with the same keys and limits agree, whatever their port, data dir and per-instance settings; config_fingerprint still differs", async () => {
      const shared = { PAYFLUX_API_KEYS: `${K1},${K2}`, PAYFLUX_REVOKED_KEYS: K3, PAYFLUX_INGEST_RPS: "50" };
      const [a, b, otherKeys, otherLimit] = await Promise.all([
        startServer({ target, env: shared }),
        startServer({ target, env: { ...shared, PAYFLUX_SHUTDOWN_TIMEOUT: "20s", PAYFLUX_SEGMENT_BYTES: "1MiB" } }),
        startServer({ target, env: { ...shared, PAYFLUX_REVOKED_KEYS: "" } }),
        startServer({ target, env: { ...shared, PAYFLUX_DEDUP_WINDOW: "1h" } }),
      ]);
      const [ha, hb, hk, hl] = await Promise.all([a, b, otherKeys, otherLimit].map(health));
      expect(ha!.keys_fingerprint).toMatch(/^[0-9a-f]{12}$/);
      expect(hb!.keys_fingerprint).toBe(ha!.keys_fingerprint);
      expect(hb!.config_fingerprint).not.toBe(ha!.config_fingerprint);
      expect(hk!.keys_fingerprint).not.toBe(ha!.keys_fingerprint);
      expect(hl!.keys_fingerprint).not.toBe(ha!.keys_fingerprint);
      for (const [s, h] of [[a, ha], [b, hb], [otherKeys, hk], [otherLimit, hl]] as const) {
        expect(await infoFingerprint(s)).toBe(h!.keys_fingerprint);
        expect(s.logs().find((l) => l.msg === "payflux listening")!.keys_fingerprint).toBe(h!.keys_fingerprint);
      }
    });

    test("the reload line counts keys added, removed, revoked and un-revoked once each, and keys_fingerprint follows the keys", async () => {
      const file = join(tempDir(), "payflux.env");
      const write = (vars: Record<string, string>) => {
        writeFileSync(`${file}.tmp`, Object.entries(vars).map(([k, v]) => `${k}=${v}\n`).join(""));
        renameSync(`${file}.tmp`, file);
      };
      write({ PAYFLUX_API_KEYS: `${K1},${K2}` });
      const s = await startServer({ target, args: ["--config", file] });
      let reloads = 0;
      const reload = async (vars: Record<string, string>) => {
        write(vars);
        reloads++;
        s.signal("SIGHUP");
        await s.waitForLog(() => s.logs().filter((l) => l.msg === "config reloaded").length === reloads);
        const line = s.logs().filter((l) => l.msg === "config reloaded")[reloads - 1]!;
        const h = await health(s);
        expect(line.keys_fingerprint).toBe(h.keys_fingerprint);
        expect(await infoFingerprint(s)).toBe(h.keys_fingerprint);
        return { line, fp: h.keys_fingerprint };
      };
      const counts = (l: Record<string, any>) => [l.keys_added, l.keys_removed, l.keys_revoked, l.keys_unrevoked];
      const fp0 = (await health(s)).keys_fingerprint;

      // Revoke K2 while it stays in the allowlist: revoked, not also removed.
      const r1 = await reload({ PAYFLUX_API_KEYS: `${K1},${K2}`, PAYFLUX_REVOKED_KEYS: K2 });
      expect(counts(r1.line)).toEqual([0, 0, 1, 0]);
      expect(r1.fp).not.toBe(fp0);
      // Drop it from the revoked list: it is allowed again.
      const r2 = await reload({ PAYFLUX_API_KEYS: `${K1},${K2}` });
      expect(counts(r2.line)).toEqual([0, 0, 0, 1]);
      expect(r2.line.summary).toBe("keys: 0 added, 0 removed, 0 revoked, 1 un-revoked; settings changed: none");
      expect(r2.fp).toBe(fp0);
      // Revoke it and drop it from the allowlist in one go, then drop it from the revoked list: removed.
      expect(counts((await reload({ PAYFLUX_API_KEYS: K1, PAYFLUX_REVOKED_KEYS: K2 })).line)).toEqual([0, 0, 1, 0]);
      expect(counts((await reload({ PAYFLUX_API_KEYS: K1 })).line)).toEqual([0, 1, 0, 0]);
      // A new key, a key revoked before it was ever allowed, and a limit.
      const r5 = await reload({ PAYFLUX_API_KEYS: `${K1},${K3}`, PAYFLUX_REVOKED_KEYS: K4, PAYFLUX_INGEST_BURST: "50" });
      expect(counts(r5.line)).toEqual([1, 0, 1, 0]);
      expect(r5.line.changed_settings).toEqual(["PAYFLUX_INGEST_BURST"]);
      expect(r5.line.summary).toBe("keys: 1 added, 0 removed, 1 revoked, 0 un-revoked; settings changed: PAYFLUX_INGEST_BURST");
      // The log level is per instance: config_fingerprint moves, keys_fingerprint does not.
      const r6 = await reload({ PAYFLUX_API_KEYS: `${K1},${K3}`, PAYFLUX_REVOKED_KEYS: K4, PAYFLUX_INGEST_BURST: "50", PAYFLUX_LOG_LEVEL: "debug" });
      expect(counts(r6.line)).toEqual([0, 0, 0, 0]);
      expect(r6.fp).toBe(r5.fp);
      expect(r6.line.config_fingerprint).not.toBe(r5.line.config_fingerprint);
      // No line carries a key.
      for (const k of [K1, K2, K3, K4]) expect(s.stdout.join("\n")).not.toContain(k);
    });
  });
}
