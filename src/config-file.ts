import { readFileSync, statSync } from "node:fs";

/**
 * Reading the env file so that a half-written one is never applied. An editor
 * or `echo >` that rewrites the file in place leaves moments where it holds
 * only its first lines (a revocation dropped) or a key cut short. The rules:
 * - the file must end with a newline (a cut mid-line does not);
 * - an empty file is refused (a rewrite starts by truncating it);
 * - the file is read again after parsing, and size, mtime, inode and content
 *   must not have changed;
 * - a reload first waits until the file has been quiet for SETTLE_MS
 *   (a writer between two of its writes), see waitUntilQuiet.
 * A writer that pauses longer than that at a line boundary cannot be told
 * from a finished file: write the file atomically (systemd/README.md).
 */
export interface FileSnapshot {
  text: string;
  size: number;
  mtimeMs: number;
  ino: number;
}

/** How long a file must stay unchanged before a reload reads it. */
export const SETTLE_MS = 500;
/** Longest a reload waits for a file that keeps changing. */
export const SETTLE_MAX_MS = 5000;

/** Reads the file with its identity; throws the fs error. */
export function readSnapshot(path: string): FileSnapshot {
  const before = statSync(path);
  const text = readFileSync(path, "utf8");
  return { text, size: before.size, mtimeMs: before.mtimeMs, ino: before.ino };
}

/** Why the text looks incomplete, or null. Never quotes the text. */
export function tornReason(path: string, text: string): string | null {
  if (text.length === 0) return `${path} is empty (a rewrite in progress?); write the file to a temporary name and rename it into place`;
  if (!text.endsWith("\n")) {
    return `${path} does not end with a newline, so it may be half-written; end the last line with a newline and write the file atomically (temporary file + rename)`;
  }
  return null;
}

/** True when the file still is what `snap` read (same inode, size, mtime and bytes). */
export function unchanged(path: string, snap: FileSnapshot): boolean {
  try {
    const again = readSnapshot(path);
    return again.ino === snap.ino && again.size === snap.size && again.mtimeMs === snap.mtimeMs && again.text === snap.text;
  } catch {
    return false;
  }
}

/**
 * Resolves true once the file has not changed for `settleMs` (at once when it
 * was last written longer ago), false when it kept changing for `maxMs`.
 */
export async function waitUntilQuiet(path: string, settleMs = SETTLE_MS, maxMs = SETTLE_MAX_MS): Promise<boolean> {
  const deadline = Date.now() + maxMs;
  const identity = () => {
    try {
      const s = statSync(path);
      return `${s.ino}:${s.size}:${s.mtimeMs}`;
    } catch {
      return "missing";
    }
  };
  let last = identity();
  let quietSince = Date.now();
  try {
    const age = Date.now() - statSync(path).mtimeMs;
    if (age >= settleMs) return true;
    quietSince = Date.now() - Math.max(0, age);
  } catch {
    return true; // the loader reports the missing file
  }
  while (Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 25));
    const now = identity();
    if (now !== last) {
      last = now;
      quietSince = Date.now();
    } else if (Date.now() - quietSince >= settleMs) {
      return true;
    }
  }
  return false;
}
