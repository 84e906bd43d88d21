/**
 * Configuration: the env-file parser (unit), file-over-environment precedence,
 * and `serve` refusing every invalid value with exit 78 (real processes),
 * without ever printing a key.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { parseEnvFile } from "../src/env-file.ts";
import { envFile, runBounded, event, KEY, KEY2, post, runCli, SINGLE, startServer, stopAll } from "./support/harness.ts";

afterAll(stopAll);

const EXIT_CONFIG = 78;

/**
 * Runs `payflux serve` (or other args) to completion. A process still running
 * after `timeoutMs` (i.e. it started when it should have refused) is killed,
 * and the returned code is then the signal's, never 78.
 */
async function runServe(env: Record<string, string>, args: string[] = ["serve"], timeoutMs = 10_000) {
  const r = await runBounded(args, env, timeoutMs);
  return { ...r, output: r.stdout + r.stderr };
}


describe("parseEnvFile", () => {
  test("KEY=VALUE lines, blank lines, # and ; comments", () => {
    const r = parseEnvFile(["# a comment", "", "A=1", "; another comment", "  B=two words  ", "C=", "   # indented comment", "D=x=y"].join("\n"), "f.env");
    expect(r.errors).toEqual([]);
    expect(r.values).toEqual({ A: "1", B: "two words", C: "", D: "x=y" });
  });

  test("CRLF line endings", () => {
    const r = parseEnvFile("A=1\r\nB=2\r\n", "f.env");
    expect(r.errors).toEqual([]);
    expect(r.values).toEqual({ A: "1", B: "2" });
  });

  test("double quotes keep spaces and # and understand backslash escapes", () => {
    const r = parseEnvFile(['A="  spaced # not a comment  "', 'B="say \\"hi\\""', 'C="back\\\\slash"', 'D=""'].join("\n"), "f.env");
    expect(r.errors).toEqual([]);
    expect(r.values).toEqual({ A: "  spaced # not a comment  ", B: 'say "hi"', C: "back\\slash", D: "" });
  });

  test("single quotes are literal", () => {
    const r = parseEnvFile(["A='a \\n b # c \"d\"'", "B='  '"].join("\n"), "f.env");
    expect(r.errors).toEqual([]);
    expect(r.values).toEqual({ A: 'a \\n b # c "d"', B: "  " });
  });

  test("a trailing backslash continues the value on the next line", () => {
    const r = parseEnvFile(["PAYFLUX_API_KEYS=key-one,\\", "  key-two,\\", "  key-three", "NEXT=1"].join("\n"), "f.env");
    expect(r.errors).toEqual([]);
    expect(r.values).toEqual({ PAYFLUX_API_KEYS: "key-one,key-two,key-three", NEXT: "1" });
  });

  test("bad lines are reported with file name and line number, never with their value", () => {
    const secret = "s3cr3t-value-0123456789abcdef";
    const text = [
      "A=1", // 1
      `just-a-${secret}`, // 2: no '='
      `1BAD=${secret}`, // 3: invalid name
      `Q="${secret}`, // 4: unterminated quote (runs to the end)
    ].join("\n");
    const r = parseEnvFile(text, "/etc/payflux.env");
    expect(r.values.A).toBe("1");
    expect(r.errors.length).toBe(3);
    expect(r.errors[0]).toContain("/etc/payflux.env:2");
    expect(r.errors[1]).toContain("/etc/payflux.env:3");
    expect(r.errors[2]).toContain("/etc/payflux.env:4");
    for (const e of r.errors) expect(e).not.toContain(secret);
    expect(r.values.Q).toBeUndefined();
  });

  test("text after a closing quote is an error without the value", () => {
    const r = parseEnvFile(['A="hidden-secret-value" trailing-secret-junk'].join("\n"), "f.env");
    expect(r.errors.length).toBe(1);
    expect(r.errors[0]).toContain("f.env:1");
    expect(r.errors[0]).not.toContain("hidden-secret-value");
    expect(r.errors[0]).not.toContain("trailing-secret-junk");
  });
});

describe("file values win over the environment", () => {
  test("check-config --config FILE: the file's PAYFLUX_INGEST_RPS wins", () => {
    const file = envFile("PAYFLUX_INGEST_RPS=42\n");
    const r = runCli(["check-config", "--config", file], { PAYFLUX_API_KEYS: KEY, PAYFLUX_INGEST_RPS: "7" });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("42/s");
    expect(r.stdout).not.toContain("7/s");
    expect(r.stdout).toContain(file);
  });

  test("check-config with PAYFLUX_CONFIG: the file's PAYFLUX_INGEST_BURST wins", () => {
    const file = envFile("PAYFLUX_INGEST_BURST=321\n");
    const r = runCli(["check-config"], { PAYFLUX_API_KEYS: KEY, PAYFLUX_INGEST_BURST: "999", PAYFLUX_CONFIG: file });
    expect(r.code).toBe(0);
    expect(r.stdout).toContain("burst 321");
    expect(r.stdout).not.toContain("999");
  });

  test("serve with PAYFLUX_CONFIG: the file's keys replace the environment's", async () => {
    const file = envFile(`# keys\nPAYFLUX_API_KEYS="${KEY2}"\n`);
    const server = await startServer({ env: { PAYFLUX_API_KEYS: KEY, PAYFLUX_CONFIG: file } });
    expect((await post(server, SINGLE, event(), { key: KEY2 })).status).toBe(202);
    const denied = await post(server, SINGLE, event(), { key: KEY });
    expect(denied.status).toBe(401);
    expect((await denied.json()).code).toBe("invalid_key");
    const start = server.logs().find((l) => l.msg === "payflux listening")!;
    expect(start.config_source).toBe(file);
  });

  test("serve --config FILE: the file's keys replace the environment's", async () => {
    const file = envFile(`PAYFLUX_API_KEYS=${KEY2}\n`);
    const server = await startServer({ env: { PAYFLUX_API_KEYS: KEY }, args: ["serve", "--config", file] });
    expect((await post(server, SINGLE, event(), { key: KEY2 })).status).toBe(202);
    expect((await post(server, SINGLE, event(), { key: KEY })).status).toBe(401);
  });

  test("an unreadable config file is a config error (78)", async () => {
    const r = await runServe({ PAYFLUX_API_KEYS: KEY }, ["serve", "--config", "/nonexistent/payflux.env"]);
    expect(r.code).toBe(EXIT_CONFIG);
    expect(r.stderr).toContain("/nonexistent/payflux.env");
  });

  test("a bad line in the config file stops serve with 78 and the line number, not the value", async () => {
    const file = envFile(`PAYFLUX_API_KEYS=${KEY}\nthis line holds ${KEY2}\n`);
    const r = await runServe({}, ["serve", "--config", file]);
    expect(r.code).toBe(EXIT_CONFIG);
    expect(r.stderr).toContain(`${file}:2`);
    expect(r.output).not.toContain(KEY2);
    expect(r.output).not.toContain(KEY);
  });
});

