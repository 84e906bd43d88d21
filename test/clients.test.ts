/**
 * The clients file (PAYFLUX_CLIENTS_FILE) against the real service on every
 * target, the compiled binary included: per-client limits, `not_after`
 * turning a key into revoked_key at the exact time, `revoked`, the union with
 * the env lists (revocation from either wins), `client` in the log lines,
 * check-config's counts and names, bad lines named by line number without a
 * secret anywhere, buckets kept across reloads, an edited limit applying from
 * the next request, reloads under load with zero failed requests, and the
 * per-client metrics with their cap.
 */
import { afterAll, describe, expect, test as bunTest } from "bun:test";
import { createHash } from "node:crypto";
import { renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  baseEnv, command, E2E_TARGETS, ensureBinary, event, KEY, metric, metricsText, post, SINGLE, startServer, stopAll, tempDir, until, type Server, type Target,
} from "./support/harness.ts";

afterAll(stopAll);

/** Reloads and the expiry wait have their own bounds; Bun's default 5 s per test would cut them short. */
const test = (name: string, fn: () => Promise<void> | void) => bunTest(name, fn, 60_000);

const ACME = "client-secret-acme-aaaaaaaaaaaaaaaaaaaa";
const GLOBEX = "client-secret-globex-bbbbbbbbbbbbbbbbbb";
const INITECH = "client-secret-initech-cccccccccccccccccc";
const OLD = "client-secret-old-dddddddddddddddddddddd";
const ENV_REVOKED = "client-secret-envrev-eeeeeeeeeeeeeeeeee";
const SECRETS = [KEY, ACME, GLOBEX, INITECH, OLD, ENV_REVOKED];

const hex = (key: string) => createHash("sha256").update(key).digest("hex");
const sha = (key: string) => `sha256:${hex(key)}`;
const keyId = (key: string) => hex(key).slice(0, 12);

/** Every server this file starts, for the "no secret anywhere" check at the end. */
const servers: Server[] = [];
const outputs: string[] = [];

/** Writes the clients file atomically (temp file + rename), so a reload never reads half of it. */
function writeClients(file: string, lines: string[]): void {
  writeFileSync(`${file}.tmp`, lines.join("\n") + "\n", { mode: 0o600 });
  renameSync(`${file}.tmp`, file);
}

function clientsFile(lines: string[]): string {
  const file = join(tempDir("payflux-clients-"), "clients");
  writeClients(file, lines);
  return file;
}

async function start(target: Target, lines: string[], env: Record<string, string> = {}): Promise<{ server: Server; file: string }> {
  const file = clientsFile(lines);
  const server = await startServer({ target, env: { PAYFLUX_CLIENTS_FILE: file, ...env } });
  servers.push(server);
  return { server, file };
}

const isReloadResult = (l: Record<string, any>) => l.msg === "config reloaded" || (typeof l.msg === "string" && l.msg.startsWith("config reload failed"));

/** Rewrites the clients file, sends SIGHUP and waits for the reload's own log line. */
async function reload(server: Server, file: string, lines: string[]): Promise<Record<string, any>> {
  const before = server.logs().filter(isReloadResult).length;
  writeClients(file, lines);
  server.signal("SIGHUP");
  return until("a reload log line", () => server.logs().filter(isReloadResult)[before], 15_000);
}

async function status(server: Server, key: string): Promise<number> {
  return (await post(server, SINGLE, event(), { key })).status;
}

/** Statuses of `n` sequential requests with `key`. */
async function statuses(server: Server, key: string, n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(await status(server, key));
  return out;
}

