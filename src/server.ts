import { readFileSync } from "node:fs";
import { createHandlers } from "./app.ts";
import { keysFingerprintOf, loadConfig, redactUrl } from "./config.ts";
import { DataDirInUseError, lockDataDir } from "./data-dir-lock.ts";
import { DedupIndex, idsFromLog, idsSince } from "./dedup.ts";
import { CheckpointSchedule, readSnapshot, snapshotMisfit, writeSnapshot } from "./dedup-snapshot.ts";
import { EventLog } from "./event-log.ts";
import { Forwarder } from "./forwarder.ts";
import type { Gateway } from "./gateway.ts";
import { RateLimiter } from "./limiter.ts";
import { AddressLimiter } from "./address-limiter.ts";
import { createLogger, LogThrottle } from "./logger.ts";
import { createMetrics } from "./metrics.ts";
import { applyConfig, coalescedReloads, keyStates, logLimits, reloadConfig, reloadFailed } from "./reload.ts";
import { SETTLE_MAX_MS, waitUntilQuiet } from "./config-file.ts";
import { AddressInUseError, collectGarbage, startHttpServer, startHttpsServer, type HttpServer, type HttpsServer, type ServerOptions } from "./runtime.ts";
import { EXIT } from "./exit-codes.ts";
import { RUNTIME, VERSION } from "./version.ts";

/** How often closed segments are checked against PAYFLUX_RETENTION. */
const RETENTION_SWEEP_MS = 5000;
/** At shutdown, how long the forwarder may finish the batch in flight before it is abandoned (re-sent after the restart). */
const FORWARDER_STOP_MS = 2000;

/**
 * Descriptors kept out of reach of client connections: the event log's
 * segments, the retention sweep, the data-dir lock, stdout, Redis and the
 * runtime's own need far fewer, so storage never fails for lack of one.
 */
const FD_RESERVE = 256;

/** The most connections the soft open-file limit allows with FD_RESERVE kept back; null when unknown. */
function connectionCapForDescriptors(): number | null {
  try {
    const m = /^Max open files\s+(\d+)/m.exec(readFileSync("/proc/self/limits", "utf8"));
    return m === null ? null : Math.max(1, Number(m[1]) - FD_RESERVE);
  } catch {
    return null; // not Linux, or no permission (Deno without --allow-read=/proc)
  }
}