describe("serve refuses invalid values with exit 78", () => {
  const invalid: Record<string, string> = {
    PAYFLUX_INGEST_RPS: "abc",
    PAYFLUX_PORT: "70000",
    PAYFLUX_LOG_LEVEL: "loud",
    PAYFLUX_DEDUP_WINDOW: "forever",
    PAYFLUX_METRICS_ENABLED: "maybe",
    PAYFLUX_MAX_BODY_BYTES: "1",
    PAYFLUX_MAX_BATCH: "0",
    PAYFLUX_INGEST_BURST: "-5",
  };

  for (const [name, value] of Object.entries(invalid)) {
    test(`${name}=${value}: exit 78 naming the variable`, async () => {
      const r = await runServe({ PAYFLUX_API_KEYS: KEY, [name]: value });
      expect(r.code).toBe(EXIT_CONFIG);
      expect(r.stderr).toContain(name);
      // Only the one variable is reported.
      for (const other of Object.keys(invalid)) if (other !== name) expect(r.stderr).not.toContain(other);
      expect(r.output).not.toContain(KEY);
      expect(r.stdout).not.toContain("payflux listening");
    });
  }

  test("several bad variables are all reported at once", async () => {
    const r = await runServe({ PAYFLUX_API_KEYS: KEY, ...invalid });
    expect(r.code).toBe(EXIT_CONFIG);
    for (const name of Object.keys(invalid)) expect(r.stderr).toContain(name);
    expect(r.output).not.toContain(KEY);
  });

  test("no key at all: exit 78, the message says to set PAYFLUX_API_KEYS and mentions keygen", async () => {
    const r = await runServe({});
    expect(r.code).toBe(EXIT_CONFIG);
    expect(r.stderr).toContain("PAYFLUX_API_KEYS");
    expect(r.stderr).toContain("keygen");
    const empty = await runServe({ PAYFLUX_API_KEYS: " , ", PAYFLUX_API_KEY: "" });
    expect(empty.code).toBe(EXIT_CONFIG);
    expect(empty.stderr).toContain("PAYFLUX_API_KEYS");
  });

  test("PAYFLUX_API_KEY alone is an allowed key (the allowlist is the union)", async () => {
    const server = await startServer({ env: { PAYFLUX_API_KEYS: "", PAYFLUX_API_KEY: KEY2 } });
    expect((await post(server, SINGLE, event(), { key: KEY2 })).status).toBe(202);
  });

  test("a key with a space and a bad metrics token: errors name the variables, never the values", async () => {
    const spaced = "spaced key-value-9f8e7d6c5b4a";
    const token = "metrics tok-1a2b3c4d5e6f7a8b";
    const r = await runServe({ PAYFLUX_API_KEYS: `${KEY},${spaced}`, PAYFLUX_METRICS_TOKEN: token });
    expect(r.code).toBe(EXIT_CONFIG);
    expect(r.stderr).toContain("PAYFLUX_API_KEYS");
    expect(r.stderr).toContain("PAYFLUX_METRICS_TOKEN");
    for (const secret of [KEY, spaced, "key-value-9f8e7d6c5b4a", token, "tok-1a2b3c4d5e6f7a8b"]) expect(r.output).not.toContain(secret);
  });
});

describe("warnings", () => {
  test("a key under 16 characters is refused (exit 78) with a message that does not quote it", async () => {
    const short = "short-k3y-77"; // 12 characters
    const r = await runServe({ PAYFLUX_API_KEYS: `${KEY},${short}` });
    expect(r.code).toBe(EXIT_CONFIG);
    expect(r.stderr).toContain("PAYFLUX_API_KEYS entry 2 is shorter than 16 characters");
    expect(r.output).not.toContain(short);
  });

  test("unknown PAYFLUX_RATELIMIT_RPS warns: did you mean PAYFLUX_INGEST_RPS", async () => {
    const server = await startServer({ env: { PAYFLUX_RATELIMIT_RPS: "50" } });
    const warning = await server.waitForLog((l) => String(l.msg).includes("PAYFLUX_RATELIMIT_RPS"));
    expect(warning.level).toBe("warn");
    expect(warning.msg).toContain("did you mean PAYFLUX_INGEST_RPS");
    const check = runCli(["check-config"], { PAYFLUX_API_KEYS: KEY, PAYFLUX_RATELIMIT_RPS: "50" });
    expect(check.code).toBe(0);
    expect(check.stderr).toContain("did you mean PAYFLUX_INGEST_RPS");
    expect(check.stdout + check.stderr).not.toContain(KEY);
  });
});
