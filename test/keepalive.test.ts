/**
 * A request refused before its body was read (413 on a declared
 * Content-Length over the limit) must not stall the next request the client
 * sends on the same keep-alive connection. Deno's node:http does not discard
 * the unread body by itself, so the service closes such a connection after
 * its answer; Bun discards it.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { E2E_TARGETS, event, metric, post, SINGLE, startServer, stopAll, type Server } from "./support/harness.ts";

afterAll(stopAll);

for (const target of E2E_TARGETS) {
  describe(`[${target}] keep-alive after a refused body`, () => {
    let server: Server;
    beforeAll(async () => {
      server = await startServer({ target, env: { PAYFLUX_MAX_BODY_BYTES: "4096" } });
    });

    test("the next requests on the connection are answered at once", async () => {
      for (let round = 0; round < 3; round++) {
        const big = await post(server, SINGLE, "x".repeat(500_000));
        expect({ status: big.status, code: (await big.json()).code }).toEqual({ status: 413, code: "payload_too_large" });
        // Bounded: a stalled connection would only be cut by the 10 s idle timeout.
        const next = await fetch(server.url + "/metrics", { signal: AbortSignal.timeout(4000) });
        expect(next.status).toBe(200);
        expect(metric(await next.text(), 'payflux_ingest_rejected_total{reason="payload_too_large"}')).toBe(round + 1);
        const ok = await post(server, SINGLE, event());
        expect(ok.status).toBe(202);
        await ok.text();
      }
    });
  });
}
