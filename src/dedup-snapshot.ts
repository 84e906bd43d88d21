import { close as closeAsync, closeSync, constants, fstatSync, open, openSync, readSync, rename, unlink, unlinkSync, write } from "node:fs";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import type { LogPosition } from "./event-log.ts";

/**
 * The duplicate window saved in the data dir (`dedup.snapshot`) at a clean
 * shutdown and, as a checkpoint, in the background while the service runs
 * (see CheckpointSchedule), so that a restart, after a crash too, loads millions
 * of ids in a fraction of a second instead of re-parsing a day of the event
 * log. It says where in the log it was taken; start-up adds the ids of the
 * records written after that point. Every id committed before it was taken
 * is in it (an id is committed as its record becomes durable, before any
 * timer runs), and every later one is in the log after its position, so an
 * older snapshot is never wrong, only slower to catch up from: it stays
 * until a newer one replaces it.
 *
 * Layout: "PFDEDUP3", u32 count, u32 CRC-32 (of the header's bytes 16-47,
 * then of the entries), u32 window in seconds, u32 tag of the log at the
 * position (see snapshotMisfit; 0: none), f64 segment, f64 offset, f64 base
 * (ms), then `count` entries of 5 little-endian u32 (the id's four words,
 * expiry in 10 ms ticks after base), oldest first; an id may appear more
 * than once (the last one holds its expiry). A PFDEDUP2 file (the version
 * before: its CRC covers the entries only, and it has no tag) is read too.
 */
const FILE = "dedup.snapshot";
const MAGIC = "PFDEDUP3";
const MAGIC_V2 = "PFDEDUP2";
const HEADER_BYTES = 48;

export interface Snapshot {
  /** The entries, 5 words each, read from the file a chunk at a time (each chunk's view is reused by the next). */
  chunks: () => Generator<Uint32Array>;
  count: number;
  base: number;
  windowSec: number;
  position: LogPosition;
  /** The log's segmentTag at the position when it was taken (0: none). */
  tag: number;
  /** Lets go of the file without reading it (a snapshot not used); `chunks()` read to the end does it too. */
  close: () => void;
}

/** The window to save (DedupIndex.window()): entries read a chunk at a time, 5 words each. */
export interface WindowSource {
  count: number;
  base: number;
  chunks: () => Iterable<Uint32Array>;
  /** True once the entries no longer match `base`: the file is dropped. */
  stale: () => boolean;
}

/**
 * Writes the snapshot off the event loop, a chunk at a time on the thread
 * pool (a window of ten million ids is 200 MB), to a temporary file that is
 * renamed over the previous snapshot once whole and durable: a crash at any
 * point leaves the old one or the new one. The file is opened with O_DSYNC,
 * so each ~1.3 MB chunk reaches the disk before the next is written: the
 * event log's own durable writes never queue behind hundreds of MB of dirty
 * pages flushed at once. One write at a time (the caller waits for a
 * checkpoint in flight before the shutdown's).
 */
export async function writeSnapshot(dataDir: string, window: WindowSource, windowMs: number, position: LogPosition, tag: number): Promise<void> {
  const tmp = join(dataDir, `${FILE}.tmp`);
  const fd = await call<number>((cb) => open(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_DSYNC, 0o666, cb));
  const header = Buffer.alloc(HEADER_BYTES);
  header.write(MAGIC, 0, "latin1");
  header.writeUInt32LE(window.count, 8);
  header.writeUInt32LE(Math.round(windowMs / 1000), 16);
  header.writeUInt32LE(tag, 20);
  header.writeDoubleLE(position.segment, 24);
  header.writeDoubleLE(position.offset, 32);
  header.writeDoubleLE(window.base, 40);
  let crc = crc32(header.subarray(16));
  /** Writes all of `bytes` at `at`: a write that makes no progress fails (as the event log's). */
  const writeAll = async (bytes: Uint8Array, at: number) => {
    for (let done = 0; done < bytes.length; ) {
      const n = await call<number>((cb) => write(fd, bytes, done, bytes.length - done, at + done, cb));
      if (n === 0) throw Object.assign(new Error("the snapshot write made no progress"), { code: "EIO" });
      done += n;
    }
  };
  const removeTmp = () => call<void>((cb) => unlink(tmp, cb)).catch(() => {});
  try {
    let at = HEADER_BYTES;
    for (const words of window.chunks()) {
      const bytes = new Uint8Array(words.buffer, words.byteOffset, words.byteLength);
      crc = crc32(bytes, crc);
      await writeAll(bytes, at);
      at += bytes.length;
    }
    if (window.stale()) throw new Error("the dedup index was rebased while the snapshot was written");
    header.writeUInt32LE(crc, 12);
    await writeAll(header, 0); // O_DSYNC: durable, as every chunk before it
  } catch (err) {
    await call<void>((cb) => closeAsync(fd, cb)).catch(() => {});
    await removeTmp();
    throw err;
  }
  try {
    await call<void>((cb) => closeAsync(fd, cb));
    await call<void>((cb) => rename(tmp, join(dataDir, FILE), cb));
  } catch (err) {
    await removeTmp();
    throw err;
  }
}

/** A node:fs callback call as a promise. */
function call<T>(run: (cb: (err: NodeJS.ErrnoException | null, value?: T) => void) => void): Promise<T> {
  return new Promise<T>((resolve, reject) => run((err, value) => (err ? reject(err) : resolve(value as T))));
}

/**
 * Checkpoints are at least CHECKPOINT_MIN_MS apart, and the pause after one
 * is DUTY times as long as it took (a checkpoint writes at most a tenth of
 * the time); after a failure the next waits RETRY_MIN_MS, doubling up to
 * RETRY_MAX_MS.
 */
