/** Process exit codes (BSD sysexits where one fits); the README lists them. */
export const EXIT = {
  OK: 0,
  /** Unexpected failure, or shutdown that could not finish in time. */
  SOFTWARE: 1,
  /** Unknown command or flag. */
  USAGE: 64,
  /** Bad input data (hash-key: no key on stdin, or not a key). */
  DATAERR: 65,
  /** The listen address is in use or cannot be bound (e.g. a port below 1024 without the capability). */
  UNAVAILABLE: 69,
  /** The data directory cannot be created, opened or locked (another process uses it). */
  CANT_CREATE: 73,
  /** The configuration is invalid (systemd does not restart on this one). */
  CONFIG: 78,
} as const;
