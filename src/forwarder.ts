import { readFileSync } from "node:fs";
import { open, rename } from "node:fs/promises";
import { join } from "node:path";
import { Redis } from "ioredis";
import { redactUrl, urlSecrets } from "./config.ts";
import type { EventLog, LogPosition } from "./event-log.ts";
import type { Logger } from "./logger.ts";
import type { Metrics } from "./metrics.ts";

/**
 * Background forwarder: reads the local event log in order and XADDs every
 * record to a Redis stream (`XADD <stream> MAXLEN ~ <maxlen> * data <event>`),
 * one pipeline per read of about 1 MiB. It is never on the request path:
 * ingest acknowledges after the local flush whatever Redis does.
 *
 * At-least-once: the position after a batch is persisted in
 * `<dataDir>/forward.checkpoint` (tmp file, fdatasync, rename, directory
 * fsync) only after Redis acknowledged every XADD of the batch. After a crash
 * the forwarder resumes there, so the events of the batch in flight may reach
 * the stream twice (same event_id). Retention keeps every segment the
 * checkpoint has not passed yet.
 *
 * Redis down: each failed batch is retried after a capped exponential backoff
 * with full jitter; the state change up -> down and down -> up is logged once
 * each, never per retry. ioredis fails fast (no offline queue, no resend of
 * unanswered commands, command and connect timeouts) and reconnects by itself;
 * a reconnect cuts the backoff short.
 */
export const CHECKPOINT_FILE = "forward.checkpoint";
/** One read of the log, one pipeline. */
const BATCH_BYTES = 1 << 20;
/** Fallback wake-up (and idle PING) period, besides the log's onDurable notification. */
const POLL_MS = 1000;
const BACKOFF_BASE_MS = 100;
const BACKOFF_CAP_MS = 10_000;
/** ioredis reconnect delay cap; a successful reconnect wakes the forwarder at once. */
const RECONNECT_CAP_MS = 2000;
const CONNECT_TIMEOUT_MS = 5000;
const COMMAND_TIMEOUT_MS = 10_000;
/** How often the consumer groups' backlog is read (one pipeline: XINFO GROUPS and one XPENDING per group). */
const GROUP_POLL_MS = 5000;
/** Messages of commands that ioredis failed because the connection is not there (no offline queue, no retry). */
const CONNECTION_ERRORS = ["enableOfflineQueue", "maxRetriesPerRequest", "Connection is closed"];

export interface ForwarderOptions {
  log: EventLog;
  dataDir: string;
  url: string;
  stream: string;
  maxlen: number;
  /** Consumer groups of the stream whose backlog is exported (payflux_consumer_lag_messages{group}). */
  groups: string[];
  logger: Logger;
  metrics: Metrics;
}

export interface ForwarderStatus {
  state: "up" | "down";
  lag_events: number;
  stream: string;
}

export class Forwarder {
  private readonly redis: Redis;
  /** Where the next read starts: everything before it was acknowledged by Redis. */
  private pos: LogPosition;
  /** The position last persisted in the checkpoint file (retention keeps what is at or after it). */
  private saved: LogPosition;
  private lag: number;
  /** null until the first exchange with Redis. */
  private up: boolean | null = null;
  private downSince = 0;
  private lastContact = 0;
  /** Last connection-level error reported by ioredis (password removed). */
  private connError: string | null = null;
  private attempt = 0;
  private checkpointFailing = false;
  private readFailing = false;
  private stopping = false;
  private woken = false;
  private wake: { resolve: () => void; onNotify: boolean } | null = null;
  private loop: Promise<void> | null = null;
  private groupTimer: ReturnType<typeof setInterval> | null = null;
  private groupPoll: Promise<void> | null = null;
  /** Groups last seen missing (logged once per change, not per poll). */
  private readonly missingGroups = new Set<string>();
  /** Last error Redis gave for XINFO GROUPS other than a missing stream (logged once per change). */
  private groupError: string | null = null;
  private readonly secrets: string[];
  readonly redactedUrl: string;

