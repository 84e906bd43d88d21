import { createHash } from "node:crypto";
import { mkdirSync, realpathSync } from "node:fs";
import { createServer, type Server } from "node:net";

/** Another process already serves from this data directory. */
export class DataDirInUseError extends Error {}

/**
 * One process per data directory: two would interleave their appends and cut
 * each other's records on recovery. The lock is a listening socket in Linux's
 * abstract namespace named after the directory's real path, so the kernel
 * releases it when the process dies, even after kill -9: no stale lock file
 * can ever block a restart. It covers processes in the same network
 * namespace (one host or one container), which is where a data dir is shared.
 */
export async function lockDataDir(dir: string): Promise<{ release(): void }> {
  mkdirSync(dir, { recursive: true });
  const name = `\0payflux-data-dir:${createHash("sha256").update(realpathSync(dir)).digest("hex").slice(0, 40)}`;
  const server: Server = createServer((socket) => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once("error", (err: NodeJS.ErrnoException) =>
      reject(err.code === "EADDRINUSE" ? new DataDirInUseError(`another payflux process is using the data directory ${dir}`) : err),
    );
    server.listen(name, () => resolve());
  });
  server.unref();
  return { release: () => server.close() };
}
