/**
 * The one promise the service makes: a 202 is sent only after the event's
 * bytes are on disk. The event log writes each group to a segment opened with
 * O_DSYNC, so the write itself returns only once its bytes are durable (as a
 * write followed by fdatasync). kill -9 keeps the page cache, so the crash
 * tests cannot see a missing sync; these tests can. In-process: the segment's
 * descriptor carries O_DSYNC, and an append resolves only after its write
 * returned. On the real binary (strace): the segment is opened with O_DSYNC,
 * and for every acknowledged event, writev(record) returned -> sendto("HTTP/1.1 202").
 */
import { afterAll, describe, expect, test } from "bun:test";
import { constants, existsSync, fstatSync, fsync, mkdirSync, readFileSync, rmdirSync, statSync, writeSync, writev } from "node:fs";
import { join } from "node:path";
import { EventLog, segmentName } from "../src/event-log.ts";
import { frame } from "../src/record.ts";
import { event, post, SINGLE, startServer, stopAll, tempDir } from "./support/harness.ts";

afterAll(stopAll);

const LIMITS = { segmentBytes: 1 << 20, retentionMs: 86_400_000, maxBytes: 1 << 30 };
const tick = () => new Promise((r) => setTimeout(r, 20));

/** The open flags of one of this process's descriptors (Linux /proc). */
function openFlags(fd: number): number {
  return parseInt(/^flags:\s+(\d+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, "utf8"))![1]!, 8);
}

describe("group commit: an append resolves only after its durable write returned", () => {
  test("the segment is written with O_DSYNC; each group's promises wait for its write", async () => {
    const held: { fd: number; release: () => void }[] = [];
    const log = EventLog.open(tempDir(), LIMITS, {
      writev: (fd, parts, cb) => held.push({ fd, release: () => writev(fd, parts, cb) }),
    });
    const done: string[] = [];
    const first = log.append(['{"n":1}']).then(() => done.push("first"));
    await tick();
    expect(held.length).toBe(1); // the first group's write started
    expect(openFlags(held[0]!.fd) & constants.O_DSYNC).toBe(constants.O_DSYNC);
    const second = log.append(['{"n":2}', '{"n":3}']).then(() => done.push("second"));
    await tick();
    expect(done).toEqual([]);
    expect(held.length).toBe(1); // the next group waits for the running write

    held[0]!.release();
    await first;
    await tick();
    expect(done).toEqual(["first"]); // the second group is not written yet
    expect(readFileSync(log.segmentPath, "utf8")).not.toContain('{"n":2');
    expect(held.length).toBe(2);
    held[1]!.release();
    await second;
    expect(done).toEqual(["first", "second"]);
    expect(readFileSync(log.segmentPath, "utf8")).toContain('{"n":3');
    await log.close();
  });

  test("a new segment's records are acknowledged only after the directory's fsync returned (on the thread pool, not the event loop)", async () => {
    const dirSyncs: { fd: number; release: () => void }[] = [];
    const writes: number[] = [];
    const log = EventLog.open(tempDir(), { ...LIMITS, segmentBytes: 64 }, {
      fsyncDir: (fd, cb) => dirSyncs.push({ fd, release: () => fsync(fd, cb) }),
      writev: (fd, parts, cb) => {
        writes.push(parts.length);
        writev(fd, parts, cb);
      },
    });
    const first = log.segmentPath;
    // The first group fills the 64-byte segment: the log moves to a new one after it.
    await log.append(['{"n":1,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}']);
    expect(log.segmentPath).not.toBe(first);
    let acked = false;
    const second = log.append(['{"n":2}']).then(() => (acked = true));
    await tick();
    expect(dirSyncs.length).toBe(1); // the directory's fsync started...
    expect(writes.length).toBe(1); // ...and the group waits for it: not even written
    expect(acked).toBe(false);
    expect(fstatSync(dirSyncs[0]!.fd).ino).toBe(statSync(log.dir).ino); // the data dir's own entry list
    dirSyncs[0]!.release();
    await second;
    expect(writes.length).toBe(2);
    expect(readFileSync(log.segmentPath, "utf8")).toContain('{"n":2');
    // One fsync per new segment: the next group in it does not wait again.
    await log.append(['{"n":3}']);
    expect(dirSyncs.length).toBe(1);
    await log.close();
  });

  test("a segment the rollover could not create is created before the directory's fsync that covers it", async () => {
    const dir = tempDir();
    const atFsync: boolean[] = [];
    const log = EventLog.open(dir, { ...LIMITS, segmentBytes: 64 }, {
      fsyncDir: (fd, cb) => {
        atFsync.push(existsSync(log.segmentPath) && statSync(log.segmentPath).isFile());
        fsync(fd, cb);
      },
    });
    // The next segment's name is taken by a directory: the rollover cannot create the file (EISDIR).
    const next = join(dir, segmentName(2));
    mkdirSync(next);
    await log.append(['{"n":1,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}']);
    expect(log.segmentPath).toBe(next);
    rmdirSync(next);
    await log.append(['{"n":2}']);
    expect(readFileSync(next, "utf8")).toContain('{"n":2');
    expect(atFsync).toEqual([true]);
    await log.close();
  });

  test("after a failed directory fsync the queued group fails, and the next goes to a new segment whose entry a later fsync covers", async () => {
    const results: (Error | null)[] = [];
    const log = EventLog.open(tempDir(), { ...LIMITS, segmentBytes: 64 }, {
      fsyncDir: (fd, cb) => {
        const err = results.length === 0 ? Object.assign(new Error("EIO"), { code: "EIO" }) : null;
        results.push(err);
        if (err) setImmediate(() => cb(err));
        else fsync(fd, cb);
      },
    });
    await log.append(['{"n":1,"pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}']);
    const second = log.segmentPath;
    await expect(log.append(['{"n":2}'])).rejects.toThrow("EIO");
    expect(log.writable).toBe(false);
    await log.append(['{"n":3}']);
    // The fsync that followed the failure succeeded, and is not trusted: n=3 is in the segment after.
    expect(log.segmentPath).not.toBe(second);
    expect(readFileSync(second, "utf8")).toBe("");
    expect(readFileSync(log.segmentPath, "utf8")).toContain('{"n":3');
    expect(results.length).toBe(3);
    expect(log.writable).toBe(true);
    await log.close();
  });

  test("a write that takes only part of a group is continued where it stopped", async () => {
    const calls: number[] = [];
    const log = EventLog.open(tempDir(), LIMITS, {
      // Each call writes at most 7 bytes, across buffer boundaries.
      writev: (fd, parts, cb) => {
        const bytes = Buffer.concat(parts).subarray(0, 7);
        calls.push(bytes.length);
        setImmediate(() => cb(null, writeSync(fd, bytes)));
      },
    });
    const records = ['{"n":1}', '{"n":22}', '{"n":333}'];
    await Promise.all(records.map((r) => log.append([r])));
    const written = readFileSync(log.segmentPath, "utf8");
    expect(written).toBe(frame(records).toString("utf8"));
    expect(calls.length).toBeGreaterThan(3);
    await log.close();
  });

  test("a failed write rejects its group and acknowledges nothing", async () => {
    const log = EventLog.open(tempDir(), LIMITS, {
      writev: (_fd, _parts, cb) => setTimeout(() => cb(Object.assign(new Error("EIO"), { code: "EIO" }), 0), 5),
    });
    await expect(log.append(['{"n":1}'])).rejects.toThrow("EIO");
    await log.close();
  });
});

