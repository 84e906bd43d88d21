/**
 * Raw HTTP/1.1 over a TCP socket, for what fetch() cannot send or see:
 * pipelined requests, chunked bodies written by hand, connection closes,
 * and clients bound to another loopback address (127.0.0.2).
 */
import { connect, type Socket } from "node:net";

export interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/**
 * Parses every complete response at the start of `buf` (Content-Length or
 * chunked bodies); `rest` is what is left of an incomplete one.
 */
export function parseResponses(buf: Buffer): { responses: RawResponse[]; rest: Buffer } {
  const responses: RawResponse[] = [];
  let off = 0;
  for (;;) {
    const sep = buf.indexOf("\r\n\r\n", off);
    if (sep < 0) break;
    const lines = buf.subarray(off, sep).toString("latin1").split("\r\n");
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0]!);
    if (m === null) break;
    const headers: Record<string, string> = {};
    for (const line of lines.slice(1)) {
      const i = line.indexOf(":");
      if (i > 0) headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
    }
    let p = sep + 4;
    let body: Buffer;
    if ((headers["transfer-encoding"] ?? "").toLowerCase() === "chunked") {
      const parts: Buffer[] = [];
      let done = false;
      for (;;) {
        const nl = buf.indexOf("\r\n", p);
        if (nl < 0) break;
        const size = parseInt(buf.subarray(p, nl).toString("latin1"), 16);
        if (size === 0) {
          if (buf.length < nl + 4) break;
          p = nl + 4;
          done = true;
          break;
        }
        if (buf.length < nl + 2 + size + 2) break;
        parts.push(buf.subarray(nl + 2, nl + 2 + size));
        p = nl + 2 + size + 2;
      }
      if (!done) break;
      body = Buffer.concat(parts);
    } else {
      const n = Number(headers["content-length"] ?? 0);
      if (buf.length < p + n) break;
      body = buf.subarray(p, p + n);
      p += n;
    }
    responses.push({ status: Number(m[1]), headers, body: body.toString("utf8") });
    off = p;
  }
  return { responses, rest: buf.subarray(off) };
}

export interface Exchange {
  responses: RawResponse[];
  /** The server closed the connection (FIN or reset) before the wait ended. */
  closed: boolean;
  /** Bytes received that were not a complete response. */
  rest: string;
}

export interface ExchangeOptions {
  /** Stop once this many responses are in (default: wait for the close or the timeout). */
  expect?: number;
  timeoutMs?: number;
  /** Bind the client to this local address (e.g. 127.0.0.2). */
  localAddress?: string;
  /** Called once connected: write more (e.g. the rest of a chunked body). */
  onConnect?: (socket: Socket) => void;
}

/** Writes `data` in one write on a fresh connection, then reads responses until `expect`, the close, or the timeout. */
export function exchange(port: number, data: string | Uint8Array, opts: ExchangeOptions = {}): Promise<Exchange> {
  return new Promise((resolve) => {
    const socket = connect({ port, host: "127.0.0.1", localAddress: opts.localAddress });
    let buf: Buffer = Buffer.alloc(0);
    let settled = false;
    const finish = (closed: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      const { responses, rest } = parseResponses(buf);
      resolve({ responses, closed, rest: rest.toString("latin1") });
    };
    const timer = setTimeout(() => finish(false), opts.timeoutMs ?? 5000);
    socket.on("connect", () => {
      socket.write(typeof data === "string" ? Buffer.from(data, "latin1") : data);
      opts.onConnect?.(socket);
    });
    socket.on("data", (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (opts.expect !== undefined && parseResponses(buf).responses.length >= opts.expect) finish(false);
    });
    socket.on("close", () => finish(true));
    socket.on("error", () => finish(true));
  });
}

/** Opens an idle connection (nothing sent) and resolves once it is established, or with null on error. */
export function openIdle(port: number, localAddress?: string): Promise<Socket | null> {
  return new Promise((resolve) => {
    const socket = connect({ port, host: "127.0.0.1", localAddress });
    socket.once("connect", () => resolve(socket));
    socket.once("error", () => resolve(null));
    socket.on("error", () => {});
  });
}

/** A request with a Content-Length body (bytes as given); `headers` are raw lines. */
export function request(method: string, path: string, headers: string[], body?: string | Uint8Array): Buffer {
  const b = body === undefined ? undefined : typeof body === "string" ? Buffer.from(body, "utf8") : Buffer.from(body);
  const head = `${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n${headers.map((h) => h + "\r\n").join("")}` +
    (b !== undefined ? `Content-Length: ${b.length}\r\n` : "") + "\r\n";
  return b === undefined ? Buffer.from(head, "latin1") : Buffer.concat([Buffer.from(head, "latin1"), b]);
}

/** One keep-alive connection: send a request, wait for its response, repeat. */
export class RawConnection {
  private buf: Buffer = Buffer.alloc(0);
  private waiter: (() => void) | null = null;
  closed = false;

  private constructor(private readonly socket: Socket) {
    socket.on("data", (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.waiter?.();
    });
    const onClose = () => {
      this.closed = true;
      this.waiter?.();
    };
    socket.on("close", onClose);
    socket.on("error", onClose);
  }

  static open(port: number, localAddress?: string): Promise<RawConnection> {
    return new Promise((resolve, reject) => {
      const socket = connect({ port, host: "127.0.0.1", localAddress });
      socket.once("connect", () => resolve(new RawConnection(socket)));
      socket.once("error", reject);
    });
  }

  /** Sends `data` and resolves with the next response, or null if the connection closed or `timeoutMs` passed first. */
  async send(data: Uint8Array, timeoutMs = 5000): Promise<RawResponse | null> {
    return (await this.sendMany(data, 1, timeoutMs))[0] ?? null;
  }

  /** Sends `data` (one or more requests) and resolves with up to `count` responses: fewer if the connection closed or `timeoutMs` passed. */
  sendMany(data: Uint8Array, count: number, timeoutMs = 5000): Promise<RawResponse[]> {
    if (!this.closed) this.socket.write(data);
    return new Promise((resolve) => {
      const got: RawResponse[] = [];
      const timer = setTimeout(() => done(), timeoutMs);
      const done = () => {
        clearTimeout(timer);
        this.waiter = null;
        resolve(got);
      };
      const check = () => {
        // One exchange at a time: everything that arrives answers this one.
        const { responses, rest } = parseResponses(this.buf);
        got.push(...responses);
        this.buf = rest;
        if (got.length >= count || this.closed) done();
      };
      this.waiter = check;
      check();
    });
  }

  close(): void {
    this.socket.destroy();
  }
}
