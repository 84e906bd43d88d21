import { STATUS_CODES } from "node:http";
import type { Socket } from "node:net";
import type { BodyResult } from "./body.ts";
import { fieldValue, type Incoming, type Reply } from "./exchange.ts";
import { problemBody } from "./problem.ts";

/**
 * The hot path's HTTP/1.1: every connection starts here, and the requests of
 * one narrow, unambiguous shape (what every ingest client sends) are read,
 * answered and kept alive without node:http:
 *
 *   POST <path of a direct route> HTTP/1.1, CRLF line endings, token names,
 *   printable ASCII values, one Host, one Content-Length of plain digits, no
 *   Transfer-Encoding, Connection, Expect, Upgrade or TE, a head under 8 KiB.
 *
 * node:http on Bun costs about three times the CPU of a plain socket per
 * small request (BENCHMARKS.md); this lane costs about what Bun.serve does.
 * The first request of any other shape (another route or method, chunked
 * bodies, HTTP/1.0, anything malformed or odd) hands the connection, with
 * the bytes not yet used, to node:http for the rest of its life, so every
 * rule and answer of the hardened server (400, 431, 405, pipelining...) stays
 * node:http's; this lane only ever accepts what node:http reads the same way.
 * Requests on one connection are handled one after another, so pipelined
 * answers keep their order.
 */
export interface LaneOptions {
  /** The handler for a POST on `path`, or null (the connection goes to node:http). */
  direct: (method: string, path: string) => ((request: Incoming) => Promise<Reply>) | null;
  /** Takes the connection over; its unread bytes were put back on the socket. */
  handOver: (socket: Socket) => void;
  /** True once the server is shutting down: each answer then closes its connection. */
  stopping: () => boolean;
  /** A refused body of known length up to this is read and discarded to keep the connection; a larger one closes it. */
  drainLimit: number;
  /** A request head that has not arrived whole after this long closes the connection. */
  headTimeoutMs: number;
}

/** A request head in the lane's shape. */
export interface Head {
  path: string;
  /** Lower-case names and values, alternating. */
  fields: string[];
  contentLength: number;
  /** Bytes of the head, up to and including the blank line. */
  size: number;
}

const MAX_HEAD = 8192;
const MAX_FIELDS = 64;
/**
 * Any request, the lane's or not: a head over 16 KiB or with over 100 fields
 * is 431 here, the limits of Bun's own HTTP parser (uWS), which the parser
 * Bun uses for handed-over connections does not apply.
 */
const MAX_HEAD_ANY = 16 * 1024;
const MAX_FIELDS_ANY = 100;
/** Pipelined bytes held while a request is handled before reading pauses. */
const MAX_PENDING = 64 * 1024;
const CRLFCRLF = Buffer.from("\r\n\r\n");
const PATH = /^\/[A-Za-z0-9_\/-]*$/;
/** Fields whose presence means framing or semantics this lane leaves to node:http. */
const HAND_OVER_FIELDS = new Set(["transfer-encoding", "connection", "expect", "upgrade", "te"]);
/** RFC 9110 token characters (field names). */
const TCHAR = new Uint8Array(128);
for (const c of "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") TCHAR[c.charCodeAt(0)] = 1;

/** A request line node:http would read: a token method, a target without spaces, HTTP/1.0 or 1.1. */
const REQUEST_LINE = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+ [!-~]+ HTTP\/1\.[01]$/;

/**
 * Reads a request head at the start of `buf`: the head when it has the lane's
 * shape, "more" when it has not fully arrived (and could still), "bad" when
 * it is not HTTP/1.x (answered 400 here, as node:http's own listener does:
 * the parser Bun uses for handed-over connections is more lenient),
 * "too_large" past the head limits (431), null when node:http must read it.
 */
