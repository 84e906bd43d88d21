/**
 * The systemd files we ship: the unit is hardened (systemd-analyze security
 * <= 1.1) and verifies clean, it has the operational settings the issue asks
 * for, and payflux.env.example, README.md and the config loader name exactly
 * the same variables (the old service's docs and code disagreed).
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { VARIABLES } from "../src/config.ts";
import { EXIT } from "../src/exit-codes.ts";
import { BINARY, ensureBinary, KEY, ROOT, runCli, stopAll, tempDir } from "./support/harness.ts";

const UNIT_PATH = join(ROOT, "systemd", "payflux.service");
const EXAMPLE_PATH = join(ROOT, "systemd", "payflux.env.example");
const unitText = readFileSync(UNIT_PATH, "utf8");
const exampleText = readFileSync(EXAMPLE_PATH, "utf8");
const readme = readFileSync(join(ROOT, "README.md"), "utf8");
const systemdReadme = readFileSync(join(ROOT, "systemd", "README.md"), "utf8");
const VARIABLE_NAMES = Object.keys(VARIABLES).sort();

beforeAll(async () => {
  await ensureBinary();
}, 180_000);
afterAll(stopAll); // removes the temporary dirs too

/** The path of systemd-analyze; a missing tool fails the test (never skips it). */
function systemdAnalyze(): string {
  const path = Bun.which("systemd-analyze");
  if (path === null) {
    throw new Error("systemd-analyze is not installed: install the Debian package `systemd` (apt-get install systemd)");
  }
  return path;
}

function run(cmd: string[], cwd = ROOT) {
  const r = Bun.spawnSync(cmd, { cwd, stdout: "pipe", stderr: "pipe", env: { PATH: process.env.PATH ?? "/usr/bin:/bin", SYSTEMD_COLORS: "0", LANG: "C.UTF-8" } });
  return { code: r.exitCode, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

/** `Key=value` settings of one [Section] of a unit file, in order (repeated keys kept). */
function section(text: string, name: string): [string, string][] {
  const out: [string, string][] = [];
  let current = "";
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#") || line.startsWith(";")) continue;
    const header = line.match(/^\[(.+)\]$/);
    if (header) {
      current = header[1]!;
      continue;
    }
    const eq = line.indexOf("=");
    if (current === name && eq > 0) out.push([line.slice(0, eq).trim(), line.slice(eq + 1).trim()]);
  }
  return out;
}

const service = section(unitText, "Service");
const values = (key: string) => service.filter(([k]) => k === key).map(([, v]) => v);
const single = (key: string) => {
  const v = values(key);
  expect([key, v.length]).toEqual([key, 1]);
  return v[0]!;
};

describe("systemd-analyze", () => {
  test("security --offline=true rates payflux.service 1.1 or lower (issue 8 asked for 1.3 at most)", () => {
    const r = run([systemdAnalyze(), "security", "--offline=true", "systemd/payflux.service"]);
    const m = (r.stdout + r.stderr).match(/Overall exposure level for payflux\.service: (\d+\.\d+)/);
    if (!m) throw new Error(`no exposure level in the output (exit ${r.code}):\n${r.stdout}\n${r.stderr}`);
    const exposure = Number(m[1]);
    expect(exposure).toBeLessThanOrEqual(1.1);
  });

  test("verify is clean on the unit (with ExecStart pointing at dist/payflux)", () => {
    const dir = tempDir("payflux-unit-");
    expect(unitText).toContain("/usr/local/bin/payflux");
    const unit = join(dir, "payflux.service");
    writeFileSync(unit, unitText.replaceAll("/usr/local/bin/payflux", BINARY));
    const r = run([systemdAnalyze(), "verify", unit], dir);
    expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: "" });
  });
});

