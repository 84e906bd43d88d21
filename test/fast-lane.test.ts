/**
 * The fast lane (src/fast-lane.ts): which request heads it serves itself,
 * which it hands to node:http and which it refuses, and how one connection
 * behaves across pipelined requests, split bodies, refused bodies and a
 * hand-over. The lane runs on real loopback sockets with a stub handler; the
 * whole server's behaviour is covered by the attack, corpus and ingest tests.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { connect, createServer, type Server, type Socket } from "node:net";
import { LaneConnection, parseHead, type LaneOptions } from "../src/fast-lane.ts";
import type { Incoming } from "../src/exchange.ts";
import { parseResponses } from "./support/raw-http.ts";

const ROUTE = "/v1/events/batch";
const head = (lines: string[]) => Buffer.from(lines.join("\r\n") + "\r\n\r\n");
const ok = ["POST /v1/events/batch HTTP/1.1", "Host: a", "Authorization: Bearer k", "Content-Length: 2"];

describe("parseHead", () => {
  test("the lane's shape: fields lower-cased and trimmed, content length, head size", () => {
    const buf = Buffer.concat([head([...ok.slice(0, 3), "Content-Type:  application/json \t", ok[3]!]), Buffer.from("{}")]);
    const h = parseHead(buf);
    expect(h).toEqual({
      path: ROUTE,
      fields: ["host", "a", "authorization", "Bearer k", "content-type", "application/json", "content-length", "2"],
      contentLength: 2,
      size: buf.length - 2,
    });
  });

  test("anything else goes to node:http (null)", () => {
    const cases: string[][] = [
      ["GET /health HTTP/1.1", "Host: a"],
      ["POST /v1/events/batch HTTP/1.0", "Host: a", "Content-Length: 2"],
      ["POST /v1/events/batch?x=1 HTTP/1.1", "Host: a", "Content-Length: 2"],
      ["POST /v1/events/../batch HTTP/1.1", "Host: a", "Content-Length: 2"],
      ["POST /v1/%65vents/batch HTTP/1.1", "Host: a", "Content-Length: 2"],
      ["POST http://a/v1/events/batch HTTP/1.1", "Host: a", "Content-Length: 2"],
      [...ok.slice(0, 3)], // no Content-Length
      ["POST /v1/events/batch HTTP/1.1", "Content-Length: 2"], // no Host
      [...ok, "Host: b"],
      [...ok, "Content-Length: 2"],
      [...ok.slice(0, 3), "Content-Length: +2"],
      [...ok.slice(0, 3), "Content-Length: 2, 2"],
      [...ok.slice(0, 3), "Content-Length: 1234567890123456"],
      [...ok, "Transfer-Encoding: chunked"],
      [...ok, "Connection: close"],
      [...ok, "Expect: 100-continue"],
      [...ok, "Upgrade: websocket"],
      [...ok, "TE: trailers"],
      [...ok, "X-Bad Name: 1"],
      [...ok, " folded"],
      [...ok, "X-Empty-Name", ":1"],
      [...ok, "X-Ctl: a\u0001b"],
      [...ok, "X-Utf8: caf\u00e9"],
      [...ok, `X-Big: ${"a".repeat(9000)}`],
      [...ok, ...Array.from({ length: 70 }, (_, i) => `X-${i}: v`)],
    ];
    for (const c of cases) expect({ c, h: parseHead(head(c)) }).toEqual({ c, h: null });
  });

  test("not HTTP/1.x is refused here (\"bad\"), at once, even before the head is whole", () => {
    for (const text of [
      "GET /health\r\n",
      "GET /health HTTP/2.0\r\nHost: a\r\n\r\n",
      "POST /v1/events/batch HTTP/1.1\nHost: a\n\n",
      "POST /v1/events/batch HTTP/1.1\r\nHost: a\n\r\n",
      "POST /v1/events/batch HTTP/1.1\r\nHost: a\rb\r\n\r\n",
      "  \u00fc",
      "GET  /health HTTP/1.1\r\n\r\n",
      "\r\n",
    ]) {
      expect({ text, h: parseHead(Buffer.from(text, "latin1")) }).toEqual({ text, h: "bad" });
    }
  });

  test("a head over 16 KiB or with over 100 fields is too large (431), whatever the request", () => {
    const fields = (n: number) => Array.from({ length: n }, (_, i) => `X-${i}: v`);
    expect(parseHead(head(["GET /health HTTP/1.1", "Host: a", ...fields(99)]))).toBeNull();
    expect(parseHead(head(["GET /health HTTP/1.1", "Host: a", ...fields(100)]))).toBe("too_large");
    expect(parseHead(head([...ok, ...fields(120)]))).toBe("too_large");
    expect(parseHead(head(["GET /health HTTP/1.1", "Host: a", `X-Big: ${"a".repeat(17000)}`]))).toBe("too_large");
    expect(parseHead(Buffer.from(`GET /health HTTP/1.1\r\nX-Big: ${"a".repeat(17000)}`))).toBe("too_large");
  });

  test("a head that has not fully arrived waits (\"more\") only while it can still be the lane's", () => {
    for (const text of ["P", "POST", "POST /v1/ev", "POST /v1/events/batch HTTP/1.1\r\nHost: a\r\n"]) expect(parseHead(Buffer.from(text))).toBe("more");
    for (const text of ["GET", "PUT /v1", "GET /health HTTP/1.1\r\nHost: a\r\n"]) expect(parseHead(Buffer.from(text))).toBeNull();
  });
});

/** A loopback server whose connections start in the lane, with a stub handler and hand-over recorder. */
function laneServer(opts: Partial<LaneOptions> = {}) {
  const handed: { socket: Socket; data: Buffer[] }[] = [];
  const seen: { body: string; auth: string | null }[] = [];
  const options: LaneOptions = {
    direct: (_method, path) =>
      path !== ROUTE
        ? null
        : async (req: Incoming) => {
            if (req.header("authorization") !== "Bearer k") return { status: 401, headers: { "content-type": "text/plain" }, body: "no" };
            if (req.header("x-wait") !== null) await Bun.sleep(Number(req.header("x-wait")));
            const body = await req.body(Number(req.header("x-limit") ?? 1024));
            if (!body.ok) return { status: 413, headers: { "content-type": "text/plain" }, body: body.reason };
            seen.push({ body: Buffer.from(body.bytes).toString(), auth: req.header("authorization") });
            await Bun.sleep(5); // answered later than the next request arrives
            return { status: 202, headers: { "content-type": "text/plain" }, body: `got ${body.bytes.length}` };
          },
    handOver: (socket) => {
      const rec = { socket, data: [] as Buffer[] };
      handed.push(rec);
      socket.on("data", (d: Buffer) => rec.data.push(d));
    },
    stopping: () => false,
    drainLimit: 64,
    headTimeoutMs: 300,
    ...opts,
  };
  const server: Server = createServer((s) => new LaneConnection(s, options));
  servers.push(server);
  return new Promise<{ port: number; handed: typeof handed; seen: typeof seen }>((resolve) =>
    server.listen(0, "127.0.0.1", () => resolve({ port: (server.address() as { port: number }).port, handed, seen })),
  );
}
const servers: Server[] = [];
afterAll(() => servers.forEach((s) => s.close()));

