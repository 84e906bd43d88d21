/**
 * deploy/grafana/payflux-clients.json: every datasource is the import input
 * ${DS_PROMETHEUS}, every panel has a query, the $client variable drives the
 * per-client panels, and every query (and the variable's) runs on a real
 * Prometheus (Debian package `prometheus`) scraping a real server with
 * PAYFLUX_METRICS_PER_CLIENT=true, returning series for the clients used.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { event, freePort, post, ROOT, SINGLE, startServer, stopAll, tempDir, until } from "./support/harness.ts";

const DASHBOARD = join(ROOT, "deploy", "grafana", "payflux-clients.json");
const dash = JSON.parse(readFileSync(DASHBOARD, "utf8"));
const INPUT = { type: "prometheus", uid: "${DS_PROMETHEUS}" };

interface Panel {
  type: string;
  title: string;
  datasource?: unknown;
  targets?: { expr?: string; datasource?: unknown }[];
  panels?: Panel[];
}
const panels: Panel[] = (dash.panels as Panel[]).flatMap((p) => (p.type === "row" ? (p.panels ?? []) : [p]));

/** Every `datasource` value anywhere in the dashboard. */
function datasources(node: unknown, out: unknown[] = []): unknown[] {
  if (Array.isArray(node)) node.forEach((n) => datasources(n, out));
  else if (node !== null && typeof node === "object") {
    for (const [k, v] of Object.entries(node)) {
      if (k === "datasource") out.push(v);
      datasources(v, out);
    }
  }
  return out;
}

let prometheus: ReturnType<typeof Bun.spawn> | undefined;
afterAll(async () => {
  prometheus?.kill("SIGKILL");
  await prometheus?.exited;
  await stopAll();
});

describe("payflux-clients dashboard", () => {
  test("the datasource is an import input (${DS_PROMETHEUS}) everywhere, never a fixed uid", () => {
    expect(dash.__inputs).toContainEqual(expect.objectContaining({ name: "DS_PROMETHEUS", type: "datasource", pluginId: "prometheus" }));
    const all = datasources(dash);
    expect(all.length).toBeGreaterThan(panels.length);
    for (const ds of all) expect(ds).toEqual(INPUT);
  });

  test("every panel has a non-empty query; the $client variable lists the clients and filters every per-client panel", () => {
    expect(panels.length).toBeGreaterThanOrEqual(5);
    for (const p of panels) {
      expect(p.targets?.length ?? 0).toBeGreaterThan(0);
      for (const t of p.targets!) expect((t.expr ?? "").trim()).not.toBe("");
    }
    const variable = dash.templating.list.find((v: any) => v.name === "client");
    expect(variable).toMatchObject({ type: "query", datasource: INPUT, includeAll: true, multi: true });
    expect(variable.query.query).toBe("label_values(payflux_client_requests_total, client)");
    const perClient = panels.filter((p) => p.targets!.some((t) => /payflux_client_/.test(t.expr!)));
    expect(perClient.length).toBeGreaterThanOrEqual(5);
    for (const p of perClient) for (const t of p.targets!) expect(t.expr).toContain('client=~"$client"');
    // The four views: requests by outcome, denials, rate-limit hits, key expiry.
    const exprs = perClient.flatMap((p) => p.targets!.map((t) => t.expr!)).join("\n");
    for (const part of ['outcome="revoked_key"', 'outcome="rate_limited"', "by (client, outcome)", "payflux_client_key_expiry_timestamp_seconds"]) {
      expect(exprs).toContain(part);
    }
  });

  test("every query runs on a real Prometheus scraping a real server and returns series", async () => {
    const key = (n: string) => `grafana-test-secret-${n}-aaaaaaaaaaaaaa`;
    const sha = (k: string) => `sha256:${createHash("sha256").update(k).digest("hex")}`;
    const clients = join(tempDir("payflux-grafana-"), "clients");
    writeFileSync(
      clients,
      [`acme ${sha(key("acme"))} rps=0.001 burst=2`, `globex ${sha(key("globex"))} not_after=2999-01-01T00:00:00Z`, `old ${sha(key("old"))} revoked`].join("\n") + "\n",
    );
    const server = await startServer({ env: { PAYFLUX_CLIENTS_FILE: clients, PAYFLUX_METRICS_PER_CLIENT: "true" } });
    for (let i = 0; i < 3; i++) await post(server, SINGLE, event(), { key: key("acme") }); // 2 accepted, 1 rate limited
    await post(server, SINGLE, event(), { key: key("old") });
    await post(server, SINGLE, "{", { key: key("globex") });

    const dir = tempDir("payflux-prometheus-");
    const port = await freePort();
    writeFileSync(
      join(dir, "prometheus.yml"),
      `global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: payflux\n    static_configs:\n      - targets: ["127.0.0.1:${server.port}"]\n`,
    );
    prometheus = Bun.spawn(
      ["prometheus", `--config.file=${join(dir, "prometheus.yml")}`, `--storage.tsdb.path=${join(dir, "data")}`, `--web.listen-address=127.0.0.1:${port}`],
      { stdout: "ignore", stderr: "pipe" },
    );
    const api = `http://127.0.0.1:${port}/api/v1`;
    const query = async (expr: string) => {
      const res = await fetch(`${api}/query?query=${encodeURIComponent(expr)}`);
      return (await res.json()) as { status: string; error?: string; data?: { result: unknown[] } };
    };
    // rate() over the window needs two scrapes: wait (bounded) until it has them.
    await until(
      "two scrapes of the payflux target",
      async () => {
        try {
          const r = await query('rate(payflux_client_requests_total{client="acme"}[1m])');
          return (r.data?.result.length ?? 0) > 0;
        } catch {
          return false;
        }
      },
      30_000,
    );

    const values = (await (await fetch(`${api}/label/client/values?match[]=payflux_client_requests_total`)).json()) as { data: string[] };
    expect(values.data.sort()).toEqual(["acme", "globex", "old", "other"]);

    for (const p of panels) {
      for (const t of p.targets!) {
        const expr = t.expr!.replaceAll("$client", ".*").replaceAll("$__rate_interval", "1m").replaceAll("$__range", "5m");
        const r = await query(expr);
        expect({ panel: p.title, status: r.status, error: r.error }).toEqual({ panel: p.title, status: "success", error: undefined });
        expect({ panel: p.title, series: (r.data?.result.length ?? 0) > 0 }).toEqual({ panel: p.title, series: true });
      }
    }
    // The per-client selection narrows to the picked client.
    const acme = await query('sum by (client, outcome) (increase(payflux_client_requests_total{client=~"acme"}[5m]))');
    const outcomes = (acme.data!.result as { metric: { client: string; outcome: string } }[]).map((s) => `${s.metric.client} ${s.metric.outcome}`).sort();
    expect(outcomes).toEqual(["acme accepted", "acme rate_limited", "acme rejected", "acme revoked_key"]);
  }, 60_000);
});
