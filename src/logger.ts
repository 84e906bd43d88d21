import pino, { type Logger } from "pino";
import type { LogLevel } from "./config.ts";

export type { Logger };

/**
 * JSON logs on stdout (journald collects them under systemd). pino's worker
 * transports do not work in a compiled binary, so this writes to fd 1
 * directly. Redaction is a second line of defence: no code path logs a key,
 * a token or an Authorization header in the first place.
 */
export function createLogger(level: LogLevel): Logger {
  return pino(
    {
      level,
      base: { service: "payflux" },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: {
        paths: ["authorization", "headers.authorization", "*.authorization", "token", "key", "apiKey", "*.token", "*.key"],
        censor: "[redacted]",
      },
    },
    pino.destination({ dest: 1, sync: true }),
  );
}

/**
 * Caps repeated warn lines (auth denials, rate-limit hits) so that an attack
 * cannot flood the log: at most `perWindow` lines per kind in each window;
 * the rest are counted and reported in one line when the window ends.
 */
type Fields = Record<string, unknown> | (() => Record<string, unknown>);

export class LogThrottle {
  private readonly counts = new Map<string, { logged: number; suppressed: number }>();
  private readonly timer: ReturnType<typeof setInterval>;

  constructor(
    private readonly logger: () => Logger,
    private readonly perWindow = 10,
    windowMs = 10_000,
  ) {
    this.timer = setInterval(() => this.endWindow(), windowMs);
    this.timer.unref?.();
  }

  /** `fields` may be a function: it runs only when the line is written (a suppressed line costs no lookups). */
  warn(kind: string, fields: Fields, msg: string): void {
    this.log("warn", kind, fields, msg);
  }

  error(kind: string, fields: Fields, msg: string): void {
    this.log("error", kind, fields, msg);
  }

  /** Logs `msg` unless this kind already used its share of the window. */
  private log(level: "warn" | "error", kind: string, fields: Fields, msg: string): void {
    let c = this.counts.get(kind);
    if (c === undefined) this.counts.set(kind, (c = { logged: 0, suppressed: 0 }));
    if (c.logged < this.perWindow) {
      c.logged++;
      this.logger()[level](typeof fields === "function" ? fields() : fields, msg);
    } else {
      c.suppressed++;
    }
  }

  endWindow(): void {
    for (const [kind, c] of this.counts) {
      if (c.suppressed > 0) this.logger().warn({ kind, suppressed: c.suppressed }, `${c.suppressed} similar log lines suppressed`);
    }
    this.counts.clear();
  }

  stop(): void {
    clearInterval(this.timer);
    this.endWindow();
  }
}
