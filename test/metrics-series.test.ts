/** The direct series handles (src/metrics.ts) export exactly what prom-client's own inc() and observe() would. */
import { expect, test } from "bun:test";
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import { histogramSeries, series } from "../src/metrics.ts";

function pair() {
  const make = () => {
    const registry = new Registry();
    return {
      registry,
      c: new Counter({ name: "t_requests_total", help: "h", labelNames: ["method", "status"], registers: [registry] }),
      g: new Gauge({ name: "t_in_flight", help: "h", registers: [registry] }),
      h: new Histogram({ name: "t_seconds", help: "h", labelNames: ["route"], buckets: [0.001, 0.01, 0.1, 1], registers: [registry] }),
    };
  };
  return { fast: make(), slow: make() };
}

test("counters, gauges and histograms: the same exposition as inc() and observe(), reset() included", async () => {
  const { fast, slow } = pair();
  const c = series(fast.c, { method: "POST", status: "202" });
  const g = series(fast.g);
  const h = histogramSeries(fast.h, { route: "/v1/events/batch" });
  slow.c.inc({ method: "POST", status: "202" }, 0);
  slow.g.inc(0);
  slow.h.zero({ route: "/v1/events/batch" });
  for (const v of [0.0005, 0.001, 0.002, 0.05, 0.5, 3, 0, 1]) {
    h(v);
    slow.h.observe({ route: "/v1/events/batch" }, v);
    c(2);
    slow.c.inc({ method: "POST", status: "202" }, 2);
    g(1);
    slow.g.inc();
  }
  g(-3);
  slow.g.dec(3);
  expect(await fast.registry.metrics()).toBe(await slow.registry.metrics());
  expect(await fast.registry.metrics()).toContain('t_seconds_bucket{le="0.001",route="/v1/events/batch"} 3');
  fast.registry.resetMetrics();
  slow.registry.resetMetrics();
  h(0.05);
  c(1);
  slow.h.observe({ route: "/v1/events/batch" }, 0.05);
  slow.c.inc({ method: "POST", status: "202" });
  expect(await fast.registry.metrics()).toBe(await slow.registry.metrics());
});
