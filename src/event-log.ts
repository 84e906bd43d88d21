import {
  closeSync, constants, fdatasyncSync, fsync, fsyncSync, fstatSync, ftruncateSync, mkdirSync, openSync, readdirSync, readSync, statSync, unlinkSync, writeSync, writev, writevSync,
} from "node:fs";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import { frame, isIntactLine, unframe } from "./record.ts";

/**
 * Append-only event log in PAYFLUX_DATA_DIR: NDJSON segment files named
 * `segment-<20-digit sequence>.ndjson`, so that name order is write order.
 *
 * Framing: every line is one JSON object whose last member is
 * `"crc":"<8 hex>"`, the CRC-32 of the line's bytes before `,"crc"`. A torn
 * or half-written tail (a crash mid-write) fails that check or lacks its
 * newline, and is cut on start-up; acknowledged records are always whole.
 *
 * Durability uses group commit: `append` queues records and returns a
 * promise. One flush at a time writes everything queued as one writev, off
 * the event loop (node's thread pool), to a segment opened with O_DSYNC: the
 * write returns only once its bytes (and the file size) are on disk, as a
 * write followed by fdatasync would, in one trip to the thread pool instead
 * of two. Requests that arrive meanwhile form the next group. All promises of
 * a group resolve together once their bytes are durable. A failed write is
 * cut back off the file and rejects every promise of its group, so nothing
 * half-written is ever acknowledged or followed by more data.
 */
const SEGMENT_NAME = /^segment-(\d{20})\.ndjson$/;
/** Appending, and every write durable before it returns (see above). */
const SEGMENT_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_APPEND | constants.O_DSYNC;
const NEWLINE = 0x0a;
/** Health probes that touch the disk run at most this often. */
const PROBE_INTERVAL_MS = 1000;
/** A storage-full check re-reads the directory at most this often. */
const RESCAN_INTERVAL_MS = 500;

export interface LogLimits {
  /** A segment is closed once it reaches this size. */
  segmentBytes: number;
  /** Closed segments older than this may be deleted. */
  retentionMs: number;
  /** Appends that would take the log past this size are refused (StorageFullError). */
  maxBytes: number;
}

/** A place in the log: byte offset in the segment with this sequence number. */
export interface LogPosition {
  segment: number;
  offset: number;
}

/** Appending would exceed PAYFLUX_STORAGE_MAX_BYTES: back-pressure, nothing was written. */
export class StorageFullError extends Error {}

/** The records are larger than PAYFLUX_STORAGE_MAX_BYTES itself: they could never be stored. */
export class LargerThanStoreError extends Error {}

export interface Recovery {
  segment: string;
  /** Bytes of torn tail cut off the last segment. */
  truncatedBytes: number;
  /** Damaged lines found before the tail (kept in place; readers skip them). */
  corruptLines: number;
}

export interface LogHooks {
  /** Seconds each group's durable write took. */
  onFlush?: (seconds: number) => void;
  /** Records that became durable. */
  onDurable?: (records: number) => void;
  /** The group commit's durable write (node:fs writev on the O_DSYNC segment); tests pass a spy to prove no append resolves before its write returned. */
  writev?: (fd: number, buffers: Buffer[], callback: (err: NodeJS.ErrnoException | null, written: number) => void) => void;
  /** The fsync of the data dir that makes a new segment's entry durable (node:fs fsync); tests pass a spy, as for writev. */
  fsyncDir?: (fd: number, callback: (err: NodeJS.ErrnoException | null) => void) => void;
}

interface Pending {
  /** Framed lines. */
  data: Buffer;
  bytes: number;
  records: number;
  resolve: () => void;
  reject: (err: Error) => void;
}

export function segmentName(seq: number): string {
  return `segment-${String(seq).padStart(20, "0")}.ndjson`;
}