describe("payflux.service settings", () => {
  test("ExecStart serves with --config /etc/payflux/payflux.env", () => {
    const exec = single("ExecStart");
    expect(exec).toMatch(/^\/\S+\/payflux serve --config \/etc\/payflux\/payflux\.env$/);
  });

  test("ExecReload runs check-config on the same file before kill -HUP $MAINPID", () => {
    const reload = values("ExecReload");
    const check = reload.findIndex((c) => /\/payflux check-config --config \/etc\/payflux\/payflux\.env$/.test(c));
    const hup = reload.findIndex((c) => /^\/\S*kill -HUP \$MAINPID$/.test(c));
    expect(check).toBeGreaterThanOrEqual(0);
    expect(hup).toBeGreaterThan(check);
    // Check-config uses the binary that ExecStart runs.
    expect(reload[check]!.split(" ")[0]).toBe(single("ExecStart").split(" ")[0]);
  });

  test("Restart=on-failure, RestartPreventExitStatus=78 (the config exit code)", () => {
    expect(single("Restart")).toBe("on-failure");
    expect(EXIT.CONFIG).toBe(78);
    expect(values("RestartPreventExitStatus").flatMap((v) => v.split(/\s+/))).toContain("78");
  });

  test("StateDirectory=payflux is the data dir; non-root user; fd limit; journald; MemoryDenyWriteExecute off", () => {
    expect(single("StateDirectory")).toBe("payflux");
    expect(values("Environment")).toContain("PAYFLUX_DATA_DIR=/var/lib/payflux");
    const user = single("User");
    expect(user).not.toBe("");
    expect(user).not.toBe("root");
    expect(user).not.toBe("0");
    expect(values("DynamicUser")).not.toContain("yes");
    expect(Number(single("LimitNOFILE"))).toBeGreaterThanOrEqual(4096);
    for (const key of ["StandardOutput", "StandardError"]) {
      const v = values(key);
      // Unset means journal (systemd's default).
      expect(v.every((x) => x === "journal")).toBe(true);
    }
    expect(values("MemoryDenyWriteExecute").filter((v) => /^(yes|true|1|on)$/i.test(v))).toEqual([]);
  });
});

describe("the same variables everywhere", () => {
  const names = (text: string) => new Set([...text.matchAll(/\bPAYFLUX_[A-Z_]+\b/g)].map((m) => m[0]));
  /** `NAME=value` lines of the example, commented out or not. */
  const assignments = [...exampleText.matchAll(/^#?(PAYFLUX_[A-Z_]+)=(.*)$/gm)].map((m) => ({ name: m[1]!, value: m[2]!, commented: m[0].startsWith("#") }));

  test("payflux.env.example, README.md and the config loader name the same set", () => {
    expect([...names(exampleText)].sort()).toEqual(VARIABLE_NAMES);
    const documented = names(readme);
    // The old docs' wrong name, mentioned as what the typo hint catches.
    documented.delete("PAYFLUX_RATELIMIT_RPS");
    // The test suite's own switch (PAYFLUX_TEST_TARGETS) is not a service variable.
    for (const n of documented) if (n.startsWith("PAYFLUX_TEST_")) documented.delete(n);
    expect([...documented].sort()).toEqual(VARIABLE_NAMES);
  });

  test("systemd/README.md and payflux.service only name variables the loader reads", () => {
    for (const text of [systemdReadme, unitText]) {
      expect([...names(text)].filter((n) => !(n in VARIABLES))).toEqual([]);
    }
  });

  test("the example sets every variable once, with its default, under a line of meaning", () => {
    expect(assignments.map((a) => a.name).sort()).toEqual(VARIABLE_NAMES);
    const lines = exampleText.split("\n");
    for (const a of assignments) {
      expect([a.name, a.value]).toEqual([a.name, VARIABLES[a.name as keyof typeof VARIABLES].default]);
      const i = lines.findIndex((l) => l === `${a.commented ? "#" : ""}${a.name}=${a.value}`);
      const above = lines[i - 1] ?? "";
      expect([a.name, /^# \S/.test(above)]).toEqual([a.name, true]);
    }
    // Only the key list is live (and empty: it must be filled in); everything else is commented out.
    expect(assignments.filter((a) => !a.commented).map((a) => a.name)).toEqual(["PAYFLUX_API_KEYS"]);
  });

  test("check-config: the example as shipped fails closed (78); with a key filled in it passes (0)", () => {
    const dir = tempDir("payflux-example-");
    const shipped = join(dir, "shipped.env");
    writeFileSync(shipped, exampleText, { mode: 0o600 });
    const bad = runCli(["check-config", "--config", shipped], {}, true);
    expect(bad.code).toBe(78);
    expect(bad.stderr).toContain("PAYFLUX_API_KEYS");

    const filled = join(dir, "payflux.env");
    const withKey = exampleText.replace(/^PAYFLUX_API_KEYS=$/m, `PAYFLUX_API_KEYS=${KEY}`);
    expect(withKey).not.toBe(exampleText);
    writeFileSync(filled, withKey, { mode: 0o600 });
    const ok = runCli(["check-config", "--config", filled], {}, true);
    expect({ code: ok.code, stderr: ok.stderr }).toEqual({ code: 0, stderr: "" });
    expect(ok.stdout).toContain("1 active, 0 revoked");
    expect(ok.stdout).toContain("0.0.0.0:8080");
    expect(ok.stdout + ok.stderr).not.toContain(KEY);
  });
});
