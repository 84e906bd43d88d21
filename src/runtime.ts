import { createServer, type IncomingMessage, type Server } from "node:http";
import type { Socket } from "node:net";
import { registerBodySource, type BodyResult } from "./body.ts";
import { problemBody } from "./problem.ts";

/**
 * Everything that touches the runtime's HTTP server lives here: starting and
 * stopping it, the client address, and the connection caps. Bun and Deno
 * both serve through node:http (see startOnNodeHttp for why). The body-size
 * limit is enforced by src/body.ts; signals use `process.on`, which both
 * provide. The rest of src/ uses web standards and node: modules only.
 */
export interface HttpServer {
  /** The port actually bound (differs from the config when it asked for 0). */
  readonly port: number;
  /** Stops accepting; resolves once in-flight requests have finished. */
  stop(): Promise<void>;
  clientAddress(request: Request): string | null;
}

export type FetchHandler = (request: Request) => Response | Promise<Response>;

/** Caps on open connections, read on every accept (so a reload applies to the next connection). */
export interface ConnectionLimits {
  maxConnections: number;
  maxConnectionsPerIp: number;
}
export type ConnectionRefusal = "total" | "per_ip";

export interface ServerOptions {
  limits: () => ConnectionLimits;
  /** Called once for every connection refused at accept. */
  onRefused: (reason: ConnectionRefusal) => void;
  /** Called whenever the number of open connections changes. */
  onConnections?: (open: number) => void;
}

/** Thrown when the port is taken: a second listener must fail loudly, never share it. */
export class AddressInUseError extends Error {}

/** Starts listening; rejects with AddressInUseError when the port is taken. */
export async function startHttpServer(host: string, port: number, fetch: FetchHandler, options: ServerOptions): Promise<HttpServer> {
  return startOnNodeHttp(host, port, fetch, options);
}

/**
 * Both runtimes serve through their node:http implementation, not Bun.serve
 * or Deno.serve:
 * - Bun.serve (uWS) closes the connection, answering nothing, when a
 *   pipelined request arrives while the response before it is still pending;
 *   ours always is (it waits for fdatasync). Bun's node:http queues it
 *   (oven-sh/bun#32868, #38128 describe the Bun.serve side).
 * - Bun.serve has no per-connection hook, so it cannot cap connections per
 *   client address; node:http has the 'connection' event.
 * - In Deno 2.9, `Deno.serve`'s shutdown() makes the body of a request that
 *   is still arriving unreadable (denoland/deno#36809); node:http's close()
 *   stops accepting and lets requests in flight finish.
 */
async function startOnNodeHttp(host: string, port: number, fetch: FetchHandler, options: ServerOptions): Promise<HttpServer> {
  const peers = new WeakMap<Request, string>();
  let stopping = false;
  const server = createServer(async (req, res) => {
    try {
      const headers = new Headers();
      for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) headers.append(req.rawHeaders[i]!, req.rawHeaders[i + 1]!);
      const hasBody = req.method !== "GET" && req.method !== "HEAD";
      // The URL comes from the request target only: the Host header is the client's to write.
      const path = requestPath(req.url ?? "/");
      if (path === null) {
        res.writeHead(400, { "content-type": "application/problem+json", connection: "close" });
        res.end(problemBody(400, "bad_request", "the request target must be a path such as /v1/events/batch"));
        return;
      }
      // The body is read through registerBodySource (no web stream), after authentication.
      const request = new Request(`http://localhost${path}`, { method: req.method, headers });
      if (hasBody) registerBodySource(request, (limit, watch) => readNodeBody(req, limit, watch));
      const peer = req.socket.remoteAddress;
      if (peer) peers.set(request, peer.replace(/^::ffff:/, ""));
      const response = await fetch(request);
      const head = [...response.headers].flat();
      // A body left unread (the request was refused before or while reading it): a
      // small one of known length is discarded, so that the connection (and any
      // request pipelined behind it) goes on; any other is never read: answer,
      // then close the connection.
      const unread = hasBody && !req.complete;
      const declared = Number(req.headers["content-length"] ?? NaN);
      const drain = unread && response.status !== 413 && declared <= DRAIN_LIMIT;
      // While stopping, a connection ends with its response: close() waits for every connection.
      if ((unread && !drain) || stopping) head.push("connection", "close");
      // Every response of the service is small and in memory: one write.
      const body = response.body === null || req.method === "HEAD" ? undefined : new Uint8Array(await response.arrayBuffer());
      res.writeHead(response.status, head);
      res.end(body, () => {
        if (unread && !drain) req.socket.destroy();
      });
      if (drain) {
        req.removeAllListeners("data");
        req.resume();
      }
    } catch {
      if (!res.headersSent) res.writeHead(500);
      res.end();
    }
  });
  // Like Bun.serve's default idle timeout: a client that stops sending is cut off.
  server.setTimeout(IDLE_TIMEOUT_MS);
  server.headersTimeout = IDLE_TIMEOUT_MS;
  server.keepAliveTimeout = IDLE_TIMEOUT_MS;
  limitConnections(server, options);
  server.on("clientError", (err: NodeJS.ErrnoException, socket: Socket) => answerUnparsable(err, socket));
  await new Promise<void>((resolve, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) => reject(err.code === "EADDRINUSE" ? new AddressInUseError(`${host}:${port} is already in use`) : err));
    server.listen(port, host, () => resolve());
  });
  const address = server.address();
  return {
    port: typeof address === "object" && address !== null ? address.port : port,
    stop: () =>
      new Promise<void>((resolve) => {
        stopping = true;
        server.close(() => resolve());
        // Keep-alive connections with no request would hold close() open.
        server.closeIdleConnections();
      }),
    clientAddress: (request) => peers.get(request) ?? null,
  };
}

