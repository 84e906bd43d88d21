/**
 * Storage failures against the real server: a full disk (a tiny tmpfs) gives
 * 503 storage_unavailable with Retry-After and an unhealthy /health; once
 * space is back the same event is stored on retry (the old service swallowed
 * it as a duplicate) and nothing is on disk twice or half-written. A data dir
 * that cannot be created stops the server with exit code 73.
 *
 * Needs root (mount -t tmpfs): the suite runs as root here and in CI.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { closeSync, openSync, readdirSync, readFileSync, rmSync, unlinkSync, writeFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { event, metric, metricsText, post, SINGLE, startServer, stopAll, storedEvents, tempDir, type Server } from "./support/harness.ts";

function run(cmd: string[]): { code: number | null; out: string } {
  const r = Bun.spawnSync(cmd, { stdout: "pipe", stderr: "pipe" });
  return { code: r.exitCode, out: r.stdout.toString() + r.stderr.toString() };
}

/** Fills the file system holding `path` until ENOSPC; returns bytes written. */
function fill(path: string): number {
  const fd = openSync(path, "w");
  let total = 0;
  try {
    for (const size of [64 * 1024, 4096, 512, 1]) {
      const chunk = Buffer.alloc(size, 0x66);
      for (;;) {
        try {
          const n = writeSync(fd, chunk);
          total += n;
          if (n < size) break;
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === "ENOSPC") break;
          throw err;
        }
      }
    }
  } finally {
    closeSync(fd);
  }
  return total;
}

/** Raw text of every segment file in `dir`. */
function segments(dir: string): { name: string; text: string }[] {
  return readdirSync(dir)
    .filter((n) => n.startsWith("segment-"))
    .sort()
    .map((name) => ({ name, text: readFileSync(join(dir, name), "utf8") }));
}

async function health(server: Server): Promise<{ status: number; body: Record<string, any> }> {
  const res = await fetch(server.url + "/health");
  return { status: res.status, body: await res.json() };
}

describe("full disk (data dir on a 256 KiB tmpfs)", () => {
  let mountPoint = "";
  let mounted = false;
  let server: Server;
  let dataDir = "";

  beforeAll(async () => {
    mountPoint = tempDir("payflux-tmpfs-");
    const m = run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", mountPoint]);
    if (m.code !== 0) {
      // Not skipped on purpose: this test needs root and must say so loudly.
      throw new Error(`cannot mount a tmpfs at ${mountPoint} (exit ${m.code}): ${m.out.trim()}; this test needs root (mount -t tmpfs)`);
    }
    mounted = true;
    dataDir = join(mountPoint, "data");
    server = await startServer({ dataDir, env: { PAYFLUX_INGEST_BURST: "100000", PAYFLUX_INGEST_RPS: "100000" } });
  });

  afterAll(async () => {
    await stopAll(); // the server holds the segment open: stop it before unmounting
    if (mounted) {
      let u = run(["umount", mountPoint]);
      for (let i = 0; u.code !== 0 && i < 20; i++) {
        await Bun.sleep(100);
        u = run(["umount", mountPoint]);
      }
      if (u.code !== 0) run(["umount", "-l", mountPoint]);
    }
    rmSync(mountPoint, { recursive: true, force: true });
  });

  test("503 storage_unavailable with Retry-After, unhealthy, then recovery and the retried event is stored once", async () => {
    const acceptedIds: string[] = [];
    // Some events before the disk fills, so the segment has a partly used page.
    for (let i = 0; i < 3; i++) {
      const ev = event();
      const res = await post(server, SINGLE, ev);
      expect([res.status, await res.json()]).toEqual([202, { accepted: 1, duplicates: 0 }]);
      acceptedIds.push(ev.event_id as string);
    }
    expect((await health(server)).status).toBe(200);

    const filler = join(mountPoint, "filler");
    expect(fill(filler)).toBeGreaterThan(100 * 1024);

    // Post until the disk refuses one (the segment's last page may still take a few).
    let failed: Record<string, unknown> | null = null;
    let failedRes: Response | null = null;
    for (let i = 0; i < 500 && failed === null; i++) {
      const ev = event({ failure_category: `attempt-${i}`, padding: "p".repeat(300) });
      const res = await post(server, SINGLE, ev);
      if (res.status === 202) {
        expect(await res.json()).toEqual({ accepted: 1, duplicates: 0 });
        acceptedIds.push(ev.event_id as string);
      } else {
        failed = ev;
        failedRes = res;
      }
    }
    expect(failed).not.toBeNull();
    const res503 = failedRes!;
    const problemBody = await res503.json();
    expect(res503.status).toBe(503);
    expect(res503.headers.get("content-type")).toStartWith("application/problem+json");
    expect(problemBody.code).toBe("storage_unavailable");
    const retryAfter = res503.headers.get("retry-after");
    expect(retryAfter).toMatch(/^[1-9]\d*$/);

    // The failed event is not on disk, and no segment ends in a partial line.
    for (const s of segments(dataDir)) {
      expect(s.text.includes(failed!.event_id as string)).toBe(false);
      if (s.text !== "") expect(s.text.endsWith("\n")).toBe(true);
    }

    const unhealthy = await health(server);
    expect(unhealthy.status).toBe(503);
    expect(unhealthy.body.status).toBe("unhealthy");
    expect(typeof unhealthy.body.reason).toBe("string");
    expect(unhealthy.body.reason.length).toBeGreaterThan(0);
    expect(metric(await metricsText(server), 'payflux_ingest_rejected_total{reason="storage_unavailable"}')).toBeGreaterThanOrEqual(1);

    // Space comes back: /health recovers on its own, without traffic.
    unlinkSync(filler);
    let recovered = await health(server);
    for (let i = 0; i < 50 && recovered.status !== 200; i++) {
      await Bun.sleep(200);
      recovered = await health(server);
    }
    expect(recovered.status).toBe(200);
    expect(recovered.body.status).toBe("ok");

    // The client's retry of the very event that got 503 is stored, not swallowed as a duplicate.
    const retry = await post(server, SINGLE, failed);
    expect([retry.status, await retry.json()]).toEqual([202, { accepted: 1, duplicates: 0 }]);
    acceptedIds.push(failed!.event_id as string);
    const again = await post(server, SINGLE, failed);
    expect([again.status, await again.json()]).toEqual([202, { accepted: 0, duplicates: 1 }]);

    // More traffic works after the recovery.
    for (let i = 0; i < 3; i++) {
      const ev = event();
      const res = await post(server, SINGLE, ev);
      expect([res.status, await res.json()]).toEqual([202, { accepted: 1, duplicates: 0 }]);
      acceptedIds.push(ev.event_id as string);
    }

    // Every acknowledged event is on disk exactly once; every line is whole and its checksum holds; nothing else is there.
    const lines = await storedEvents(dataDir);
    const counts = new Map<string, number>();
    for (const l of lines) counts.set(l.event_id, (counts.get(l.event_id) ?? 0) + 1);
    for (const id of acceptedIds) expect([id, counts.get(id)]).toEqual([id, 1]);
    expect(lines.length).toBe(acceptedIds.length);
    const { received_at, key_id, ...storedFailed } = lines.find((l) => l.event_id === failed!.event_id)!;
    expect(storedFailed).toEqual(failed!);
  });
});

