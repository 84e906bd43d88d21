import { MAX_BODY_CEILING } from "./config.ts";

/**
 * Everything that only one JavaScript runtime provides lives here: starting
 * the HTTP server, the client address and the server's own body limit. The
 * rest of src/ uses web standards and node: modules only.
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

export function startHttpServer(host: string, port: number, fetch: FetchHandler): HttpServer {
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
    const e = err as NodeJS.ErrnoException;
    if (e.code === "EADDRINUSE" || /in use/i.test(e.message)) throw new AddressInUseError(`${host}:${port} is already in use`);
    throw err;
  }
  return {
    port: server.port ?? port,
    stop: () => server.stop(),
    clientAddress: (request) => server.requestIP(request)?.address ?? null,
  };
}
