import type { Gateway } from "./gateway.ts";
import type { IngestRoute } from "./routes.ts";
import { AUTH_THROTTLED } from "./metrics.ts";
import { problem } from "./problem.ts";
import type { Reply } from "./exchange.ts";

/**
 * The failed-login limit at the start of the auth step: an address that has
 * used up its failures gets 429 before its key is hashed. Only failures take
 * tokens, so clients with a valid key are never slowed by it; a client that
 * shares an address with an attacker (NAT, or a proxy that is not in
 * PAYFLUX_TRUST_PROXY) is refused with it until the bucket refills. The
 * caller looks the address up once (and counts failures against it with
 * `gw.authFailures.fail`).
 */
export function authThrottled(gw: Gateway, client: string, route: IngestRoute): Reply | null {
  const wait = gw.authFailures.blockedFor(client);
  if (wait === 0) return null;
  gw.metrics.authThrottled.inc();
  gw.throttle.warn(AUTH_THROTTLED, { client_ip: client, endpoint: route, retry_after: wait }, "too many failed authentications from one address");
  return problem(429, AUTH_THROTTLED, `too many failed authentications from this address; retry in ${wait} s`, {}, { "retry-after": String(wait) });
}