/** Sequence numbers of the segments in `dir`, oldest first. */
export function listSegments(dir: string): number[] {
  return readdirSync(dir)
    .map((n) => SEGMENT_NAME.exec(n)?.[1])
    .filter((s): s is string => s !== undefined)
    .map(Number)
    .sort((a, b) => a - b);
}

/**
 * Splits `buf` into lines; returns the valid records (or, with `asLines`, the
 * intact lines themselves, viewed in `buf`), the damaged-line count and where
 * the last whole line ends.
 */
function scanLines(buf: Uint8Array, asLines = false): { records: Uint8Array[]; damaged: number; lastGoodEnd: number; wholeEnd: number } {
  const records: Uint8Array[] = [];
  let damaged = 0;
  let start = 0;
  let lastGoodEnd = 0;
  for (;;) {
    const nl = buf.indexOf(NEWLINE, start);
    if (nl < 0) break;
    const line = buf.subarray(start, nl);
    const record = asLines ? (isIntactLine(line) ? line : null) : unframe(line);
    if (record === null) damaged++;
    else {
      records.push(record);
      lastGoodEnd = nl + 1;
    }
    start = nl + 1;
  }
  return { records, damaged, lastGoodEnd, wholeEnd: start };
}

/** What a writev of `parts` that wrote `n` bytes left to write. */
function unwritten(parts: Buffer[], n: number): Buffer[] {
  let i = 0;
  while (i < parts.length && n >= parts[i]!.length) n -= parts[i++]!.length;
  if (i === parts.length) return [];
  const rest = parts.slice(i);
  rest[0] = rest[0]!.subarray(n);
  return rest;
}

function groupBytes(group: Pending[]): number {
  let size = 0;
  for (const p of group) size += p.bytes;
  return size;
}

/**
 * The last segment at start-up, read 1 MiB at a time and checked line by line
 * in place (no record is copied out: a 64 MiB segment once took twice its
 * size in memory): where its last intact line ends, and how many damaged
 * lines lie before that line (those stay; damaged lines after it are the
 * torn tail).
 */
function checkSegment(path: string): { size: number; lastGoodEnd: number; corruptLines: number } {
  const fd = openSync(path, "r");
  try {
    const size = fstatSync(fd).size;
    let lastGoodEnd = 0;
    let damaged = 0;
    let damagedSinceGood = 0;
    let chunk = 1 << 20;
    for (let pos = 0; pos < size; ) {
      const buf = Buffer.allocUnsafe(Math.min(chunk, size - pos));
      const got = readSync(fd, buf, 0, buf.length, pos);
      if (got === 0) break;
      let start = 0;
      for (let nl = buf.indexOf(NEWLINE); nl >= 0 && nl < got; nl = buf.indexOf(NEWLINE, start)) {
        if (isIntactLine(buf.subarray(start, nl))) {
          lastGoodEnd = pos + nl + 1;
          damagedSinceGood = 0;
        } else {
          damaged++;
          damagedSinceGood++;
        }
        start = nl + 1;
      }
      if (start === 0 && pos + got < size) {
        chunk *= 2; // one line longer than the chunk
        continue;
      }
      if (start === 0) break; // the rest has no newline: a torn tail
      pos += start;
    }
    return { size, lastGoodEnd, corruptLines: damaged - damagedSinceGood };
  } finally {
    closeSync(fd);
  }
}

export class EventLog {
  private fd: number | null = null;
  private seq = 0;
  /** Bytes of the current segment known to be durable; a failed write is truncated back to this. */
  private durableSize = 0;
  /** Bytes of the closed segments, as of the last directory scan. */
  private closedBytes = 0;
  private closedCount = 0;
  private lastScanAt = 0;
  /** Size of the last append refused as storage_full; 0 once one fits (see `full`). */
  private refusedBytes = 0;
  private queue: Pending[] = [];
  private queuedBytes = 0;
  private scheduled = false;
  /** A group's durable write, or the directory's fsync, is running on the thread pool. */
  private syncing = false;
  /** A new segment's directory entry is not durable yet: the next group waits for the directory's fsync. */
  private dirPending = false;
  /** A directory fsync failed since the current segment was created. */
  private dirSuspect = false;
  private syncingBytes = 0;
  /** Called once the group in flight has settled (close() waits for it). */
  private idleWaiters: (() => void)[] = [];
  private lastFailure: Error | null = null;
  private lastProbeAt = 0;
  /** Why the last retention sweep could not read the directory, or null. */
  sweepFailure: Error | null = null;
  /** Says whether a closed segment may be deleted besides its age (the forwarder: "already forwarded"). */
  private deletable: (seq: number) => boolean = () => true;

