import { closeSync, fdatasync, fdatasyncSync, fstatSync, ftruncateSync, mkdirSync, openSync, readdirSync, readSync, unlinkSync, writeSync } from "node:fs";
import { join } from "node:path";

/**
 * Append-only event log in PAYFLUX_DATA_DIR: NDJSON segment files named
 * `segment-<20-digit sequence>.ndjson`, so that name order is write order.
 *
 * Durability uses group commit: `append` queues text and returns a promise.
 * One flush at a time writes everything queued as one write and runs one
 * fdatasync off the event loop (node's thread pool); requests that arrive
 * meanwhile form the next group. All promises of a group resolve together
 * once their bytes are durable. A failed write or sync is cut back off the
 * file and rejects every promise of its group, so nothing half-written is
 * ever acknowledged or followed by more data.
 */
export const SEGMENT_MAX_BYTES = 64 * 1024 * 1024;
const SEGMENT_NAME = /^segment-(\d{20})\.ndjson$/;
/** Health probes that touch the disk run at most this often. */
const PROBE_INTERVAL_MS = 1000;

interface Pending {
  text: string;
  resolve: () => void;
  reject: (err: Error) => void;
}

export function segmentName(seq: number): string {
  return `segment-${String(seq).padStart(20, "0")}.ndjson`;
}

export function listSegments(dir: string): string[] {
  return readdirSync(dir).filter((n) => SEGMENT_NAME.test(n)).sort();
}

export class EventLog {
  private fd: number | null = null;
  private seq = 0;
  /** Bytes of the current segment known to be durable; a failed write is truncated back to this. */
  private durableSize = 0;
  private queue: Pending[] = [];
  private scheduled = false;
  /** A group's fdatasync is running on the thread pool. */
  private syncing = false;
  private lastFailure: Error | null = null;
  private lastProbeAt = 0;

  private constructor(readonly dir: string) {}

  /** Opens (creating if needed) the data dir; throws with a clear message when it is unusable. */
  static open(dir: string): EventLog {
    mkdirSync(dir, { recursive: true });
    const log = new EventLog(dir);
    const segments = listSegments(dir);
    const last = segments.at(-1);
    log.seq = last === undefined ? 1 : Number(SEGMENT_NAME.exec(last)![1]);
    log.openSegment();
    // Never append after a partial last line or to a full segment: start a new one.
    if (log.durableSize >= SEGMENT_MAX_BYTES || !log.endsWithNewline()) log.rollover();
    return log;
  }

  /** The error of the last failed write, or null once a write (or probe) succeeded. */
  get failure(): Error | null {
    return this.lastFailure;
  }

  /** Queues `text` (whole NDJSON lines); resolves once it is on disk and flushed. */
  append(text: string): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ text, resolve, reject });
      if (!this.scheduled && !this.syncing) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  /** Starts writing the queued group unless a flush is already running (its end starts the next). */
  private flush(): void {
    this.scheduled = false;
    if (this.syncing || this.queue.length === 0) return;
    const group = this.queue;
    this.queue = [];
    let fd: number;
    let size: number;
    try {
      size = this.write(group);
      fd = this.fd!;
    } catch (err) {
      this.settle(group, err as Error);
      return;
    }
    this.syncing = true;
    fdatasync(fd, (err) => {
      this.syncing = false;
      if (err) this.settle(group, err);
      else this.commit(group, size);
      this.flush();
    });
  }

  /** Writes a group to the page cache; returns the segment size once it is durable. */
  private write(group: Pending[]): number {
    if (this.fd === null) this.openSegment(this.durableSize);
    const data = Buffer.from(group.length === 1 ? group[0]!.text : group.map((p) => p.text).join(""));
    let written = 0;
    while (written < data.length) written += writeSync(this.fd!, data, written, data.length - written);
    return this.durableSize + data.length;
  }

  private commit(group: Pending[], size: number): void {
    this.durableSize = size;
    this.lastFailure = null;
    try {
      if (this.durableSize >= SEGMENT_MAX_BYTES) this.rollover();
    } catch (err) {
      this.fail(err as Error); // the group is durable; the next append retries the new segment
    }
    for (const p of group) p.resolve();
  }

  private settle(group: Pending[], err: Error): void {
    this.fail(err);
    for (const p of group) p.reject(err);
  }

  /** Writes and syncs everything still queued, synchronously (shutdown). */
  flushSync(): void {
    const group = this.queue;
    this.queue = [];
    if (group.length === 0) return;
    try {
      const size = this.write(group);
      fdatasyncSync(this.fd!);
      this.commit(group, size);
    } catch (err) {
      this.settle(group, err as Error);
    }
  }

  /**
   * For /health: true when the log can be written. After a failure it checks
   * the disk again (at most once a second) by writing and syncing a probe file,
   * so an idle instance recovers without waiting for traffic.
   */
  probe(now = Date.now()): boolean {
    if (this.lastFailure === null) return true;
    if (now - this.lastProbeAt < PROBE_INTERVAL_MS) return false;
    this.lastProbeAt = now;
    const path = join(this.dir, ".write-probe");
    try {
      const fd = openSync(path, "w");
      try {
        writeSync(fd, "ok\n");
        fdatasyncSync(fd);
      } finally {
        closeSync(fd);
        unlinkSync(path);
      }
      if (this.fd === null) this.openSegment(this.durableSize);
      this.lastFailure = null;
      return true;
    } catch {
      return false;
    }
  }

  /** Flushes what is queued and closes the segment (graceful shutdown). */
  close(): void {
    this.flushSync();
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }

  get segmentPath(): string {
    return join(this.dir, segmentName(this.seq));
  }

  /**
   * Opens the current segment for appending. With `durableSize` (a reopen after
   * a failure) bytes past it are cut: a failed write may have left some there.
   */
  private openSegment(durableSize?: number): void {
    const fd = openSync(this.segmentPath, "a");
    try {
      const size = fstatSync(fd).size;
      if (durableSize !== undefined && size > durableSize) ftruncateSync(fd, durableSize);
      this.durableSize = durableSize === undefined ? size : Math.min(size, durableSize);
    } catch (err) {
      closeSync(fd);
      throw err;
    }
    this.fd = fd;
  }

  private rollover(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
    this.seq++;
    this.openSegment();
  }

  private endsWithNewline(): boolean {
    if (this.durableSize === 0) return true;
    const last = Buffer.alloc(1);
    const fd = openSync(this.segmentPath, "r");
    try {
      readSync(fd, last, 0, 1, this.durableSize - 1);
    } finally {
      closeSync(fd);
    }
    return last[0] === 0x0a;
  }

  private fail(err: Error): void {
    this.lastFailure = err;
    if (this.fd === null) return;
    try {
      ftruncateSync(this.fd, this.durableSize);
    } catch {
      // Cut again when the segment is reopened (see openSegment).
    }
    try {
      closeSync(this.fd);
    } catch {
      // The descriptor is gone either way.
    }
    this.fd = null;
  }
}
