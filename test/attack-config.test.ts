/**
 * Attack: a half-written env file must never weaken auth on SIGHUP (issue 8,
 * item 4). The file is rewritten in place (truncate, then partial writes) while
 * SIGHUPs arrive; a revoked key never gets in, a key cut short never becomes
 * valid, the old keys keep working, and refused reloads are counted. Keys
 * shorter than 16 characters are refused at start-up, by check-config and on
 * reload. Runs on every end-to-end target (the compiled binary included).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { closeSync, openSync, renameSync, utimesSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { readSnapshot, tornReason, unchanged } from "../src/config-file.ts";
import {
  E2E_TARGETS, event, metric, metricsText, post, runBounded, SINGLE, startServer, stopAll, tempDir, until, type Server, type Target,
} from "./support/harness.ts";

afterAll(stopAll);

const A = "attack-cfg-aaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const B = "attack-cfg-bbbbbbbbbbbbbbbbbbbbbbbbbbbb"; // revoked in both the old and the new file
const C = "attack-cfg-cccccccccccccccccccccccccccc0123456789"; // added by the new file
/** The probes send many refused keys from one address: the failed-login limit (its own test) is off. */
const NO_FAIL_LIMIT = { PAYFLUX_AUTH_FAIL_BURST: "0" };
const FAILED = 'payflux_config_reloads_total{result="failure"}';
const OK = 'payflux_config_reloads_total{result="success"}';

const OLD = `PAYFLUX_API_KEYS=${A},${B}\nPAYFLUX_REVOKED_KEYS=${B}\n`;
const NEW = `PAYFLUX_API_KEYS=${A},${B},${C}\nPAYFLUX_REVOKED_KEYS=${B}\n`;

const runTarget = (target: Target, args: string[]) => runBounded(args, {}, 20_000, target);

async function status(server: Server, key: string): Promise<number> {
  return (await post(server, SINGLE, event(), { key })).status;
}

function atomicWrite(file: string, text: string): void {
  writeFileSync(`${file}.tmp`, text, { mode: 0o600 });
  renameSync(`${file}.tmp`, file);
}

/** Sends SIGHUP and waits for the reload's result line after `before` earlier ones. */
async function hupAndWait(server: Server): Promise<Record<string, any>> {
  const isResult = (l: Record<string, any>) => l.msg === "config reloaded" || String(l.msg).startsWith("config reload failed");
  const before = server.logs().filter(isResult).length;
  server.signal("SIGHUP");
  return until("a reload result", () => server.logs().filter(isResult)[before], 15_000);
}

describe("config file reading (in-process)", () => {
  test("an empty file or one without a final newline is torn; the reason never quotes the text", () => {
    expect(tornReason("f.env", "")).toContain("empty");
    const cut = `PAYFLUX_API_KEYS=${A},${C.slice(0, 20)}`;
    const reason = tornReason("f.env", cut)!;
    expect(reason).toContain("newline");
    expect(reason).not.toContain(C.slice(0, 12));
    expect(tornReason("f.env", NEW)).toBeNull();
  });

  test("a file that changed after it was read (content, size or mtime) is detected", () => {
    const file = join(tempDir("payflux-cf-"), "p.env");
    writeFileSync(file, OLD);
    const snap = readSnapshot(file);
    expect(unchanged(file, snap)).toBe(true);
    writeFileSync(file, OLD.replace("a", "z")); // same size, new bytes
    expect(unchanged(file, snap)).toBe(false);
    const snap2 = readSnapshot(file);
    utimesSync(file, new Date(), new Date(Date.now() + 5000)); // only the mtime
    expect(unchanged(file, snap2)).toBe(false);
  });
});

