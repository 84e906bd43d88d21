/**
 * Zero-downtime key rotation on every target (source and binary, Bun and
 * Deno): two clients keep posting (one with the old key, one with the new)
 * while the test walks the procedure of systemd/README.md, one env-file
 * rewrite + SIGHUP per step. No request may fail for a key that is valid at
 * the step in force. Then SIGTERM with a request in flight: it is drained.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  E2E_TARGETS,
  event,
  metric,
  metricsText,
  SINGLE,
  slowPost,
  startServer,
  stopAll,
  storedEvents,
  tcpConnect,
  tempDir,
  until,
  waitInFlight,
  type Server,
} from "./support/harness.ts";

const OLD = "rotation-old-key-0123456789abcdef0123456789";
const NEW = "rotation-new-key-fedcba9876543210fedcba9876";
// The failed-login limit is off: the clients still on a revoked key share 127.0.0.1 with the valid ones.
const LIMITS = { PAYFLUX_INGEST_RPS: "100000", PAYFLUX_INGEST_BURST: "100000", PAYFLUX_AUTH_FAIL_BURST: "0" };

type Vars = Record<string, string>;
type Client = "old" | "new";

/** The procedure's steps: the env file of each, and what each client must get under it. */
const STEPS: { name: string; vars: Vars; expect: Record<Client, string>; active: number; revoked: number; reload?: { keys_added: number; keys_removed: number; keys_revoked: number; keys_unrevoked: number } }[] = [
  { name: "0: old key only", vars: { PAYFLUX_API_KEYS: OLD }, expect: { old: "202", new: "401 invalid_key" }, active: 1, revoked: 0 },
  {
    name: "1: add the new key",
    vars: { PAYFLUX_API_KEYS: `${OLD},${NEW}` },
    expect: { old: "202", new: "202" },
    active: 2,
    revoked: 0,
    reload: { keys_added: 1, keys_removed: 0, keys_revoked: 0, keys_unrevoked: 0 },
  },
  {
    name: "2: revoke the old key",
    vars: { PAYFLUX_API_KEYS: `${OLD},${NEW}`, PAYFLUX_REVOKED_KEYS: OLD },
    expect: { old: "401 revoked_key", new: "202" },
    active: 1,
    revoked: 1,
    reload: { keys_added: 0, keys_removed: 0, keys_revoked: 1, keys_unrevoked: 0 },
  },
  {
    name: "3: remove the old key from both lists",
    vars: { PAYFLUX_API_KEYS: NEW },
    expect: { old: "401 invalid_key", new: "202" },
    active: 1,
    revoked: 0,
    reload: { keys_added: 0, keys_removed: 1, keys_revoked: 0, keys_unrevoked: 0 },
  },
];

function writeEnv(file: string, vars: Vars): void {
  const tmp = `${file}.tmp`;
  writeFileSync(tmp, Object.entries({ ...LIMITS, ...vars }).map(([k, v]) => `${k}=${v}\n`).join(""), { mode: 0o600 });
  renameSync(tmp, file);
}

afterAll(stopAll);

