import { afterAll, expect, test } from "bun:test";
import { event, KEY, metric, metricsText, post, SINGLE, startServer, stopAll } from "./support/harness.ts";

afterAll(stopAll);

test("compat smoke: same event twice, then a bad key", async () => {
  const server = await startServer();
  const ev = event();
  expect((await post(server, SINGLE, ev)).status).toBe(202);
  expect((await post(server, SINGLE, ev)).status).toBe(202);
  expect((await post(server, SINGLE, ev, { key: "wrong-key-0000000000000000" })).status).toBe(401);
  const text = await metricsText(server);
  expect(text).toContain("payflux_ingest_accepted_total 1\n");
  expect(text).toContain("payflux_ingest_duplicate_total 1\n");
  expect(text).toContain('payflux_auth_denied_total{reason="invalid_key"} 1\n');
  expect(metric(text, 'payflux_auth_denied_total{reason="missing_key"}')).toBe(0);
  expect(KEY.length).toBeGreaterThan(16);
});