  private constructor(private readonly o: ForwarderOptions, start: LogPosition) {
    this.pos = start;
    this.saved = start;
    this.redactedUrl = redactUrl(o.url);
    this.secrets = urlSecrets(o.url);
    this.lag = countRecords(o.log, start);
    const m = o.metrics;
    m.forwardEvents.inc({ result: "success" }, 0);
    m.forwardEvents.inc({ result: "failure" }, 0);
    m.forwardUp.set(0);
    m.forwardLag.set(this.lag);
    this.redis = new Redis(o.url, {
      lazyConnect: true,
      enableOfflineQueue: false,
      autoResendUnfulfilledCommands: false,
      // With 0, commands in flight when the connection drops fail at once instead of waiting for a reconnect.
      maxRetriesPerRequest: 0,
      connectTimeout: CONNECT_TIMEOUT_MS,
      commandTimeout: COMMAND_TIMEOUT_MS,
      retryStrategy: (times: number) => Math.round(Math.random() * Math.min(RECONNECT_CAP_MS, BACKOFF_BASE_MS * 2 ** times)) + 20,
      disableClientInfo: true,
    });
    // Without a listener ioredis prints every reconnect error; keep the latest for the state-change line.
    this.redis.on("error", (err: Error) => {
      this.connError = this.scrub(err.message);
    });
    this.redis.on("close", () => {
      this.connError ??= "connection to Redis closed";
    });
    this.redis.on("ready", () => {
      this.connError = null;
      this.interrupt(false); // cut a backoff short: Redis is reachable again
    });
    o.log.setDeletable((seq) => seq < this.saved.segment);
  }

