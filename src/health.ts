import type { Gateway } from "./gateway.ts";
import { json } from "./problem.ts";
import { VERSION } from "./version.ts";

/**
 * GET/HEAD /health for load balancers: 200 while the event log can be
 * written, 503 "unhealthy" when it cannot (the instance could not acknowledge
 * an event). `config_fingerprint` lets operators check that every instance
 * runs the same config.
 */
export function handleHealth(gw: Gateway): Response {
  const writable = gw.log.probe();
  const base = {
    version: VERSION,
    uptime_s: Math.floor((Date.now() - gw.startedAt) / 1000),
    config_fingerprint: gw.config.fingerprint,
  };
  const headers = { "cache-control": "no-store" };
  if (writable) return json(200, { status: "ok", ...base }, headers);
  const cause = (gw.log.failure as NodeJS.ErrnoException | null)?.code ?? "write failed";
  return json(503, { status: "unhealthy", reason: `event log cannot be written (${cause})`, ...base }, headers);
}
