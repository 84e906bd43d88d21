/**
 * The command line, run as real processes: --version, --help, usage errors
 * (64), keygen, check-config (0 / 78) and serve --config.
 */
import { afterAll, describe, expect, test } from "bun:test";
import pkg from "../package.json" with { type: "json" };
import { envFile, runBounded, event, KEY, KEY2, post, runCli, SINGLE, startServer, stopAll, tempDir } from "./support/harness.ts";

afterAll(stopAll);

const REVOKED = "revoked-key-cccccccccccccccccccccccc";

/**
 * Runs the CLI to completion for args that must NOT start a server: should a
 * regression start one anyway, it listens on a free loopback port with a temp
 * data dir and is killed after `timeoutMs`, so the test fails instead of hanging.
 */
function runUsage(args: string[], env: Record<string, string> = {}, timeoutMs = 10_000) {
  return runBounded(args, { PAYFLUX_API_KEYS: KEY, ...env }, timeoutMs);
}


describe("version, help, usage errors", () => {
  test("--version prints the package.json version, exit 0", () => {
    const r = runCli(["--version"]);
    expect(r.code).toBe(0);
    expect(r.stdout.trim().split(/\s+/)).toContain(pkg.version);
    expect(r.stderr).toBe("");
  });

  test("--help prints usage naming every command, exit 0", () => {
    const r = runCli(["--help"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/usage/i);
    for (const word of ["serve", "check-config", "keygen", "--config", "--version"]) expect(r.stdout).toContain(word);
  });

  test("unknown command: usage on stderr, nothing on stdout, exit 64", async () => {
    const r = await runUsage(["frobnicate"]);
    expect(r.code).toBe(64);
    expect(r.stderr).toContain("frobnicate");
    expect(r.stderr).toMatch(/usage/i);
    expect(r.stdout).toBe("");
  });

  test("unknown flag: usage on stderr, exit 64 (top level, after serve, after check-config)", async () => {
    for (const args of [["--frobnicate"], ["serve", "--port", "9"], ["check-config", "--verbose"], ["keygen", "--length"], ["serve", "extra"]]) {
      const r = await runUsage(args);
      expect(r.code).toBe(64);
      expect(r.stderr).toMatch(/usage/i);
      expect(r.stdout).toBe("");
    }
  });

  test("keygen --name takes one valid, unreserved client name; hash-key takes no arguments (64, nothing on stdout)", async () => {
    for (const args of [["keygen", "--name"], ["keygen", "--name", "Acme"], ["keygen", "--name", "other"], ["keygen", "--name", "a".repeat(65)], ["keygen", "acme"], ["hash-key", "extra"]]) {
      const r = await runUsage(args);
      expect([args, r.code, r.stdout]).toEqual([args, 64, ""]);
      expect(r.stderr).toMatch(/usage/i);
    }
  });

  test("--config without a file name is a usage error (64)", async () => {
    const r = await runUsage(["serve", "--config"]);
    expect(r.code).toBe(64);
    expect(r.stderr).toMatch(/usage/i);
  });
});

describe("keygen", () => {
  /** keygen's labelled lines: `key:` (shown once), `config:` (the hash only), `key_id:`. */
  const fields = (stdout: string) => Object.fromEntries(stdout.trim().split("\n").map((l) => [l.slice(0, l.indexOf(":")), l.slice(l.indexOf(":") + 1).trim()]));

  test("prints a new 64-hex key once, on its own labelled line, different each time; the config line holds only its hash", () => {
    const a = runCli(["keygen"]);
    const b = runCli(["keygen"]);
    expect(a.code).toBe(0);
    expect(b.code).toBe(0);
    expect(a.stdout).toMatch(/^key: +[0-9a-f]{64}\nconfig: +PAYFLUX_API_KEYS=sha256:[0-9a-f]{64}\nkey_id: +[0-9a-f]{12}\n$/);
    const fa = fields(a.stdout);
    expect(fa.key).not.toBe(fields(b.stdout).key);
    expect(a.stdout.split(fa.key!).length).toBe(2); // the key appears once
    expect(fa.config).not.toContain(fa.key!);
    expect(a.stderr).toMatch(/not shown again/);
  });

  test("a generated key is accepted by serve, configured only by the printed hash, without a warning", async () => {
    const out = fields(runCli(["keygen"]).stdout);
    const hashed = out.config!.slice("PAYFLUX_API_KEYS=".length);
    const server = await startServer({ env: { PAYFLUX_API_KEYS: hashed } });
    expect((await post(server, SINGLE, event(), { key: out.key! })).status).toBe(202);
    expect(server.logs().filter((l) => l.level === "warn")).toEqual([]);
  });
});

describe("check-config", () => {
  test("valid: exit 0, a summary with key counts and no key", () => {
    const r = runCli(["check-config"], { PAYFLUX_API_KEYS: `${KEY}, ${KEY2}`, PAYFLUX_REVOKED_KEYS: REVOKED, PAYFLUX_INGEST_RPS: "25" });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("2 active");
    expect(r.stdout).toContain("1 revoked");
    expect(r.stdout).toContain("25/s");
    expect(r.stdout).toMatch(/[0-9a-f]{12}/);
    for (const k of [KEY, KEY2, REVOKED]) expect(r.stdout + r.stderr).not.toContain(k);
  });

  test("the summary's fingerprint is the one serve reports for the same config", async () => {
    const dataDir = tempDir();
    const env = { PAYFLUX_API_KEYS: KEY, PAYFLUX_HOST: "127.0.0.1", PAYFLUX_PORT: "0", PAYFLUX_DATA_DIR: dataDir };
    const r = runCli(["check-config"], env);
    expect(r.code).toBe(0);
    const server = await startServer({ env, dataDir });
    const health = await (await fetch(server.url + "/health")).json();
    expect(r.stdout).toContain(health.config_fingerprint);
  });

  test("invalid: exit 78 listing every problem, no key", () => {
    const r = runCli(["check-config"], {
      PAYFLUX_API_KEYS: KEY,
      PAYFLUX_INGEST_RPS: "abc",
      PAYFLUX_PORT: "70000",
      PAYFLUX_LOG_LEVEL: "loud",
      PAYFLUX_MAX_BATCH: "0",
    });
    expect(r.code).toBe(78);
    for (const name of ["PAYFLUX_INGEST_RPS", "PAYFLUX_PORT", "PAYFLUX_LOG_LEVEL", "PAYFLUX_MAX_BATCH"]) expect(r.stderr).toContain(name);
    expect(r.stdout + r.stderr).not.toContain(KEY);
    expect(r.stdout).not.toMatch(/config OK/i);
  });

  test("no key: exit 78", () => {
    const r = runCli(["check-config"], {});
    expect(r.code).toBe(78);
    expect(r.stderr).toContain("PAYFLUX_API_KEYS");
  });

  test("--config FILE reads the file", () => {
    const file = envFile(`PAYFLUX_API_KEYS=${KEY},${KEY2}\nPAYFLUX_INGEST_RPS=42\n`);
    const r = runCli(["check-config", "--config", file], {});
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("2 active");
    expect(r.stdout).toContain("42/s");
    expect(r.stdout).toContain(file);
    expect(r.stdout + r.stderr).not.toContain(KEY);

    const eq = runCli(["check-config", `--config=${file}`], {});
    expect(eq.code).toBe(0);
    expect(eq.stdout).toContain("42/s");
  });

  test("--config FILE with a bad value: exit 78 naming it", () => {
    const file = envFile(`PAYFLUX_API_KEYS=${KEY}\nPAYFLUX_DEDUP_WINDOW=forever\n`);
    const r = runCli(["check-config", "--config", file], {});
    expect(r.code).toBe(78);
    expect(r.stderr).toContain("PAYFLUX_DEDUP_WINDOW");
    expect(r.stdout + r.stderr).not.toContain(KEY);
  });

  test("--config with a missing file: exit 78 naming the file", () => {
    const r = runCli(["check-config", "--config", "/nonexistent/payflux.env"], { PAYFLUX_API_KEYS: KEY });
    expect(r.code).toBe(78);
    expect(r.stderr).toContain("/nonexistent/payflux.env");
  });
});

describe("serve", () => {
  test("serve --config FILE serves with the file's settings", async () => {
    const file = envFile(`PAYFLUX_API_KEYS=${KEY2}\nPAYFLUX_INGEST_BURST=2\nPAYFLUX_INGEST_RPS=0.001\n`);
    const server = await startServer({ env: { PAYFLUX_API_KEYS: "" }, args: ["serve", "--config", file] });
    const start = server.logs().find((l) => l.msg === "payflux listening")!;
    expect(start.config_source).toBe(file);
    expect(start.keys).toEqual({ active: 1, revoked: 0, expired: 0 });
    expect((await post(server, SINGLE, event(), { key: KEY2 })).status).toBe(202);
    expect((await post(server, SINGLE, event(), { key: KEY2 })).status).toBe(202);
    const limited = await post(server, SINGLE, event(), { key: KEY2 });
    expect(limited.status).toBe(429);
    expect((await limited.json()).code).toBe("rate_limited");
  });

  test("no command means serve", async () => {
    const server = await startServer({ args: [] });
    expect((await post(server, SINGLE, event())).status).toBe(202);
    const server2 = await startServer({ args: ["serve"] });
    expect((await post(server2, SINGLE, event())).status).toBe(202);
  });
});
