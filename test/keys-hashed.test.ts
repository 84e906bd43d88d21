/**
 * Secrets at rest, against the real service on every target (the compiled
 * binary included): `sha256:<hex>` stands for a key in every env list,
 * `key_id:<hex>` revokes a key from a log line, an ambiguous key_id is a config
 * error, and `keygen` / `hash-key` round-trip into a working config. No key
 * appears in any output.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import {
  command, E2E_TARGETS, ensureBinary, baseEnv, event, metric, metricsText, post, SINGLE, startServer, stopAll, tempDir, type Server, type Target,
} from "./support/harness.ts";

afterAll(stopAll);

const PLAIN = "hashed-test-key-aaaaaaaaaaaaaaaaaaaaaaaa";
const HASHED_ONLY = "hashed-test-key-bbbbbbbbbbbbbbbbbbbbbbbb";
const SINGLE_KEY = "hashed-test-key-cccccccccccccccccccccccc";
const LEAKED = "hashed-test-key-dddddddddddddddddddddddd";
const RETIRED = "hashed-test-key-eeeeeeeeeeeeeeeeeeeeeeee";
const SECRETS = [PLAIN, HASHED_ONLY, SINGLE_KEY, LEAKED, RETIRED];

const hex = (key: string) => createHash("sha256").update(key).digest("hex");
const sha = (key: string) => `sha256:${hex(key)}`;
const keyId = (key: string) => hex(key).slice(0, 12);

/** Runs the CLI of a target to completion with `stdin` (bounded: killed after 20 s). */
async function cli(target: Target, args: string[], stdin = "", env: Record<string, string> = {}) {
  if (target.endsWith("-binary")) await ensureBinary(target as "bun-binary");
  const p = Bun.spawn([...command(target, tempDir()), ...args], { env: baseEnv(env), stdin: "pipe", stdout: "pipe", stderr: "pipe" });
  p.stdin.write(stdin);
  p.stdin.end();
  const timer = setTimeout(() => p.kill("SIGKILL"), 20_000);
  const [code, stdout, stderr] = await Promise.all([p.exited, new Response(p.stdout).text(), new Response(p.stderr).text()]);
  clearTimeout(timer);
  return { code, stdout, stderr };
}

/** `label: value` lines of keygen / hash-key. */
function fields(stdout: string): Record<string, string> {
  return Object.fromEntries(stdout.trim().split("\n").map((l) => [l.slice(0, l.indexOf(":")), l.slice(l.indexOf(":") + 1).trim()]));
}

function expectNoSecret(text: string, secrets: string[] = SECRETS): void {
  for (const s of secrets) expect(text).not.toContain(s);
}

const servers: Server[] = [];