/** `payflux serve`: load the config, open the event log, listen, and run until SIGTERM/SIGINT. */
export async function serve(configFile: string | undefined): Promise<void> {
  // Signals are handled from the first moment (an early SIGHUP must not kill
  // the process): until the service is up they are only remembered.
  const early: { reload: boolean; stop: string | null } = { reload: false, stop: null };
  let onReload: () => void = () => void (early.reload = true);
  let onStop = (signal: string) => void (early.stop ??= signal);
  process.on("SIGHUP", () => onReload());
  process.on("SIGTERM", () => onStop("SIGTERM"));
  process.on("SIGINT", () => onStop("SIGINT"));

  const env = process.env;
  // A file being written right now (a restart during an edit) is read once it is quiet.
  const file = configFile ?? (env.PAYFLUX_CONFIG || undefined);
  if (file !== undefined) await waitUntilQuiet(file);
  const loaded = loadConfig(env, configFile);
  if (!loaded.ok) {
    for (const w of loaded.warnings) console.error(`warning: ${w}`);
    for (const e of loaded.errors) console.error(`config error: ${e}`);
    process.exit(EXIT.CONFIG);
  }
  const config = loaded.config;
  const logger = createLogger(config.logLevel);
  for (const w of config.warnings) logger.warn(w);

  // Taken before the log is touched: recovery must never cut another live process's records.
  let dataDirLock: { release(): void };
  try {
    dataDirLock = await lockDataDir(config.dataDir);
  } catch (err) {
    logger.fatal({ data_dir: config.dataDir, err: (err as Error).message }, err instanceof DataDirInUseError ? "the data directory is in use" : "cannot lock the data directory");
    process.exit(EXIT.CANT_CREATE);
  }

  const metrics = createMetrics();
  let log: EventLog;
  // Created after the log; every durable record wakes it and adds to its lag.
  let forwarder: Forwarder | null = null;
  try {
    log = EventLog.open(config.dataDir, logLimits(config), {
      onFlush: (s) => metrics.flushDuration.observe(s),
      onDurable: (records) => forwarder?.notify(records),
    });
  } catch (err) {
    logger.fatal({ data_dir: config.dataDir, err: (err as Error).message }, "cannot open the event log in the data directory");
    process.exit(EXIT.CANT_CREATE);
  }
  if (log.recovery !== null) {
    const r = log.recovery;
    const fields = { segment: r.segment, truncated_bytes: r.truncatedBytes, corrupt_lines: r.corruptLines };
    if (r.truncatedBytes > 0) {
      metrics.recoveredTruncations.inc();
      logger.warn(fields, "event log recovered: cut a torn tail left by a crash (acknowledged events are never in it)");
    }
    if (r.corruptLines > 0) logger.warn(fields, "event log: damaged lines in the last segment are kept in place; readers skip them");
  }

  const dedup = new DedupIndex(config.dedupWindowMs, config.dedupMaxIds, (n) => metrics.dedupEvicted.inc(n));
  // A clean shutdown or a checkpoint left the window in a snapshot: load it and read only the records written after it.
  let snapshot = readSnapshot(config.dataDir, () => logger.warn("dedup snapshot damaged (CRC or length), ignored; the window is read from the event log"));
  const misfit = snapshot === null ? null : snapshotMisfit(snapshot, log);
  if (misfit !== null) {
    logger.warn({ reason: misfit }, "dedup snapshot does not belong to this event log, ignored; the window is read from the event log");
    snapshot!.close();
    snapshot = null;
  }
  let from: "snapshot" | "log" = "log";
  if (snapshot !== null) {
    try {
      dedup.importIds(snapshot.chunks(), snapshot.count, snapshot.base, config.dedupWindowMs - snapshot.windowSec * 1000);
      from = "snapshot";
    } catch {
      // Unreadable part-way (its CRC was checked): the log holds every id of the window.
    }
  }
  if (from === "snapshot") dedup.restore(idsSince(log, snapshot!.position, config.dedupWindowMs));
  else dedup.restore(idsFromLog(log, config.dedupWindowMs));
  const restored = { length: dedup.size, from };
  collectGarbage(); // the replay's buffers and views, before the first request
  if (config.forwardRedisUrl !== null) {
    try {
      forwarder = Forwarder.open({
        log,
        dataDir: config.dataDir,
        url: config.forwardRedisUrl,
        stream: config.forwardStream,
        maxlen: config.forwardMaxlen,
        groups: config.forwardConsumerGroups === "" ? [] : config.forwardConsumerGroups.split(","),
        logger,
        metrics,
      });
    } catch (err) {
      logger.fatal({ data_dir: config.dataDir, err: (err as Error).message }, "cannot read the forward checkpoint in the data directory");
      process.exit(EXIT.CANT_CREATE);
    }
  }
  metrics.sources.storage = () => log.stats;
  metrics.sources.dedupIds = () => dedup.size;

  let server: HttpServer | undefined;
  const gw: Gateway = {
    config,
    limiter: new RateLimiter(config.ingestRps, config.ingestBurst),
    authFailures: new AddressLimiter(config.authFailRps, config.authFailBurst),
    dedup,
    log,
    forwarder,
    metrics,
    logger,
    throttle: new LogThrottle(() => logger),
    startedAt: Date.now(),
    clientAddress: (request) => gw.config.trustedProxies.clientOf(request.peer, request.header("x-forwarded-for")),
  };
  metrics.sources.config = () => gw.config;
  applyConfig(gw, config);

  // With a certificate the listener speaks HTTPS only; SIGHUP can replace the certificate (see reloadConfig).
  let https: HttpsServer | undefined;
  try {
    const fdCap = connectionCapForDescriptors();
    if (fdCap !== null && fdCap < config.maxConnections) {
      logger.warn({ max_connections: config.maxConnections, cap: fdCap }, `PAYFLUX_MAX_CONNECTIONS is above what the open-file limit allows with ${FD_RESERVE} descriptors kept for storage; capped at ${fdCap}`);
    }
    const options: ServerOptions = {
      limits: () => ({
        maxConnections: fdCap === null ? gw.config.maxConnections : Math.min(gw.config.maxConnections, fdCap),
        maxConnectionsPerIp: gw.config.maxConnectionsPerIp,
      }),
      onRefused: (reason) => {
        metrics.connectionsRefused.inc({ reason });
        gw.throttle.warn(`connections_${reason}`, { reason }, "connection refused: too many open connections");
      },
      onConnections: (open) => metrics.connectionsOpen.set(open),
    };
    const handler = createHandlers(gw);
    server =
      config.tls !== null
        ? (https = await startHttpsServer(config.host, config.port, handler, options, config.tls))
        : await startHttpServer(config.host, config.port, handler, options);
  } catch (err) {
    logger.fatal({ err: (err as Error).message }, err instanceof AddressInUseError ? "the listen address is already in use" : "cannot listen on the configured address");
    process.exit(EXIT.UNAVAILABLE);
  }
  logger.info(
    {
      version: VERSION,
      runtime: RUNTIME,
      address: `${config.tls !== null ? "https" : "http"}://${config.host.includes(":") ? `[${config.host}]` : config.host}:${server.port}`,
      port: server.port,
      keys: keyStates(config.keys.counts()),
      config_source: config.source,
      config_fingerprint: config.fingerprint,
      keys_fingerprint: keysFingerprintOf(config),
      data_dir: config.dataDir,
      segment: log.segmentPath,
      dedup_ids_restored: restored.length,
      dedup_restored_from: restored.from,
      ...(config.tls !== null ? { tls: { subject: config.tls.subject, subject_alt_names: config.tls.subjectAltNames, not_after: config.tls.notAfter.toISOString() } } : {}),
      ...(config.forwardRedisUrl !== null ? { forward: { stream: config.forwardStream, url: redactUrl(config.forwardRedisUrl) } } : {}),
    },
    "payflux listening",
  );

  forwarder?.start();

  // Retention runs in the background; a full store also triggers it (see EventLog.append).
  const retention = setInterval(() => {
    log.sweep();
    if (log.sweepFailure !== null) gw.throttle.error("retention", { err: log.sweepFailure.message, data_dir: config.dataDir }, "retention could not read the data directory; will retry");
  }, RETENTION_SWEEP_MS);
  retention.unref?.();
  // /health reads the log's state; the disk is re-checked here, off the request path.
  const recheck = setInterval(() => log.recheck(), 1000);
  recheck.unref?.();
  // Checkpoints of the duplicate window, written in the background: a restart after a crash reads only the log since.
  let checkpoint: Promise<void> | null = null;
  const schedule = new CheckpointSchedule(Date.now(), dedup.added);
  const saveWindow = () => {
    const window = dedup.window(); // and the log's end, in the same turn: every id before it is in the window
    const position = log.durableEnd();
    // At a segment's very start there is nothing to tag (its first line may not even be durable yet): every record after is read anyway.
    const tag = position.offset > 0 ? (log.segmentTag(position.segment) ?? 0) : 0;
    return { entries: window.count, written: writeSnapshot(config.dataDir, window, gw.config.dedupWindowMs, position, tag) };
  };
  const checkpoints = setInterval(() => {
    const now = Date.now();
    if (checkpoint !== null || !schedule.due(now, dedup.added, dedup.size)) return;
    const added = dedup.added;
    const { entries, written } = saveWindow();
    checkpoint = written
      .then(() => {
        const ms = Date.now() - now;
        schedule.written(now + ms, added, ms);
        logger.info({ entries, ms }, "duplicate window checkpointed");
      })
      .catch((err: Error) => {
        schedule.failed(Date.now());
        gw.throttle.error("checkpoint", { err: err.message }, "could not checkpoint the duplicate window; a restart after a crash reads more of the event log");
      })
      .finally(() => (checkpoint = null));
  }, 1000);
  checkpoints.unref?.();

  // A burst of SIGHUPs coalesces into reloads of the file's latest content,
  // read once the file has stopped changing (a writer may be half-way).
  onReload = coalescedReloads({
    settle: async () => file === undefined || (await waitUntilQuiet(file)),
    apply: () => reloadConfig(gw, env, configFile, https?.setTls),
    unsettled: () => reloadFailed(gw, [`${file} kept changing for ${SETTLE_MAX_MS / 1000} s; nothing was applied: write it atomically (temporary file + rename) and reload again`]),
  });

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "shutting down: no new connections, finishing requests in flight");
    const timeoutMs = gw.config.shutdownTimeoutMs;
    const drained = await Promise.race([
      server!.stop().then(() => true),
      new Promise<boolean>((resolve) => setTimeout(() => resolve(false), timeoutMs).unref?.()),
    ]);
    clearInterval(retention);
    clearInterval(recheck);
    clearInterval(checkpoints);
    await log.close();
    if (drained) {
      await checkpoint; // one writer of the file at a time
      try {
        await saveWindow().written;
      } catch (err) {
        logger.warn({ err: (err as Error).message }, "could not save the duplicate window; the next start reads it from the last checkpoint and the event log written since");
      }
    }
    // After the last flush: the batch in flight finishes (its checkpoint saved) or is abandoned.
    await forwarder?.stop(FORWARDER_STOP_MS);
    dataDirLock.release();
    gw.throttle.stop();
    const inFlight = (await metrics.inFlight.get()).values[0]?.value ?? 0;
    if (!drained) {
      logger.error({ cut_requests: inFlight }, `shutdown timed out after ${timeoutMs} ms; ${inFlight} request(s) cut`);
      process.exit(EXIT.SOFTWARE);
    }
    logger.info("stopped");
    process.exit(EXIT.OK);
  };
  onStop = (signal) => void shutdown(signal);
  if (early.stop !== null) onStop(early.stop);
  else if (early.reload) onReload();
}
