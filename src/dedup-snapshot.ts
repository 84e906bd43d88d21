import { closeSync, fstatSync, fsyncSync, openSync, readSync, renameSync, unlinkSync, writeSync } from "node:fs";
import { join } from "node:path";
import { crc32 } from "node:zlib";
import type { LogPosition } from "./event-log.ts";

/**
 * The duplicate window saved at a clean shutdown (`dedup.snapshot` in the data
 * dir), so that a restart loads ten million ids in milliseconds instead of
 * re-parsing a day of the event log. It says where in the log it was taken;
 * start-up adds the records written after that point, so a snapshot is never
 * wrong, only possibly short of ids that a crash kept it from seeing (then the
 * log is read as before). It is deleted once loaded: a later crash must not
 * find a stale one.
 *
 * Layout: "PFDEDUP2", u32 count, u32 CRC-32 of the entries, u32 window in
 * seconds, u32 reserved, f64 segment, f64 offset, f64 base (ms), then `count`
 * entries of 5 little-endian u32 (the id's four words, expiry in 10 ms ticks
 * after base).
 */
const FILE = "dedup.snapshot";
const MAGIC = "PFDEDUP2";
const HEADER_BYTES = 48;

export interface Snapshot {
  /** The entries, 5 words each, read from the file a chunk at a time (each chunk's view is reused by the next). */
  chunks: () => Generator<Uint32Array>;
  count: number;
  base: number;
  windowSec: number;
  position: LogPosition;
}

export function writeSnapshot(dataDir: string, { words: ids, base }: { words: Uint32Array; base: number }, windowMs: number, position: LogPosition): void {
  const body = new Uint8Array(ids.buffer, ids.byteOffset, ids.byteLength);
  const header = Buffer.alloc(HEADER_BYTES);
  header.write(MAGIC, 0, "latin1");
  header.writeUInt32LE(ids.length / 5, 8);
  header.writeUInt32LE(crc32(body), 12);
  header.writeUInt32LE(Math.round(windowMs / 1000), 16);
  header.writeDoubleLE(position.segment, 24);
  header.writeDoubleLE(position.offset, 32);
  header.writeDoubleLE(base, 40);
  const tmp = join(dataDir, `${FILE}.tmp`);
  const fd = openSync(tmp, "w");
  try {
    writeSync(fd, header);
    let written = 0;
    while (written < body.length) written += writeSync(fd, body, written, body.length - written);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, join(dataDir, FILE));
}

/** Entries read per chunk (1 MiB of them): a snapshot of ten million ids is never in memory whole. */
const CHUNK_ENTRIES = 52_428;

/**
 * The snapshot, removed from the disk; null when there is none or it is
 * damaged (then the log is read instead). Its CRC is checked in a first pass
 * over the file, a chunk at a time; `chunks()` reads it again (from the page
 * cache) for the import, so neither pass holds more than one chunk.
 */
export function takeSnapshot(dataDir: string): Snapshot | null {
  const path = join(dataDir, FILE);
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch {
    return null;
  }
  try {
    unlinkSync(path); // the open descriptor still reads it
  } catch {
    closeSync(fd);
    return null; // a snapshot that cannot be removed could be loaded again after a crash: ignore it
  }
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
    if (!readAll(header, HEADER_BYTES, 0) || header.toString("latin1", 0, 8) !== MAGIC) return close(fd);
    const count = header.readUInt32LE(8);
    if (fstatSync(fd).size !== HEADER_BYTES + count * 20) return close(fd);
    let crc = 0;
    for (const words of entries(count)) crc = crc32(new Uint8Array(words.buffer, words.byteOffset, words.byteLength), crc);
    if (crc !== header.readUInt32LE(12)) return close(fd);
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
      position: { segment: header.readDoubleLE(24), offset: header.readDoubleLE(32) },
    };
  } catch {
    return close(fd);
  }
}

function close(fd: number): null {
  closeSync(fd);
  return null;
}