describe("data dir that cannot be created", () => {
  test("the server exits with code 73 and says why", async () => {
    const dir = tempDir();
    try {
      const file = join(dir, "not-a-dir");
      writeFileSync(file, "regular file\n");
      const dataDir = join(file, "data");
      const server = await startServer({ dataDir, waitReady: false });
      const code = await server.exited;
      expect(code).toBe(73);
      const logs = server.logs();
      expect(logs.some((l) => l.msg === "payflux listening")).toBe(false);
      const output = server.stdout.join("\n") + "\n" + server.stderr();
      // A clear message: the path, and an error-level (or fatal) line about the data directory.
      expect(output).toContain(dataDir);
      const line = logs.find((l) => JSON.stringify(l).includes(dataDir));
      expect(line).toBeDefined();
      expect(["fatal", "error"]).toContain(line!.level);
      expect(String(line!.msg)).toMatch(/data dir/i);
      expect(JSON.stringify(line)).toMatch(/ENOTDIR|not a directory/i);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("a data dir without write permission for the service also exits 73", async () => {
    // As root, permissions do not stop writes; a read-only tmpfs does.
    const mountPoint = tempDir("payflux-rofs-");
    const m = run(["mount", "-t", "tmpfs", "-o", "size=64k,ro", "tmpfs", mountPoint]);
    if (m.code !== 0) throw new Error(`cannot mount a read-only tmpfs at ${mountPoint} (exit ${m.code}): ${m.out.trim()}; this test needs root`);
    try {
      const server = await startServer({ dataDir: join(mountPoint, "data"), waitReady: false });
      expect(await server.exited).toBe(73);
      const line = server.logs().find((l) => JSON.stringify(l).includes(join(mountPoint, "data")));
      expect(line).toBeDefined();
      expect(JSON.stringify(line)).toMatch(/EROFS|read-only/i);
    } finally {
      run(["umount", mountPoint]);
      rmSync(mountPoint, { recursive: true, force: true });
    }
  });
});
