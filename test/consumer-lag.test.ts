/**
 * payflux_consumer_lag_messages{group} (the old service's gauge: XPENDING
 * summary count) and payflux_consumer_group_lag_messages{group} (XINFO GROUPS
 * lag), read by the forwarder from a real redis-server on its own schedule for
 * the groups of PAYFLUX_FORWARD_CONSUMER_GROUPS. A missing stream or group
 * gives no sample and one log line, not one per poll; without forwarding there
 * is no sample at all.
 */
import { afterAll, expect, test } from "bun:test";
import { Redis } from "ioredis";
import { E2E_TARGETS, event, metric, metricsText, post, SINGLE, startServer, stopAll, until, type Target } from "./support/harness.ts";
import { startRedis, stopOps } from "./support/ops.ts";

const TARGET: Target = E2E_TARGETS.includes("bun-binary") ? "bun-binary" : (E2E_TARGETS[0] ?? "bun");
const NOT_FOUND = "consumer group not found on the stream; payflux_consumer_lag_messages has no sample for it until it exists";
const PENDING = (g: string) => `payflux_consumer_lag_messages{group="${g}"}`;
const UNREAD = (g: string) => `payflux_consumer_group_lag_messages{group="${g}"}`;

const clients = new Set<Redis>();
afterAll(async () => {
  for (const c of clients) c.disconnect();
  await stopAll();
  await stopOps();
});

test(`consumer lag per group from XPENDING and XINFO GROUPS; missing stream or group: no sample, one log line (${TARGET})`, async () => {
  const redis = await startRedis();
  const admin = new Redis(redis.url);
  clients.add(admin);
  const server = await startServer({
    target: TARGET,
    env: { PAYFLUX_FORWARD_REDIS_URL: redis.url, PAYFLUX_FORWARD_CONSUMER_GROUPS: "payment_consumers, audit" },
  });

  // No stream yet: both groups are missing; each is logged once.
  await server.waitForLog((l) => l.msg === NOT_FOUND && l.group === "audit", 15_000);
  await server.waitForLog((l) => l.msg === NOT_FOUND && l.group === "payment_consumers", 15_000);
  let text = await metricsText(server);
  expect(text).toContain("# TYPE payflux_consumer_lag_messages gauge");
  expect(text).not.toMatch(/^payflux_consumer(_group)?_lag_messages\{/m);

  // The group appears (at the start of the stream); 4 events are forwarded, a consumer reads 1 and acknowledges none.
  await admin.xgroup("CREATE", "events_stream", "payment_consumers", "0", "MKSTREAM");
  for (let i = 0; i < 4; i++) expect((await post(server, SINGLE, event())).status).toBe(202);
  await until("events forwarded", async () => (await admin.xlen("events_stream")) === 4, 15_000);
  await admin.xreadgroup("GROUP", "payment_consumers", "c1", "COUNT", 1, "STREAMS", "events_stream", ">");
  text = await until("lag exported", async () => {
    const t = await metricsText(server);
    return metric(t, PENDING("payment_consumers")) === 1 && metric(t, UNREAD("payment_consumers")) === 3 ? t : undefined;
  }, 20_000);
  await server.waitForLog((l) => l.msg === "consumer group found on the stream" && l.group === "payment_consumers");
  // audit still does not exist: still no sample for it.
  expect(metric(text, PENDING("audit"))).toBeUndefined();
  expect(metric(text, UNREAD("audit"))).toBeUndefined();

  // Acknowledged: pending drops to 0 (a real 0, the group exists).
  const [first] = await admin.xrange("events_stream", "-", "+", "COUNT", 1);
  await admin.xack("events_stream", "payment_consumers", first![0]);
  await until("pending 0", async () => metric(await metricsText(server), PENDING("payment_consumers")) === 0, 20_000);

  // The stream is deleted: the samples go away, no error is logged.
  await admin.del("events_stream");
  await until("samples gone", async () => metric(await metricsText(server), PENDING("payment_consumers")) === undefined, 20_000);
  await server.waitForLog((l) => l.msg === NOT_FOUND && l.group === "payment_consumers" && server.logs().filter((x) => x.msg === NOT_FOUND).length === 3);

  // Several polls later: still one line per transition, nothing at warn or above about the groups.
  await Bun.sleep(11_000);
  const logs = server.logs();
  expect(logs.filter((l) => l.msg === NOT_FOUND).map((l) => l.group).sort()).toEqual(["audit", "payment_consumers", "payment_consumers"]);
  expect(logs.filter((l) => ["warn", "error", "fatal"].includes(l.level))).toEqual([]);
}, 90_000);

test(`Redis refusing XINFO (an ACL): no sample, one warning, forwarding unaffected (${TARGET})`, async () => {
  const redis = await startRedis();
  const admin = new Redis(redis.url);
  clients.add(admin);
  await admin.call("ACL", "SETUSER", "fwd", "on", ">fwd-password-0123456789", "~*", "+@all", "-xinfo");
  const server = await startServer({ target: TARGET, env: { PAYFLUX_FORWARD_REDIS_URL: `redis://fwd:fwd-password-0123456789@127.0.0.1:${redis.port}` } });
  const line = await server.waitForLog((l) => l.msg === "forwarder: cannot read the consumer groups; no payflux_consumer_lag_messages samples", 15_000);
  expect(line.level).toBe("warn");
  expect(line.err).toMatch(/NOPERM/);
  expect(JSON.stringify(server.logs())).not.toContain("fwd-password-0123456789");
  expect((await post(server, SINGLE, event())).status).toBe(202);
  await until("event forwarded", async () => (await admin.xlen("events_stream")) === 1, 15_000);
  // One more poll: the same refusal is not logged again.
  await Bun.sleep(6000);
  expect(server.logs().filter((l) => l.msg === line.msg).length).toBe(1);
  expect(await metricsText(server)).not.toMatch(/^payflux_consumer(_group)?_lag_messages\{/m);
}, 60_000);

test("without forwarding there is no consumer-lag sample", async () => {
  const server = await startServer({ target: TARGET });
  await Bun.sleep(200);
  expect(await metricsText(server)).not.toMatch(/^payflux_consumer(_group)?_lag_messages\{/m);
});

test("PAYFLUX_FORWARD_CONSUMER_GROUPS is validated: bounded number of groups, no spaces inside a name", async () => {
  const { loadConfig } = await import("../src/config.ts");
  const base = { PAYFLUX_API_KEYS: "consumer-lag-key-0123456789abcdef" };
  const ok = loadConfig({ ...base, PAYFLUX_FORWARD_CONSUMER_GROUPS: " a , b,a " });
  expect(ok.ok && ok.config.forwardConsumerGroups).toBe("a,b");
  const dflt = loadConfig(base);
  expect(dflt.ok && dflt.config.forwardConsumerGroups).toBe("payment_consumers");
  const many = loadConfig({ ...base, PAYFLUX_FORWARD_CONSUMER_GROUPS: Array.from({ length: 21 }, (_, i) => `g${i}`).join(",") });
  expect(many.ok).toBe(false);
  const bad = loadConfig({ ...base, PAYFLUX_FORWARD_CONSUMER_GROUPS: "two words" });
  expect(!bad.ok && bad.errors.some((e) => e.startsWith("PAYFLUX_FORWARD_CONSUMER_GROUPS"))).toBe(true);
});
