/**
 * GET /metrics: the exposition passes `promtool check metrics`, every series
 * knowable at start-up exists at 0, labels stay bounded, and the metrics
 * switch and token work. Real server processes over loopback.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync } from "node:fs";
import pkg from "../package.json" with { type: "json" };
import { BATCH, E2E_TARGETS, event, KEY, KEY2, metric, metricsText, post, runtimeOf, SINGLE, startServer, stopAll, type Server, type Target } from "./support/harness.ts";

afterAll(stopAll);

const PROMTOOL = "/usr/bin/promtool";
const REVOKED = "revoked-key-cccccccccccccccccccccccc";

/**
 * prom-client's default metrics that read /proc/self. Real on Bun (source and
 * binary). Deno lets a program read /proc/self only with --allow-all (not
 * --allow-read), which the service is not given (it runs with the README's
 * narrow permissions), so on Deno these read 0 and process_max_fds is not
 * exported at all.
 */
const PROC_SELF_METRICS = ["process_resident_memory_bytes", "process_virtual_memory_bytes", "process_heap_bytes", "process_open_fds"];

function expectProcessMetrics(text: string, target: Target): void {
  // From process.cpuUsage() and the start time: present on every runtime.
  expect(text).toContain("# TYPE process_cpu_seconds_total counter");
  expect(metric(text, "process_cpu_seconds_total")).toBeNumber();
  const start = metric(text, "process_start_time_seconds")!;
  expect(start).toBeLessThanOrEqual(Date.now() / 1000 + 1);
  expect(start).toBeGreaterThan(Date.now() / 1000 - 3600);
  // Heap spaces: JavaScriptCore has no V8 spaces, so on Bun the whole heap is reported as
  // space="old" and every other space reads 0; on Deno (V8) the spaces are real.
  const spaces = new Map<string, number>();
  for (const m of text.matchAll(/^nodejs_heap_space_size_total_bytes\{space="([a-z_]+)"\} (\S+)$/gm)) spaces.set(m[1]!, Number(m[2]));
  expect(spaces.get("old")!).toBeGreaterThan(0);
  if (runtimeOf(target) === "bun") {
    for (const name of [...PROC_SELF_METRICS, "process_max_fds"]) expect([name, metric(text, name)! > 0]).toEqual([name, true]);
    expect([...spaces].filter(([space, v]) => space !== "old" && v !== 0)).toEqual([]);
  } else {
    for (const name of PROC_SELF_METRICS) expect([name, metric(text, name)]).toEqual([name, 0]);
    expect(text).not.toContain("process_max_fds");
    for (const space of ["new", "code"]) expect([space, spaces.get(space)! > 0]).toEqual([space, true]);
  }
}

/** Runs `promtool check metrics` on `text` (stdin); fails loudly when promtool is not installed. */
async function promtoolCheck(text: string): Promise<{ code: number; output: string }> {
  const path = existsSync(PROMTOOL) ? PROMTOOL : Bun.which("promtool");
  if (path === null) {
    throw new Error("promtool is not installed: run `apt-get install prometheus` (it provides /usr/bin/promtool); this test must not be skipped");
  }
  const p = Bun.spawn([path, "check", "metrics"], { stdin: new Blob([text]), stdout: "pipe", stderr: "pipe" });
  const [code, out, err] = await Promise.all([p.exited, new Response(p.stdout).text(), new Response(p.stderr).text()]);
  return { code, output: (out + err).trim() };
}

