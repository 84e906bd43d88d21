/**
 * The one promise the service makes: a 202 is sent only after the fdatasync
 * covering the event's bytes has returned. kill -9 keeps the page cache, so the
 * crash tests cannot see a missing sync; these tests can. One spies on the
 * group commit's sync in-process; the other traces the real binary's system
 * calls (strace) and checks, for every acknowledged event, the order
 * write(record) -> fdatasync returned -> sendto("HTTP/1.1 202").
 */
import { afterAll, describe, expect, test } from "bun:test";
import { fdatasync, readFileSync } from "node:fs";
import { join } from "node:path";
import { EventLog } from "../src/event-log.ts";
import { event, post, SINGLE, startServer, stopAll, tempDir } from "./support/harness.ts";

afterAll(stopAll);

const LIMITS = { segmentBytes: 1 << 20, retentionMs: 86_400_000, maxBytes: 1 << 30 };
const tick = () => new Promise((r) => setTimeout(r, 20));

describe("group commit: an append resolves only after its fdatasync returned", () => {
  test("each group is synced, and its promises wait for that sync", async () => {
    const held: { fd: number; release: () => void }[] = [];
    const log = EventLog.open(tempDir(), LIMITS, {
      fdatasync: (fd, cb) => held.push({ fd, release: () => fdatasync(fd, cb) }),
    });
    const done: string[] = [];
    const first = log.append(['{"n":1}']).then(() => done.push("first"));
    await tick();
    expect(held.length).toBe(1); // the first group is written and its sync started
    // Written to the page cache already, but not acknowledged.
    expect(readFileSync(log.segmentPath, "utf8")).toContain('{"n":1');
    const second = log.append(['{"n":2}', '{"n":3}']).then(() => done.push("second"));
    await tick();
    expect(done).toEqual([]);
    expect(held.length).toBe(1); // the next group waits for the running sync

    held[0]!.release();
    await first;
    await tick();
    expect(done).toEqual(["first"]); // the second group's bytes are not covered by that sync
    expect(held.length).toBe(2);
    held[1]!.release();
    await second;
    expect(done).toEqual(["first", "second"]);
    await log.close();
  });

  test("a failed sync rejects its group and acknowledges nothing", async () => {
    const log = EventLog.open(tempDir(), LIMITS, {
      fdatasync: (_fd, cb) => setTimeout(() => cb(Object.assign(new Error("EIO"), { code: "EIO" })), 5),
    });
    await expect(log.append(['{"n":1}'])).rejects.toThrow("EIO");
    await log.close();
  });
});

describe("the compiled binary acknowledges only synced events (strace)", () => {
  test("for every 202: write(record), then fdatasync returned, then the response", async () => {
    const trace = join(tempDir(), "strace.txt");
    const server = await startServer({
      binary: true,
      wrap: ["strace", "-f", "-qq", "-s", "100000", "-e", "trace=fdatasync,write,writev,pwrite64,sendto,sendmsg", "-o", trace],
    });
    const ids: string[] = [];
    for (let i = 0; i < 15; i++) {
      const e = event();
      ids.push(e.event_id as string);
      const res = await post(server, SINGLE, e);
      expect(res.status).toBe(202);
      await res.text();
    }
    // A few concurrent ones too: group commit covers several requests with one sync.
    const batch = Array.from({ length: 8 }, () => event());
    ids.push(...batch.map((e) => e.event_id as string));
    const answers = await Promise.all(batch.map((e) => post(server, SINGLE, e)));
    expect(answers.map((r) => r.status)).toEqual(batch.map(() => 202));
    // SIGTERM the traced service itself (strace would only detach); strace exits with it.
    const child = Number(readFileSync(`/proc/${server.proc.pid}/task/${server.proc.pid}/children`, "utf8").trim().split(" ")[0]);
    process.kill(child, "SIGTERM");
    expect(await server.exited).toBe(0);

    const lines = readFileSync(trace, "utf8").split("\n");
    // strace -f: "PID call(args) = ret", or "PID call(args <unfinished ...>" then "PID <... call resumed>...) = ret".
    const syncDone: { line: number; fd: number }[] = [];
    const syncStartFd = new Map<string, number>(); // pid -> fd of its unfinished fdatasync
    lines.forEach((l, i) => {
      let m = /^(\d+)\s+fdatasync\((\d+)\)\s+= 0/.exec(l);
      if (m) return void syncDone.push({ line: i, fd: Number(m[2]) });
      m = /^(\d+)\s+fdatasync\((\d+) <unfinished/.exec(l);
      if (m) return void syncStartFd.set(m[1]!, Number(m[2]));
      m = /^(\d+)\s+<\.\.\. fdatasync resumed>.*= 0/.exec(l);
      if (m && syncStartFd.has(m[1]!)) syncDone.push({ line: i, fd: syncStartFd.get(m[1]!)! });
    });
    const syncStartLine = (done: { line: number; fd: number }) => {
      // The sync's own start: the nearest earlier fdatasync line on that fd.
      for (let i = done.line; i >= 0; i--) if (new RegExp(`fdatasync\\(${done.fd}[),<]| fdatasync\\(${done.fd} `).test(lines[i]!)) return i;
      return done.line;
    };
    // For each event: the line where the sync covering its bytes returned.
    const durableAt = ids.map((id) => {
      const w = lines.findIndex((l) => /\bwrite\((\d+), /.test(l) && l.includes(id));
      expect(w).toBeGreaterThanOrEqual(0);
      const fd = Number(/\bwrite\((\d+), /.exec(lines[w]!)![1]);
      // The first sync of that file that started after the record was written.
      const covering = syncDone.find((s) => s.fd === fd && syncStartLine(s) > w);
      expect(covering).toBeDefined();
      return covering!.line;
    });
    // At every 202 sent, at least as many events must be durable as have been acknowledged.
    const acks = lines.flatMap((l, i) => (/sendto\(|writev?\(/.test(l) && l.includes("HTTP/1.1 202") ? [i] : []));
    expect(acks.length).toBe(ids.length);
    acks.forEach((line, n) => expect(durableAt.filter((d) => d < line).length).toBeGreaterThanOrEqual(n + 1));
  });
});
