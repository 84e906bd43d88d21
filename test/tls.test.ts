/**
 * HTTPS in the service on every target, with a CA made here by the openssl
 * CLI: real clients (curl, openssl s_client, fetch) verify the certificate;
 * TLS 1.2/1.3 only, no legacy ciphers; SIGHUP rotates the certificate under
 * continuous load with zero failed requests, and the next handshake sees the
 * new one; a bad pair is kept out (the old certificate stays, failure metric
 * and log line, no key material in the logs); config errors exit 78 naming
 * the variable; check-config prints subject, SANs and expiry.
 */
import { afterAll, beforeAll, describe, expect, test as bunTest } from "bun:test";
import { readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { connect as tlsConnect } from "node:tls";
import { E2E_TARGETS, event, KEY, metric, runBounded, SINGLE, slowPost, startServer, stopAll, storedEvents, tempDir, until, type Server } from "./support/harness.ts";

afterAll(stopAll);
const test = (name: string, fn: () => Promise<void> | void) => bunTest(name, fn, 60_000);

async function run(cmd: string[], input = ""): Promise<{ code: number; stdout: string; stderr: string }> {
  const p = Bun.spawn(cmd, { stdin: new TextEncoder().encode(input), stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => p.kill("SIGKILL"), 20_000);
  const [code, stdout, stderr] = await Promise.all([p.exited, new Response(p.stdout).text(), new Response(p.stderr).text()]);
  clearTimeout(timer);
  return { code, stdout, stderr };
}

async function openssl(args: string[]): Promise<string> {
  const r = await run(["openssl", ...args]);
  if (r.code !== 0) throw new Error(`openssl ${args.join(" ")} failed: ${r.stderr}`);
  return r.stdout;
}

interface Pair {
  cert: string;
  key: string;
  /** Unix seconds of notAfter. */
  notAfter: number;
}

/**
 * A test CA and leaf certificates it signs (EC P-256, SANs localhost and
 * 127.0.0.1). Each leaf gets its own serial: leaves are made concurrently,
 * and `-CAcreateserial` has them race on one serial file (a CI run failed
 * with "Unable to load number from ca.srl").
 */
async function makeCa(dir: string) {
  const caKey = join(dir, "ca.key");
  const ca = join(dir, "ca.pem");
  await openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", caKey, "-out", ca, "-days", "30", "-subj", "/CN=PayFlux Test CA"]);
  const ext = join(dir, "ext.cnf");
  writeFileSync(ext, "subjectAltName=DNS:localhost,IP:127.0.0.1\n");
  let serial = 0;
  const leaf = async (name: string, days: number): Promise<Pair> => {
    const key = join(dir, `${name}.key`);
    const csr = join(dir, `${name}.csr`);
    const cert = join(dir, `${name}.pem`);
    await openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", csr, "-subj", `/CN=${name}`]);
    await openssl(["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", caKey, "-set_serial", String(++serial), "-out", cert, "-days", String(days), "-extfile", ext]);
    const end = (await openssl(["x509", "-in", cert, "-noout", "-enddate"])).trim().replace("notAfter=", "");
    return { cert, key, notAfter: Date.parse(end) / 1000 };
  };
  return { ca, leaf };
}

/** Copies a pair into the files the service reads, each replaced atomically. */
function install(pair: Pair, certFile: string, keyFile: string, certFrom = pair.cert, keyFrom = pair.key): void {
  for (const [from, to] of [[certFrom, certFile], [keyFrom, keyFile]] as const) {
    writeFileSync(`${to}.tmp`, readFileSync(from), { mode: 0o600 });
    renameSync(`${to}.tmp`, to);
  }
}

/** The subject of the certificate a fresh handshake gets, verified against the CA ("" if the handshake fails). */
async function servedSubject(port: number, ca: string, extra: string[] = []): Promise<string> {
  const r = await run(["openssl", "s_client", "-connect", `127.0.0.1:${port}`, "-CAfile", ca, "-verify_return_error", ...extra], "");
  if (r.code !== 0) return "";
  const pem = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(r.stdout)?.[0];
  if (pem === undefined) return "";
  const p = Bun.spawn(["openssl", "x509", "-noout", "-subject", "-nameopt", "RFC2253"], { stdin: new TextEncoder().encode(pem), stdout: "pipe" });
  return (await new Response(p.stdout).text()).trim().replace(/^subject=/, "");
}

const isReloadResult = (l: Record<string, any>) => l.msg === "config reloaded" || (typeof l.msg === "string" && l.msg.startsWith("config reload failed"));

async function hup(server: Server): Promise<Record<string, any>> {
  const before = server.logs().filter(isReloadResult).length;
  server.signal("SIGHUP");
  await until("the reload's log line", () => server.logs().filter(isReloadResult).length > before, 15_000);
  return server.logs().filter(isReloadResult)[before]!;
}

const NO_LIMIT = { PAYFLUX_INGEST_RPS: "100000", PAYFLUX_INGEST_BURST: "100000" };

let dir: string;
let ca: string;
let A: Pair;
let B: Pair;
let C: Pair;
beforeAll(async () => {
  dir = tempDir("payflux-tls-");
  const made = await makeCa(dir);
  ca = made.ca;
  [A, B, C] = await Promise.all([made.leaf("payflux-a", 20), made.leaf("payflux-b", 40), made.leaf("payflux-c", 60)]);
});

for (const target of E2E_TARGETS) {
  describe(`[${target}] HTTPS`, () => {
    let server: Server;
    let base: string;
    let certFile: string;
    let keyFile: string;
    const tlsFetch = (path: string, init: RequestInit = {}) => fetch(base + path, { ...init, tls: { ca: readFileSync(ca, "utf8") } } as RequestInit);

    beforeAll(async () => {
      const own = tempDir("payflux-tls-files-");
      certFile = join(own, "tls.pem");
      keyFile = join(own, "tls.key");
      install(A, certFile, keyFile);
      server = await startServer({ target, env: { ...NO_LIMIT, PAYFLUX_TLS_CERT_FILE: certFile, PAYFLUX_TLS_KEY_FILE: keyFile } });
      base = `https://127.0.0.1:${server.port}`;
    });

    test("speaks HTTPS only, verified by curl against the test CA; the start-up line says https", async () => {
      expect(server.logs().find((l) => l.msg === "payflux listening")).toMatchObject({ address: `https://127.0.0.1:${server.port}`, tls: { subject: "CN=payflux-a" } });
      const health = await run(["curl", "-sS", "--cacert", ca, "-o", "-", "-w", "\n%{http_code}", `${base}/health`]);
      expect(health.code).toBe(0);
      expect(health.stdout.trim().split("\n").at(-1)).toBe("200");
      expect(JSON.parse(health.stdout.trim().split("\n")[0]!)).toMatchObject({ status: "ok" });
      const ev = event();
      const posted = await run(["curl", "-sS", "--cacert", ca, "-H", `Authorization: Bearer ${KEY}`, "-H", "Content-Type: application/json", "--data-binary", JSON.stringify(ev), "-w", "\n%{http_code}", `${base}${SINGLE}`]);
      expect(posted.stdout.trim().split("\n")).toEqual(['{"accepted":1,"duplicates":0}', "202"]);
      expect((await storedEvents(server.dataDir)).map((e) => e.event_id)).toContain(ev.event_id);
      // Without the CA the client refuses the certificate (curl exit 60); plain HTTP gets no HTTP answer.
      expect((await run(["curl", "-sS", "-o", "/dev/null", `${base}/health`])).code).toBe(60);
      const plain = await run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5", `http://127.0.0.1:${server.port}/health`]);
      expect(plain.stdout).not.toBe("200");
      // fetch (Bun's client) with the CA.
      expect((await tlsFetch("/health")).status).toBe(200);
    });

    test("client address in denial logs, and silent connections are closed (before and after the handshake)", async () => {
      const denied = await tlsFetch(SINGLE, { method: "POST", headers: { authorization: "Bearer not-a-valid-key-0123456789" }, body: "{}" });
      expect(denied.status).toBe(401);
      await server.waitForLog((l) => l.msg === "auth denied" && l.reason === "invalid_key" && l.client_ip === "127.0.0.1");
      // Bounded waits: the service closes a silent connection after 10 s.
      const closedWithin = (handshake: boolean) =>
        new Promise<string>((resolve) => {
          const raw = connect(server.port, "127.0.0.1");
          const socket = handshake ? tlsConnect({ socket: raw, ca: readFileSync(ca, "utf8"), servername: "localhost" }) : raw;
          const timer = setTimeout(() => (socket.destroy(), resolve("still open after 20 s")), 20_000);
          socket.on("error", () => {});
          socket.on("close", () => (clearTimeout(timer), resolve("closed")));
        });
      expect(await Promise.all([closedWithin(false), closedWithin(true)])).toEqual(["closed", "closed"]);
    });

    test("TLS 1.2 and 1.3 with modern ciphers only", async () => {
      expect(await servedSubject(server.port, ca, ["-tls1_3"])).toBe("CN=payflux-a");
      expect(await servedSubject(server.port, ca, ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"])).toBe("CN=payflux-a");
      expect(await servedSubject(server.port, ca, ["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"])).toBe(""); // CBC + SHA-1
      expect(await servedSubject(server.port, ca, ["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"])).toBe("");
      expect(await servedSubject(server.port, ca, ["-tls1", "-cipher", "DEFAULT@SECLEVEL=0"])).toBe("");
    });

    test("payflux_tls_cert_expiry_timestamp_seconds is the certificate's notAfter", async () => {
      const text = await (await tlsFetch("/metrics")).text();
      expect(metric(text, "payflux_tls_cert_expiry_timestamp_seconds")).toBe(A.notAfter);
    });

    test("SIGHUP rotates the certificate under continuous load: zero failed requests, the next handshake sees the new one", async () => {
      const caPem = readFileSync(ca, "utf8");
      const failures: string[] = [];
      let accepted = 0;
      let stop = false;
      const deadline = Date.now() + 30_000;
      const ids: string[] = [];
      // Two keep-alive clients and one that handshakes anew for every request.
      const client = async (fresh: boolean) => {
        for (let i = 0; i < 3000 && !stop && Date.now() < deadline; i++) {
          const ev = event();
          try {
            const res = await fetch(base + SINGLE, {
              method: "POST",
              headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json", ...(fresh ? { connection: "close" } : {}) },
              body: JSON.stringify(ev),
              tls: { ca: caPem },
            } as RequestInit);
            const text = await res.text();
            if (res.status === 202) {
              accepted++;
              ids.push(ev.event_id as string);
            } else failures.push(`${res.status} ${text}`);
          } catch (err) {
            failures.push(String(err));
          }
        }
      };
      // A request in flight across the rotation: half its body before, half after.
      const json = JSON.stringify(event());
      const { response: slow, release } = slowPost(server, json, { base, init: { tls: { ca: caPem } } as RequestInit });

      const load = Promise.all([client(false), client(false), client(true), client(true)]);
      await until("load running", () => accepted >= 50, 15_000);
      // Five rotations (B, A, B, A, B): a hand-over that loses connections loses some here.
      for (const [i, pair] of [B, A, B, A, B].entries()) {
        const name = pair === B ? "CN=payflux-b" : "CN=payflux-a";
        install(pair, certFile, keyFile);
        const line = await hup(server);
        expect(line).toMatchObject({ msg: "config reloaded", tls_certificate: { subject: name } });
        // The very next handshake gets the new certificate.
        expect({ i, served: await servedSubject(server.port, ca) }).toEqual({ i, served: name });
        const afterRotation = accepted;
        await until("load after the rotation", () => accepted >= afterRotation + 40, 20_000);
      }
      release();
      stop = true;
      await load;
      const slowRes = await slow;
      expect({ status: slowRes.status, body: await slowRes.text() }).toEqual({ status: 202, body: '{"accepted":1,"duplicates":0}' });
      expect(failures).toEqual([]);
      expect(accepted).toBeGreaterThan(250);
      const stored = new Set((await storedEvents(server.dataDir)).map((e) => e.event_id));
      expect(ids.filter((id) => !stored.has(id))).toEqual([]);
      expect(metric(await (await tlsFetch("/metrics")).text(), "payflux_tls_cert_expiry_timestamp_seconds")).toBe(B.notAfter);
    });

    test("a bad pair is kept out: the old certificate stays, with the failure metric and log line, and no key material logged", async () => {
      const reloadsFailed = async () => metric(await (await tlsFetch("/metrics")).text(), 'payflux_config_reloads_total{result="failure"}')!;
      const failedBefore = await reloadsFailed();
      // C's certificate with A's key.
      install(C, certFile, keyFile, C.cert, A.key);
      const mismatch = await hup(server);
      expect(mismatch.msg).toStartWith("config reload failed");
      expect(mismatch.msg).toContain("PAYFLUX_TLS_KEY_FILE");
      expect(mismatch.msg).toContain("does not match");
      expect(await servedSubject(server.port, ca)).toBe("CN=payflux-b");
      // A key file that cannot be read.
      rmSync(keyFile);
      const unreadable = await hup(server);
      expect(unreadable.msg).toContain("PAYFLUX_TLS_KEY_FILE: cannot read");
      expect(await servedSubject(server.port, ca)).toBe("CN=payflux-b");
      // Not a certificate at all.
      install(C, certFile, keyFile, C.key, C.key);
      expect((await hup(server)).msg).toContain("PAYFLUX_TLS_CERT_FILE");
      expect(await reloadsFailed()).toBe(failedBefore + 3);
      expect(metric(await (await tlsFetch("/metrics")).text(), "payflux_config_last_reload_successful")).toBe(0);
      expect(metric(await (await tlsFetch("/metrics")).text(), "payflux_tls_cert_expiry_timestamp_seconds")).toBe(B.notAfter);
      expect((await tlsFetch("/health")).status).toBe(200);
      // A good pair again is taken.
      install(C, certFile, keyFile);
      expect(await hup(server)).toMatchObject({ msg: "config reloaded", tls_certificate: { subject: "CN=payflux-c" } });
      expect(await servedSubject(server.port, ca)).toBe("CN=payflux-c");
      const logs = server.stdout.join("\n") + server.stderr();
      for (const pair of [A, B, C]) {
        const body = readFileSync(pair.key, "utf8").split("\n").filter((l) => l !== "" && !l.startsWith("-----"));
        for (const line of body) expect(logs).not.toContain(line);
      }
      expect(logs).not.toContain("PRIVATE KEY");
    });

    test("after the rotations the port is still exclusive: a second process on it exits 69, with or without HTTPS", async () => {
      for (const tls of [false, true]) {
        const env: Record<string, string> = { PAYFLUX_PORT: String(server.port), ...(tls ? { PAYFLUX_TLS_CERT_FILE: A.cert, PAYFLUX_TLS_KEY_FILE: A.key } : {}) };
        const second = await startServer({ target, env, waitReady: false });
        const code = await Promise.race([second.exited, Bun.sleep(15_000).then(() => "still running")]);
        if (code === "still running") await second.stop("SIGKILL");
        expect({ tls, code }).toEqual({ tls, code: 69 });
      }
      expect((await tlsFetch("/health")).status).toBe(200);
    });

    test("SIGTERM drains: a request in flight finishes, idle keep-alive connections do not hold the exit, exit 0", async () => {
      const caPem = readFileSync(ca, "utf8");
      expect((await tlsFetch("/health")).status).toBe(200); // leaves an idle keep-alive connection in the client's pool
      const json = JSON.stringify(event());
      const { response: slow, release } = slowPost(server, json, { base, init: { tls: { ca: caPem } } as RequestInit });
      await until("the slow request in flight", async () => metric(await (await tlsFetch("/metrics", { headers: { connection: "close" } })).text(), "payflux_http_requests_in_flight") === 2);
      server.signal("SIGTERM");
      await server.waitForLog((l) => typeof l.msg === "string" && l.msg.startsWith("shutting down"));
      release();
      const res = await slow;
      expect({ status: res.status, body: await res.text() }).toEqual({ status: 202, body: '{"accepted":1,"duplicates":0}' });
      // PAYFLUX_SHUTDOWN_TIMEOUT (10 s) would make it exit 1 if anything held the listener open.
      expect(await server.exited).toBe(0);
    });
  });
}

describe("HTTPS configuration errors (exit 78, naming the variable, never the key)", () => {
  const cases: [string, () => Record<string, string>, string][] = [
    ["a certificate without a key", () => ({ PAYFLUX_TLS_CERT_FILE: A.cert }), "PAYFLUX_TLS_CERT_FILE is set but PAYFLUX_TLS_KEY_FILE is not"],
    ["a key without a certificate", () => ({ PAYFLUX_TLS_KEY_FILE: A.key }), "PAYFLUX_TLS_KEY_FILE is set but PAYFLUX_TLS_CERT_FILE is not"],
    ["an unreadable certificate", () => ({ PAYFLUX_TLS_CERT_FILE: join(dir, "missing.pem"), PAYFLUX_TLS_KEY_FILE: A.key }), "PAYFLUX_TLS_CERT_FILE: cannot read"],
    ["an unreadable key", () => ({ PAYFLUX_TLS_CERT_FILE: A.cert, PAYFLUX_TLS_KEY_FILE: join(dir, "missing.key") }), "PAYFLUX_TLS_KEY_FILE: cannot read"],
    ["a key that does not match", () => ({ PAYFLUX_TLS_CERT_FILE: A.cert, PAYFLUX_TLS_KEY_FILE: B.key }), "PAYFLUX_TLS_KEY_FILE: the private key"],
    ["a key where the certificate should be", () => ({ PAYFLUX_TLS_CERT_FILE: A.key, PAYFLUX_TLS_KEY_FILE: A.key }), "PAYFLUX_TLS_CERT_FILE"],
  ];
  for (const [name, env, message] of cases) {
    test(`${name}: serve and check-config exit 78`, async () => {
      for (const args of [["serve"], ["check-config"]]) {
        const r = await runBounded(args, { PAYFLUX_API_KEYS: KEY, ...env() });
        expect({ args, code: r.code }).toEqual({ args, code: 78 });
        expect(r.stderr).toContain(message);
        const keyBody = readFileSync(A.key, "utf8").split("\n").filter((l) => l !== "" && !l.startsWith("-----"));
        for (const line of keyBody) expect(r.stdout + r.stderr).not.toContain(line);
      }
    });
  }

  test("check-config prints the certificate's subject, SANs and expiry", async () => {
    const r = await runBounded(["check-config"], { PAYFLUX_API_KEYS: KEY, PAYFLUX_TLS_CERT_FILE: A.cert, PAYFLUX_TLS_KEY_FILE: A.key });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("HTTPS only");
    expect(r.stdout).toContain("CN=payflux-a");
    expect(r.stdout).toContain("DNS:localhost, IP Address:127.0.0.1");
    expect(r.stdout).toContain(`expires ${new Date(A.notAfter * 1000).toISOString()}`);
  });

  test("a relative key name is read from $CREDENTIALS_DIRECTORY (systemd LoadCredential=)", async () => {
    const creds = tempDir("payflux-creds-");
    writeFileSync(join(creds, "payflux-tls.key"), readFileSync(A.key), { mode: 0o600 });
    const r = await runBounded(["check-config"], { PAYFLUX_API_KEYS: KEY, PAYFLUX_TLS_CERT_FILE: A.cert, PAYFLUX_TLS_KEY_FILE: "payflux-tls.key", CREDENTIALS_DIRECTORY: creds });
    expect({ code: r.code, err: r.stderr }).toEqual({ code: 0, err: "" });
    expect(r.stdout).toContain("CN=payflux-a");
  });
});

describe("systemd/README.md: the key as a credential, and the renewal hook", () => {
  const guide = readFileSync(join(import.meta.dir, "..", "systemd", "README.md"), "utf8");
  const heredoc = (tag: string) => {
    const m = new RegExp(`<<'${tag}'\\n([\\s\\S]*?)\\n${tag}\\n`).exec(guide);
    if (m === null) throw new Error(`no <<'${tag}' block in systemd/README.md`);
    return m[1]!;
  };

  test("the LoadCredential= drop-in verifies clean with the shipped unit, and the env lines name the credential", async () => {
    const dropIn = heredoc("UNIT");
    expect(dropIn).toMatch(/^LoadCredential=payflux-tls\.key:\/etc\/letsencrypt\/live\/\S+\/privkey\.pem$/m);
    const verify = async (text: string) => {
      const d = tempDir("payflux-unit-");
      const unit = readFileSync(join(import.meta.dir, "..", "systemd", "payflux.service"), "utf8").replaceAll("/usr/local/bin/payflux", process.execPath);
      writeFileSync(join(d, "payflux.service"), unit);
      (await import("node:fs")).mkdirSync(join(d, "payflux.service.d"));
      writeFileSync(join(d, "payflux.service.d", "tls.conf"), text);
      const p = Bun.spawn(["systemd-analyze", "verify", join(d, "payflux.service")], { cwd: d, stdout: "pipe", stderr: "pipe", env: { PATH: process.env.PATH ?? "/usr/bin:/bin", SYSTEMD_COLORS: "0" } });
      const [code, stderr] = await Promise.all([p.exited, new Response(p.stderr).text()]);
      return { code, stderr };
    };
    expect(await verify(dropIn + "\n")).toEqual({ code: 0, stderr: "" });
    // The drop-in is really read: a misspelt key is reported.
    expect((await verify(dropIn.replace("LoadCredential=", "LoadCredentialX=") + "\n")).stderr).toContain("LoadCredentialX");
    const env = heredoc("ENV");
    expect(env).toContain("PAYFLUX_TLS_KEY_FILE=payflux-tls.key");
    expect(env).toMatch(/^PAYFLUX_TLS_CERT_FILE=\/etc\/payflux\/tls\/fullchain\.pem$/m);
  });

  test("the certbot deploy hook is valid sh, installs the new chain atomically and runs systemctl reload payflux", async () => {
    const hook = heredoc("HOOK");
    const syntax = await run(["sh", "-n", "-c", hook]);
    expect({ code: syntax.code, stderr: syntax.stderr }).toEqual({ code: 0, stderr: "" });
    const lines = hook.split("\n");
    const mv = lines.findIndex((l) => /^mv \S+\.new \/etc\/payflux\/tls\/fullchain\.pem$/.test(l));
    expect(mv).toBeGreaterThan(0);
    expect(lines.findIndex((l) => l === "systemctl reload payflux")).toBeGreaterThan(mv);
    expect(guide).toContain("--reuse-key");
    expect(guide).toContain("--deploy-hook");
  });
});
