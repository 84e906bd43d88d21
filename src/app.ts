import { Elysia } from "elysia";
import type { Gateway } from "./gateway.ts";
import { handleHealth } from "./health.ts";
import { handleIngest } from "./ingest.ts";
import { handleMetrics, methodLabel, routeLabel } from "./metrics.ts";
import { ALLOW, INGEST_ROUTES } from "./routes.ts";
import { problem } from "./problem.ts";

/** The HTTP routes, and a fetch handler that records the RED metrics of every response. */
export function createFetchHandler(gw: Gateway): (request: Request) => Promise<Response> {
  // strictPath: `/metrics/` must not serve what a proxy rule for `/metrics` blocks.
  const app = new Elysia({ strictPath: true })
    .onError(({ code, request, error }) => {
      if (code === "NOT_FOUND") return notFound(request);
      gw.throttle.error("request_failed", { err: error instanceof Error ? error.message : String(error), code }, "request failed");
      return problem(500, "internal_error", "the request could not be handled");
    })
    .get("/health", () => handleHealth(gw))
    .get("/metrics", ({ request }) => handleMetrics(gw.metrics, gw.config, request));
  for (const route of INGEST_ROUTES) {
    // parse: "none": the body is read only after authentication, with the size limit in force.
    app.post(route, ({ request }) => handleIngest(gw, request, route), { parse: "none" });
  }

  const { metrics } = gw;
  // Labelled children are cached: prom-client hashes the label object on every call otherwise.
  const counters = new Map<string, { inc(): void }>();
  const timers = new Map<string, { observe(v: number): void }>();
  return async (request) => {
    const started = performance.now();
    metrics.inFlight.inc();
    let status = 500;
    try {
      const response = await app.fetch(routable(request));
      status = response.status;
      return response;
    } finally {
      metrics.inFlight.dec();
      const method = methodLabel(request.method);
      const route = routeLabel(pathOf(request.url));
      const key = `${method} ${route}`;
      let timer = timers.get(key);
      if (timer === undefined) timers.set(key, (timer = metrics.httpDuration.labels(method, route)));
      timer.observe((performance.now() - started) / 1000);
      const statusKey = `${key} ${status}`;
      let counter = counters.get(statusKey);
      if (counter === undefined) counters.set(statusKey, (counter = metrics.httpRequests.labels(method, route, String(status))));
      counter.inc();
    }
  };
}

/**
 * Elysia finds the path by searching for "/" from the 11th character of the
 * URL, which assumes an origin at least that long; a short Host header
 * (`Host: gw`) would hide part of the path. Such a request is re-addressed to
 * a long origin; the original stays reachable for the client address.
 */
const ELYSIA_ORIGIN_MIN = 11;
const originals = new WeakMap<Request, Request>();

function routable(request: Request): Request {
  const url = request.url;
  const start = pathStart(url);
  if (start >= ELYSIA_ORIGIN_MIN) return request;
  const readdressed = new Request(`http://payflux.local${start < 0 ? "/" : url.slice(start)}`, request);
  originals.set(readdressed, request);
  return readdressed;
}

/** The request as the server received it (before `routable`), for the client address. */
export function originalRequest(request: Request): Request {
  return originals.get(request) ?? request;
}

function notFound(request: Request): Response {
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