/** Sends the parts (with a pause between them) and collects what comes back until the socket closes or `ms` passes. */
function exchange(port: number, parts: (string | Buffer)[], ms = 400): Promise<{ text: string; closed: boolean }> {
  return new Promise((resolve) => {
    const s = connect(port, "127.0.0.1");
    const got: Buffer[] = [];
    let closed = false;
    s.on("data", (d: Buffer) => got.push(d));
    s.on("close", () => (closed = true));
    s.on("error", () => {});
    s.on("connect", async () => {
      for (const p of parts) {
        s.write(p);
        await Bun.sleep(20);
      }
    });
    setTimeout(() => {
      s.destroy();
      resolve({ text: Buffer.concat(got).toString("latin1"), closed });
    }, ms);
  });
}
const statuses = (text: string) => parseResponses(Buffer.from(text, "latin1")).responses.map((r) => `${r.status} ${r.body}`);
const req = (body: string, auth = "Bearer k") => `POST ${ROUTE} HTTP/1.1\r\nHost: a\r\nAuthorization: ${auth}\r\nContent-Length: ${body.length}\r\n\r\n${body}`;

describe("a connection in the lane", () => {
  test("pipelined requests in one write are answered in order, on one connection", async () => {
    const { port, seen } = await laneServer();
    const r = await exchange(port, [req("[1]") + req("[22]") + req("[333]")]);
    expect(statuses(r.text)).toEqual(["202 got 3", "202 got 4", "202 got 5"]);
    expect(seen.map((s) => s.body)).toEqual(["[1]", "[22]", "[333]"]);
    expect(r.closed).toBe(false);
  });

  test("a head and body split across writes are put together; a repeated field reads as Headers.get does", async () => {
    const { port, seen } = await laneServer();
    const whole = req("[1,2,3]");
    const r = await exchange(port, [whole.slice(0, 10), whole.slice(10, 60), whole.slice(60, whole.length - 3), whole.slice(-3)]);
    expect(statuses(r.text)).toEqual(["202 got 7"]);
    expect(seen[0]!.body).toBe("[1,2,3]");
    const dup = `POST ${ROUTE} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer k\r\nAuthorization: Bearer k\r\nContent-Length: 2\r\n\r\n{}`;
    expect(statuses((await exchange(port, [dup])).text)).toEqual(["401 no"]); // "Bearer k, Bearer k"
  });

  test("a small refused body still arriving is skipped and the connection goes on; a large one closes it", async () => {
    const { port } = await laneServer();
    const body = "x".repeat(40);
    const refused = req(body, "Bearer wrong");
    const split = await exchange(port, [refused.slice(0, -20), refused.slice(-20) + req("[1]")]);
    expect(statuses(split.text)).toEqual(["401 no", "202 got 3"]);
    expect(split.closed).toBe(false);
    const big = req("y".repeat(100), "Bearer wrong");
    const closed = await exchange(port, [big.slice(0, -50), big.slice(-50) + req("[1]")]);
    expect(statuses(closed.text)).toEqual(["401 no"]);
    expect(closed.text).toContain("connection: close");
    expect(closed.closed).toBe(true);
  });

  test("a large body the handler reads late arrives whole (reading pauses meanwhile), and the connection goes on", async () => {
    const { port, seen } = await laneServer();
    const big = "[" + "7,".repeat(150_000) + "7]";
    const late = `POST ${ROUTE} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer k\r\nX-Wait: 150\r\nX-Limit: 1000000\r\nContent-Length: ${big.length}\r\n\r\n${big}`;
    const r = await exchange(port, [late + req("[1]")], 1500);
    expect(statuses(r.text)).toEqual([`202 got ${big.length}`, "202 got 3"]);
    expect(seen[0]!.body).toBe(big);
  });

  test("a body over the handler's limit is answered and the connection closed, the rest never read", async () => {
    const { port } = await laneServer();
    const r = await exchange(port, [req("z".repeat(2000)) + req("[1]")]);
    expect(statuses(r.text)).toEqual(["413 too_large"]);
    expect(r.closed).toBe(true);
  });

  test("the first request of another shape hands the connection over with every byte not yet used, after the answers before it", async () => {
    const { port, handed } = await laneServer();
    const other = "GET /health HTTP/1.1\r\nHost: a\r\n\r\n";
    const r = await exchange(port, [req("[1]") + other + req("[2]")]);
    expect(statuses(r.text)).toEqual(["202 got 3"]);
    expect(handed.length).toBe(1);
    expect(Buffer.concat(handed[0]!.data).toString()).toBe(other + req("[2]"));
  });

  test("not HTTP/1.x: 400 bad_request and closed at once", async () => {
    const { port, handed } = await laneServer();
    const r = await exchange(port, ["GET /health\r\n"]);
    expect(statuses(r.text)).toEqual([expect.stringContaining('400 {"type":"urn:payflux:problem:bad_request"')]);
    expect(r.closed).toBe(true);
    expect(handed.length).toBe(0);
  });

  test("a head that stops arriving is cut off after the head timeout", async () => {
    const { port } = await laneServer();
    const r = await exchange(port, ["POST /v1/events/batch HTTP/1.1\r\nHost: a\r\n"], 800);
    expect(r).toEqual({ text: "", closed: true });
  });

  test("while stopping, each answer closes its connection", async () => {
    const { port } = await laneServer({ stopping: () => true });
    const r = await exchange(port, [req("[1]") + req("[2]")]);
    expect(statuses(r.text)).toEqual(["202 got 3"]);
    expect(r.text).toContain("connection: close");
    expect(r.closed).toBe(true);
  });
});