export function parseHead(buf: Buffer): Head | "more" | "bad" | "too_large" | null {
  const end = buf.indexOf(CRLFCRLF);
  if (end > MAX_HEAD_ANY || (end < 0 && buf.length > MAX_HEAD_ANY)) return "too_large";
  const lf = buf.indexOf(0x0a);
  if (lf < 0) {
    // The request line so far: a method of token characters, then a space.
    const sp = buf.indexOf(0x20);
    for (let i = 0, n = sp < 0 ? Math.min(buf.length, 32) : sp; i < n; i++) if (TCHAR[buf[i]!] !== 1 || buf[i]! > 127) return "bad";
    if (sp === 0 || (sp < 0 && buf.length > 32)) return "bad";
    if (buf.length > MAX_HEAD) return null;
    const n = Math.min(buf.length, 6);
    return buf.toString("latin1", 0, n) === "POST /".slice(0, n) ? "more" : null;
  }
  if (lf === 0 || buf[lf - 1] !== 0x0d) return "bad";
  const lineEnd = lf - 1;
  const line = buf.toString("latin1", 0, lineEnd);
  if (!REQUEST_LINE.test(line)) return "bad";
  // Every line of the head ends with CRLF: a bare LF or CR is not HTTP/1.1.
  const headEnd = end < 0 ? buf.length : end;
  let lines = 0;
  for (let i = buf.indexOf(0x0a, lf + 1); i >= 0 && i < headEnd; i = buf.indexOf(0x0a, i + 1)) {
    if (buf[i - 1] !== 0x0d) return "bad";
    if (++lines >= MAX_FIELDS_ANY) return "too_large";
  }
  for (let i = buf.indexOf(0x0d, lf + 1); i >= 0 && i < headEnd; i = buf.indexOf(0x0d, i + 1)) if (buf[i + 1] !== 0x0a && i + 1 < buf.length) return "bad";
  if (end < 0) return buf.length > MAX_HEAD || !line.startsWith("POST /") ? null : "more";
  if (end > MAX_HEAD || !line.startsWith("POST /") || !line.endsWith(" HTTP/1.1")) return null;
  const path = line.slice(5, -9);
  if (!PATH.test(path)) return null;
  const fields: string[] = [];
  let contentLength = -1;
  let hosts = 0;
  for (let pos = lineEnd + 2; pos < end + 2; ) {
    const eol = buf.indexOf(0x0d, pos);
    if (eol > end || buf[eol + 1] !== 0x0a || fields.length === MAX_FIELDS * 2) return null;
    let colon = -1;
    for (let i = pos; i < eol; i++) {
      const b = buf[i]!;
      if (b === 0x3a && colon < 0) colon = i;
      else if (colon < 0 ? b > 127 || TCHAR[b] !== 1 : b !== 0x09 && (b < 0x20 || b > 0x7e)) return null;
    }
    if (colon <= pos) return null;
    const name = buf.toString("latin1", pos, colon).toLowerCase();
    const value = buf.toString("latin1", colon + 1, eol).trim();
    pos = eol + 2;
    if (HAND_OVER_FIELDS.has(name)) return null;
    if (name === "host") hosts++;
    else if (name === "content-length") {
      if (contentLength >= 0 || !/^\d{1,15}$/.test(value)) return null;
      contentLength = Number(value);
    }
    fields.push(name, value);
  }
  if (hosts !== 1 || contentLength < 0) return null;
  return { path, fields, contentLength, size: end + 4 };
}

let dateSecond = -1;
let dateText = "";
/** The Date field, formatted once a second. */
function httpDate(): string {
  const now = Date.now();
  const second = Math.floor(now / 1000);
  if (second !== dateSecond) {
    dateSecond = second;
    dateText = new Date(second * 1000).toUTCString();
  }
  return dateText;
}

function responseText(r: Reply, close: boolean): string {
  let head = `HTTP/1.1 ${r.status} ${STATUS_CODES[r.status] ?? ""}\r\n`;
  for (const name in r.headers) head += `${name}: ${r.headers[name]}\r\n`;
  head += `date: ${httpDate()}\r\ncontent-length: ${Buffer.byteLength(r.body)}\r\n${close ? "connection: close\r\n" : ""}\r\n`;
  return head + r.body;
}