const CHECKPOINT_MIN_MS = 1000;
const DUTY = 10;
const RETRY_MIN_MS = 60_000;
const RETRY_MAX_MS = 600_000;

/**
 * When to write a checkpoint: once the ids committed since the last one
 * reach a quarter of the window (at least 100,000, at most 1,000,000), so
 * that a restart after a crash reads at most about a million records of the
 * log and each id is written to checkpoints a few times over its life; at
 * most a tenth of the time spent writing them; and after a failure (a full
 * disk, say: the file needs room the storage cap does not count) only after
 * a growing pause, so that failing rewrites never take the disk from the
 * event log for long.
 */
export class CheckpointSchedule {
  private notBefore: number;
  private added: number;
  private retryMs = 0;

  constructor(now: number, added: number) {
    this.notBefore = now + CHECKPOINT_MIN_MS;
    this.added = added;
  }

  /** `added`: the index's count of ids committed (mod 2^32); `held`: ids it holds. */
  due(now: number, added: number, held: number): boolean {
    const fresh = (added - this.added) >>> 0;
    return now >= this.notBefore && fresh >= Math.max(100_000, Math.min(1_000_000, held / 4));
  }

  /** A checkpoint that began when the index had counted `added` ids is written; it took `tookMs`. */
  written(now: number, added: number, tookMs: number): void {
    this.added = added;
    this.retryMs = 0;
    this.notBefore = now + Math.max(CHECKPOINT_MIN_MS, DUTY * tookMs);
  }

  failed(now: number): void {
    this.retryMs = Math.min(RETRY_MAX_MS, Math.max(RETRY_MIN_MS, this.retryMs * 2));
    this.notBefore = now + this.retryMs;
  }
}

/** Entries read per chunk (1 MiB of them): a snapshot of ten million ids is never in memory whole. */
const CHUNK_ENTRIES = 52_428;

/**
 * The snapshot, or null when there is none or it is damaged (then the log is
 * read instead). Its CRC is checked in a first pass over the file, a chunk at
 * a time; `chunks()` reads it again (from the page cache) for the import, so
 * neither pass holds more than one chunk.
 */
export function readSnapshot(dataDir: string, onDamaged: () => void = () => {}): Snapshot | null {
  const path = join(dataDir, FILE);
  try {
    unlinkSync(`${path}.tmp`); // left by a checkpoint cut short (kill -9)
  } catch {
    // none
  }
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch {
    return null;
  }
  const damaged = (fd: number) => {
    closeSync(fd);
    onDamaged();
    return null;
  };
  const header = Buffer.alloc(HEADER_BYTES);
  const chunk = new Uint32Array(CHUNK_ENTRIES * 5);
  const bytes = new Uint8Array(chunk.buffer);
  /** Reads `length` bytes at `position` into `into`; false when the file ends first. */
  const readAll = (into: Uint8Array, length: number, position: number) => {
    for (let got = 0; got < length; ) {
      const n = readSync(fd, into, got, length - got, position + got);
      if (n === 0) return false;
      got += n;
    }
    return true;
  };
  const entries = function* (count: number) {
    for (let done = 0; done < count; ) {
      const n = Math.min(CHUNK_ENTRIES, count - done);
      if (!readAll(bytes, n * 20, HEADER_BYTES + done * 20)) throw new Error("the dedup snapshot ended early");
      yield chunk.subarray(0, n * 5);
      done += n;
    }
  };
  try {
    if (!readAll(header, HEADER_BYTES, 0)) return damaged(fd);
    const magic = header.toString("latin1", 0, 8);
    if (magic !== MAGIC && magic !== MAGIC_V2) return damaged(fd);
    const count = header.readUInt32LE(8);
    if (fstatSync(fd).size !== HEADER_BYTES + count * 20) return damaged(fd);
    let crc = magic === MAGIC ? crc32(header.subarray(16)) : 0;
    for (const words of entries(count)) crc = crc32(new Uint8Array(words.buffer, words.byteOffset, words.byteLength), crc);
    if (crc !== header.readUInt32LE(12)) return damaged(fd);
    return {
      chunks: function* () {
        try {
          yield* entries(count);
        } finally {
          closeSync(fd);
        }
      },
      count,
      base: header.readDoubleLE(40),
      windowSec: header.readUInt32LE(16),
      tag: magic === MAGIC ? header.readUInt32LE(20) : 0,
      close: () => closeSync(fd),
      position: { segment: header.readDoubleLE(24), offset: header.readDoubleLE(32) },
    };
  } catch {
    return damaged(fd);
  }
}

/** What a snapshot's log position needs of the event log. */
export interface TaggedLog {
  durableEnd(): LogPosition;
  /** An identity of a segment's content (segmentTag), null when it is gone or empty. */
  segmentTag(seq: number): number | null;
}

/**
 * Why a snapshot does not belong to this event log, or null when it does:
 * the log ends before its position (segments deleted to start afresh, or
 * restored from an older backup), or the segment at its position is not the
 * one it was taken in (its first line differs). Loading such a snapshot
 * would keep ids the log no longer holds, or skip records it does hold.
 */
export function snapshotMisfit(snapshot: Pick<Snapshot, "position" | "tag">, log: TaggedLog): string | null {
  const { segment, offset } = snapshot.position;
  const end = log.durableEnd();
  // {end + 1, 0} is the end too: a rollover whose new, empty segment a power loss took back.
  const atNextStart = segment === end.segment + 1 && offset === 0;
  if (!atNextStart && (segment > end.segment || (segment === end.segment && offset > end.offset))) return "the event log ends before the snapshot's position";
  const tag = log.segmentTag(segment);
  if (snapshot.tag !== 0 && tag !== null && tag !== snapshot.tag) return "the segment at the snapshot's position is not the one it was taken in";
  return null;
}
