import { MAX_BODY_CEILING } from "./config.ts";

/**
 * Everything that differs between Bun and Deno lives here: starting and
 * stopping the HTTP server and the client address. The body-size limit is
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

/** The parts of the Deno namespace used here (bun-types does not declare it). */
interface DenoApi {
  serve(
    options: { hostname: string; port: number; reusePort?: boolean; onListen?: (addr: { port: number }) => void },
    handler: (request: Request, info: { remoteAddr: { hostname: string } }) => Response | Promise<Response>,
  ): { addr: { port: number }; shutdown(): Promise<void> };
  errors: { AddrInUse: new (...args: unknown[]) => Error };
}

const deno = (globalThis as { Deno?: DenoApi }).Deno;

export function startHttpServer(host: string, port: number, fetch: FetchHandler): HttpServer {
  return deno === undefined ? startOnBun(host, port, fetch) : startOnDeno(deno, host, port, fetch);
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

function startOnDeno(api: DenoApi, host: string, port: number, fetch: FetchHandler): HttpServer {
  // Deno hands the peer address to the handler, not to a lookup on the server.
  const peers = new WeakMap<Request, string>();
  let server: ReturnType<DenoApi["serve"]>;
  try {
    server = api.serve({ hostname: host, port, reusePort: false, onListen: () => {} }, (request, info) => {
      peers.set(request, info.remoteAddr.hostname);
      return fetch(request);
    });
  } catch (err) {
    throw err instanceof api.errors.AddrInUse ? new AddressInUseError(`${host}:${port} is already in use`) : err;
  }
  return {
    port: server.addr.port,
    stop: () => server.shutdown(),
    clientAddress: (request) => peers.get(request) ?? null,
  };
}

function addressInUse(err: unknown, host: string, port: number): unknown {
  const e = err as NodeJS.ErrnoException;
  return e.code === "EADDRINUSE" || /in use/i.test(e.message) ? new AddressInUseError(`${host}:${port} is already in use`) : err;
}