  /**
   * Reads the checkpoint (none: the oldest segment, offset 0), counts the
   * records not forwarded yet and prepares the client. Call before the log
   * takes appends, so that the count and onDurable do not overlap.
   */
  static open(o: ForwarderOptions): Forwarder {
    const oldest = { segment: o.log.segments()[0] ?? o.log.durableEnd().segment, offset: 0 };
    const path = join(o.dataDir, CHECKPOINT_FILE);
    let start = oldest;
    let text: string | null = null;
    try {
      text = readFileSync(path, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
    if (text !== null) {
      const saved = parseCheckpoint(text);
      const end = o.log.durableEnd();
      if (saved === null) {
        o.logger.warn({ checkpoint: path }, "forward checkpoint is unreadable; forwarding again from the oldest segment (consumers drop duplicates by event_id)");
      } else if (saved.segment > end.segment || (saved.segment === end.segment && saved.offset > end.offset)) {
        o.logger.warn({ checkpoint: path, ...saved }, "forward checkpoint points past the end of the event log; forwarding again from the oldest segment");
      } else {
        start = saved;
      }
    }
    return new Forwarder(o, start);
  }

  /** Starts the background loop. */
  start(): void {
    this.loop ??= this.run();
    if (this.o.groups.length > 0 && this.groupTimer === null) {
      this.groupTimer = setInterval(() => this.pollGroups(), GROUP_POLL_MS);
      this.groupTimer.unref?.();
    }
  }

  /** One read of the groups' backlog at a time, on its own timer: never on the request path. */
  private pollGroups(): void {
    this.groupPoll ??= this.readGroups().finally(() => (this.groupPoll = null));
  }

  /**
   * Sets payflux_consumer_lag_messages{group} to the XPENDING summary count
   * (delivered, not acknowledged: the old service's gauge) and
   * payflux_consumer_group_lag_messages{group} to XINFO GROUPS `lag`
   * (not delivered yet; Redis 7+, absent when Redis cannot tell). A missing
   * stream or group, or an unreachable Redis, leaves no sample: a stale or
   * made-up 0 would hide a consumer outage. Redis trouble is reported by the
   * forwarding loop; a missing group is logged once when it goes missing.
   */
  private async readGroups(): Promise<void> {
    const { metrics: m, stream, groups, logger } = this.o;
    let replies: [Error | null, unknown][] | null = null;
    if (this.redis.status === "ready") {
      const pipeline = this.redis.pipeline();
      pipeline.xinfo("GROUPS", stream);
      for (const group of groups) pipeline.xpending(stream, group);
      replies = await pipeline.exec().catch(() => null);
    }
    const lags = new Map<string, number | null>();
    const [infoErr, info] = replies?.[0] ?? [new Error("no reply"), null];
    if (infoErr === null && Array.isArray(info)) {
      for (const fields of info as unknown[][]) {
        const entry: Record<string, unknown> = {};
        for (let i = 0; i + 1 < fields.length; i += 2) entry[String(fields[i])] = fields[i + 1];
        lags.set(String(entry.name), typeof entry.lag === "number" ? entry.lag : null);
      }
    }
    // Redis answered about the stream (no stream at all is "no such key"): groups not in it are missing.
    const answered = replies !== null && (infoErr === null || /no such key/i.test(infoErr.message));
    // Any other refusal (e.g. an ACL without XINFO): said once; connection trouble is the forwarding loop's to report.
    const refusal = replies !== null && !answered && infoErr !== null && !CONNECTION_ERRORS.some((e) => infoErr.message.includes(e)) ? this.scrub(infoErr.message) : null;
    if (refusal !== null && refusal !== this.groupError) logger.warn({ stream, err: refusal }, "forwarder: cannot read the consumer groups; no payflux_consumer_lag_messages samples");
    this.groupError = refusal;
    groups.forEach((group, i) => {
      const [err, summary] = replies?.[i + 1] ?? [null, null];
      const pending = err === null && Array.isArray(summary) && typeof summary[0] === "number" ? summary[0] : null;
      if (pending === null || !lags.has(group)) {
        m.consumerLag.remove({ group });
        m.consumerGroupLag.remove({ group });
        if (answered && !this.missingGroups.has(group)) {
          this.missingGroups.add(group);
          logger.info({ stream, group }, "consumer group not found on the stream; payflux_consumer_lag_messages has no sample for it until it exists");
        }
        return;
      }
      if (this.missingGroups.delete(group)) logger.info({ stream, group }, "consumer group found on the stream");
      m.consumerLag.set({ group }, pending);
      const lag = lags.get(group);
      if (typeof lag === "number") m.consumerGroupLag.set({ group }, lag);
      else m.consumerGroupLag.remove({ group });
    });
  }

  /** The log made `records` more records durable (EventLog onDurable). */
  notify(records: number): void {
    this.lag += records;
    this.o.metrics.forwardLag.set(this.lag);
    this.woken = true;
    this.interrupt(true);
  }

  status(): ForwarderStatus {
    return { state: this.up === true ? "up" : "down", lag_events: this.lag, stream: this.o.stream };
  }

  /**
   * Shutdown: lets the batch in flight finish (and its checkpoint be saved)
   * for at most `boundMs`, then closes the connection. An abandoned batch is
   * sent again after the restart.
   */
  async stop(boundMs = 2000): Promise<void> {
    this.stopping = true;
    if (this.groupTimer !== null) clearInterval(this.groupTimer);
    this.interrupt(false);
    if (this.loop !== null) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      await Promise.race([this.loop, new Promise<void>((resolve) => (timer = setTimeout(resolve, boundMs)))]);
      clearTimeout(timer);
    }
    this.redis.disconnect();
  }

  private async run(): Promise<void> {
    try {
      await this.redis.connect();
    } catch {
      // Reported by the first attempt below; ioredis keeps reconnecting.
    }
    while (!this.stopping) {
      let outcome: "sent" | "idle" | "failed";
      try {
        outcome = await this.step();
      } catch (err) {
        outcome = "failed";
        this.markDown(err as Error);
      }
      if (this.stopping) break;
      if (outcome === "idle") await this.sleep(POLL_MS, true);
      else if (outcome === "failed") await this.sleep(this.backoff(), false);
    }
  }

  /** One read and (when there is something) one pipeline. */
  private async step(): Promise<"sent" | "idle" | "failed"> {
    this.woken = false;
    let batch: { records: Buffer[]; next: LogPosition };
    try {
      batch = this.o.log.read(this.pos, BATCH_BYTES);
      if (this.readFailing) this.o.logger.warn("forwarder: the event log is readable again");
      this.readFailing = false;
    } catch (err) {
      if (!this.readFailing) this.o.logger.error({ err: (err as Error).message }, "forwarder: cannot read the event log; retrying");
      this.readFailing = true;
      return "failed";
    }
    const { records, next } = batch;
    if (records.length === 0) {
      if (next.segment !== this.pos.segment || next.offset !== this.pos.offset) {
        // Moved past the end of a closed segment: record it so retention can delete that segment.
        this.pos = next;
        await this.save();
        return "sent";
      }
      if (Date.now() - this.lastContact >= POLL_MS) {
        await this.redis.ping();
        this.markUp();
      }
      return "idle";
    }
    const pipeline = this.redis.pipeline();
    const maxlen = String(this.o.maxlen);
    for (const record of records) pipeline.xadd(this.o.stream, "MAXLEN", "~", maxlen, "*", "data", record);
    let results: [Error | null, unknown][] | null;
    try {
      results = await pipeline.exec();
      const failed = results === null ? new Error("Redis returned no replies") : results.find(([err]) => err !== null)?.[0];
      if (failed) throw failed;
    } catch (err) {
      this.o.metrics.forwardEvents.inc({ result: "failure" }, records.length);
      this.markDown(err as Error);
      return "failed";
    }
    this.pos = next;
    // Saved before the metrics move, so that a lag of 0 means the checkpoint is on disk too.
    await this.save();
    const backlog = this.lag;
    this.lag = Math.max(0, this.lag - records.length);
    const m = this.o.metrics;
    m.forwardEvents.inc({ result: "success" }, records.length);
    m.forwardLag.set(this.lag);
    m.forwardLastSuccess.set(Date.now() / 1000);
    this.markUp(backlog);
    return "sent";
  }

  /** Persists `pos` as the checkpoint; a failure keeps the old one (and is retried with the next batch). */
  private async save(): Promise<void> {
    const dir = this.o.dataDir;
    const target = join(dir, CHECKPOINT_FILE);
    const tmp = `${target}.tmp`;
    const pos = { segment: this.pos.segment, offset: this.pos.offset };
    try {
      const fh = await open(tmp, "w");
      try {
        await fh.writeFile(`${JSON.stringify(pos)}\n`);
        await fh.datasync();
      } finally {
        await fh.close();
      }
      await rename(tmp, target);
      const d = await open(dir, "r");
      try {
        await d.sync();
      } finally {
        await d.close();
      }
      this.saved = pos;
      if (this.checkpointFailing) this.o.logger.warn("forwarder: the checkpoint can be written again");
      this.checkpointFailing = false;
    } catch (err) {
      if (!this.checkpointFailing) {
        this.o.logger.error({ err: (err as Error).message, checkpoint: target }, "forwarder: cannot write the checkpoint; events may be sent again after a restart");
      }
      this.checkpointFailing = true;
    }
  }

  /** `backlog`: the lag when Redis answered (before the batch it acknowledged). */
  private markUp(backlog = this.lag): void {
    this.lastContact = Date.now();
    this.attempt = 0;
    if (this.up === true) return;
    const fields = { stream: this.o.stream, url: this.redactedUrl, lag_events: backlog };
    if (this.up === false) {
      const downMs = Date.now() - this.downSince;
      this.o.logger.warn({ ...fields, down_s: Math.round(downMs / 100) / 10 }, "forwarder: Redis is reachable again; catching up");
    } else {
      this.o.logger.info(fields, "forwarder connected to Redis");
    }
    this.up = true;
    this.o.metrics.forwardUp.set(1);
  }

  private markDown(err: Error): void {
    if (this.up === false) return;
    const message = this.scrub(err.message ?? String(err));
    // ioredis's own fail-fast errors say nothing about the cause: use the connection's last error instead.
    const reason = CONNECTION_ERRORS.some((e) => message.includes(e)) ? (this.connError ?? `connection to Redis lost (${this.redis.status})`) : message;
    this.o.logger.warn(
      { err: reason, stream: this.o.stream, url: this.redactedUrl, lag_events: this.lag },
      "forwarder: cannot reach Redis; events wait in the local log and are retried with backoff",
    );
    this.up = false;
    this.downSince = Date.now();
    this.o.metrics.forwardUp.set(0);
  }

  /** Full jitter: a random delay up to min(cap, base * 2^attempt). */
  private backoff(): number {
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    this.attempt = Math.min(this.attempt + 1, 30);
    return Math.random() * ceiling;
  }

  private sleep(ms: number, wakeOnNotify: boolean): Promise<void> {
    if (this.stopping || (wakeOnNotify && this.woken)) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.wake = null;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wake = { resolve: done, onNotify: wakeOnNotify };
    });
  }

  /** Ends the current sleep; a notification ends only the idle wait, not a backoff. */
  private interrupt(fromNotify: boolean): void {
    if (this.wake !== null && (!fromNotify || this.wake.onNotify)) this.wake.resolve();
  }

  private scrub(message: string): string {
    let out = message;
    for (const s of this.secrets) out = out.split(s).join("***");
    return out;
  }
}

function parseCheckpoint(text: string): LogPosition | null {
  try {
    const v = JSON.parse(text) as { segment?: unknown; offset?: unknown };
    if (Number.isSafeInteger(v.segment) && Number.isSafeInteger(v.offset) && (v.segment as number) >= 0 && (v.offset as number) >= 0) {
      return { segment: v.segment as number, offset: v.offset as number };
    }
  } catch {
    // fall through
  }
  return null;
}

/** Records from `from` to the durable end of the log (start-up lag). */
function countRecords(log: EventLog, from: LogPosition): number {
  let pos = from;
  let n = 0;
  for (;;) {
    const { records, next } = log.read(pos, BATCH_BYTES);
    n += records.length;
    if (records.length === 0 && next.segment === pos.segment && next.offset === pos.offset) return n;
    pos = next;
  }
}
