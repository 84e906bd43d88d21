/**
 * The service's routes, in one place: the router (src/app.ts) registers them,
 * the HTTP metrics use them as their bounded `route` label values, and a
 * wrong method gets 405 with `Allow` from here.
 */
export const INGEST_ROUTES = ["/v1/events/payment_exhaust", "/v1/events/batch"] as const;
export type IngestRoute = (typeof INGEST_ROUTES)[number];

/** Each route and the methods it answers. */
export const ALLOW: Readonly<Record<string, string>> = {
  "/v1/events/payment_exhaust": "POST",
  "/v1/events/batch": "POST",
  "/health": "GET, HEAD",
  "/metrics": "GET, HEAD",
};

export const ROUTES = Object.keys(ALLOW);