/** Runs the CLI of a target to completion (bounded: killed after 20 s). */
async function cli(target: Target, args: string[], env: Record<string, string>) {
  if (target.endsWith("-binary")) await ensureBinary(target as "bun-binary");
  const p = Bun.spawn([...command(target, tempDir()), ...args], { env: baseEnv(env), stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => p.kill("SIGKILL"), 20_000);
  const [code, stdout, stderr] = await Promise.all([p.exited, new Response(p.stdout).text(), new Response(p.stderr).text()]);
  clearTimeout(timer);
  outputs.push(stdout, stderr);
  return { code, stdout, stderr };
}

for (const target of E2E_TARGETS) {
  describe(`[${target}] clients file`, () => {
    test("rps= and burst= give each client its own limits over the env defaults; RateLimit-Policy says so; the rate-limit line names the client", async () => {
      const { server } = await start(
        target,
        ["# name  secret  options", `acme    ${sha(ACME)}   rps=0.001 burst=3`, `globex  ${sha(GLOBEX)} burst=5   # a comment`, `initech ${INITECH}`],
        { PAYFLUX_INGEST_RPS: "0.001", PAYFLUX_INGEST_BURST: "2" },
      );
      expect(await statuses(server, ACME, 4)).toEqual([202, 202, 202, 429]);
      expect(await statuses(server, GLOBEX, 6)).toEqual([202, 202, 202, 202, 202, 429]);
      expect(await statuses(server, INITECH, 3)).toEqual([202, 202, 429]); // no options: the env defaults
      expect(await statuses(server, KEY, 3)).toEqual([202, 202, 429]); // env key: the env defaults
      const res = await post(server, SINGLE, event(), { key: ACME });
      expect(res.headers.get("ratelimit-policy")).toBe('"ingest";q=3;w=3000');
      const body = await res.json();
      expect(body.detail).toContain("burst 3");
      const line = await server.waitForLog((l) => l.msg === "rate limit hit" && l.client === "acme");
      expect(line.key_id).toBe(keyId(ACME));
      const envLine = await server.waitForLog((l) => l.msg === "rate limit hit" && l.key_id === keyId(KEY));
      expect(envLine.client).toBeUndefined();
    });

    test("not_after: accepted before, revoked_key from the exact time on (expired: true in the log line), counted as expired; the expiry gauge", async () => {
      const notAfter = Date.now() + 4000;
      const { server } = await start(target, [`globex ${sha(GLOBEX)} not_after=${new Date(notAfter).toISOString()}`, `acme ${sha(ACME)}`]);
      const m0 = await metricsText(server);
      expect(metric(m0, 'payflux_client_key_expiry_timestamp_seconds{client="globex"}')).toBe(notAfter / 1000);
      expect(metric(m0, 'payflux_client_key_expiry_timestamp_seconds{client="acme"}')).toBeUndefined();
      expect(metric(m0, 'payflux_api_keys{state="expired"}')).toBe(0);
      expect(Date.now()).toBeLessThan(notAfter); // the server started in time for the "before" half
      let before = 0;
      let after = 0;
      // Bounded: at most ~10 s of polling past the expiry.
      while (after < 3 && Date.now() < notAfter + 10_000) {
        const t0 = Date.now();
        const res = await post(server, SINGLE, event(), { key: GLOBEX });
        const t1 = Date.now();
        const code = res.status === 401 ? (await res.json()).code : undefined;
        if (t1 < notAfter) {
          expect(res.status).toBe(202);
          before++;
        } else if (t0 >= notAfter) {
          expect(res.status).toBe(401);
          expect(code).toBe("revoked_key");
          after++;
        }
        await Bun.sleep(t1 < notAfter - 300 ? 100 : 10);
      }
      expect(before).toBeGreaterThan(0);
      expect(after).toBe(3);
      const line = await server.waitForLog((l) => l.msg === "auth denied" && l.client === "globex");
      expect(line).toMatchObject({ reason: "revoked_key", expired: true, key_id: keyId(GLOBEX) });
      expect(await status(server, ACME)).toBe(202);
      const m1 = await metricsText(server);
      expect(metric(m1, 'payflux_api_keys{state="expired"}')).toBe(1);
      expect(metric(m1, 'payflux_api_keys{state="active"}')).toBe(2); // acme and the env KEY
    });

    test("revoked, and revocation from either side wins: env key_id revokes a client, the file revokes an env key; the denial names the client", async () => {
      const { server } = await start(
        target,
        [`old ${sha(OLD)} revoked`, `acme ${sha(ACME)}`, `globex ${sha(GLOBEX)}`, `envrev ${sha(ENV_REVOKED)} revoked`],
        { PAYFLUX_API_KEYS: `${KEY},${ENV_REVOKED}`, PAYFLUX_REVOKED_KEYS: `key_id:${keyId(GLOBEX)}` },
      );
      for (const key of [OLD, GLOBEX, ENV_REVOKED]) {
        const res = await post(server, SINGLE, event(), { key });
        expect(res.status).toBe(401);
        expect((await res.json()).code).toBe("revoked_key");
      }
      expect(await status(server, ACME)).toBe(202);
      expect(await status(server, KEY)).toBe(202);
      const line = await server.waitForLog((l) => l.msg === "auth denied" && l.client === "old");
      expect(line).toMatchObject({ reason: "revoked_key", key_id: keyId(OLD) });
      expect(line.expired).toBeUndefined();
      const m = await metricsText(server);
      expect(metric(m, 'payflux_api_keys{state="revoked"}')).toBe(3);
      expect(metric(m, 'payflux_api_keys{state="active"}')).toBe(2);
    });

    test("the accepted debug line carries client beside key_id", async () => {
      const { server } = await start(target, [`acme ${sha(ACME)}`], { PAYFLUX_LOG_LEVEL: "debug" });
      expect(await status(server, ACME)).toBe(202);
      const line = await server.waitForLog((l) => l.msg === "events accepted" && l.key_id === keyId(ACME));
      expect(line.client).toBe("acme");
    });

    test("check-config: counts by state (active, revoked, expired, expiring within 7 days) and names, never a secret", async () => {
      const soon = new Date(Date.now() + 3 * 86_400_000).toISOString();
      const file = clientsFile([
        `acme ${ACME} rps=200 burst=1000`,
        `globex ${sha(GLOBEX)} not_after=2999-03-31T00:00:00Z`,
        `initech ${sha(INITECH)} not_after=${soon}`,
        `gone ${sha(OLD)} not_after=2020-01-01T00:00:00Z`,
        `retired ${sha(ENV_REVOKED)} revoked`,
      ]);
      const r = await cli(target, ["check-config"], { PAYFLUX_API_KEYS: KEY, PAYFLUX_CLIENTS_FILE: file });
      expect(r.code).toBe(0);
      expect(r.stdout).toContain("4 active, 1 revoked, 1 expired, 1 expiring within 7 days");
      const row = (name: string) => r.stdout.split("\n").find((l) => l.trim().startsWith(`${name} `)) ?? "";
      expect(row("acme")).toMatch(/\bactive\b.*rps=200 burst=1000/);
      expect(row("globex")).toMatch(/\bactive\b.*not_after=2999-03-31T00:00:00/);
      expect(row("initech")).toContain("expiring within 7 days");
      expect(row("gone")).toContain("expired");
      expect(row("retired")).toContain("revoked");
      expect(r.stderr).toContain("plain text"); // acme's secret is not hashed: a warning, without the secret
      for (const s of SECRETS) expect(r.stdout + r.stderr).not.toContain(s);
    });

    test("bad lines: every problem names its line number, none echoes a secret; serve refuses (78) and a reload keeps the config in force", async () => {
      const bad = [
        "# clients",
        ACME, // 2: a key pasted on a line of its own
        `Acme ${sha(ACME)}`, // 3: capitals
        `acme ${GLOBEX} rps=fast`, // 4
        `globex ${INITECH} color=blue ${OLD}`, // 5: unknown option, and a secret in the options column
        `dup1 ${sha(OLD)}`, // 6: fine
        `dup1 ${sha(INITECH)}`, // 7: duplicate name
        `dup2 ${OLD}`, // 8: the same secret as line 6 (plain vs hashed)
        `initech ${sha(ACME)} not_after=2027-02-30T00:00:00Z`, // 9: no such day
        `${hex(ENV_REVOKED)} ${INITECH}`, // 10: columns swapped
        `short tooshort`, // 11
      ];
      const file = clientsFile(bad);
      const r = await cli(target, ["check-config"], { PAYFLUX_API_KEYS: KEY, PAYFLUX_CLIENTS_FILE: file });
      expect(r.code).toBe(78);
      const errorLines = r.stderr.split("\n").filter((l) => l.startsWith("config error:"));
      const numbered = new Set(errorLines.map((l) => Number(l.slice(l.indexOf(`${file}:`) + file.length + 1).split(":")[0])));
      expect([...numbered].sort((x, y) => x - y)).toEqual([2, 3, 4, 5, 7, 8, 9, 10, 11]);
      expect(r.stderr).toContain(`${file}:5: unknown option color`);
      expect(r.stderr).toContain(`${file}:7: the name dup1 is already used on line 6`);
      expect(r.stderr).toContain(`${file}:8: the same secret as line 6`);
      for (const s of [...SECRETS, hex(ENV_REVOKED), "tooshort"]) expect(r.stdout + r.stderr).not.toContain(s);

      const refused = await cli(target, [], { PAYFLUX_API_KEYS: KEY, PAYFLUX_CLIENTS_FILE: file, PAYFLUX_HOST: "127.0.0.1", PAYFLUX_PORT: "0" });
      expect(refused.code).toBe(78);

      // A running server keeps its config when the file goes bad, and logs the line numbers only.
      const good = [`acme ${sha(ACME)}`];
      const { server, file: live } = await start(target, good);
      const failed = await reload(server, live, bad);
      expect(failed.msg).toStartWith("config reload failed");
      expect(JSON.stringify(failed.errors)).toContain(`${live}:2:`);
      expect(await status(server, ACME)).toBe(202);
      expect(metric(await metricsText(server), 'payflux_config_reloads_total{result="failure"}')).toBe(1);
    });

    test("a reload keeps each client's bucket (never refilled) and an edited limit applies from the next request", async () => {
      const { server, file } = await start(target, [`acme ${sha(ACME)} rps=0.001 burst=5`, `globex ${sha(GLOBEX)} rps=0.001 burst=5`]);
      expect(await statuses(server, ACME, 3)).toEqual([202, 202, 202]); // 2 tokens left
      expect(await status(server, GLOBEX)).toBe(202); // 4 tokens left
      // Raising acme's burst does not refill it; globex's lower burst caps its 4 tokens at 2 from the next request.
      await reload(server, file, [`acme ${sha(ACME)} rps=0.001 burst=50`, `globex ${sha(GLOBEX)} rps=0.001 burst=2`]);
      expect(await statuses(server, ACME, 3)).toEqual([202, 202, 429]);
      expect(await statuses(server, GLOBEX, 3)).toEqual([202, 202, 429]);
      // An unrelated edit keeps the (empty) bucket too: a reload is no way around the limit.
      await reload(server, file, [`acme ${sha(ACME)} rps=0.001 burst=50`, `globex ${sha(GLOBEX)} rps=0.001 burst=2`, `initech ${sha(INITECH)}`]);
      expect(await status(server, ACME)).toBe(429);
      expect(await status(server, INITECH)).toBe(202);
      // A much higher rate refills from the next request on.
      await reload(server, file, [`acme ${sha(ACME)} rps=1000000 burst=50`]);
      expect(await status(server, ACME)).toBe(202);
      expect(await status(server, GLOBEX)).toBe(401); // removed from the file: invalid_key
    });

    test("reloads that change a client's limit under load: zero failed requests", async () => {
      const line = (rps: number) => `acme ${sha(ACME)} rps=${rps} burst=100000`;
      const { server, file } = await start(target, [line(1_000_000)]);
      const results = new Map<string, number>();
      let stop = false;
      const deadline = Date.now() + 30_000;
      const worker = async () => {
        // Bounded by count and time.
        for (let i = 0; i < 2000 && !stop && Date.now() < deadline; i++) {
          let outcome: string;
          try {
            outcome = String(await status(server, ACME));
          } catch (err) {
            outcome = `error ${(err as Error).message}`;
          }
          results.set(outcome, (results.get(outcome) ?? 0) + 1);
        }
      };
      const workers = Array.from({ length: 4 }, worker);
      for (const rps of [500_000, 900_000, 200_000, 1_000_000, 700_000]) {
        const r = await reload(server, file, [line(rps), `globex ${sha(GLOBEX)} burst=${rps % 7 + 1}`]);
        expect(r.msg).toBe("config reloaded");
        await Bun.sleep(50);
      }
      stop = true;
      await Promise.all(workers);
      expect([...results.keys()]).toEqual(["202"]);
      expect(results.get("202")!).toBeGreaterThan(20);
      expect(metric(await metricsText(server), 'payflux_config_reloads_total{result="success"}')).toBe(5);
    });

    test("per-client request counters: off by default; on, by client and outcome, env keys and clients past the cap (100) as other", async () => {
      const { server: off } = await start(target, [`acme ${sha(ACME)}`]);
      expect(await status(off, ACME)).toBe(202);
      const offText = await metricsText(off);
      expect(offText).not.toContain("payflux_client_requests_total{");

      // 100 named clients before acme-101: its requests count under client="other".
      const filler = Array.from({ length: 100 }, (_, i) => `c${String(i).padStart(3, "0")} sha256:${hex(`filler-${i}`)}`);
      const { server } = await start(
        target,
        [...filler, `acme-101 ${sha(ACME)}`, `globex ${sha(GLOBEX)} revoked`],
        { PAYFLUX_METRICS_PER_CLIENT: "true", PAYFLUX_INGEST_RPS: "0.001", PAYFLUX_INGEST_BURST: "1" },
      );
      expect(await statuses(server, ACME, 2)).toEqual([202, 429]);
      expect(await status(server, KEY)).toBe(202);
      expect(await status(server, GLOBEX)).toBe(401);
      expect((await post(server, SINGLE, "{", { key: KEY })).status).toBe(429); // KEY's bucket is empty: rate limited first
      const text = await metricsText(server);
      const series = (client: string, outcome: string) => metric(text, `payflux_client_requests_total{client="${client}",outcome="${outcome}"}`);
      expect(series("c000", "accepted")).toBe(0); // every capped client exists at 0
      expect(series("c099", "rejected")).toBe(0);
      expect(series("acme-101", "accepted")).toBeUndefined();
      expect(series("other", "accepted")).toBe(2); // acme-101 and the env key
      expect(series("other", "rate_limited")).toBe(2);
      expect(series("globex", "revoked_key")).toBeUndefined(); // past the cap too (line 102)
      expect(series("other", "revoked_key")).toBe(1);
      const labels = new Set([...text.matchAll(/^payflux_client_requests_total\{client="([^"]+)"/gm)].map((m) => m[1]));
      expect(labels.size).toBe(101); // 100 names + other
    });

    test("no secret appears in any output of these servers and commands", () => {
      const all = [...servers.map((s) => s.stdout.join("\n") + s.stderr()), ...outputs].join("\n");
      for (const s of SECRETS) expect(all).not.toContain(s);
    });
  });
}