/**
 * A request the HTTP parser cannot read (HTTP/0.9, bare-LF line endings, an
 * unknown version, conflicting lengths, ...) is the client's mistake: a 400
 * problem (431 for oversized headers), never a 5xx, then the connection closes.
 */
function answerUnparsable(err: NodeJS.ErrnoException, socket: Socket): void {
  if (!socket.writable) {
    socket.destroy();
    return;
  }
  const tooLarge = err.code === "HPE_HEADER_OVERFLOW";
  const status = tooLarge ? 431 : 400;
  const body = tooLarge
    ? problemBody(431, "headers_too_large", "the request headers are too large")
    : problemBody(400, "bad_request", "the request is not valid HTTP/1.1 (request line, CRLF line endings, headers or framing)");
  socket.end(
    `HTTP/1.1 ${status} ${tooLarge ? "Request Header Fields Too Large" : "Bad Request"}\r\ncontent-type: application/problem+json\r\n` +
      `content-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
  );
}

/**
 * Reads a node:http request body up to `limit` bytes, chunk by chunk. A stop
 * (over the limit, or `watch` says so) leaves the rest unread: the response is
 * still written, then the connection closed (see above).
 */
function readNodeBody(req: IncomingMessage, limit: number, watch?: (chunk: Uint8Array) => boolean): Promise<BodyResult> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let total = 0;
    const finish = (result: BodyResult) => {
      req.off("data", onData).off("end", onEnd).off("close", onClose).off("error", onClose);
      if (!result.ok) req.pause();
      resolve(result);
    };
    const onData = (chunk: Buffer) => {
      total += chunk.byteLength;
      if (total > limit) return finish({ ok: false, reason: "too_large" });
      if (watch !== undefined && !watch(chunk)) return finish({ ok: false, reason: "stopped" });
      chunks.push(chunk);
    };
    const onEnd = () => finish({ ok: true, bytes: chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, total) });
    // The client went away, or sent less than it announced and the idle timeout cut it off.
    const onClose = () => finish({ ok: false, reason: "incomplete" });
    req.on("data", onData).on("end", onEnd).on("close", onClose).on("error", onClose);
  });
}

/**
 * Counts open connections per client address and in all; one past either cap
 * is closed at once, before a byte is read, so that neither one address nor
 * many together can take the descriptors that storage needs.
 */
function limitConnections(server: Server, options: ServerOptions): void {
  const perIp = new Map<string, number>();
  const tracked = new Map<Socket, string>();
  const release = (socket: Socket) => {
    const ip = tracked.get(socket);
    if (ip === undefined) return;
    tracked.delete(socket);
    const n = (perIp.get(ip) ?? 1) - 1;
    if (n === 0) perIp.delete(ip);
    else perIp.set(ip, n);
    options.onConnections?.(tracked.size);
  };
  server.on("connection", (socket: Socket) => {
    const ip = socket.remoteAddress ?? "";
    const limits = options.limits();
    const mine = perIp.get(ip) ?? 0;
    const refusal: ConnectionRefusal | null = tracked.size >= limits.maxConnections ? "total" : mine >= limits.maxConnectionsPerIp ? "per_ip" : null;
    if (refusal !== null) {
      options.onRefused(refusal);
      socket.destroy();
      return;
    }
    tracked.set(socket, ip);
    perIp.set(ip, mine + 1);
    options.onConnections?.(tracked.size);
    socket.once("close", () => release(socket));
    socket.once("error", () => release(socket));
  });
  // Bun's node:http emits 'connection' late (on the next I/O); a socket that
  // closed meanwhile may never emit 'close' to us. A cheap sweep keeps the
  // counts honest, so a flood that has gone never blocks anyone.
  const sweep = setInterval(() => {
    for (const socket of tracked.keys()) if (socket.destroyed) release(socket);
  }, 1000);
  sweep.unref?.();
  server.once("close", () => clearInterval(sweep));
}

/** A refused body of known length up to this is read and discarded to keep the connection; a larger one closes it. */
const DRAIN_LIMIT = 64 * 1024;

/** Seconds of silence after which a connection is closed (Bun.serve's default, applied on Deno too). */
const IDLE_TIMEOUT_MS = 10_000;

/** The path (and query) of a request target, origin-form or absolute-form; null when it is neither. */
function requestPath(target: string): string | null {
  if (target.startsWith("/")) return target;
  try {
    const url = new URL(target);
    return url.protocol === "http:" || url.protocol === "https:" ? url.pathname + url.search : null;
  } catch {
    return null;
  }
}