/** The answer to a request that is not HTTP/1.1 (also node:http's, through runtime.ts). */
export function unparsableResponse(status: 400 | 431): string {
  const body =
    status === 431
      ? problemBody(431, "headers_too_large", "the request headers are too large")
      : problemBody(400, "bad_request", "the request is not valid HTTP/1.1 (request line, CRLF line endings, headers or framing)");
  return (
    `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\ncontent-type: application/problem+json\r\n` +
    `content-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`
  );
}
const UNPARSABLE = unparsableResponse(400);
const HEAD_TOO_LARGE = unparsableResponse(431);

const INTERNAL_ERROR: Reply = {
  status: 500,
  headers: { "content-type": "application/problem+json" },
  body: problemBody(500, "internal_error", "the request could not be handled"),
};

/** One connection in the lane; `busy` while a request is being handled. */
export class LaneConnection {
  busy = false;
  handedOver = false;
  /** When bytes last came or went (the idle sweep in runtime.ts reads it: a socket timer costs µs a request on Bun). */
  lastActive = Date.now();
  private closed = false;
  private buf: Buffer | null = null;
  private paused = false;
  private headTimer: ReturnType<typeof setTimeout> | null = null;
  // The current request's body: bytes still to come, what has come, and a reader waiting for the rest.
  private need = 0;
  private got = 0;
  private chunks: Buffer[] = [];
  private abandoned = false;
  private reader: { limit: number; watch?: (chunk: Uint8Array) => boolean; resolve: (r: BodyResult) => void } | null = null;
  /** Bytes of a refused body still to be skipped before the next request. */
  private discard = 0;
  private readonly peer: string | null;

  constructor(
    private readonly socket: Socket,
    private readonly o: LaneOptions,
  ) {
    const peer = socket.remoteAddress;
    this.peer = peer === undefined ? null : peer.startsWith("::ffff:") ? peer.slice(7) : peer;
    socket.setNoDelay?.(true);
    socket.on("data", this.onData);
    socket.once("close", () => {
      this.closed = true;
      this.clearHeadTimer();
      this.finishBody({ ok: false, reason: "incomplete" });
    });
    socket.on("error", () => {}); // 'close' follows
  }

  /** Closes the connection if no byte came or went for `idleMs` (a handed-over one has node:http's timer). */
  closeIfSilent(now: number, idleMs: number): void {
    if (!this.handedOver && now - this.lastActive >= idleMs) this.socket.destroy();
  }

  /** Closes the connection now if no request is being handled (shutdown). */
  closeIfIdle(): void {
    if (!this.busy && !this.handedOver) this.socket.destroy();
  }

  private onData = (chunk: Buffer): void => {
    this.lastActive = Date.now();
    if (this.discard > 0) {
      const n = Math.min(this.discard, chunk.length);
      this.discard -= n;
      chunk = chunk.subarray(n);
    }
    if (this.need > 0 && chunk.length > 0) {
      const n = Math.min(this.need, chunk.length);
      this.feed(chunk.subarray(0, n));
      chunk = chunk.subarray(n);
    }
    if (chunk.length === 0) return;
    this.buf = this.buf === null ? chunk : Buffer.concat([this.buf, chunk]);
    if (!this.busy) this.pump();
    else if (this.buf.length > MAX_PENDING && !this.paused) {
      this.paused = true;
      this.socket.pause();
    }
  };

  private pump(): void {
    while (!this.busy && !this.handedOver && !this.closed && this.buf !== null) {
      const head = parseHead(this.buf);
      if (head === "more") {
        this.headTimer ??= setTimeout(() => this.socket.destroy(), this.o.headTimeoutMs);
        return;
      }
      this.clearHeadTimer();
      if (head === "bad" || head === "too_large") return this.refuse(head === "bad" ? 400 : 431);
      const handler = head === null ? null : this.o.direct("POST", head.path);
      if (head === null || handler === null) return this.handOver();
      const rest = this.buf.subarray(head.size);
      const n = Math.min(head.contentLength, rest.length);
      this.need = head.contentLength - n;
      this.got = n;
      this.chunks = n > 0 ? [rest.subarray(0, n)] : [];
      this.abandoned = false;
      this.buf = rest.length > n ? rest.subarray(n) : null;
      this.busy = true;
      void this.run(handler, head);
    }
  }

