import { createServer, type IncomingMessage, type RequestListener, type ServerResponse } from "node:http";
import { createServer as createHttpsServer } from "node:https";
import { createServer as createTlsServer, type Server as TlsServer } from "node:tls";
import { Readable, type Duplex } from "node:stream";
import { MAX_BODY_CEILING } from "./config.ts";

/**
 * Everything that differs between Bun and Deno lives here: starting and
 * stopping the HTTP server and the client address (Bun.serve on Bun,
 * node:http on Deno, see startOnNodeHttp; with HTTPS, node:tls/node:https
 * on both, see startHttpsServer). The body-size limit is
 * enforced by src/body.ts on both (Deno has no server limit; Bun's is only a
 * ceiling); signals use `process.on`, which both provide. The rest of src/
 * uses web standards and node: modules only.
 */
export interface HttpServer {
  /** The port actually bound (differs from the config when it asked for 0). */
  readonly port: number;
  /** Stops accepting; resolves once in-flight requests have finished. */
  stop(): Promise<void>;
  clientAddress(request: Request): string | null;
}

export type FetchHandler = (request: Request) => Response | Promise<Response>;

/** Thrown when the port is taken: a second listener must fail loudly, never share it. */
export class AddressInUseError extends Error {}

const onDeno = "Deno" in globalThis;

/** Starts listening; rejects with AddressInUseError when the port is taken. */
export async function startHttpServer(host: string, port: number, fetch: FetchHandler): Promise<HttpServer> {
  return onDeno ? startOnNodeHttp(host, port, fetch) : startOnBun(host, port, fetch);
}

function startOnBun(host: string, port: number, fetch: FetchHandler): HttpServer {
  let server: ReturnType<typeof Bun.serve>;
  try {
    server = Bun.serve({
      hostname: host,
      port,
      reusePort: false,
      // The configured limit (reloadable) is enforced while reading the body;
      // this hard ceiling only stops bodies no configuration could accept.
      maxRequestBodySize: MAX_BODY_CEILING + 1,
      development: false,
      fetch,
    });
  } catch (err) {
    throw addressInUse(err, host, port);
  }
  return {
    port: server.port ?? port,
    stop: () => server.stop(),
    clientAddress: (request) => server.requestIP(request)?.address ?? null,
  };
}

/**
 * Deno serves through its node:http implementation rather than Deno.serve:
 * in Deno 2.9, `Deno.serve`'s shutdown() makes the body of a request that is
 * still arriving unreadable (denoland/deno#36809), so SIGTERM could not drain
 * in-flight requests as it does on Bun. node:http's close() stops accepting
 * and lets them finish.
 */