  private constructor(
    readonly dir: string,
    private limits: LogLimits,
    private readonly hooks: LogHooks,
    /** What start-up recovery found, if it had to cut anything. */
    readonly recovery: Recovery | null,
  ) {}

  /**
   * Opens (creating if needed) the data dir and recovers the last segment:
   * a torn tail is cut, everything before it stays. Throws when the
   * directory is unusable.
   */
  static open(dir: string, limits: LogLimits, hooks: LogHooks = {}): EventLog {
    mkdirSync(dir, { recursive: true });
    const segments = listSegments(dir);
    const seq = segments.at(-1) ?? 1;
    let recovery: Recovery | null = null;
    let durableSize = 0;
    if (segments.length > 0) {
      const path = join(dir, segmentName(seq));
      const scan = checkSegment(path);
      durableSize = scan.lastGoodEnd;
      if (durableSize < scan.size || scan.corruptLines > 0) {
        recovery = { segment: segmentName(seq), truncatedBytes: scan.size - durableSize, corruptLines: scan.corruptLines };
      }
      if (durableSize < scan.size) {
        const fd = openSync(path, "r+");
        try {
          ftruncateSync(fd, durableSize);
          fdatasyncSync(fd);
        } finally {
          closeSync(fd);
        }
      }
    }
    const log = new EventLog(dir, limits, hooks, recovery);
    log.dirFd = openSync(dir, "r"); // opened now: a failure to open the data dir belongs to start-up, not to a rollover
    log.seq = seq;
    log.openSegment(segments.length > 0 ? durableSize : undefined);
    if (segments.length === 0) log.syncDir();
    log.sweep(0); // sizes only: at time 0 no segment is past retention
    if (log.durableSize >= limits.segmentBytes) log.rollover();
    return log;
  }

  setLimits(limits: LogLimits): void {
    this.limits = limits;
  }

  /** Lets the forwarder keep segments it has not sent yet (see sweep). */
  setDeletable(deletable: (seq: number) => boolean): void {
    this.deletable = deletable;
  }

  /** The error of the last failed write, or null once a write (or probe) succeeded. */
  get failure(): Error | null {
    return this.lastFailure;
  }

  /** Bytes on disk (closed segments + the durable part of the current one) and segment count. */
  get stats(): { bytes: number; segments: number } {
    return { bytes: this.closedBytes + this.durableSize, segments: this.closedCount + 1 };
  }

  get segmentPath(): string {
    return join(this.dir, segmentName(this.seq));
  }

  /** Where durable data ends now: the forwarder never reads past it. */
  durableEnd(): LogPosition {
    return { segment: this.seq, offset: this.durableSize };
  }

  /**
   * Queues records (JSON object texts, one event each); resolves once they
   * are on disk and flushed. Rejects with StorageFullError, writing nothing,
   * when they would take the log past PAYFLUX_STORAGE_MAX_BYTES.
   */
  append(records: string[]): Promise<void> {
    return this.appendFramed(frame(records), records.length);
  }

  /** The same for records already framed as log lines (src/record.ts): `count` of them in `data`. */
  appendFramed(data: Buffer, count: number): Promise<void> {
    const bytes = data.length;
    if (bytes > this.limits.maxBytes) return Promise.reject(new LargerThanStoreError("larger than PAYFLUX_STORAGE_MAX_BYTES"));
    if (this.wouldExceed(bytes)) {
      this.refusedBytes = bytes;
      return Promise.reject(new StorageFullError("the event log is at PAYFLUX_STORAGE_MAX_BYTES"));
    }
    this.refusedBytes = 0;
    return new Promise<void>((resolve, reject) => {
      this.queue.push({ data, bytes, records: count, resolve, reject });
      this.queuedBytes += bytes;
      if (!this.scheduled && !this.syncing) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    });
  }

