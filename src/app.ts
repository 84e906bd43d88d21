import { Elysia } from "elysia";
import type { Gateway } from "./gateway.ts";
import { requestBody } from "./body.ts";
import { fromRequest, toResponse, type Incoming, type Reply } from "./exchange.ts";
import { handleIngest } from "./ingest.ts";
import { histogramSeries, methodLabel, routeLabel, series } from "./metrics.ts";
import { handleHealth, handleMetrics } from "./ops-routes.ts";
import { ALLOW, INGEST_ROUTES } from "./routes.ts";
import { problem } from "./problem.ts";

/** A handler for requests the server hands over without web objects. */
export type DirectHandler = (request: Incoming) => Promise<Reply>;

export interface Handlers {
  /** Every route as a web fetch handler: in-process callers, and what the server does not hand over directly. */
  fetch: (request: Request) => Promise<Response>;
  /** The handler of POST on an ingest route (the hot path: no Request or Response built), else null. */
  direct: (method: string, path: string) => DirectHandler | null;
}

/** The HTTP routes, both ways in, each recording the RED metrics of every response. */
export function createHandlers(gw: Gateway): Handlers {
  // strictPath: `/metrics/` must not serve what a proxy rule for `/metrics` blocks.
  const app = new Elysia({ strictPath: true })
    .onError(({ code, request, error }) => {
      if (code === "NOT_FOUND") return toResponse(notFound(request));
      gw.throttle.error("request_failed", { err: error instanceof Error ? error.message : String(error), code }, "request failed");
      return toResponse(problem(500, "internal_error", "the request could not be handled"));
    })
    .get("/health", () => toResponse(handleHealth(gw)))
    .get("/metrics", async ({ request }) => toResponse(await handleMetrics(gw.metrics, gw.config, fromRequest(request, null, requestBody(request)))));
  for (const route of INGEST_ROUTES) {
    // parse: "none": the body is read only after authentication, with the size limit in force.
    app.post(route, async ({ request }) => toResponse(await handleIngest(gw, fromRequest(request, null, requestBody(request)), route)), { parse: "none" });
  }

  const { metrics } = gw;
  const inFlight = metrics.hot.inFlight;
  // The RED series of each method and route, found once (prom-client hashes the label object on every call otherwise).
  interface Red {
    method: string;
    route: string;
    duration: (seconds: number) => void;
    byStatus: Map<number, (n: number) => void>;
  }
  const reds = new Map<string, Red>();
  const redOf = (method: string, path: string): Red => {
    const m = methodLabel(method);
    const route = routeLabel(path);
    const key = `${m} ${route}`;
    let red = reds.get(key);
    if (red === undefined) reds.set(key, (red = { method: m, route, duration: histogramSeries(metrics.httpDuration, { method: m, route }), byStatus: new Map() }));
    return red;
  };
  /** Runs a request, counting it in flight, then its duration and status. */
  const measured = async <T extends { status: number }>(red: () => Red, handle: () => T | Promise<T>): Promise<T> => {
    const started = performance.now();
    inFlight(1);
    let status = 500;
    try {
      const answer = await handle();
      status = answer.status;
      return answer;
    } finally {
      inFlight(-1);
      const r = red();
      r.duration((performance.now() - started) / 1000);
      let count = r.byStatus.get(status);
      if (count === undefined) r.byStatus.set(status, (count = series(metrics.httpRequests, { method: r.method, route: r.route, status: String(status) })));
      count(1);
    }
  };

  const direct = new Map<string, DirectHandler>();
  for (const route of INGEST_ROUTES) {
    const red = redOf("POST", route);
    direct.set(route, (request) => measured(() => red, () => handleIngest(gw, request, route)));
  }

  return {
    direct: (method, path) => (method === "POST" ? (direct.get(path) ?? null) : null),
    fetch: (request) => measured(() => redOf(request.method, pathOf(request.url)), () => app.fetch(routable(request))),
  };
}

/**
 * Elysia finds the path by searching for "/" from the 11th character of the
 * URL, which assumes an origin at least that long; a short Host header
 * (`Host: gw`) from an in-process caller would hide part of the path. Such a
 * request is re-addressed to a long origin.
 */
const ELYSIA_ORIGIN_MIN = 11;

function routable(request: Request): Request {
  const url = request.url;
  const start = pathStart(url);
  if (start >= ELYSIA_ORIGIN_MIN) return request;
  return new Request(`http://payflux.local${start < 0 ? "/" : url.slice(start)}`, request);
}

function notFound(request: Request): Reply {
  const allow = ALLOW[pathOf(request.url)];
  if (allow !== undefined) {
    return problem(405, "method_not_allowed", `${request.method} is not allowed here; use ${allow}`, {}, { allow });
  }
  return problem(404, "not_found", "no such route");
}

/** Where the path starts in a request URL (absolute, or only a path when a client sent no Host); -1 if none. */
function pathStart(url: string): number {
  const scheme = url.indexOf("://");
  if (scheme < 0) return url.startsWith("/") ? 0 : -1;
  return url.indexOf("/", scheme + 3);
}

/** Path of a URL without allocating a URL object. */
function pathOf(url: string): string {
  const start = pathStart(url);
  if (start < 0) return "/";
  const q = url.indexOf("?", start);
  return q < 0 ? url.slice(start) : url.slice(start, q);
}
