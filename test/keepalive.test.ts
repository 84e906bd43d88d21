/**
 * A request refused before its body was read (413 on a declared
 * Content-Length over the limit) must not stall the next request the client
 * sends on the same keep-alive connection. Deno's node:http does not discard
 * the unread body by itself, so the service closes such a connection after
 * its answer; Bun discards it.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { connect } from "node:net";
import { E2E_TARGETS, event, KEY, metric, post, SINGLE, startServer, stopAll, type Server } from "./support/harness.ts";

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

/**
 * Requests the fast lane hands to node:http mid-connection (Bun): an
 * `Expect: 100-continue` client gets its 100 before sending the body, and
 * lane-shaped requests after a handed-over one on the same connection are
 * still answered, in order.
 */
for (const target of E2E_TARGETS) {
  describe(`[${target}] requests of other shapes on a keep-alive connection`, () => {
    let server: Server;
    beforeAll(async () => {
      server = await startServer({ target });
    });

    test("Expect: 100-continue gets 100 Continue, then 202; the next request on the socket is answered", async () => {
      const e = event();
      const body = JSON.stringify(e);
      const socket = connect(server.port, "127.0.0.1");
      const got: Buffer[] = [];
      const waitFor = async (text: string) => {
        const until = Date.now() + 5000;
        while (!Buffer.concat(got).toString("latin1").includes(text) && Date.now() < until) await Bun.sleep(10);
        return Buffer.concat(got).toString("latin1");
      };
      socket.on("data", (d: Buffer) => got.push(d));
      await new Promise((r) => socket.once("connect", r));
      socket.write(`POST ${SINGLE} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${KEY}\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: ${body.length}\r\n\r\n`);
      expect(await waitFor("100 Continue")).toMatch(/^HTTP\/1\.1 100 Continue\r\n/);
      socket.write(body);
      expect(await waitFor("accepted")).toContain("HTTP/1.1 202");
      const e2 = JSON.stringify(event());
      socket.write(`POST ${SINGLE} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${KEY}\r\nContent-Length: ${e2.length}\r\n\r\n${e2}`);
      const until = Date.now() + 5000;
      const accepted = () => Buffer.concat(got).toString("latin1").match(/HTTP\/1\.1 202 Accepted/g)?.length ?? 0;
      while (accepted() < 2 && Date.now() < until) await Bun.sleep(10);
      socket.destroy();
      expect(accepted()).toBe(2);
    });
  });
}