async function startOnNodeHttp(host: string, port: number, fetch: FetchHandler, tls?: TlsPair): Promise<HttpServer & { readonly listener: ReturnType<typeof createServer> | TlsServer }> {
  const peers = new WeakMap<Request, string>();
  const handler: RequestListener = async (req, res) => {
    try {
      const headers = new Headers();
      for (let i = 0; i + 1 < req.rawHeaders.length; i += 2) headers.append(req.rawHeaders[i]!, req.rawHeaders[i + 1]!);
      const hasBody = req.method !== "GET" && req.method !== "HEAD";
      // The URL comes from the request target only: the Host header is the client's to write.
      const path = requestPath(req.url ?? "/");
      if (path === null) {
        res.writeHead(400, { "content-type": "text/plain" }).end("bad request target\n");
        return;
      }
      const request = new Request(`http://localhost${path}`, {
        method: req.method,
        headers,
        body: hasBody ? (Readable.toWeb(req) as unknown as ReadableStream<Uint8Array>) : undefined,
        // @ts-expect-error: `duplex` is required for a streamed body but missing from the DOM typings
        duplex: "half",
      });
      if (req.socket.remoteAddress) peers.set(request, req.socket.remoteAddress.replace(/^::ffff:/, ""));
      const response = await fetch(request);
      // Deno's node:http does not discard a body left unread (a request refused before reading it):
      // the next request on the connection would hang, so the connection ends with this answer.
      if (hasBody && !req.complete) res.setHeader("connection", "close");
      res.writeHead(response.status, [...response.headers].flat());
      if (response.body !== null && req.method !== "HEAD") {
        for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) res.write(chunk);
      }
      res.end();
    } catch {
      if (!res.headersSent) res.writeHead(500);
      res.end();
    }
  };
  const server = tls !== undefined && onDeno ? (createHttpsServer(nodeTlsOptions(tls), handler) as unknown as ReturnType<typeof createServer>) : createServer(handler);
  // Bun's node:https cannot swap its certificate, its node:tls can: TLS there, and HTTP on top of each connection.
  const front = tls !== undefined && !onDeno ? tlsFront(server, tls) : null;
  const listener = front?.listener ?? server;
  // Like Bun's default idle timeout: a client that stops sending is cut off.
  server.setTimeout(IDLE_TIMEOUT_MS);
  server.headersTimeout = IDLE_TIMEOUT_MS;
  await new Promise<void>((resolve, reject) => {
    listener.once("error", (err: NodeJS.ErrnoException) => reject(err.code === "EADDRINUSE" ? new AddressInUseError(`${host}:${port} is already in use`) : err));
    listener.listen(port, host, () => resolve());
  });
  const address = listener.address();
  return {
    listener,
    port: typeof address === "object" && address !== null ? address.port : port,
    stop: () =>
      new Promise<void>((resolve) => {
        listener.close(() => resolve());
        // Keep-alive connections with no request would hold close() open.
        if (front !== null) front.closeIdle();
        else server.closeIdleConnections();
      }),
    clientAddress: (request) => peers.get(request) ?? null,
  };
}

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

function addressInUse(err: unknown, host: string, port: number): unknown {
  const e = err as NodeJS.ErrnoException;
  return e.code === "EADDRINUSE" || /in use/i.test(e.message) ? new AddressInUseError(`${host}:${port} is already in use`) : err;
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
 * A node:tls listener handing each connection to `server` (Bun). Bun's
 * node:http does not track connections handed to it this way, so this does:
 * at shutdown, idle ones are closed at once and busy ones after their answer.
 */
function tlsFront(server: ReturnType<typeof createServer>, tls: TlsPair) {
  const inFlight = new Map<Duplex, number>();
  let stopping = false;
  const listener = createTlsServer(nodeTlsOptions(tls), (socket) => {
    inFlight.set(socket, 0);
    socket.once("close", () => inFlight.delete(socket));
    // Nor does it apply its timeouts to them: a connection silent for IDLE_TIMEOUT_MS is closed, as everywhere else.
    socket.setTimeout(IDLE_TIMEOUT_MS, () => socket.destroy());
    server.emit("connection", socket);
  });
  // Before the handshake completes, too.
  listener.on("connection", (socket: Duplex & { setTimeout(ms: number, cb: () => void): void }) => socket.setTimeout(IDLE_TIMEOUT_MS, () => socket.destroy()));
  server.on("request", (req: IncomingMessage, res: ServerResponse) => {
    const socket = req.socket;
    inFlight.set(socket, (inFlight.get(socket) ?? 0) + 1);
    res.once("close", () => {
      const n = (inFlight.get(socket) ?? 1) - 1;
      inFlight.set(socket, n);
      if (stopping && n === 0) socket.end();
    });
  });
  return {
    listener,
    closeIdle() {
      stopping = true;
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
export async function startHttpsServer(host: string, port: number, fetch: FetchHandler, tls: TlsPair): Promise<HttpsServer> {
  const s = await startOnNodeHttp(host, port, fetch, tls);
  const listener = s.listener as TlsServer;
  return { ...s, setTls: (next) => listener.setSecureContext(nodeTlsOptions(next)) };
}