  /**
   * True while the last append was refused as storage_full and the same
   * bytes still would not fit (the disk is looked at again at most every
   * RESCAN_INTERVAL_MS, so room made by retention or an operator shows).
   */
  get full(): boolean {
    if (this.refusedBytes === 0) return false;
    if (!this.wouldExceed(this.refusedBytes)) this.refusedBytes = 0;
    return this.refusedBytes !== 0;
  }

  private wouldExceed(bytes: number): boolean {
    const used = () => this.closedBytes + this.durableSize + this.syncingBytes + this.queuedBytes + bytes;
    if (used() <= this.limits.maxBytes) return false;
    // Room may have been made since the last look (retention, an operator): look again.
    const now = Date.now();
    if (now - this.lastScanAt >= RESCAN_INTERVAL_MS) this.sweep(now);
    return used() > this.limits.maxBytes;
  }

  /**
   * Starts writing the queued group unless a flush is already running (its
   * end starts the next). The durable write runs on the thread pool: the
   * event loop never waits for the disk.
   */
  private flush(): void {
    this.scheduled = false;
    if (this.syncing || this.queue.length === 0) return;
    try {
      // First the file (a failed rollover may have left none), then its directory entry's fsync.
      if (this.fd === null) this.openSegment(this.durableSize);
    } catch (err) {
      this.settle(this.takeQueue(), err as Error);
      return;
    }
    if (this.dirPending) return this.syncDirThen(() => this.flush());
    const group = this.takeQueue();
    const started = performance.now();
    const fd = this.fd!;
    // One writev of the appends' own buffers: concatenating them first cost a copy and a large allocation per group.
    let parts = group.map((p) => p.data);
    const size = groupBytes(group);
    this.syncing = true;
    this.syncingBytes = size;
    const done = (err: NodeJS.ErrnoException | null) => {
      this.syncing = false;
      this.syncingBytes = 0;
      if (err) this.settle(group, err);
      else this.commit(group, size, started);
      this.wakeIdle();
      this.flush();
    };
    const writeRest = () =>
      (this.hooks.writev ?? writev)(fd, parts, (err, n) => {
        if (err) return done(err);
        if (n === 0) return done(Object.assign(new Error("the durable write made no progress"), { code: "EIO" }));
        parts = unwritten(parts, n);
        if (parts.length > 0) return writeRest();
        done(null);
      });
    writeRest();
  }

  /**
   * Makes the directory entry of the segment just started durable on the
   * thread pool (no request waits on the event loop for it), then `next`.
   * If it fails, what is queued fails with it (nothing of it was written) and
   * the next flush tries again.
   */
  private syncDirThen(next: () => void): void {
    this.syncing = true;
    (this.hooks.fsyncDir ?? fsync)(this.dirFd, (err) => {
      this.syncing = false;
      if (err) this.dirSyncFailed(err);
      else if (this.dirSuspect) {
        // A success after a failure proves nothing on Linux (the failed change may be gone):
        // the records go to a segment whose entry a later fsync covers whole.
        this.dirSuspect = false;
        try {
          this.rollover();
        } catch (e) {
          this.fail(e as Error);
        }
      } else this.dirPending = false;
      this.wakeIdle();
      if (!err) next();
    });
  }

  /** What is queued fails (none of it was written); the next flush tries again, on a new segment (see syncDirThen). */
  private dirSyncFailed(err: NodeJS.ErrnoException): void {
    this.lastFailure = err;
    this.dirSuspect = true;
    for (const p of this.takeQueue()) p.reject(err);
    this.wakeIdle();
  }

