/**
 * The compiled binary still works under payflux.service's restrictions, not
 * only on paper. systemd-run needs systemd as PID 1, which containers and CI
 * machines often lack, so the restrictions are applied by hand from what the
 * unit says, with util-linux (unshare, setpriv) and strace:
 * - User= (a non-root user: uid 65534 here, the unit's `payflux` user does not
 *   exist on test machines), NoNewPrivileges=, CapabilityBoundingSet= (empty),
 *   AmbientCapabilities= (empty), UMask=;
 * - ProtectSystem=strict (the whole file system read-only but the data dir),
 *   PrivateTmp= (an empty /tmp), ProtectHome= (empty /root and /home),
 *   PrivateMounts= (a mount namespace of its own);
 * - SystemCallFilter= / RestrictAddressFamilies=: seccomp cannot be loaded by
 *   hand without a compiler or libseccomp bindings, so strace records every
 *   system call and socket family of a full run (start, ingest, reload,
 *   metrics, SIGTERM) and the test checks each is one the unit allows
 *   (expanded with `systemd-analyze syscall-filter`).
 * Needs root (to make the namespace); it fails, never skips, without it.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { chmodSync, chownSync, copyFileSync, mkdirSync, readFileSync, readdirSync, readlinkSync, renameSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { BINARY, ensureBinary, event, freePort, KEY, KEY2, ROOT, tempDir, until } from "./support/harness.ts";

const unit = readFileSync(join(ROOT, "systemd", "payflux.service"), "utf8");
const NOBODY = 65534;

/** `Key=value` settings of [Service], repeated keys kept. */
function settings(key: string): string[] {
  const body = unit.slice(unit.indexOf("[Service]"), unit.indexOf("[Install]"));
  return [...body.matchAll(new RegExp(`^${key}=(.*)$`, "gm"))].map((m) => m[1]!.trim());
}

function tool(cmd: string, pkg: string): string {
  const path = Bun.which(cmd, { PATH: `${process.env.PATH ?? "/usr/bin:/bin"}:/usr/sbin:/sbin` });
  if (path === null) throw new Error(`${cmd} is not installed: install the Debian package \`${pkg}\` (apt-get install ${pkg})`);
  return path;
}

