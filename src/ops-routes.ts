import { keysFingerprintOf } from "./config.ts";
import type { Gateway } from "./gateway.ts";
import { bearerToken, secretMatches } from "./auth.ts";
import { reply, type Incoming, type Reply } from "./exchange.ts";
import type { Metrics } from "./metrics.ts";
import { json, problem } from "./problem.ts";
import { VERSION } from "./version.ts";

/** The operators' routes: /health and /metrics. */

/**
 * GET/HEAD /health for load balancers: 200 while the event log can be
 * written, 503 "unhealthy" when it cannot (the instance could not acknowledge
 * an event), 503 "full" while writes are refused with storage_full. With forwarding on, a forwarder that cannot reach Redis makes the
 * instance "degraded", still 200: it keeps accepting and storing events and
 * forwards them once Redis is back. `config_fingerprint` lets operators check
 * that every instance runs the same config; `keys_fingerprint` leaves out
 * what differs per instance (port, host, data dir), so a fleet can compare it.
 */
export function handleHealth(gw: Gateway): Reply {
  const writable = gw.log.writable;
  const forwarder = gw.forwarder?.status();
  const base = {
    version: VERSION,
    uptime_s: Math.floor((Date.now() - gw.startedAt) / 1000),
    config_fingerprint: gw.config.fingerprint,
    keys_fingerprint: keysFingerprintOf(gw.config),
    ...(forwarder ? { forwarder } : {}),
  };
  const headers = { "cache-control": "no-store" };
  if (!writable) {
    const cause = (gw.log.failure as NodeJS.ErrnoException | null)?.code ?? "write failed";
    return json(503, { status: "unhealthy", reason: `event log cannot be written (${cause})`, ...base }, headers);
  }
  if (gw.log.full) {
    // Not ready: every write is refused with storage_full, so the balancer should send the keys elsewhere.
    return json(503, { status: "full", reason: "the event log is at PAYFLUX_STORAGE_MAX_BYTES; writes are refused with storage_full until retention or an operator frees room", ...base }, { ...headers, "retry-after": "5" });
  }
  if (forwarder?.state === "down") {
    return json(200, { status: "degraded", reason: "the forwarder cannot reach Redis; events are stored and forwarded once it is back", ...base }, headers);
  }
  return json(200, { status: "ok", ...base }, headers);
}

/**
 * GET /metrics: 404 when disabled; with a token configured, `Authorization:
 * Bearer <token>` is required and compared in constant time.
 */
export async function handleMetrics(m: Metrics, settings: { metricsEnabled: boolean; metricsTokenDigest: string | null }, request: Incoming): Promise<Reply> {
  if (!settings.metricsEnabled) return problem(404, "not_found", "metrics are disabled (PAYFLUX_METRICS_ENABLED=false)");
  if (settings.metricsTokenDigest !== null && !secretMatches(bearerToken(request.header("authorization")), settings.metricsTokenDigest)) {
    return problem(401, "metrics_unauthorized", "send the metrics token as `Authorization: Bearer <token>`", {}, {
      "www-authenticate": 'Bearer realm="payflux-metrics"',
    });
  }
  return reply(200, await m.registry.metrics(), m.registry.contentType);
}