for (const target of E2E_TARGETS) {
  describe(`[${target}] hashed keys`, () => {
    test("sha256: entries in PAYFLUX_API_KEYS and PAYFLUX_API_KEY are accepted; the plain form still works beside them", async () => {
      const server = await startServer({
        target,
        env: { PAYFLUX_API_KEYS: `${PLAIN}, ${sha(HASHED_ONLY)}`, PAYFLUX_API_KEY: sha(SINGLE_KEY).toUpperCase().replace("SHA256:", "sha256:") },
      });
      servers.push(server);
      for (const key of [PLAIN, HASHED_ONLY, SINGLE_KEY]) expect((await post(server, SINGLE, event(), { key })).status).toBe(202);
      // The hash itself is not a key: presenting it is invalid_key.
      const asKey = await post(server, SINGLE, event(), { key: sha(HASHED_ONLY) });
      expect(asKey.status).toBe(401);
      expect((await asKey.json()).code).toBe("invalid_key");
      expect(metric(await metricsText(server), 'payflux_api_keys{state="active"}')).toBe(3);
    });

    test("key_id:<12 hex> in PAYFLUX_REVOKED_KEYS denies that key as revoked_key (logged with the same key_id); sha256: revokes too", async () => {
      const server = await startServer({
        target,
        env: {
          PAYFLUX_API_KEYS: [PLAIN, sha(LEAKED), RETIRED].join(","),
          PAYFLUX_REVOKED_KEYS: `key_id:${keyId(LEAKED)},${sha(RETIRED)}`,
        },
      });
      servers.push(server);
      expect((await post(server, SINGLE, event(), { key: PLAIN })).status).toBe(202);
      for (const key of [LEAKED, RETIRED]) {
        const res = await post(server, SINGLE, event(), { key });
        expect(res.status).toBe(401);
        expect((await res.json()).code).toBe("revoked_key");
      }
      const line = await server.waitForLog((l) => l.msg === "auth denied" && l.key_id === keyId(LEAKED));
      expect(line.reason).toBe("revoked_key");
      const m = await metricsText(server);
      expect(metric(m, 'payflux_auth_denied_total{reason="revoked_key"}')).toBe(2);
      expect(metric(m, 'payflux_api_keys{state="revoked"}')).toBe(2);
      expect(metric(m, 'payflux_api_keys{state="active"}')).toBe(1);
    });

    test("a key_id matching two configured keys is a config error (78) naming it; a malformed sha256: entry names its position, not its value", async () => {
      // Two digests that share their first 12 hex digits (only possible with hashed entries; fine for the test).
      const prefix = keyId(LEAKED);
      const twin = (tail: string) => `sha256:${prefix}${tail.repeat(52)}`;
      const ambiguous = await cli(target, ["check-config"], "", {
        PAYFLUX_API_KEYS: `${twin("1")},${twin("2")},${PLAIN}`,
        PAYFLUX_REVOKED_KEYS: `key_id:${prefix}`,
      });
      expect(ambiguous.code).toBe(78);
      expect(ambiguous.stderr).toContain(`key_id:${prefix} matches 2 configured keys`);

      const badHash = `sha256:${hex(LEAKED).slice(0, 40)}`;
      const malformed = await cli(target, ["check-config"], "", { PAYFLUX_API_KEYS: `${PLAIN},${badHash}` });
      expect(malformed.code).toBe(78);
      expect(malformed.stderr).toContain("PAYFLUX_API_KEYS entry 2");
      expect(malformed.stderr).not.toContain(badHash);
      expectNoSecret(ambiguous.stdout + ambiguous.stderr + malformed.stdout + malformed.stderr);
    });

    test("keygen prints the key once and a config line with only its hash; hash-key gives the same hash and key_id; the service accepts the key", async () => {
      const gen = await cli(target, ["keygen"]);
      expect(gen.code).toBe(0);
      const g = fields(gen.stdout);
      expect(g.key).toMatch(/^[0-9a-f]{64}$/);
      expect(g.config).toBe(`PAYFLUX_API_KEYS=${sha(g.key!)}`);
      expect(g.key_id).toBe(keyId(g.key!));
      expect(gen.stdout.split(g.key!).length).toBe(2);

      const named = await cli(target, ["keygen", "--name", "acme"]);
      const n = fields(named.stdout);
      expect(n.config).toBe(`acme ${sha(n.key!)}`);

      // hash-key: a trailing newline (echo) is not part of the key; the key is never printed.
      const hashed = await cli(target, ["hash-key"], `${g.key}\n`);
      expect(hashed.code).toBe(0);
      const h = fields(hashed.stdout);
      expect(h.hash).toBe(sha(g.key!));
      expect(h.key_id).toBe(g.key_id!);
      expect(hashed.stdout + hashed.stderr).not.toContain(g.key!);
      // An existing key converts without a new one.
      expect(fields((await cli(target, ["hash-key"], PLAIN)).stdout)).toEqual({ hash: sha(PLAIN), key_id: keyId(PLAIN) });
      const empty = await cli(target, ["hash-key"], "");
      expect(empty.code).toBe(65);
      expect(empty.stdout).toBe("");

      const server = await startServer({ target, env: { PAYFLUX_API_KEYS: g.config!.slice("PAYFLUX_API_KEYS=".length) } });
      servers.push(server);
      expect((await post(server, SINGLE, event(), { key: g.key! })).status).toBe(202);
      expect(server.stdout.join("\n") + server.stderr()).not.toContain(g.key!);
    });

    test("no key appears in any log line of these servers", () => {
      for (const s of servers) expectNoSecret(s.stdout.join("\n") + s.stderr());
    });
  });
}
