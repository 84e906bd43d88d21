/**
 * Attack: config errors never print a secret (issue 8, item 5). Env files with
 * a base64 key wrapped onto a line of its own, a key joined to a number by a
 * trailing backslash, a key pasted into the wrong variable, and broken quotes
 * are given to `check-config`, to `serve` and to a running server's reload;
 * every output (stdout, stderr, JSON logs) is searched for every 10-character
 * piece of the secrets, and each error names the line or the variable.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { E2E_TARGETS, KEY, runBounded, startServer, stopAll, tempDir, until, type Target } from "./support/harness.ts";

afterAll(stopAll);

/** A random base64 secret that is sure to hold `+`, `/` and `=` (not a variable name). */
function base64Secret(): string {
  return `${randomBytes(30).toString("base64")}+/${randomBytes(28).toString("base64")}`;
}
const WRAPPED = base64Secret(); // 82 characters, ends in "=="
const JOINED = randomBytes(24).toString("hex");
const PASTED = randomBytes(24).toString("hex");
const QUOTED = randomBytes(24).toString("hex");
const SECRETS = [KEY, WRAPPED, JOINED, PASTED, QUOTED];

/** Every 10-character piece of every secret that appears in `text`. */
function leaks(text: string): string[] {
  const found = new Set<string>();
  for (const s of SECRETS) for (let i = 0; i + 10 <= s.length; i++) if (text.includes(s.slice(i, i + 10))) found.add(s.slice(i, i + 10));
  return [...found];
}

/** Bad files, each with what its error must say (line number or variable). */
const CASES: { name: string; text: string; expect: string | string[] }[] = [
  {
    name: "a base64 key wrapped onto a line of its own, and a hex key on a line without =",
    text: `PAYFLUX_API_KEYS=${KEY},${WRAPPED.slice(0, 40)}\n${WRAPPED.slice(40)}\n${JOINED}\n`,
    expect: [":2: the text before \"=\" is not a variable name", ":3: expected KEY=VALUE"],
  },
  {
    name: "a key joined to a number by a trailing backslash",
    text: `PAYFLUX_API_KEYS=${KEY}\nPAYFLUX_INGEST_RPS=100\\\n${JOINED}\n`,
    expect: "PAYFLUX_INGEST_RPS must be a number",
  },
  {
    name: "a key pasted into the wrong variables",
    text: `PAYFLUX_API_KEYS=${KEY}\nPAYFLUX_PORT=${PASTED}\nPAYFLUX_DEDUP_WINDOW=${PASTED}\nPAYFLUX_SEGMENT_BYTES=${PASTED}\nPAYFLUX_METRICS_ENABLED=${PASTED}\nPAYFLUX_MAX_BATCH=${PASTED}\n`,
    expect: "PAYFLUX_PORT must be a whole number",
  },
  {
    name: "a broken quote around a key, and text after a quote",
    text: `PAYFLUX_API_KEYS=${KEY}\nX${QUOTED}="a" ${QUOTED}\nPAYFLUX_REVOKED_KEYS="${QUOTED}\n`,
    expect: ":3: the value has an unterminated double quote",
  },
];

function writeAtomic(file: string, text: string): void {
  writeFileSync(`${file}.tmp`, text, { mode: 0o600 });
  renameSync(`${file}.tmp`, file);
}

async function run(target: Target, args: string[]): Promise<{ code: number; output: string }> {
  const r = await runBounded(args, {}, 20_000, target);
  return { code: r.code, output: r.stdout + r.stderr };
}

for (const target of E2E_TARGETS) {
  describe(`[${target}] config errors never print a secret`, () => {
    for (const c of CASES) {
      test(`${c.name}: check-config and serve exit 78 naming the problem, without the secret`, async () => {
        const file = join(tempDir("payflux-secret-"), "payflux.env");
        writeAtomic(file, c.text);
        for (const cmd of ["check-config", "serve"]) {
          const r = await run(target, [cmd, "--config", file]);
          expect({ cmd, code: r.code }).toEqual({ cmd, code: 78 });
          for (const e of [c.expect].flat()) expect(r.output).toContain(e);
          expect({ cmd, leaks: leaks(r.output) }).toEqual({ cmd, leaks: [] });
        }
      }, 60_000);
    }

    test("the same files on SIGHUP: every reload fails, names the problem, and no log line holds a secret", async () => {
      const file = join(tempDir("payflux-secret-"), "payflux.env");
      writeAtomic(file, `PAYFLUX_API_KEYS=${KEY}\n`);
      const server = await startServer({ target, args: ["serve", "--config", file] });
      for (const [i, c] of CASES.entries()) {
        writeAtomic(file, c.text);
        server.signal("SIGHUP");
        const line = await until(`reload ${i + 1}`, () => server.logs().filter((l) => String(l.msg).startsWith("config reload failed"))[i], 15_000);
        for (const e of [c.expect].flat()) expect(line.msg).toContain(e);
      }
      expect(await server.stop()).toBe(0);
      expect(leaks(server.stdout.join("\n") + server.stderr())).toEqual([]);
    }, 60_000);
  });
}
