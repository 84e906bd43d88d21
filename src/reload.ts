import type { KeyCounts } from "./auth.ts";
import { fingerprintOf, keysFingerprintOf, loadConfigInSlices, SETTING_VARIABLE, type Config } from "./config.ts";
import type { LogLimits } from "./event-log.ts";
import type { Gateway } from "./gateway.ts";
import { setClientSeries } from "./metrics.ts";
import { PAUSE_EVERY, runSliced, type Sliced } from "./slices.ts";
import type { TlsMaterial } from "./tls.ts";

/** Settings bound at start-up; a changed value waits for a restart. */
const RESTART_ONLY = ["host", "port", "dataDir", "forwardRedisUrl", "forwardStream", "forwardMaxlen", "forwardConsumerGroups"] as const;
const SETTINGS = Object.keys(SETTING_VARIABLE) as (keyof typeof SETTING_VARIABLE)[];

/**
 * Applies a config to the running gateway in one assignment: the next request
 * sees all of it, requests in flight keep the one they started with. Buckets
 * of keys that stay keep their tokens; buckets of removed keys are dropped.
 */
export function applyConfig(gw: Gateway, next: Config): void {
  gw.config = next;
  gw.limiter.reconfigure(next.ingestRps, next.ingestBurst, (bucket) => next.keys.hasLiveBucket(bucket));
  gw.authFailures.reconfigure(next.authFailRps, next.authFailBurst);
  gw.dedup.setLimits(next.dedupWindowMs, next.dedupMaxIds);
  gw.log.setLimits(logLimits(next));
  gw.logger.level = next.logLevel;
  setClientSeries(gw.metrics, next.keys, next.metricsPerClient);
  if (next.tls !== null) gw.metrics.tlsCertExpiry.set(next.tls.notAfter.getTime() / 1000);
}

/**
 * Re-reads the config (SIGHUP) through the same loader and validator as
 * start-up. A bad config changes nothing: the service keeps the one in force.
 * The loading and the key diff run in slices (requests are served in
 * between); the config applies in one step at the end. One reload at a time:
 * see coalescedReloads.
 */
export async function reloadConfig(
  gw: Gateway,
  env: Record<string, string | undefined>,
  configFile: string | undefined,
  /** Puts a new certificate in service for new handshakes (HTTPS only); throws when it cannot. */
  swapTls?: (tls: TlsMaterial) => void,
): Promise<boolean> {
  const result = await loadConfigInSlices(env, configFile);
  const { metrics, logger } = gw;
  const fail = (errors: string[]) => reloadFailed(gw, errors);
  if (!result.ok) return reloadFailed(gw, result.errors);
  const prev = gw.config;
  const keys = await runSliced(keyChanges(prev, result.config));
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
  const changedSettings = SETTINGS.filter((n) => next[n] !== prev[n]).map((n) => SETTING_VARIABLE[n]);
  const changes = {
    ...keys,
    changed_settings: changedSettings,
    summary:
      `keys: ${keys.keys_added} added, ${keys.keys_removed} removed, ${keys.keys_revoked} revoked, ${keys.keys_unrevoked} un-revoked; ` +
      `settings changed: ${changedSettings.length === 0 ? "none" : changedSettings.join(", ")}`,
    ...(tlsChanged ? { tls_certificate: { subject: next.tls!.subject, not_after: next.tls!.notAfter.toISOString(), sha256: next.tls!.sha256 } } : {}),
    config_fingerprint: next.fingerprint,
    keys_fingerprint: keysFingerprintOf(next),
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

/** Key counts for log lines: the states of payflux_api_keys. */
export function keyStates(c: KeyCounts): { active: number; revoked: number; expired: number } {
  return { active: c.active, revoked: c.revoked, expired: c.expired };
}

/**
 * How each key moved between absent, active and revoked, as counts an
 * operator can act on: added (absent -> active), removed (active or revoked
 * -> absent), revoked (active or absent -> revoked), unrevoked (revoked ->
 * active). Each key counts once. Both rings are walked in digest order, as
 * their fingerprints already sorted them: no lookup per key.
 */
export function* keyChanges(prev: Config, next: Config): Sliced<KeyChanges> {
  const counts = { keys_added: 0, keys_removed: 0, keys_revoked: 0, keys_unrevoked: 0 };
  const [a, b] = [prev.keys, next.keys];
  const before = yield* a.inOrder();
  const after = yield* b.inOrder();
  const [m, n] = [before.order.length, after.order.length];
  let i = 0;
  let j = 0;
  let steps = 0;
  while (i < m || j < n) {
    // Which comes first: prev's key (< 0), next's (> 0), or the same key (0); whole digests compare only on equal prefixes.
    let order = i === m ? 1 : j === n ? -1 : before.prefixes[i]! - after.prefixes[j]!;
    if (order === 0) order = a.compareAt(before.order[i]!, b, after.order[j]!);
    if (order < 0) {
      counts.keys_removed++;
      i++;
    } else if (order > 0) {
      if (b.isRevokedAt(after.order[j]!)) counts.keys_revoked++;
      else counts.keys_added++;
      j++;
    } else {
      const [was, now] = [a.isRevokedAt(before.order[i]!), b.isRevokedAt(after.order[j]!)];
      if (was && !now) counts.keys_unrevoked++;
      else if (!was && now) counts.keys_revoked++;
      i++;
      j++;
    }
    if (++steps % PAUSE_EVERY === 0) yield;
  }
  return counts;
}

export interface KeyChanges {
  keys_added: number;
  keys_removed: number;
  keys_revoked: number;
  keys_unrevoked: number;
}

/**
 * The SIGHUP handler: a signal starts a reload (after `settle`: the files
 * have stopped changing) unless one is under way. Signals during the wait are
 * covered by the read that follows it; a signal during the read and apply
 * makes the reload run once more when it ends, so the files' last version is
 * always applied, and two reloads never interleave.
 */
export function coalescedReloads(steps: {
  /** Resolves true once the files are quiet, false when they kept changing. */
  settle: () => Promise<boolean>;
  apply: () => Promise<unknown>;
  unsettled: () => void;
}): () => void {
  let running = false;
  let again = false;
  const run = async () => {
    try {
      do {
        const quiet = await steps.settle();
        again = false;
        if (quiet) await steps.apply();
        else steps.unsettled();
      } while (again);
    } finally {
      running = false;
    }
  };
  return () => {
    if (running) {
      again = true;
      return;
    }
    running = true;
    // Later in this turn: signals delivered together make one reload.
    setTimeout(() => void run(), 0);
  };
}

/** A reload that changes nothing: counted, and one error line (the errors never quote a value). */
export function reloadFailed(gw: Gateway, errors: string[]): false {
  gw.metrics.reloads.inc({ result: "failure" });
  gw.metrics.lastReloadSuccessful.set(0);
  gw.logger.error({ errors }, `config reload failed, keeping the config in force: ${errors.join("; ")}`);
  return false;
}

export function logLimits(c: Config): LogLimits {
  return { segmentBytes: c.segmentBytes, retentionMs: c.retentionMs, maxBytes: c.storageMaxBytes };
}
