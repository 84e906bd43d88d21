/**
 * CPU per ingest request in the handler alone: the gateway wired as
 * src/server.ts does, the direct handler called in-process with a request in
 * the fast lane's form, no network. The log's durable write is a no-op
 * callback here, so what is measured is CPU, not the disk.
 * For finding where a request's CPU goes; `npm run bench` measures the server.
 *
 *   bun bench/handler-micro.ts [requests] [single|wrong|batch]
 */
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createHandlers } from "../src/app.ts";
import { AddressLimiter } from "../src/address-limiter.ts";
import { loadConfig } from "../src/config.ts";
import { DedupIndex } from "../src/dedup.ts";
import { EventLog } from "../src/event-log.ts";
import type { Incoming } from "../src/exchange.ts";
import type { Gateway } from "../src/gateway.ts";
import { RateLimiter } from "../src/limiter.ts";
import { createLogger, LogThrottle } from "../src/logger.ts";
import { createMetrics } from "../src/metrics.ts";
import { applyConfig, logLimits } from "../src/reload.ts";

const N = Number(process.argv[2] ?? 50_000);
const MODE = process.argv[3] ?? "single";
const KEY = "bench-key-0123456789abcdef0123456789abcdef";
const dir = mkdtempSync(join(tmpdir(), "payflux-micro-"));
const loaded = loadConfig({ PAYFLUX_API_KEYS: KEY, PAYFLUX_DATA_DIR: dir, PAYFLUX_INGEST_RPS: "1000000", PAYFLUX_INGEST_BURST: "1000000", PAYFLUX_LOG_LEVEL: "info" }, undefined);
if (!loaded.ok) throw new Error(loaded.errors.join("; "));
const config = loaded.config;
const metrics = createMetrics();
const logger = createLogger("warn");
const log = EventLog.open(dir, logLimits(config), { onFlush: (s) => metrics.flushDuration.observe(s), writev: (_fd, parts, cb) => setImmediate(() => cb(null, parts.reduce((n, p) => n + p.length, 0))) });
const gw: Gateway = {
  config,
  limiter: new RateLimiter(config.ingestRps, config.ingestBurst),
  authFailures: new AddressLimiter(1_000_000, 1_000_000),
  dedup: new DedupIndex(config.dedupWindowMs, config.dedupMaxIds),
  log,
  forwarder: null,
  metrics,
  logger,
  throttle: new LogThrottle(() => logger),
  startedAt: Date.now(),
  clientAddress: (r) => gw.config.trustedProxies.clientOf(r.peer, r.header("x-forwarded-for")),
};
applyConfig(gw, config);
const handler = createHandlers(gw).direct("POST", MODE === "batch" ? "/v1/events/batch" : "/v1/events/payment_exhaust")!;

let counter = 0;
const hex = (n: number, w: number) => n.toString(16).padStart(w, "0");
const event = () =>
  `{"event_type":"payment_failed","event_timestamp":"2026-11-22T08:00:00Z","event_id":"${hex(0x1234abcd, 8)}-${hex(counter & 0xffff, 4)}-4${hex((counter >> 4) & 0xfff, 3)}-a${hex(counter & 0xfff, 3)}-${hex(++counter, 12)}",` +
  `"merchant_id_hash":"m_4f2a","payment_intent_id_hash":"pi_9c1d","processor":"stripe","failure_category":"card_declined","retry_count":0,"geo_bucket":"EU","amount_bucket":"100-500","system_source":"checkout-api","payment_method_bucket":"card","channel":"web","retry_result":"none","failure_origin":"issuer"}`;
const body = () => Buffer.from(MODE === "batch" ? `[${Array.from({ length: 500 }, event).join(",")}]` : event());
const request = (bytes: Buffer): Incoming => {
  const fields = ["host", "127.0.0.1", "authorization", `Bearer ${MODE === "wrong" ? "wrong-key-0123456789abcdef" : KEY}`, "content-type", "application/json", "content-length", String(bytes.length)];
  return {
    method: "POST",
    header(name) {
      for (let i = 0; i < fields.length; i += 2) if (fields[i] === name) return fields[i + 1]!;
      return null;
    },
    body: () => Promise.resolve({ ok: true, bytes }),
    peer: "127.0.0.1",
  };
};

// Requests in flights of 32, as a loaded server sees them.
async function run(n: number): Promise<number> {
  const bodies = Array.from({ length: n }, body);
  const t0 = performance.now();
  for (let i = 0; i < n; i += 32) {
    const flight: Promise<unknown>[] = [];
    for (let j = i; j < Math.min(n, i + 32); j++) flight.push(handler(request(bodies[j]!)));
    await Promise.all(flight);
  }
  return ((performance.now() - t0) * 1000) / n;
}
await run(Math.min(N, 5000)); // warm-up
const results: number[] = [];
for (let r = 0; r < 5; r++) results.push(await run(N));
results.sort((a, b) => a - b);
const status = (await handler(request(body()))).status;
console.log(`${MODE}: ${results[2]!.toFixed(1)} µs per request (median of 5 runs of ${N}; best ${results[0]!.toFixed(1)}), last status ${status}`);
await log.close();
rmSync(dir, { recursive: true, force: true });