describe("the compiled binary acknowledges only synced events (strace)", () => {
  test("for every 202: the segment opened with O_DSYNC, writev(record) returned, then the response", async () => {
    const trace = join(tempDir(), "strace.txt");
    const server = await startServer({
      binary: true,
      wrap: ["strace", "-f", "-qq", "-s", "100000", "-e", "trace=openat,write,writev,pwrite64,sendto,sendmsg", "-o", trace],
    });
    const ids: string[] = [];
    for (let i = 0; i < 15; i++) {
      const e = event();
      ids.push(e.event_id as string);
      const res = await post(server, SINGLE, e);
      expect(res.status).toBe(202);
      await res.text();
    }
    // A few concurrent ones too: group commit covers several requests with one write.
    const batch = Array.from({ length: 8 }, () => event());
    ids.push(...batch.map((e) => e.event_id as string));
    const answers = await Promise.all(batch.map((e) => post(server, SINGLE, e)));
    expect(answers.map((r) => r.status)).toEqual(batch.map(() => 202));
    // SIGTERM the traced service itself (strace would only detach); strace exits with it.
    const child = Number(readFileSync(`/proc/${server.proc.pid}/task/${server.proc.pid}/children`, "utf8").trim().split(" ")[0]);
    process.kill(child, "SIGTERM");
    expect(await server.exited).toBe(0);

    const lines = readFileSync(trace, "utf8").split("\n");
    // The segment's descriptors opened for writing (readers open it too: the snapshot's tag), and their flags.
    const segmentFds = new Map<number, string>();
    for (const l of lines) {
      const m = /openat\([^,]+, "[^"]*segment-\d{20}\.ndjson", ([A-Z_|]+)(?:, \d+)?\)\s+= (\d+)/.exec(l);
      if (m && !m[1]!.split("|").includes("O_RDONLY")) segmentFds.set(Number(m[2]), m[1]!);
    }
    expect(segmentFds.size).toBeGreaterThan(0);
    for (const flags of segmentFds.values()) expect(flags.split("|")).toContain("O_DSYNC");
    // strace -f: "PID writev(fd, ...) = ret", or "PID writev(fd, ... <unfinished ...>" then "PID <... writev resumed>) = ret".
    const durableAt = ids.map((id) => {
      const w = lines.findIndex((l) => /\bwritev\((\d+), /.test(l) && l.includes(id));
      expect(w).toBeGreaterThanOrEqual(0);
      const [, pid, fd] = /^(\d+)\s+writev\((\d+), /.exec(lines[w]!)!;
      expect(segmentFds.has(Number(fd))).toBe(true);
      if (/\)\s+= \d+$/.test(lines[w]!)) return w;
      const resumed = lines.findIndex((l, i) => i > w && l.startsWith(`${pid} `) && /<\.\.\. writev resumed>.*= \d+$/.test(l));
      expect(resumed).toBeGreaterThan(w);
      return resumed;
    });
    // At every 202 sent, at least as many events must be durable as have been acknowledged.
    const acks = lines.flatMap((l, i) => (/sendto\(|writev?\(/.test(l) && l.includes("HTTP/1.1 202") ? [i] : []));
    expect(acks.length).toBe(ids.length);
    acks.forEach((line, n) => expect(durableAt.filter((d) => d < line).length).toBeGreaterThanOrEqual(n + 1));
  });
});
