import { createServer } from "node:http";
import { Readable } from "node:stream";
import { MAX_BODY_CEILING } from "./config.ts";

/**
 * Everything that differs between Bun and Deno lives here: starting and
 * stopping the HTTP server and the client address (Bun.serve on Bun,
 * node:http on Deno, see startOnNodeHttp). The body-size limit is
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
async function startOnNodeHttp(host: string, port: number, fetch: FetchHandler): Promise<HttpServer> {
  const peers = new WeakMap<Request, string>();
  const server = createServer(async (req, res) => {
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
      res.writeHead(response.status, [...response.headers].flat());
      if (response.body !== null && req.method !== "HEAD") {
        for await (const chunk of response.body as unknown as AsyncIterable<Uint8Array>) res.write(chunk);
      }
      res.end();
    } catch {
      if (!res.headersSent) res.writeHead(500);
      res.end();
    }
  });
  // Like Bun's default idle timeout: a client that stops sending is cut off.
  server.setTimeout(IDLE_TIMEOUT_MS);
  server.headersTimeout = IDLE_TIMEOUT_MS;
  await new Promise<void>((resolve, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) => reject(err.code === "EADDRINUSE" ? new AddressInUseError(`${host}:${port} is already in use`) : err));
    server.listen(port, host, () => resolve());
  });
  const address = server.address();
  return {
    port: typeof address === "object" && address !== null ? address.port : port,
    stop: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Keep-alive connections with no request would hold close() open.
        server.closeIdleConnections();
      }),
    clientAddress: (request) => peers.get(request) ?? null,
  };
}

/** Seconds of silence after which a connection is closed (Bun.serve's default, applied on Deno too). */
const IDLE_TIMEOUT_MS = 10_000;

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

function addressInUse(err: unknown, host: string, port: number): unknown {
  const e = err as NodeJS.ErrnoException;
  return e.code === "EADDRINUSE" || /in use/i.test(e.message) ? new AddressInUseError(`${host}:${port} is already in use`) : err;
}
