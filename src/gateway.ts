import type { Incoming } from "./exchange.ts";
import type { Config } from "./config.ts";
import type { DedupIndex } from "./dedup.ts";
import type { EventLog } from "./event-log.ts";
import type { Forwarder } from "./forwarder.ts";
import type { AddressLimiter } from "./address-limiter.ts";
import type { RateLimiter } from "./limiter.ts";
import type { Logger, LogThrottle } from "./logger.ts";
import type { Metrics } from "./metrics.ts";

/**
 * Everything a request handler needs. `config` is replaced as a whole on
 * reload; a handler reads it once, so a request finishes under the config it
 * started with. The other parts live for the whole process.
 */
export interface Gateway {
  config: Config;
  readonly limiter: RateLimiter;
  /** Failed authentications per client address (PAYFLUX_AUTH_FAIL_*). */
  readonly authFailures: AddressLimiter;
  readonly dedup: DedupIndex;
  readonly log: EventLog;
  /** The Redis Streams forwarder, or null when PAYFLUX_FORWARD_REDIS_URL is empty. */
  readonly forwarder: Forwarder | null;
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly throttle: LogThrottle;
  readonly startedAt: number;
  /** Client IP of a request (X-Forwarded-For only from PAYFLUX_TRUST_PROXY), for the failed-login limit and logs. */
  clientAddress(request: Incoming): string | null;
}