  private wakeIdle(): void {
    const waiters = this.idleWaiters;
    this.idleWaiters = [];
    for (const w of waiters) w();
  }

  private takeQueue(): Pending[] {
    const group = this.queue;
    this.queue = [];
    this.queuedBytes = 0;
    return group;
  }

  /** Writes a group synchronously (shutdown only); returns its size. */
  private writeSync(group: Pending[]): number {
    if (this.fd === null) this.openSegment(this.durableSize);
    for (let parts = group.map((p) => p.data); parts.length > 0; ) parts = unwritten(parts, writevSync(this.fd!, parts));
    return groupBytes(group);
  }

  private commit(group: Pending[], bytes: number, started: number): void {
    this.durableSize += bytes;
    this.lastFailure = null;
    this.hooks.onFlush?.((performance.now() - started) / 1000);
    try {
      if (this.durableSize >= this.limits.segmentBytes) this.rollover();
    } catch (err) {
      this.fail(err as Error); // the group is durable; the next append retries the new segment
    }
    let records = 0;
    for (const p of group) {
      records += p.records;
      p.resolve();
    }
    this.hooks.onDurable?.(records);
  }

  private settle(group: Pending[], err: Error): void {
    this.fail(err);
    for (const p of group) p.reject(err);
  }

  /** Writes and syncs everything still queued, synchronously (shutdown, once no group is in flight). */
  private flushSync(): void {
    if (this.queue.length === 0) return;
    const group = this.takeQueue();
    const started = performance.now();
    try {
      if (this.fd === null) this.openSegment(this.durableSize);
      if (this.dirPending) this.syncDir();
      const bytes = this.writeSync(group); // O_DSYNC: durable when it returns
      this.commit(group, bytes, started);
    } catch (err) {
      this.settle(group, err as Error);
    }
  }

  /** For /health: false after a failed write until a write or a background probe (`recheck`) succeeds. */
  get writable(): boolean {
    return this.lastFailure === null;
  }

