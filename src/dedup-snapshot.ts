import { closeSync, fsyncSync, openSync, readFileSync, renameSync, unlinkSync, writeSync } from "node:fs";
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
  ids: Uint32Array;
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

/** The snapshot, removed from the disk; null when there is none or it is damaged (then the log is read instead). */
export function takeSnapshot(dataDir: string): Snapshot | null {
  const path = join(dataDir, FILE);
  let buf: Buffer;
  try {
    buf = readFileSync(path);
  } catch {
    return null;
  }
  try {
    unlinkSync(path);
  } catch {
    return null; // a snapshot that cannot be removed could be loaded again after a crash: ignore it
  }
  if (buf.length < HEADER_BYTES || buf.toString("latin1", 0, 8) !== MAGIC) return null;
  const count = buf.readUInt32LE(8);
  if (buf.length !== HEADER_BYTES + count * 20) return null;
  const body = buf.subarray(HEADER_BYTES);
  if (crc32(body) !== buf.readUInt32LE(12)) return null;
  // A view when the words are aligned (a large file is read into its own buffer), else a copy:
  // a million ids are 20 MB, and a second copy stays in the resident set after start-up.
  let ids: Uint32Array;
  if (body.byteOffset % 4 === 0) ids = new Uint32Array(body.buffer, body.byteOffset, count * 5);
  else {
    ids = new Uint32Array(count * 5);
    new Uint8Array(ids.buffer).set(body);
  }
  return {
    ids,
    base: buf.readDoubleLE(40),
    windowSec: buf.readUInt32LE(16),
    position: { segment: buf.readDoubleLE(24), offset: buf.readDoubleLE(32) },
  };
}
