/**
 * Graceful shutdown with a request really in flight (its body still being
 * sent when SIGTERM arrives), SIGINT, and a second server on a port in use.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { event, post, SINGLE, slowPost, startServer, stopAll, storedEvents, tcpConnect, waitInFlight } from "./support/harness.ts";

afterAll(stopAll);

/** Tries to connect until refused (at most ~3 s): the listener closes just after the shutdown log line. */
async function refusedSoon(port: number): Promise<string> {
  let last = "";
  for (let i = 0; i < 150; i++) {
    last = await tcpConnect(port);
    if (last === "ECONNREFUSED") return last;
    await Bun.sleep(20);
  }
  return last;
}

describe("SIGTERM with a request in flight", () => {
  test("the request completes with 202, the event is stored, the process exits 0, new connections are refused", async () => {
    const server = await startServer();
    const ev = event();
    const slow = slowPost(server, JSON.stringify(ev));
    // The slow request plus the scrape itself.
    await waitInFlight(server, 2);

    server.signal("SIGTERM");
    await server.waitForLog((l) => l.signal === "SIGTERM");
    // The listener closes (right after that line is written) while the request is still in flight.
    expect(await refusedSoon(server.port)).toBe("ECONNREFUSED");
    let exitedEarly = false;
    server.exited.then(() => (exitedEarly = true));
    await Bun.sleep(300);
    expect(exitedEarly).toBe(false);

    slow.release();
    const res = await slow.response;
    expect(res.status).toBe(202);
    expect(await res.json()).toEqual({ accepted: 1, duplicates: 0 });

    expect(await server.exited).toBe(0);
    const stored = await storedEvents(server.dataDir);
    expect(stored.length).toBe(1);
    expect(stored[0]!.event_id).toBe(ev.event_id);
    expect(stored[0]!.processor).toBe("stripe");

    expect(await tcpConnect(server.port)).toBe("ECONNREFUSED");
    await expect(fetch(server.url + "/health")).rejects.toThrow();
  });

  test("an idle server exits 0 on SIGTERM, after accepted events are on disk", async () => {
    const server = await startServer();
    const ids: string[] = [];
    const responses = await Promise.all(
      Array.from({ length: 20 }, () => {
        const ev = event();
        ids.push(ev.event_id as string);
        return post(server, SINGLE, ev);
      }),
    );
    for (const r of responses) expect(r.status).toBe(202);
    expect(await server.stop("SIGTERM")).toBe(0);
    expect((await storedEvents(server.dataDir)).map((e) => e.event_id).sort()).toEqual(ids.sort());
  });
});

describe("SIGINT", () => {
  test("exits 0, also with a request in flight", async () => {
    const server = await startServer();
    const ev = event();
    const slow = slowPost(server, JSON.stringify(ev));
    await waitInFlight(server, 2);
    server.signal("SIGINT");
    await server.waitForLog((l) => l.signal === "SIGINT");
    slow.release();
    expect((await slow.response).status).toBe(202);
    expect(await server.exited).toBe(0);
    expect((await storedEvents(server.dataDir)).map((e) => e.event_id)).toEqual([ev.event_id]);
  });
});

describe("port already in use", () => {
  test("a second server on the same port exits 69 with a clear message; the first keeps serving", async () => {
    const first = await startServer();
    const second = await startServer({ env: { PAYFLUX_PORT: String(first.port) }, waitReady: false });
    expect(await second.exited).toBe(69);
    const out = second.stdout.join("\n") + second.stderr();
    expect(out).toMatch(/in use/i);
    expect(out).toContain(String(first.port));
    expect(second.logs().some((l) => l.msg === "payflux listening")).toBe(false);

    const health = await fetch(first.url + "/health");
    expect(health.status).toBe(200);
    expect((await post(first, SINGLE, event())).status).toBe(202);
    expect(first.proc.exitCode).toBeNull();
  });
});