  /**
   * After a failure, checks the disk again (at most once a second) by writing
   * and syncing a probe file, so an idle instance recovers without waiting for
   * traffic. Runs on a timer, never on the request path.
   */
  recheck(now = Date.now()): boolean {
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

  /**
   * Retention: deletes closed segments, oldest first, that are older than
   * PAYFLUX_RETENTION and that `deletable` allows (already forwarded), and
   * re-reads the sizes of the others (an operator may have removed some).
   * Returns how many segments were deleted. Never throws: when the directory
   * cannot be read (out of file descriptors, say) it keeps the sizes it knew
   * and reports the error in `sweepFailure`.
   */
  sweep(now = Date.now()): number {
    let deleted = 0;
    let bytes = 0;
    let count = 0;
    let expiring = true; // deletion stops at the first segment that must stay
    try {
      for (const seq of listSegments(this.dir)) {
        if (seq >= this.seq) break;
        const path = join(this.dir, segmentName(seq));
        let st;
        try {
          st = statSync(path);
        } catch {
          continue; // vanished meanwhile
        }
        expiring &&= now - st.mtimeMs >= this.limits.retentionMs && this.deletable(seq);
        if (expiring) {
          unlinkSync(path);
          deleted++;
        } else {
          bytes += st.size;
          count++;
        }
      }
    } catch (err) {
      this.sweepFailure = err as Error;
      return deleted;
    }
    this.sweepFailure = null;
    this.closedBytes = bytes;
    this.closedCount = count;
    this.lastScanAt = now;
    return deleted;
  }

  /**
   * Reads durable records from `from`, at most about `maxBytes` (always at
   * least one record), moving on to the next segment at a segment's end.
   * Damaged lines are skipped. `next` is where the following read starts.
   */
  read(from: LogPosition, maxBytes: number): { records: Buffer[]; next: LogPosition } {
    return this.readLines(from, maxBytes, false) as { records: Buffer[]; next: LogPosition };
  }

  /** The same, as the intact lines themselves (framed, crc included), viewed in one buffer: no copy per record (the start-up replay of the dedup window). */
  readLines(from: LogPosition, maxBytes: number, asLines = true): { records: Uint8Array[]; next: LogPosition } {
    let { segment, offset } = from;
    const end = this.durableEnd();
    for (;;) {
      if (segment > end.segment) return { records: [], next: { segment, offset } };
      const path = join(this.dir, segmentName(segment));
      let limit: number;
      try {
        limit = segment === end.segment ? end.offset : statSync(path).size;
      } catch {
        // The segment is gone (deleted by hand): continue with the next one that exists.
        const nextSeq = listSegments(this.dir).find((s) => s > segment);
        if (nextSeq === undefined) return { records: [], next: { segment, offset } };
        segment = nextSeq;
        offset = 0;
        continue;
      }
      if (offset >= limit) {
        if (segment === end.segment) return { records: [], next: { segment, offset } };
        segment++;
        offset = 0;
        continue;
      }
      const fd = openSync(path, "r");
      try {
        let size = Math.min(maxBytes, limit - offset);
        for (;;) {
          const buf = Buffer.allocUnsafe(size);
          const got = readSync(fd, buf, 0, size, offset);
          const scan = scanLines(buf.subarray(0, got), asLines);
          if (scan.wholeEnd > 0) return { records: scan.records, next: { segment, offset: offset + scan.wholeEnd } };
          if (size >= limit - offset) {
            // A closed segment that ends without a newline: skip its tail.
            return { records: [], next: { segment: segment + 1, offset: 0 } };
          }
          size = Math.min(size * 2, limit - offset); // one record is longer than maxBytes
        }
      } finally {
        closeSync(fd);
      }
    }
  }

  /**
   * An identity of a segment's content: the CRC-32 of its first line (or of
   * its first 4 KiB), never 0; null when it is gone or empty. A segment made
   * again under the same name after the log was reset has another.
   */
  segmentTag(seq: number): number | null {
    let fd: number;
    try {
      fd = openSync(join(this.dir, segmentName(seq)), "r");
    } catch {
      return null;
    }
    try {
      const head = Buffer.allocUnsafe(4096);
      const got = readSync(fd, head, 0, head.length, 0);
      if (got === 0) return null;
      const nl = head.subarray(0, got).indexOf(NEWLINE);
      return crc32(head.subarray(0, nl < 0 ? got : nl)) || 1;
    } finally {
      closeSync(fd);
    }
  }

  /** Modification time of a segment (ms), or null if it is gone. */
  segmentMtime(seq: number): number | null {
    try {
      return statSync(join(this.dir, segmentName(seq))).mtimeMs;
    } catch {
      return null;
    }
  }

  segments(): number[] {
    return listSegments(this.dir);
  }

  /** Waits for the group in flight, flushes what is queued and closes the segment (graceful shutdown). */
  async close(): Promise<void> {
    while (this.syncing) await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    this.flushSync();
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
    if (this.dirFd >= 0) closeSync(this.dirFd);
    this.dirFd = -1;
  }

  /**
   * Opens the current segment for appending. With `durableSize` (a reopen after
   * a failure) bytes past it are cut: a failed write may have left some there.
   */
  private openSegment(durableSize?: number): void {
    const fd = openSync(this.segmentPath, SEGMENT_FLAGS, 0o666);
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
    this.closedBytes += this.durableSize;
    this.closedCount++;
    this.seq++;
    this.durableSize = 0; // also right if opening fails: the next write retries this new, empty segment
    this.dirPending = true; // its records are acknowledged only once its directory entry is durable (see flush)
    this.openSegment();
  }

  /** Makes a new segment's directory entry durable, so its synced records survive a power loss (start-up, shutdown). */
  private syncDir(): void {
    fsyncSync(this.dirFd);
    this.dirPending = false;
  }

  /** The data dir, open for its fsyncs from start-up to close(). */
  private dirFd = -1;

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