for (const target of E2E_TARGETS) {
  describe(`[${target}] half-written env file`, () => {
    test("keys under 16 characters are refused by serve and check-config (exit 78), never echoed", async () => {
      const short = "sh0rt-k3y-4242"; // 14 characters
      for (const vars of [
        { PAYFLUX_API_KEYS: `${A},${short}` },
        { PAYFLUX_API_KEYS: A, PAYFLUX_REVOKED_KEYS: short },
        { PAYFLUX_API_KEYS: A, PAYFLUX_METRICS_TOKEN: short },
      ]) {
        const file = join(tempDir("payflux-short-"), "p.env");
        atomicWrite(file, Object.entries(vars).map(([k, v]) => `${k}=${v}\n`).join(""));
        for (const cmd of ["serve", "check-config"]) {
          const r = await runTarget(target, [cmd, "--config", file]);
          expect({ cmd, code: r.code }).toEqual({ cmd, code: 78 });
          expect(r.stderr).toContain("shorter than 16 characters");
          expect(r.stdout + r.stderr).not.toContain(short);
        }
      }
    }, 60_000);

    test("SIGHUPs during a non-atomic rewrite never let the revoked key or a cut key in; old keys stay; the full file applies", async () => {
      const file = join(tempDir("payflux-torn-"), "payflux.env");
      atomicWrite(file, OLD);
      const server = await startServer({ target, args: ["serve", "--config", file], env: NO_FAIL_LIMIT });
      expect(await status(server, A)).toBe(202);
      expect(await status(server, B)).toBe(401);

      // Cut points: inside a name, C cut to 4 and to 20 characters, exactly
      // at the end of the first line (the revocation not written yet), inside
      // the revocation, and the end.
      const line1 = NEW.indexOf("\n") + 1;
      const cStart = NEW.indexOf(C);
      const cuts = [10, cStart + 4, cStart + 20, line1, line1 + 25, NEW.length];
      const deadline = Date.now() + 40_000;
      for (let round = 0; round < 3 && Date.now() < deadline; round++) {
        atomicWrite(file, OLD);
        expect((await hupAndWait(server)).msg).toBeDefined();
        // Rewrite in place: truncate, then the content in pieces, SIGHUP after each.
        const fd = openSync(file, "w");
        try {
          let at = 0;
          for (const cut of cuts) {
            writeSync(fd, NEW.slice(at, cut));
            at = cut;
            server.signal("SIGHUP");
            await Bun.sleep(20);
            // A reload of what is on disk now would have happened by now on the old code.
            expect(await status(server, B)).toBe(401);
            expect(await status(server, C.slice(0, 4))).toBe(401);
            expect(await status(server, C.slice(0, 20))).toBe(401);
            expect(await status(server, A)).toBe(202);
          }
        } finally {
          closeSync(fd);
        }
        // Once the writer is done, the complete file applies.
        await until("C accepted", async () => (await status(server, C)) === 202 || undefined, 15_000);
        expect(await status(server, B)).toBe(401);
        expect(await status(server, A)).toBe(202);
      }
      const text = server.stdout.join("\n") + server.stderr();
      for (const secret of [A, B, C, C.slice(0, 20)]) expect(text).not.toContain(secret);
    }, 90_000);

    test("a torn file that is read keeps the old config, with a clear error and the failure metric", async () => {
      const file = join(tempDir("payflux-torn2-"), "payflux.env");
      atomicWrite(file, OLD);
      const server = await startServer({ target, args: ["serve", "--config", file], env: NO_FAIL_LIMIT });
      const m0 = await metricsText(server);
      const failed0 = metric(m0, FAILED)!;

      // Cut mid-line: no final newline, revocation missing.
      atomicWrite(file, `PAYFLUX_API_KEYS=${A},${B},${C.slice(0, 30)}`);
      const r1 = await hupAndWait(server);
      expect(r1.level).toBe("error");
      expect(r1.msg).toContain("does not end with a newline");
      // Cut mid-key at a line end: the short key is refused.
      atomicWrite(file, `PAYFLUX_API_KEYS=${A},${C.slice(0, 6)}\n`);
      const r2 = await hupAndWait(server);
      expect(r2.msg).toContain("PAYFLUX_API_KEYS entry 2 is shorter than 16 characters");
      // Truncated to nothing.
      atomicWrite(file, "");
      const r3 = await hupAndWait(server);
      expect(r3.msg).toContain("is empty");

      const m1 = await metricsText(server);
      expect(metric(m1, FAILED)).toBe(failed0 + 3);
      expect(metric(m1, "payflux_config_last_reload_successful")).toBe(0);
      expect(await status(server, A)).toBe(202);
      expect(await status(server, B)).toBe(401);
      expect(await status(server, C.slice(0, 30))).toBe(401);
      expect(await status(server, C.slice(0, 6))).toBe(401);

      atomicWrite(file, NEW);
      expect((await hupAndWait(server)).msg).toBe("config reloaded");
      expect(await status(server, C)).toBe(202);
      expect(metric(await metricsText(server), OK)).toBeGreaterThanOrEqual(1);
      const text = server.stdout.join("\n") + server.stderr();
      for (const secret of [A, B, C, C.slice(0, 30), C.slice(0, 6)]) expect(text).not.toContain(secret);
    }, 60_000);
  });
}
