/**
 * Docs and code agree: the README names exactly the variables the config
 * loader reads, the metrics the service exposes, and the routes it serves.
 * (The old service's docs named PAYFLUX_RATELIMIT_* while its code read
 * PAYFLUX_INGEST_*.)
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { VARIABLES } from "../src/config.ts";
import { ROOT, startServer, stopAll, type Server } from "./support/harness.ts";

const readme = readFileSync(join(ROOT, "README.md"), "utf8");
const namesIn = (text: string, re: RegExp) => new Set([...text.matchAll(re)].map((m) => m[0]));

afterAll(stopAll);

describe("README agrees with the code", () => {
  let server: Server;
  let exposition: string;
  beforeAll(async () => {
    server = await startServer();
    exposition = await (await fetch(server.url + "/metrics")).text();
  });

  test("variables: README and config loader name the same set", () => {
    const documented = namesIn(readme, /\bPAYFLUX_[A-Z_]+\b/g);
    // The old docs' wrong name is mentioned once, as the example of what the typo hint catches.
    documented.delete("PAYFLUX_RATELIMIT_RPS");
    // The test suite's own switch (PAYFLUX_TEST_TARGETS) is not a service variable.
    for (const n of documented) if (n.startsWith("PAYFLUX_TEST_")) documented.delete(n);
    expect([...documented].sort()).toEqual(Object.keys(VARIABLES).sort());
  });

  test("metrics: README and /metrics name the same payflux_* families", () => {
    const exposed = new Set([...exposition.matchAll(/^# TYPE (payflux_[a-z_]+) /gm)].map((m) => m[1]!));
    const documented = namesIn(readme, /\bpayflux_[a-z_]+\b/g);
    for (const name of [...documented]) {
      // PromQL in the README uses histogram series names.
      const family = name.replace(/_(bucket|sum|count)$/, "");
      if (family !== name) {
        documented.delete(name);
        documented.add(family);
      }
    }
    expect([...documented].sort()).toEqual([...exposed].sort());
  });

  test("routes: every route in the README answers, with the documented method", async () => {
    const routes = [...readme.matchAll(/^\| `(GET`\/`HEAD|POST) (\/[^`]+)` \|/gm)].map((m) => ({ method: m[1]!.startsWith("GET") ? "GET" : "POST", path: m[2]! }));
    expect(routes.map((r) => r.path).sort()).toEqual(["/health", "/metrics", "/v1/events/batch", "/v1/events/payment_exhaust"]);
    for (const r of routes) {
      const res = await fetch(server.url + r.path, { method: r.method });
      expect([200, 401]).toContain(res.status);
    }
  });

  test("error codes: every code in the README's error table is one the code can return", () => {
    const src = ["ingest.ts", "app.ts", "metrics.ts", "ops-routes.ts", "auth.ts", "runtime.ts", "fast-lane.ts"].map((f) => readFileSync(join(ROOT, "src", f), "utf8")).join("\n");
    const codes = [...readme.matchAll(/^\| \d{3} \| ([^|]+) \|/gm)].flatMap((m) => [...m[1]!.matchAll(/`([a-z_]+)`/g)].map((c) => c[1]!));
    expect(codes.length).toBeGreaterThan(10);
    expect(codes.filter((code) => !src.includes(`"${code}"`))).toEqual([]);
  });
});