for (const target of E2E_TARGETS) {
  describe(`[${target}] key rotation under load`, () => {
    let server: Server;
    let file: string;

    // A binary target is built on first use (npm run build), hence the long timeout.
    beforeAll(async () => {
      file = join(tempDir("payflux-rotation-"), "payflux.env");
      writeEnv(file, STEPS[0]!.vars);
      server = await startServer({ target, args: ["--config", file] });
    }, 180_000);
    afterAll(stopAll);

    test("walking the README procedure with SIGHUP: no failed request for a valid key, revoked_key after revocation, metrics and fingerprint per step", async () => {
      /**
       * `confirmed`: the highest step seen in force (/health fingerprint changed);
       * `signaled`: the highest step whose file was written and SIGHUP sent. A
       * request sent when confirmed = lo and answered when signaled = hi was
       * handled under some step in lo..hi.
       */
      let confirmed = 0;
      let signaled = 0;
      let running = true;
      const results: { client: Client; outcome: string; lo: number; hi: number }[] = [];
      const loop = async (client: Client, key: string) => {
        while (running) {
          const lo = confirmed;
          let outcome: string;
          try {
            const res = await fetch(server.url + SINGLE, {
              method: "POST",
              headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
              body: JSON.stringify(event()),
              signal: AbortSignal.timeout(5000),
            });
            const body = (await res.json()) as { code?: string; accepted?: number };
            outcome = res.status === 202 ? (body.accepted === 1 ? "202" : `202 accepted=${body.accepted}`) : `${res.status} ${body.code}`;
          } catch (err) {
            outcome = `error ${(err as Error).name}: ${(err as Error).message}`;
          }
          results.push({ client, outcome, lo, hi: signaled });
        }
      };
      const under = (step: number, client: Client) => results.filter((r) => r.client === client && r.lo === step && r.hi === step);

      const fingerprints: string[] = [];
      const deniedRevoked: number[] = [];
      const loops = [loop("old", OLD), loop("new", NEW)];
      try {
        for (let step = 0; step < STEPS.length; step++) {
          const s = STEPS[step]!;
          if (step > 0) {
            const previous = fingerprints[step - 1]!;
            signaled = step;
            writeEnv(file, s.vars);
            server.signal("SIGHUP");
            await until(`step ${s.name} in force`, async () => {
              const res = await fetch(server.url + "/health");
              const fp = ((await res.json()) as { config_fingerprint: string }).config_fingerprint;
              return res.status === 200 && fp !== previous;
            });
            confirmed = step;
          }
          const h = await fetch(server.url + "/health");
          expect(h.status).toBe(200);
          const fp = ((await h.json()) as { config_fingerprint: string }).config_fingerprint;
          expect(fp).toMatch(/^[0-9a-f]{12}$/);
          fingerprints.push(fp);
          // Both clients make some requests entirely under this step.
          await until(`requests under step ${s.name}`, () => under(step, "old").length >= 20 && under(step, "new").length >= 20);

          const m = await metricsText(server);
          expect([step, metric(m, 'payflux_config_reloads_total{result="success"}')]).toEqual([step, step]);
          expect([step, metric(m, 'payflux_config_reloads_total{result="failure"}')]).toEqual([step, 0]);
          expect([step, metric(m, "payflux_config_last_reload_successful")]).toEqual([step, 1]);
          expect([step, metric(m, 'payflux_api_keys{state="active"}')]).toEqual([step, s.active]);
          expect([step, metric(m, 'payflux_api_keys{state="revoked"}')]).toEqual([step, s.revoked]);
          deniedRevoked.push(metric(m, 'payflux_auth_denied_total{reason="revoked_key"}')!);
          if (step === 0) expect(metric(m, 'payflux_auth_denied_total{reason="invalid_key"}')!).toBeGreaterThan(0);
          if (s.reload) {
            const line = await server.waitForLog((l) => l.msg === "config reloaded" && l.config_fingerprint === fp, 5000);
            expect([step, { keys_added: line.keys_added, keys_removed: line.keys_removed, keys_revoked: line.keys_revoked, keys_unrevoked: line.keys_unrevoked }]).toEqual([step, s.reload]);
            expect([step, line.changed_settings]).toEqual([step, []]);
          }
        }
      } finally {
        running = false;
        await Promise.all(loops);
      }

      // Every answer is one the client could get under a step in force between sending and completion;
      // in particular a key valid throughout never fails.
      const allowed = (r: (typeof results)[number]) => STEPS.slice(r.lo, r.hi + 1).map((s) => s.expect[r.client]);
      const failedWhileValid = results.filter((r) => allowed(r).every((o) => o === "202") && r.outcome !== "202");
      expect(failedWhileValid).toEqual([]);
      expect(results.filter((r) => !allowed(r).includes(r.outcome))).toEqual([]);
      for (let step = 0; step < STEPS.length; step++) {
        for (const client of ["old", "new"] as const) {
          const outcomes = new Set(under(step, client).map((r) => r.outcome));
          expect([step, client, [...outcomes]]).toEqual([step, client, [STEPS[step]!.expect[client]]]);
        }
      }

      expect(new Set(fingerprints).size).toBe(STEPS.length);
      expect(deniedRevoked[0]).toBe(0);
      expect(deniedRevoked[1]).toBe(0);
      expect(deniedRevoked[2]!).toBeGreaterThan(0);
      expect(deniedRevoked[3]!).toBeGreaterThanOrEqual(deniedRevoked[2]!);

      // Every 202 is an event in the log, once.
      const acceptedCount = results.filter((r) => r.outcome === "202").length;
      expect(metric(await metricsText(server), "payflux_ingest_accepted_total")).toBe(acceptedCount);
      expect((await storedEvents(server.dataDir)).length).toBe(acceptedCount);

      const out = server.stdout.join("\n") + server.stderr();
      expect(out).not.toContain(OLD);
      expect(out).not.toContain(NEW);
      expect(await server.stop("SIGTERM")).toBe(0);
    }, 60_000);
  });

  describe(`[${target}] SIGTERM drains a request in flight`, () => {
    afterAll(stopAll);

    test("the request completes with 202 and is stored, new connections are refused, the process exits 0", async () => {
      const server = await startServer({ target });
      const ev = event();
      const slow = slowPost(server, JSON.stringify(ev));
      // The slow request plus the scrape itself.
      await waitInFlight(server, 2);

      server.signal("SIGTERM");
      const line = await server.waitForLog((l) => l.signal === "SIGTERM");
      expect(line.msg).toBe("shutting down: no new connections, finishing requests in flight");
      // The listener is closed while the request is still in flight (tries for at most ~3 s).
      let connectResult = "";
      for (let i = 0; i < 150 && connectResult !== "ECONNREFUSED"; i++) {
        connectResult = await tcpConnect(server.port);
        if (connectResult !== "ECONNREFUSED") await Bun.sleep(20);
      }
      expect(connectResult).toBe("ECONNREFUSED");

      slow.release();
      const res = await slow.response;
      expect(res.status).toBe(202);
      expect(await res.json()).toEqual({ accepted: 1, duplicates: 0 });
      expect(await server.exited).toBe(0);
      expect((await storedEvents(server.dataDir)).map((e) => e.event_id)).toEqual([ev.event_id]);
    });
  });
}