for (const target of E2E_TARGETS) {
  describe(`[${target}] exposition after mixed traffic`, () => {
    afterAll(stopAll);
    let server: Server;
    let text: string;
    const randomPaths = Array.from({ length: 25 }, () => `/probe-${crypto.randomUUID()}/x${Math.floor(Math.random() * 1e9)}`);

    beforeAll(async () => {
      // Burst 5 and a negligible refill: KEY2's sixth request is rate limited.
      server = await startServer({
        target,
        env: { PAYFLUX_API_KEYS: `${KEY},${KEY2}`, PAYFLUX_REVOKED_KEYS: REVOKED, PAYFLUX_INGEST_BURST: "5", PAYFLUX_INGEST_RPS: "0.001" },
      });
      for (let i = 0; i < 3; i++) expect((await post(server, SINGLE, event())).status).toBe(202);
      for (let i = 0; i < 5; i++) expect((await post(server, BATCH, [event()], { key: KEY2 })).status).toBe(202);
      const limited = await post(server, BATCH, [event()], { key: KEY2 });
      expect(limited.status).toBe(429);
      expect((await post(server, SINGLE, event({ processor: "paypal" }))).status).toBe(422);
      expect((await post(server, SINGLE, event(), { key: null })).status).toBe(401);
      expect((await post(server, SINGLE, event(), { key: "not-a-valid-key-0000000000000000" })).status).toBe(401);
      expect((await post(server, SINGLE, event(), { key: REVOKED })).status).toBe(401);
      for (const p of randomPaths) expect((await fetch(server.url + p)).status).toBe(404);
      text = await metricsText(server);
    });

    test("promtool check metrics reports nothing and exits 0", async () => {
      const r = await promtoolCheck(text);
      expect(r.output).toBe("");
      expect(r.code).toBe(0);
    });

    test("content type is the Prometheus text format", async () => {
      const res = await fetch(server.url + "/metrics");
      expect(res.status).toBe(200);
      expect(res.headers.get("content-type")).toStartWith("text/plain");
      await res.text();
    });

    test("ingest counters count the traffic exactly", () => {
      expect(metric(text, "payflux_ingest_accepted_total")).toBe(8);
      expect(metric(text, "payflux_ingest_duplicate_total")).toBe(0);
      expect(metric(text, 'payflux_auth_denied_total{reason="missing_key"}')).toBe(1);
      expect(metric(text, 'payflux_auth_denied_total{reason="invalid_key"}')).toBe(1);
      expect(metric(text, 'payflux_auth_denied_total{reason="revoked_key"}')).toBe(1);
      expect(metric(text, 'payflux_ingest_rate_limited_total{endpoint="/v1/events/batch"}')).toBe(1);
      expect(metric(text, 'payflux_ingest_rate_limited_total{endpoint="/v1/events/payment_exhaust"}')).toBe(0);
      expect(metric(text, 'payflux_ingest_rejected_total{reason="rate_limited"}')).toBe(1);
      expect(metric(text, 'payflux_ingest_rejected_total{reason="validation_failed"}')).toBe(1);
    });

    test("http_requests_total by method, route template and status", () => {
      expect(metric(text, 'payflux_http_requests_total{method="POST",route="/v1/events/payment_exhaust",status="202"}')).toBe(3);
      expect(metric(text, 'payflux_http_requests_total{method="POST",route="/v1/events/batch",status="202"}')).toBe(5);
      expect(metric(text, 'payflux_http_requests_total{method="POST",route="/v1/events/batch",status="429"}')).toBe(1);
      expect(metric(text, 'payflux_http_requests_total{method="POST",route="/v1/events/payment_exhaust",status="422"}')).toBe(1);
      expect(metric(text, 'payflux_http_requests_total{method="POST",route="/v1/events/payment_exhaust",status="401"}')).toBe(3);
    });

    test("unmatched paths share route=\"unmatched\"; no raw path becomes a label", () => {
      expect(metric(text, 'payflux_http_requests_total{method="GET",route="unmatched",status="404"}')).toBe(randomPaths.length);
      for (const p of randomPaths) expect(text).not.toContain(p);
      expect(text).not.toContain("probe-");
      const routes = new Set([...text.matchAll(/route="([^"]*)"/g)].map((m) => m[1]));
      for (const r of routes) expect(["/v1/events/payment_exhaust", "/v1/events/batch", "/health", "/metrics", "unmatched"]).toContain(r!);
    });

    test("histograms, in-flight gauge, key gauge and process metrics are present", () => {
      expect(text).toContain("# TYPE payflux_ingest_duration_seconds histogram");
      // 3 + 5 + 1 + 1 + 3 ingest requests were handled.
      expect(metric(text, "payflux_ingest_duration_seconds_count")).toBe(13);
      expect(metric(text, 'payflux_ingest_duration_seconds_bucket{le="+Inf"}')).toBe(13);
      expect(text).toContain("# TYPE payflux_http_request_duration_seconds histogram");
      expect(text).toContain("# TYPE payflux_http_requests_in_flight gauge");
      // The scrape itself is in flight.
      expect(metric(text, "payflux_http_requests_in_flight")).toBe(1);
      expect(metric(text, 'payflux_api_keys{state="active"}')).toBe(2);
      expect(metric(text, 'payflux_api_keys{state="revoked"}')).toBe(1);
      // CPU time is real on every runtime; the /proc/self metrics per runtime.
      expect(metric(text, "process_cpu_seconds_total")).toBeGreaterThan(0);
      expectProcessMetrics(text, target);
    });
  });

  describe(`[${target}] start-up exposition`, () => {
    afterAll(stopAll);
    test("every series knowable at start-up exists at 0, build_info is 1", async () => {
      const server = await startServer({ target });
      const text = await metricsText(server);
      for (const reason of ["missing_key", "revoked_key", "invalid_key"]) {
        expect(metric(text, `payflux_auth_denied_total{reason="${reason}"}`)).toBe(0);
      }
      for (const reason of [
        "rate_limited",
        "malformed_json",
        "payload_too_large",
        "batch_too_large",
        "empty_batch",
        "unsupported_media_type",
        "validation_failed",
        "storage_unavailable",
      ]) {
        expect(metric(text, `payflux_ingest_rejected_total{reason="${reason}"}`)).toBe(0);
      }
      expect(metric(text, 'payflux_ingest_rate_limited_total{endpoint="/v1/events/payment_exhaust"}')).toBe(0);
      expect(metric(text, 'payflux_ingest_rate_limited_total{endpoint="/v1/events/batch"}')).toBe(0);
      expect(metric(text, 'payflux_config_reloads_total{result="success"}')).toBe(0);
      expect(metric(text, 'payflux_config_reloads_total{result="failure"}')).toBe(0);
      expect(metric(text, "payflux_ingest_accepted_total")).toBe(0);
      expect(metric(text, "payflux_ingest_duplicate_total")).toBe(0);
      expect(metric(text, "payflux_ingest_duration_seconds_count")).toBe(0);
      // build_info names the runtime actually serving (the one in the start-up log line too).
      expect(metric(text, `payflux_build_info{version="${pkg.version}",runtime="${runtimeOf(target)}"}`)).toBe(1);
      expect(text.split("\n").filter((l) => l.startsWith("payflux_build_info{"))).toEqual([
        `payflux_build_info{version="${pkg.version}",runtime="${runtimeOf(target)}"} 1`,
      ]);
      expect(server.logs().find((l) => l.msg === "payflux listening")!.runtime).toBe(runtimeOf(target));
      expect(metric(text, 'payflux_api_keys{state="active"}')).toBe(1);
      expect(metric(text, 'payflux_api_keys{state="revoked"}')).toBe(0);
      expectProcessMetrics(text, target);
    });
  });

  describe(`[${target}] metrics switch and token`, () => {
    afterAll(stopAll);
    test("PAYFLUX_METRICS_ENABLED=false: /metrics is 404", async () => {
      const server = await startServer({ target, env: { PAYFLUX_METRICS_ENABLED: "false" } });
      const res = await fetch(server.url + "/metrics");
      expect(res.status).toBe(404);
      const body = await res.text();
      expect(body).not.toContain("payflux_ingest_accepted_total");
      // Ingest still works.
      expect((await post(server, SINGLE, event())).status).toBe(202);
    });

    test("PAYFLUX_METRICS_TOKEN: no header 401 with WWW-Authenticate, wrong token 401, right token 200, token never logged", async () => {
      const token = `metrics-token-${crypto.randomUUID()}`;
      const wrong = `wrong-token-${crypto.randomUUID()}`;
      const server = await startServer({ target, env: { PAYFLUX_METRICS_TOKEN: token } });

      const none = await fetch(server.url + "/metrics");
      expect(none.status).toBe(401);
      expect(none.headers.get("www-authenticate")).toStartWith("Bearer");
      expect(await none.text()).not.toContain("payflux_ingest_accepted_total");

      const bad = await fetch(server.url + "/metrics", { headers: { authorization: `Bearer ${wrong}` } });
      expect(bad.status).toBe(401);
      expect(bad.headers.get("www-authenticate")).toStartWith("Bearer");
      expect(await bad.text()).not.toContain("payflux_ingest_accepted_total");

      // The API key is not the metrics token.
      const apiKey = await fetch(server.url + "/metrics", { headers: { authorization: `Bearer ${KEY}` } });
      expect(apiKey.status).toBe(401);
      await apiKey.text();

      // Right token in the wrong scheme, and in the query string: refused.
      const basic = await fetch(server.url + "/metrics", { headers: { authorization: `Basic ${token}` } });
      expect(basic.status).toBe(401);
      await basic.text();
      const query = await fetch(server.url + `/metrics?access_token=${token}`);
      expect(query.status).toBe(401);
      await query.text();

      const good = await fetch(server.url + "/metrics", { headers: { authorization: `Bearer ${token}` } });
      expect(good.status).toBe(200);
      const text = await good.text();
      expect(metric(text, "payflux_ingest_accepted_total")).toBe(0);
      expect(text).not.toContain(token);

      expect(await server.stop()).toBe(0);
      const all = server.stdout.join("\n") + server.stderr();
      expect(all).not.toContain(token);
      expect(all).not.toContain(wrong);
      expect(all).not.toContain(KEY);
    });
  });
}
