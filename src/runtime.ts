import { createServer, type IncomingMessage, type RequestListener, type Server, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { createServer as createNetServer, type Server as NetServer, type Socket } from "node:net";
import type { BodyResult } from "./body.ts";
import { fieldValue, type Incoming, type Reply } from "./exchange.ts";
import { LaneConnection, unparsableResponse, type LaneOptions } from "./fast-lane.ts";
import type { Duplex } from "node:stream";
import { createServer as createTlsServer, type Server as TlsServer } from "node:tls";
import { problemBody } from "./problem.ts";

/**
 * Everything that touches the runtime's HTTP server lives here: starting and
 * stopping it, the connection caps and HTTPS. Every connection starts in the
 * fast lane (src/fast-lane.ts), which serves well-formed ingest requests on
 * the socket itself and hands any other connection to node:http (see
 * startOnNodeHttp for why node:http and not Bun.serve; HTTPS is node:tls
 * under both, except on Deno, where node:https serves it). The body-size
 * limit is enforced by src/body.ts; signals use `process.on`, which both
 * provide. The rest of src/ uses web standards and node: modules only.
 */
export interface HttpServer {
  /** The port actually bound (differs from the config when it asked for 0). */
  readonly port: number;
  /** Stops accepting; resolves once in-flight requests have finished. */
  stop(): Promise<void>;
}

/** The routes (src/app.ts): ingest requests are handed over without web objects, the rest as a web Request. */
export interface Handlers {
  fetch: (request: Request) => Promise<Response>;
  direct: (method: string, path: string) => ((request: Incoming) => Promise<Reply>) | null;
}

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

const onDeno = "Deno" in globalThis;

/** Starts listening; rejects with AddressInUseError when the port is taken. */
export async function startHttpServer(host: string, port: number, handlers: Handlers, options: ServerOptions): Promise<HttpServer> {
  return (await startOnNodeHttp(host, port, handlers, options)).server;
}

/**
 * Both runtimes serve through a node:net (or node:tls) listener, the fast
 * lane and node:http behind it, not Bun.serve or Deno.serve:
 * - Bun.serve (uWS) closes the connection, answering nothing, when a
 *   pipelined request arrives while the response before it is still pending;
 *   ours always is (it waits for the disk). node:http and the lane queue it
 *   (oven-sh/bun#32868, #38128 describe the Bun.serve side).
 * - Bun.serve has no per-connection hook, so it cannot cap connections per
 *   client address; node:net has the 'connection' event.
 * - In Deno 2.9, `Deno.serve`'s shutdown() makes the body of a request that
 *   is still arriving unreadable (denoland/deno#36809); here stop() stops
 *   accepting and lets requests in flight finish.
 * - node:http on Bun costs about three times the CPU per small request of a
 *   plain socket; the lane costs about what Bun.serve does (BENCHMARKS.md).
 */
async function startOnNodeHttp(
  host: string,
  port: number,
  handlers: Handlers,
  options: ServerOptions,
  tls?: TlsPair,
): Promise<{ server: HttpServer; listener: NetServer | TlsServer }> {
  let stopping = false;
  const handler: RequestListener = async (req, res) => {
    try {
      const hasBody = req.method !== "GET" && req.method !== "HEAD";
      // The URL comes from the request target only: the Host header is the client's to write.
      const path = requestPath(req.url ?? "/");
      if (path === null) {
        res.writeHead(400, { "content-type": "application/problem+json", connection: "close" });
        res.end(problemBody(400, "bad_request", "the request target must be a path such as /v1/events/batch"));
        return;
      }
      const q = path.indexOf("?");
      const direct = handlers.direct(req.method ?? "", q < 0 ? path : path.slice(0, q));
      let status: number;
      let head: string[];
      let body: string | Uint8Array | undefined;
      if (direct !== null) {
        const reply = await direct(incomingOf(req));
        status = reply.status;
        head = flatHeaders(reply.headers);
        body = reply.body;
      } else {
        const headers = new Headers();
        for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) headers.append(req.rawHeaders[i]!, req.rawHeaders[i + 1]!);
        const response = await handlers.fetch(new Request(`http://localhost${path}`, { method: req.method, headers }));
        status = response.status;
        head = [...response.headers].flat();
        body = response.body === null || req.method === "HEAD" ? undefined : new Uint8Array(await response.arrayBuffer());
      }
      // A body left unread (the request was refused before or while reading it): a
      // small one of known length is discarded, so that the connection (and any
      // request pipelined behind it) goes on; any other is never read: answer,
      // then close the connection.
      const unread = hasBody && !req.complete;
      const declared = Number(req.headers["content-length"] ?? NaN);
      const drain = unread && status !== 413 && declared <= DRAIN_LIMIT;
      // While stopping, a connection ends with its response: close() waits for every connection.
      if ((unread && !drain) || stopping) head.push("connection", "close");
      // Every response of the service is small and in memory: one write.
      if (body !== undefined && direct !== null) head.push("content-length", String(typeof body === "string" ? Buffer.byteLength(body) : body.byteLength));
      res.writeHead(status, head);
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
  };
  // On Bun a plain or TLS listener feeds every connection to the fast lane, which hands odd ones to
  // node:http. On Deno node:http (node:https) listens itself: Deno's node:http resets a handed-over
  // connection after a response whose small body it drained, and cannot take over TLS sockets.
  const server = onDeno && tls !== undefined ? (createHttpsServer(nodeTlsOptions(tls), handler) as unknown as Server) : createServer(handler);
  const front = onDeno ? null : laneFront(server, handlers, tls, () => stopping);
  // The caps count TCP connections where they are accepted, before any TLS handshake.
  const listener: NetServer | TlsServer = front?.listener ?? server;
  // Like Bun.serve's default idle timeout: a client that stops sending is cut off.
  server.setTimeout(IDLE_TIMEOUT_MS);
  server.headersTimeout = IDLE_TIMEOUT_MS;
  server.keepAliveTimeout = IDLE_TIMEOUT_MS;
  limitConnections(listener, options);
  front?.start();
  server.on("clientError", (err: NodeJS.ErrnoException, socket: Socket) => answerUnparsable(err, socket));
  await new Promise<void>((resolve, reject) => {
    listener.once("error", (err: NodeJS.ErrnoException) => reject(err.code === "EADDRINUSE" ? new AddressInUseError(`${host}:${port} is already in use`) : err));
    listener.listen(port, host, () => resolve());
  });
  const address = listener.address();
  return {
    listener,
    server: {
      port: typeof address === "object" && address !== null ? address.port : port,
      stop: () =>
        new Promise<void>((resolve) => {
          stopping = true;
          listener.close(() => resolve());
          // Keep-alive connections with no request would hold close() open.
          if (front !== null) front.closeIdle();
          else server.closeIdleConnections();
        }),
    },
  };
}

/** An ingest request in the handler's form, read from node:http's request without web objects. */
function incomingOf(req: IncomingMessage): Incoming {
  const raw = req.rawHeaders;
  const peer = req.socket.remoteAddress;
  return {
    method: req.method ?? "",
    // From the raw fields: node's req.headers keeps only the first Authorization.
    header: (name) => fieldValue(raw, name),
    body: (limit, watch) => readNodeBody(req, limit, watch),
    peer: peer === undefined ? null : peer.startsWith("::ffff:") ? peer.slice(7) : peer,
  };
}

function flatHeaders(headers: Record<string, string>): string[] {
  const flat: string[] = [];
  for (const name in headers) flat.push(name, headers[name]!);
  return flat;
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
  socket.end(unparsableResponse(err.code === "HPE_HEADER_OVERFLOW" ? 431 : 400));
  // end() only half-closes: a peer that never closes its side (a silent TLS client whose handshake
  // timed out, say) would hold the socket open. A second is plenty to read a small answer.
  setTimeout(() => socket.destroy(), 1000).unref?.();
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
function limitConnections(server: NetServer, options: ServerOptions): void {
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
/** How often the lane's silent connections are looked for: one is closed 10-11 s after its last byte. */
const IDLE_SWEEP_MS = 1000;

/**
 * A path with a dot segment (`/./`, `/../`, also percent-encoded), an encoded
 * slash or backslash, or a backslash: URL parsing would turn `/x/../metrics`
 * or `/x\..\metrics` into `/metrics` after a proxy rule matched the raw target.
 */
const AMBIGUOUS_PATH = /(^|\/|\\)(\.|%2e){1,2}(\/|\\|$)|%2f|%5c|\\/i;

/**
 * The path (and query) of a request target, origin-form or absolute-form;
 * null (answered 400) when it is neither, or when its path is ambiguous (see
 * AMBIGUOUS_PATH). Bun normalises such targets before any handler runs, so
 * there only the proxy in front can refuse them (deploy/).
 */
function requestPath(target: string): string | null {
  const q = target.indexOf("?");
  if (AMBIGUOUS_PATH.test(q < 0 ? target : target.slice(0, q))) return null;
  if (target.startsWith("/")) return target;
  try {
    const url = new URL(target);
    return url.protocol === "http:" || url.protocol === "https:" ? url.pathname + url.search : null;
  } catch {
    return null;
  }
}

/** A certificate (PEM, chain included) and its private key (PEM). */
export interface TlsPair {
  cert: string;
  key: string;
}

export interface HttpsServer extends HttpServer {
  /** New handshakes use this pair from now on; connections already open keep theirs. Throws when it cannot. */
  setTls(tls: TlsPair): void;
}

/** TLS 1.2 ciphers: forward secrecy and AEAD only (Mozilla "intermediate"); TLS 1.3 suites are all modern. */
const TLS12_CIPHERS = [
  "ECDHE-ECDSA-AES128-GCM-SHA256",
  "ECDHE-RSA-AES128-GCM-SHA256",
  "ECDHE-ECDSA-AES256-GCM-SHA384",
  "ECDHE-RSA-AES256-GCM-SHA384",
  "ECDHE-ECDSA-CHACHA20-POLY1305",
  "ECDHE-RSA-CHACHA20-POLY1305",
].join(":");

function nodeTlsOptions(tls: TlsPair) {
  return { cert: tls.cert, key: tls.key, minVersion: "TLSv1.2" as const, ciphers: TLS12_CIPHERS, honorCipherOrder: true, handshakeTimeout: IDLE_TIMEOUT_MS };
}

/**
 * The listener (plain TCP, or node:tls) whose connections start in the fast
 * lane (src/fast-lane.ts) and go to `server` (node:http) when a request is not
 * of the lane's shape. Connections handed to node:http this way are not
 * tracked by it (nor, on Bun, given its timeouts), so this does: at shutdown,
 * idle ones are closed at once and busy ones after their answer.
 */
function laneFront(server: Server, handlers: Handlers, tls: TlsPair | undefined, stopping: () => boolean) {
  const lanes = new Set<LaneConnection>();
  const inFlight = new Map<Duplex, number>();
  let closing = false;
  let sweep: ReturnType<typeof setInterval> | undefined;
  const laneOptions: LaneOptions = {
    direct: handlers.direct,
    handOver: (socket) => {
      inFlight.set(socket, 0);
      // node:http on Bun does not time handed-over sockets out: a timer of its own from here on.
      socket.setTimeout(IDLE_TIMEOUT_MS, () => socket.destroy());
      server.emit("connection", socket);
    },
    stopping,
    drainLimit: DRAIN_LIMIT,
    headTimeoutMs: IDLE_TIMEOUT_MS,
  };
  const accept = (socket: Socket) => {
    if (socket.destroyed) return; // refused by the connection caps
    // A connection silent for IDLE_TIMEOUT_MS is closed, whoever serves it: in the lane by the
    // sweep below (socket.setTimeout re-arms a timer on every read and write: 3-7 µs a request).
    const lane = new LaneConnection(socket, laneOptions);
    lanes.add(lane);
    socket.once("close", () => {
      lanes.delete(lane);
      inFlight.delete(socket);
    });
  };
  const listener = tls !== undefined ? createTlsServer(nodeTlsOptions(tls)) : createNetServer();
  server.on("request", (req: IncomingMessage, res: ServerResponse) => {
    const socket = req.socket;
    inFlight.set(socket, (inFlight.get(socket) ?? 0) + 1);
    res.once("close", () => {
      const n = (inFlight.get(socket) ?? 1) - 1;
      inFlight.set(socket, n);
      if (closing && n === 0) socket.end();
    });
  });
  return {
    listener,
    /** Called after the connection caps are in place, so that they see each connection first. */
    start() {
      if (tls !== undefined) {
        // Before the handshake completes, too.
        listener.on("connection", (socket: Socket) => socket.setTimeout(IDLE_TIMEOUT_MS, () => socket.destroy()));
        listener.on("secureConnection", accept);
      } else listener.on("connection", accept);
      sweep = setInterval(() => {
        const now = Date.now();
        for (const lane of lanes) lane.closeIfSilent(now, IDLE_TIMEOUT_MS);
      }, IDLE_SWEEP_MS);
      sweep.unref?.();
    },
    closeIdle() {
      closing = true;
      clearInterval(sweep);
      for (const lane of lanes) lane.closeIfIdle();
      for (const [socket, n] of inFlight) if (n === 0) socket.destroy();
    },
  };
}

/**
 * Starts an HTTPS-only listener whose certificate can be replaced while it
 * runs (SIGHUP): setSecureContext() of a node:tls server, used by every new
 * handshake while open connections keep theirs. Bun.serve cannot do this
 * (`server.reload({ tls })` keeps the old certificate), nor can Bun's
 * node:https, so HTTPS on Bun is node:tls with node:http on top; on Deno it is
 * node:https. A second listener on the same port (SO_REUSEPORT) was tried
 * on Bun and rejected: closing the old listener resets the connections still
 * in its accept queue (about one per rotation under load).
 */
export async function startHttpsServer(host: string, port: number, handlers: Handlers, options: ServerOptions, tls: TlsPair): Promise<HttpsServer> {
  const { server, listener } = await startOnNodeHttp(host, port, handlers, options, tls);
  return { ...server, setTls: (next) => (listener as TlsServer).setSecureContext(nodeTlsOptions(next)) };
}

/**
 * A full collection now (Bun; a no-op elsewhere): after the start-up replay
 * of the duplicate window, whose read buffers and line views are garbage that
 * an idle server would otherwise hold (and keep resident) until its next
 * collection.
 */
export function collectGarbage(): void {
  (globalThis as { Bun?: { gc(force: boolean): void } }).Bun?.gc(true);
}
