/** Process exit codes (BSD sysexits where one fits); the README lists them. */
export const EXIT = {
  OK: 0,
  /** Unexpected failure, or shutdown that could not finish in time. */
  SOFTWARE: 1,
  /** Unknown command or flag. */
  USAGE: 64,
  /** The listen address is in use or the server could not start. */
  UNAVAILABLE: 69,
  /** The data directory or event log cannot be created or opened. */
  CANT_CREATE: 73,
  /** The configuration is invalid (systemd does not restart on this one). */
  CONFIG: 78,
} as const;