  private async run(handler: (request: Incoming) => Promise<Reply>, head: Head): Promise<void> {
    const { fields } = head;
    let reply: Reply;
    try {
      reply = await handler({
        method: "POST",
        header: (name) => fieldValue(fields, name),
        body: (limit, watch) => this.readBody(limit, watch),
        peer: this.peer,
      });
    } catch {
      reply = INTERNAL_ERROR;
    }
    if (this.closed) return;
    // A body the handler did not read (it refused the request first): a small one is skipped so the
    // connection goes on; a large one, or one it stopped reading, is never read: answer and close.
    let close = this.o.stopping() || this.abandoned;
    if (!close && this.need > 0) {
      if (reply.status !== 413 && head.contentLength <= this.o.drainLimit) this.discard = this.need;
      else close = true;
      this.need = 0;
    }
    this.chunks = [];
    this.reader = null;
    this.socket.write(responseText(reply, close));
    this.lastActive = Date.now();
    if (close) {
      this.socket.end();
      // end() only half-closes: a peer that never closes its side would hold the socket.
      setTimeout(() => this.socket.destroy(), 1000).unref?.();
      return;
    }
    this.busy = false;
    if (this.paused) {
      this.paused = false;
      this.socket.resume();
    }
    this.pump();
  }

  private readBody(limit: number, watch?: (chunk: Uint8Array) => boolean): Promise<BodyResult> {
    if (this.got > limit) return Promise.resolve(this.abandon("too_large"));
    if (watch !== undefined) for (const c of this.chunks) if (!watch(c)) return Promise.resolve(this.abandon("stopped"));
    if (this.need === 0) return Promise.resolve({ ok: true, bytes: this.whole() });
    if (this.closed) return Promise.resolve({ ok: false, reason: "incomplete" });
    if (this.paused) {
      this.paused = false;
      this.socket.resume();
    }
    return new Promise((resolve) => (this.reader = { limit, watch, resolve }));
  }

  private feed(part: Buffer): void {
    this.need -= part.length;
    if (this.abandoned) return;
    this.got += part.length;
    const reader = this.reader;
    if (reader === null) {
      // Not asked for yet: hold a little, then let TCP hold the rest until the handler reads it.
      this.chunks.push(part);
      if (this.got > MAX_PENDING && !this.paused) {
        this.paused = true;
        this.socket.pause();
      }
      return;
    }
    if (this.got > reader.limit) return this.finishBody(this.abandon("too_large"));
    if (reader.watch !== undefined && !reader.watch(part)) return this.finishBody(this.abandon("stopped"));
    this.chunks.push(part);
    if (this.need === 0) this.finishBody({ ok: true, bytes: this.whole() });
  }

  private finishBody(result: BodyResult): void {
    const reader = this.reader;
    this.reader = null;
    reader?.resolve(result);
  }

  private abandon(reason: "too_large" | "stopped"): BodyResult {
    this.abandoned = true;
    this.chunks = [];
    return { ok: false, reason };
  }

  private whole(): Buffer {
    return this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.got);
  }

  private clearHeadTimer(): void {
    if (this.headTimer !== null) clearTimeout(this.headTimer);
    this.headTimer = null;
  }

  /** Not HTTP/1.x (400) or too large a head (431): answer and close, like node:http's listener (see runtime.ts answerUnparsable). */
  private refuse(status: 400 | 431): void {
    this.handedOver = true; // nothing more is read here
    this.socket.off("data", this.onData);
    this.buf = null;
    this.socket.end(status === 400 ? UNPARSABLE : HEAD_TOO_LARGE);
    setTimeout(() => this.socket.destroy(), 1000).unref?.();
  }

  /** node:http takes the connection with the bytes this lane has not used. */
  private handOver(): void {
    this.handedOver = true;
    this.clearHeadTimer();
    this.socket.off("data", this.onData);
    this.socket.pause();
    if (this.buf !== null) this.socket.unshift(this.buf);
    this.buf = null;
    this.o.handOver(this.socket);
    this.socket.resume();
  }
}
