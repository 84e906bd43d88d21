import { fingerprintOf, loadConfig, SETTING_VARIABLE, type Config } from "./config.ts";
import type { LogLimits } from "./event-log.ts";
import type { Gateway } from "./gateway.ts";
import { setKeyCounts } from "./metrics.ts";
import type { TlsMaterial } from "./tls.ts";

/** Settings bound at start-up; a changed value waits for a restart. */
const RESTART_ONLY = ["host", "port", "dataDir", "forwardRedisUrl", "forwardStream", "forwardMaxlen"] as const;
const SETTINGS = Object.keys(SETTING_VARIABLE) as (keyof typeof SETTING_VARIABLE)[];

/**
 * Applies a config to the running gateway in one assignment: the next request
 * sees all of it, requests in flight keep the one they started with. Buckets
 * of keys that stay keep their tokens; buckets of removed keys are dropped.
 */
export function applyConfig(gw: Gateway, next: Config): void {
  gw.config = next;
  gw.limiter.reconfigure(next.ingestRps, next.ingestBurst, next.keys.activeDigests());
  gw.dedup.setLimits(next.dedupWindowMs, next.dedupMaxIds);
  gw.log.setLimits(logLimits(next));
  gw.logger.level = next.logLevel;
  setKeyCounts(gw.metrics, next.keys.activeCount, next.keys.revokedCount);
  if (next.tls !== null) gw.metrics.tlsCertExpiry.set(next.tls.notAfter.getTime() / 1000);
}

/**
 * Re-reads the config (SIGHUP) through the same loader and validator as
 * start-up. A bad config changes nothing: the service keeps the one in force.
 */
export function reloadConfig(
  gw: Gateway,
  env: Record<string, string | undefined>,
  configFile: string | undefined,
  /** Puts a new certificate in service for new handshakes (HTTPS only); throws when it cannot. */
  swapTls?: (tls: TlsMaterial) => void,
): boolean {
  const result = loadConfig(env, configFile);
  const { metrics, logger } = gw;
  const fail = (errors: string[]) => {
    metrics.reloads.inc({ result: "failure" });
    metrics.lastReloadSuccessful.set(0);
    logger.error({ errors }, `config reload failed, keeping the config in force: ${errors.join("; ")}`);
    return false;
  };
  if (!result.ok) return fail(result.errors);
  const prev = gw.config;
  const candidate = result.config;
  // Restart-only settings keep their running value.
  const next: Config = { ...candidate };
  for (const name of RESTART_ONLY) {
    (next as unknown as Record<string, unknown>)[name] = prev[name];
    const variable = SETTING_VARIABLE[name];
    if (candidate[name] !== prev[name]) logger.warn({ variable }, `${variable} changed in the config but only takes effect after a restart`);
  }
  // Turning HTTPS on or off changes the listener: restart-only. A new pair is re-read on every reload.
  if ((candidate.tls === null) !== (prev.tls === null)) {
    next.tls = prev.tls;
    logger.warn({ variable: "PAYFLUX_TLS_CERT_FILE" }, "turning HTTPS on or off only takes effect after a restart");
  }
  const tlsChanged = next.tls !== null && prev.tls !== null && (next.tls.sha256 !== prev.tls.sha256 || next.tls.key !== prev.tls.key);
  if (tlsChanged && swapTls !== undefined) {
    try {
      swapTls(next.tls!);
    } catch (err) {
      return fail([`the new certificate could not be put in service (${(err as Error).message}); the old one is still served`]);
    }
  }
  // The fingerprint describes the config in force, not the file.
  next.fingerprint = fingerprintOf(next);
  const before = new Set(prev.keys.activeDigests());
  const after = new Set(next.keys.activeDigests());
  const prevRevoked = new Set(prev.keys.revokedDigests());
  const changes = {
    keys_added: [...after].filter((d) => !before.has(d)).length,
    keys_removed: [...before].filter((d) => !after.has(d)).length,
    keys_revoked: next.keys.revokedDigests().filter((d) => !prevRevoked.has(d)).length,
    changed_settings: SETTINGS.filter((n) => next[n] !== prev[n]).map((n) => SETTING_VARIABLE[n]),
    ...(tlsChanged ? { tls_certificate: { subject: next.tls!.subject, not_after: next.tls!.notAfter.toISOString(), sha256: next.tls!.sha256 } } : {}),
    config_fingerprint: next.fingerprint,
  };
  for (const w of candidate.warnings) logger.warn(w);
  // Logged before the new log level applies, so that raising it does not hide this line.
  logger.info(changes, "config reloaded");
  applyConfig(gw, next);
  metrics.reloads.inc({ result: "success" });
  metrics.lastReloadSuccessful.set(1);
  metrics.lastReloadSuccessTime.set(Date.now() / 1000);
  return true;
}

export function logLimits(c: Config): LogLimits {
  return { segmentBytes: c.segmentBytes, retentionMs: c.retentionMs, maxBytes: c.storageMaxBytes };
}
