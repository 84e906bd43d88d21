/**
 * Graceful shutdown with a request really in flight (its body still being
 * sent when SIGTERM arrives), SIGINT, and a second server on a port in use.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { connect } from "node:net";
import { event, KEY, metric, post, SINGLE, startServer, stopAll, storedEvents, type Server } from "./support/harness.ts";

afterAll(stopAll);

/** Opens a raw TCP connection: "connected", or the error code (ECONNREFUSED when nothing listens). */
function tcpConnect(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect(port, "127.0.0.1");
    socket.setTimeout(5000, () => {
      socket.destroy();
      resolve("timeout");
    });
    socket.on("connect", () => {
      socket.destroy();
      resolve("connected");
    });
    socket.on("error", (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
  });
}

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

/** Polls /metrics (each on a fresh connection) until payflux_http_requests_in_flight reaches `n`. */
async function waitInFlight(server: Server, n: number): Promise<void> {
  let last: number | undefined;
  for (let i = 0; i < 250; i++) {
    const res = await fetch(server.url + "/metrics", { headers: { connection: "close" } });
    last = metric(await res.text(), "payflux_http_requests_in_flight");
    if (last === n) return;
    await Bun.sleep(20);
  }
  throw new Error(`payflux_http_requests_in_flight never reached ${n} (last ${last})`);
}

/** A POST whose body sends the first half of `json` now and the rest when `release()` is called. */
function slowPost(server: Server, json: string) {
  const enc = new TextEncoder();
  const half = Math.floor(json.length / 2);
  let release!: () => void;
  const gate = new Promise<void>((r) => (release = r));
  const body = new ReadableStream<Uint8Array>({
    async start(controller) {
      controller.enqueue(enc.encode(json.slice(0, half)));
      await gate;
      controller.enqueue(enc.encode(json.slice(half)));
      controller.close();
    },
  });
  const response = fetch(server.url + SINGLE, {
    method: "POST",
    headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
    body,
    duplex: "half",
  } as RequestInit);
  return { response, release };
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