/** Every system call in a systemd syscall-filter group, nested groups expanded. */
function expand(group: string, seen = new Set<string>()): Set<string> {
  const out = new Set<string>();
  if (seen.has(group)) return out;
  seen.add(group);
  const r = Bun.spawnSync([tool("systemd-analyze", "systemd"), "syscall-filter", group], { stdout: "pipe", stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`systemd-analyze syscall-filter ${group} failed: ${r.stderr}`);
  for (const line of r.stdout.toString().split("\n").slice(1)) {
    const name = line.trim();
    if (name === "" || name.startsWith("#")) continue;
    if (name.startsWith("@")) for (const s of expand(name, seen)) out.add(s);
    else out.add(name);
  }
  return out;
}

/** The system calls the unit's SystemCallFilter= lines allow: the allow list minus the ~ deny list. */
function allowedSyscalls(): Set<string> {
  const allowed = new Set<string>();
  const denied = new Set<string>();
  for (const v of settings("SystemCallFilter")) {
    const deny = v.startsWith("~");
    for (const item of (deny ? v.slice(1) : v).split(/\s+/).filter(Boolean)) {
      const names = item.startsWith("@") ? expand(item) : new Set([item]);
      for (const n of names) (deny ? denied : allowed).add(n);
    }
  }
  for (const n of denied) allowed.delete(n);
  return allowed;
}

const procs: ReturnType<typeof Bun.spawn>[] = [];
/** The sandboxed service: killing strace alone would leave it running (detached). */
const servicePids: number[] = [];
afterAll(async () => {
  for (const pid of servicePids) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
  for (const p of procs) if (p.exitCode === null) p.kill("SIGKILL");
  await Promise.all(procs.map((p) => p.exited));
});

describe("payflux.service restrictions, applied by hand", () => {
  test("the binary serves, reloads and stops under them, using only allowed system calls and socket families", async () => {
    if (process.getuid?.() !== 0) throw new Error("this test needs root to build the mount namespace (unshare --mount)");
    // What the unit asks for, so that the test follows the unit.
    expect(settings("User")[0]).not.toBe("root");
    expect(settings("NoNewPrivileges")).toEqual(["yes"]);
    expect(settings("CapabilityBoundingSet")).toEqual([""]);
    expect(settings("AmbientCapabilities")).toEqual([""]);
    expect(settings("ProtectSystem")).toEqual(["strict"]);
    expect(settings("PrivateTmp")).toEqual(["yes"]);
    expect(settings("ProtectHome")).toEqual(["yes"]);
    expect(settings("PrivateMounts")).toEqual(["yes"]);
    const umask = settings("UMask")[0]!;
    expect(umask).toBe("0077");
    const families = settings("RestrictAddressFamilies")[0]!.split(/\s+/);
    const allowed = allowedSyscalls();
    expect(allowed.size).toBeGreaterThan(200);
    expect(allowed.has("setuid")).toBe(false); // the deny list took effect

    await ensureBinary();
    const dir = tempDir("payflux-sandbox-");
    chmodSync(dir, 0o755);
    for (const sub of ["data", "trace"]) {
      mkdirSync(join(dir, sub), { mode: 0o700 });
      chownSync(join(dir, sub), NOBODY, NOBODY);
    }
    copyFileSync(BINARY, join(dir, "payflux"));
    chmodSync(join(dir, "payflux"), 0o755);
    const port = await freePort();
    const writeEnv = (keys: string) => {
      const tmp = join(dir, "payflux.env.tmp");
      writeFileSync(tmp, `PAYFLUX_API_KEYS=${keys}\nPAYFLUX_HOST=127.0.0.1\nPAYFLUX_PORT=${port}\nPAYFLUX_DATA_DIR=/mnt/data\n`, { mode: 0o600 });
      chownSync(tmp, NOBODY, NOBODY);
      renameSync(tmp, join(dir, "payflux.env"));
    };
    writeEnv(KEY);
    // The test dir is reached as /mnt (read-only; data and trace writable), /tmp is replaced.
    const script = [
      "set -e",
      "mount --make-rprivate /",
      "mount --rbind / /",
      `mount --bind ${dir} /mnt`,
      "mount -o remount,bind,ro /mnt",
      `mount --bind ${dir}/data /mnt/data`,
      `mount --bind ${dir}/trace /mnt/trace`,
      "mount -o remount,bind,ro /",
      "mount -t tmpfs -o mode=1777 tmpfs /tmp",
      "mount -t tmpfs -o mode=0755 tmpfs /root",
      "mount -t tmpfs -o mode=0755 tmpfs /home",
      `umask ${umask}`,
      "cd /mnt/data",
      `exec ${tool("setpriv", "util-linux")} --reuid ${NOBODY} --regid ${NOBODY} --clear-groups --no-new-privs --bounding-set -all --inh-caps -all ` +
        `${tool("strace", "strace")} -f -qq -o /mnt/trace/trace /mnt/payflux serve --config /mnt/payflux.env`,
    ].join("\n");
    const proc = Bun.spawn([tool("unshare", "util-linux"), "--mount", "--propagation", "private", "sh", "-c", script], {
      stdout: "pipe",
      stderr: "pipe",
      stdin: "ignore",
    });
    procs.push(proc);
    let out = "";
    (async () => {
      for await (const c of proc.stdout as unknown as AsyncIterable<Uint8Array>) out += new TextDecoder().decode(c);
    })();
    let err = "";
    (async () => {
      for await (const c of proc.stderr as unknown as AsyncIterable<Uint8Array>) err += new TextDecoder().decode(c);
    })();
    const url = `http://127.0.0.1:${port}`;
    await until("the sandboxed service listening", () => {
      if (proc.exitCode !== null) throw new Error(`exited ${proc.exitCode}: ${out}\n${err}`);
      return out.includes('"payflux listening"') || undefined;
    }, 20_000);

    // The restrictions are really in force on the service process.
    // The service itself (strace is its parent): signals go to it directly.
    const pid = findPid(port);
    servicePids.push(pid);
    expect(pid).not.toBe(proc.pid);
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    expect(status).toMatch(new RegExp(`^Uid:\\s+${NOBODY}\\s+${NOBODY}\\s+${NOBODY}\\s+${NOBODY}$`, "m"));
    expect(status).toMatch(/^NoNewPrivs:\s+1$/m);
    expect(status).toMatch(/^CapBnd:\s+0+$/m);
    expect(status).toMatch(/^CapEff:\s+0+$/m);

    const post = (key: string) =>
      fetch(`${url}/v1/events/payment_exhaust`, { method: "POST", headers: { authorization: `Bearer ${key}`, "content-type": "application/json" }, body: JSON.stringify(event()) });
    expect((await fetch(`${url}/health`)).status).toBe(200);
    expect((await post(KEY)).status).toBe(202);
    expect((await post(KEY2)).status).toBe(401);
    writeEnv(`${KEY},${KEY2}`);
    process.kill(pid, "SIGHUP");
    await until("the reload", () => out.includes('"config reloaded"') || undefined, 15_000);
    expect((await post(KEY2)).status).toBe(202);
    expect(await (await fetch(`${url}/metrics`)).text()).toContain("payflux_ingest_accepted_total 2");
    process.kill(pid, "SIGTERM");
    expect(await proc.exited).toBe(0); // strace exits with the service's code
    expect(out).toContain('"msg":"stopped"');

    // UMask=0077: what the service wrote is private.
    const segments = readdirSync(join(dir, "data")).filter((n) => n.startsWith("segment-"));
    expect(segments.length).toBeGreaterThan(0);
    for (const n of segments) expect(statSync(join(dir, "data", n)).mode & 0o077).toBe(0);

    // Every system call and socket family of the run is one the unit allows.
    const trace = readFileSync(join(dir, "trace", "trace"), "utf8");
    const used = new Set<string>();
    for (const m of trace.matchAll(/^\d+\s+(?:<\.\.\. )?([a-z0-9_]+)(?:\(| resumed)/gm)) used.add(m[1]!);
    expect(used.size).toBeGreaterThan(20);
    expect([...used].filter((s) => !allowed.has(s)).sort()).toEqual([]);
    const socketFamilies = new Set([...trace.matchAll(/\bsocket\((AF_[A-Z0-9]+)/g)].map((m) => m[1]!));
    expect(socketFamilies.size).toBeGreaterThan(0);
    expect([...socketFamilies].filter((f) => !families.includes(f))).toEqual([]);
  }, 120_000);
});

/** The pid of the process listening on `port` (from /proc/net/tcp inodes), for /proc/PID/status. */
function findPid(port: number): number {
  const hex = port.toString(16).toUpperCase().padStart(4, "0");
  const inode = readFileSync("/proc/net/tcp", "utf8")
    .split("\n")
    .map((l) => l.trim().split(/\s+/))
    .find((f) => f[1]?.endsWith(`:${hex}`) && f[3] === "0A")?.[9];
  if (!inode) throw new Error(`nothing listens on ${port}`);
  for (const p of readdirSync("/proc").filter((n) => /^\d+$/.test(n))) {
    try {
      for (const fd of readdirSync(`/proc/${p}/fd`)) {
        try {
          if (readlinkSync(`/proc/${p}/fd/${fd}`) === `socket:[${inode}]`) return Number(p);
        } catch {
          // gone
        }
      }
    } catch {
      // not ours to read
    }
  }
  throw new Error(`no process owns the socket on ${port}`);
}
