/**
 * The operations kit, checked without a running service: promtool checks and
 * unit-tests the rule files and the scrape config; every alert has a firing
 * and a silent test case, every recording rule a value test; the runbook's
 * three alerts keep its exact expressions; the runbook quotes every alert
 * expression as in alerts.yml and has the section each runbook_url points at;
 * the dashboard is importable (datasource input, instance variable) and every
 * panel query parses; the docs a newcomer tripped over say what is true.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { copyFileSync, existsSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ROOT, stopAll, tempDir } from "./support/harness.ts";
import {
  ALERTS, ALERTS_TEST, dashboard, DASHBOARD, metricNames, norm, OLD_KIT_DIR, OLD_KIT_QUERIES, PROMETHEUS_YML, promtool, RETIRED_METRIC, RULES,
  RULES_TEST, RUNBOOK, runbookQueries, substituteVariables,
} from "./support/ops.ts";

afterAll(stopAll);

const yaml = (path: string) => Bun.YAML.parse(readFileSync(path, "utf8")) as any;
interface Rule {
  alert?: string;
  record?: string;
  expr: string;
  for?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
}
const rulesOf = (path: string): Rule[] => yaml(path).groups.flatMap((g: { rules: Rule[] }) => g.rules);
const alerts = rulesOf(ALERTS);
const records = rulesOf(RULES);
const runbook = readFileSync(RUNBOOK, "utf8");

/** GitHub's anchor of a Markdown heading. */
const anchor = (heading: string) => heading.trim().toLowerCase().replace(/[^\w\- ]/g, "").replace(/ /g, "-");
const anchors = new Set([...runbook.matchAll(/^#{1,6} (.+)$/gm)].map((m) => anchor(m[1]!)));

describe("promtool", () => {
  test("check rules passes on alerts.yml and rules.yml", async () => {
    const r = await promtool(["check", "rules", ALERTS, RULES]);
    expect(r.output).toContain(`SUCCESS: ${alerts.length} rules found`);
    expect(r.output).toContain(`SUCCESS: ${records.length} rules found`);
    expect(r.code).toBe(0);
  });

  test("check config passes on prometheus.yml, with its rule files and a credentials file in place", async () => {
    const syntax = await promtool(["check", "config", "--syntax-only", PROMETHEUS_YML]);
    expect([syntax.code, syntax.output]).toEqual([0, expect.stringContaining("SUCCESS")]);
    // The full check also opens the rule files and the credentials file: give it a copy whose token file exists.
    const dir = tempDir("payflux-promcfg-");
    for (const f of [ALERTS, RULES]) copyFileSync(f, join(dir, f.split("/").pop()!));
    const token = join(dir, "token");
    writeFileSync(token, "metrics-token-0123456789abcdef\n", { mode: 0o600 });
    const config = readFileSync(PROMETHEUS_YML, "utf8");
    expect(config).toContain("credentials_file: /etc/prometheus/payflux-metrics-token");
    writeFileSync(join(dir, "prometheus.yml"), config.replace("credentials_file: /etc/prometheus/payflux-metrics-token", `credentials_file: ${token}`));
    const full = await promtool(["check", "config", join(dir, "prometheus.yml")]);
    expect(full.output).toContain(`SUCCESS: ${alerts.length} rules found`);
    expect(full.output).toContain(`SUCCESS: ${records.length} rules found`);
    expect(full.code).toBe(0);
  });

  test("test rules passes: alert cases and recording-rule values", async () => {
    const r = await promtool(["test", "rules", ALERTS_TEST, RULES_TEST]);
    expect(r.output).not.toContain("FAILED");
    expect(r.code).toBe(0);
  });
});

describe("alerts.yml", () => {
  test("the runbook's three alerts, with its exact expressions, for and severities", () => {
    const byName = Object.fromEntries(alerts.map((a) => [a.alert, a]));
    expect([byName.HighAuthDenialRate?.expr, byName.HighAuthDenialRate?.for, byName.HighAuthDenialRate?.labels?.severity]).toEqual([
      "rate(payflux_auth_denied_total[5m]) > 0.1", "10m", "warning",
    ]);
    expect([byName.AuthDenialStorm?.expr, byName.AuthDenialStorm?.for, byName.AuthDenialStorm?.labels?.severity]).toEqual([
      "sum(increase(payflux_auth_denied_total[1m])) > 100", "2m", "critical",
    ]);
    expect([byName.RevokedKeyStillInUse?.expr, byName.RevokedKeyStillInUse?.for, byName.RevokedKeyStillInUse?.labels?.severity]).toEqual([
      'increase(payflux_auth_denied_total{reason="revoked_key"}[15m]) > 10', "1h", "warning",
    ]);
  });

  test("the alerts the issue asks for exist", () => {
    const exprs = alerts.map((a) => norm(a.expr));
    const has = (re: RegExp) => exprs.some((e) => re.test(e));
    expect(has(/^up\{job="payflux"\} == 0$/)).toBe(true);
    expect(has(/payflux_ingest_rate_limited_total/)).toBe(true);
    expect(has(/sum by \(job, instance, reason\) \(rate\(payflux_ingest_rejected_total/)).toBe(true);
    expect(has(/status=~"5\.\."/)).toBe(true);
    expect(has(/histogram_quantile\(0\.99, sum by \(le, instance\) \(rate\(payflux_ingest_duration_seconds_bucket\[5m\]\)\)\)/)).toBe(true);
    expect(has(/^payflux_config_last_reload_successful == 0$/)).toBe(true);
    expect(has(/keys_fingerprint/)).toBe(true);
    expect(has(/payflux_storage_bytes \/ payflux_storage_max_bytes/)).toBe(true);
    expect(has(/payflux_dedup_evicted_total/)).toBe(true);
    expect(has(/^payflux_forward_up == 0$/)).toBe(true);
    expect(has(/payflux_forward_lag_events/)).toBe(true);
  });

  test("every alert: a severity, a summary, a description quoting the value, a runbook_url to its section of the runbook", () => {
    for (const a of alerts) {
      const what = `${a.alert}`;
      expect([what, a.labels?.severity]).toEqual([what, expect.stringMatching(/^(info|warning|critical)$/)]);
      expect([what, a.annotations?.summary]).toEqual([what, expect.any(String)]);
      expect([what, a.annotations?.description]).toEqual([what, expect.stringContaining("$value")]);
      const url = a.annotations?.runbook_url ?? "";
      expect([what, url]).toEqual([what, `docs/runbook.md#${a.alert!.toLowerCase()}`]);
      expect([what, anchors.has(url.split("#")[1]!)]).toEqual([what, true]);
    }
  });

  test("the runbook quotes every alert's expression exactly as alerts.yml has it", () => {
    for (const a of alerts) {
      const section = runbook.split(/^### /m).find((s) => s.startsWith(`${a.alert}\n`));
      expect([a.alert, section === undefined]).toEqual([a.alert, false]);
      const block = /```promql\n([\s\S]*?)```/.exec(section!)?.[1];
      expect([a.alert, norm(block ?? "")]).toEqual([a.alert, norm(a.expr)]);
    }
  });

  test("every alert has a firing case (labels and annotations) and a silent case in tests/alerts.test.yml", () => {
    const suite = yaml(ALERTS_TEST);
    expect(suite.rule_files).toEqual(["../alerts.yml"]);
    const cases = (suite.tests as { alert_rule_test?: { alertname: string; exp_alerts?: any[] }[] }[]).flatMap((t) => t.alert_rule_test ?? []);
    for (const a of alerts) {
      const mine = cases.filter((c) => c.alertname === a.alert);
      const firing = mine.filter((c) => (c.exp_alerts ?? []).length > 0);
      const silent = mine.filter((c) => (c.exp_alerts ?? []).length === 0);
      expect([a.alert, firing.length > 0, silent.length > 0]).toEqual([a.alert, true, true]);
      for (const exp of firing.flatMap((c) => c.exp_alerts!)) {
        expect([a.alert, exp.exp_labels?.severity]).toEqual([a.alert, a.labels!.severity]);
        expect([a.alert, Object.keys(exp.exp_annotations ?? {}).sort()]).toEqual([a.alert, ["description", "runbook_url", "summary"]]);
      }
    }
    // No case for an alert that does not exist (a renamed alert would leave its cases testing nothing).
    const names = new Set(alerts.map((a) => a.alert));
    expect(cases.map((c) => c.alertname).filter((n) => !names.has(n))).toEqual([]);
  });
});

describe("rules.yml", () => {
  test("recording rules are named level:metric:operations and cover denials by reason, accepted/rejected rates, latency quantiles", () => {
    for (const r of records) expect(r.record).toMatch(/^[a-z_]+:[a-z0-9_]+:[a-z0-9_]+$/);
    const names = records.map((r) => r.record);
    expect(names).toContain("instance_reason:payflux_auth_denied:rate5m");
    expect(names).toContain("instance:payflux_ingest_accepted:rate5m");
    expect(names).toContain("instance_reason:payflux_ingest_rejected:rate5m");
    expect(names).toContain("instance:payflux_ingest_duration_seconds:p50_5m");
    expect(names).toContain("instance:payflux_ingest_duration_seconds:p99_5m");
  });

  test("every recording rule has its value tested in tests/rules.test.yml", () => {
    const suite = yaml(RULES_TEST);
    const tested = (suite.tests as { promql_expr_test?: { expr: string; exp_samples: unknown[] }[] }[])
      .flatMap((t) => t.promql_expr_test ?? [])
      .filter((t) => t.exp_samples.length > 0)
      .map((t) => t.expr);
    expect(records.map((r) => r.record).filter((n) => !tested.includes(n!))).toEqual([]);
  });
});

describe("grafana/payflux-overview.json", () => {
  const d = dashboard();
  const panels = d.panels.filter((p) => p.type !== "row");
  const DS = { type: "prometheus", uid: "${DS_PROMETHEUS}" };

  test("imports with the Prometheus data source as an input, never a fixed uid", () => {
    expect(d.__inputs).toEqual([expect.objectContaining({ name: "DS_PROMETHEUS", type: "datasource", pluginId: "prometheus" })]);
    for (const p of panels) {
      expect([p.title, p.datasource]).toEqual([p.title, DS]);
      for (const t of p.targets ?? []) expect([p.title, t.datasource]).toEqual([p.title, DS]);
    }
    // Anywhere in the file: every datasource uid is the input.
    const uids = [...readFileSync(DASHBOARD, "utf8").matchAll(/"datasource":\s*\{[^}]*"uid":\s*"([^"]*)"/g)].map((m) => m[1]);
    expect(uids.length).toBeGreaterThan(panels.length);
    expect(new Set(uids)).toEqual(new Set(["${DS_PROMETHEUS}"]));
  });

  test("has an `instance` variable read from Prometheus, and every panel filters on it or on job", () => {
    const v = d.templating.list.find((x: { name: string }) => x.name === "instance");
    expect(v).toMatchObject({ type: "query", datasource: DS, includeAll: true, multi: true });
    expect(v.definition).toContain("instance)");
    for (const p of panels) for (const t of p.targets!) expect([p.title, /\$instance|job,/.test(t.expr!)]).toEqual([p.title, true]);
  });

  test("every panel has a query, and every query parses (promtool check rules on them as recording rules)", async () => {
    const exprs = panels.flatMap((p) => {
      expect([p.title, (p.targets ?? []).length > 0]).toEqual([p.title, true]);
      return p.targets!.map((t) => {
        expect([p.title, (t.expr ?? "").trim() !== ""]).toEqual([p.title, true]);
        return substituteVariables(t.expr!);
      });
    });
    const dir = tempDir("payflux-dash-");
    const file = join(dir, "panels.yml");
    const rules = exprs.map((e, i) => ({ record: `dashboard:panel:query${i}`, expr: e }));
    writeFileSync(file, JSON.stringify({ groups: [{ name: "dashboard", rules }] }));
    const r = await promtool(["check", "rules", file]);
    expect(r.output).toContain(`SUCCESS: ${exprs.length} rules found`);
    expect(r.code).toBe(0);
    // The check can fail: a broken query is refused.
    writeFileSync(file, JSON.stringify({ groups: [{ name: "dashboard", rules: [{ record: "x:y:z", expr: "sum(rate(payflux_ingest_accepted_total[5m])" }] }] }));
    expect((await promtool(["check", "rules", file])).code).not.toBe(0);
  });

  test("the runbook gives every panel's query (without the instance filter)", () => {
    const missing = panels.flatMap((p) =>
      p.targets!.map((t) => t.expr!.replace(/\{instance=~"\$instance"\}/g, "").replace(/,\s*instance=~"\$instance"|instance=~"\$instance",\s*/g, ""))
        .filter((q) => !runbook.includes(`\`${q}\``))
        .map((q) => `${p.title}: ${q}`),
    );
    expect(missing).toEqual([]);
  });

  test("shows what the issue lists", () => {
    const metrics = new Set(panels.flatMap((p) => p.targets!.flatMap((t) => metricNames(t.expr!))));
    for (const m of [
      "instance_reason:payflux_auth_denied:rate5m", "instance:payflux_ingest_accepted:rate5m", "instance_reason:payflux_ingest_rejected:rate5m",
      "instance:payflux_ingest_rate_limited:rate5m", "instance:payflux_ingest_duplicate:rate5m", "instance:payflux_ingest_duration_seconds:p50_5m",
      "instance:payflux_ingest_duration_seconds:p99_5m", "payflux_http_requests_in_flight", "payflux_config_last_reload_successful",
      "payflux_config_last_reload_success_timestamp_seconds", "payflux_api_keys", "payflux_storage_bytes", "payflux_storage_max_bytes",
      "payflux_dedup_ids", "payflux_forward_up", "payflux_forward_lag_events", "payflux_consumer_lag_messages", "payflux_config_info",
    ]) {
      expect([m, metrics.has(m)]).toEqual([m, true]);
    }
  });
});

describe("runbook and the old ops kit", () => {
  test("the runbook keeps the old runbook's queries and covers what the issue lists", async () => {
    const queries = runbookQueries();
    for (const q of [
      "sum(increase(payflux_auth_denied_total[5m]))",
      "sum by (reason) (increase(payflux_auth_denied_total[5m]))",
      "rate(payflux_auth_denied_total[1m])",
      "sum(increase(payflux_auth_denied_total[5m])) > 50",
      "topk(1, sum by (reason) (rate(payflux_auth_denied_total[5m])))",
    ]) {
      expect(queries).toContain(q);
    }
    for (const heading of ["missing_key", "revoked_key", "invalid_key", "Key rotation across instances", "Emergency revocation", "Rate-limit tuning", "Storage full and disk errors", "Forwarder trouble", "Exit codes"]) {
      expect(anchors.has(anchor(heading))).toBe(true);
    }
    expect(runbook).toContain("systemctl reload payflux");
    // Every exit code the service has.
    const codes = Object.values((await import("../src/exit-codes.ts")).EXIT) as number[];
    for (const c of codes) expect(runbook).toMatch(new RegExp(`^\\| ${c} \\|`, "m"));
    // Every in-page link of the runbook resolves.
    const links = [...runbook.matchAll(/\]\(#([^)]+)\)/g)].map((m) => m[1]!);
    expect(links.filter((l) => !anchors.has(l))).toEqual([]);
  });

  test(`the runbook names the replacement of ${RETIRED_METRIC} (not faked by the service)`, () => {
    const section = runbook.slice(runbook.indexOf("## The old ops kit"));
    expect(section).toContain(RETIRED_METRIC);
    const replacement = /```promql\n([\s\S]*?)```/.exec(section.slice(section.indexOf(`\`${RETIRED_METRIC}\` counted`)))?.[1];
    expect(norm(replacement ?? "")).toBe("sum by (reason) (increase(payflux_ingest_rejected_total[5m]))");
    const src = ["metrics.ts", "forwarder.ts", "app.ts"].map((f) => readFileSync(join(ROOT, "src", f), "utf8")).join("\n");
    expect(src).not.toContain("warnings_suppressed");
  });

  test("the list of old-kit queries matches the old kit (when its reference copy is next to the repository)", () => {
    if (!existsSync(OLD_KIT_DIR)) return; // CI without the reference: the list in test/support/ops.ts stands
    const old = Bun.YAML.parse(readFileSync(join(OLD_KIT_DIR, "alerts.yml"), "utf8")) as any;
    const exprs = old.groups.flatMap((g: any) => g.rules.map((r: any) => norm(r.expr)));
    const templated = old.groups.flatMap((g: any) => g.rules.flatMap((r: any) => [...String(r.annotations?.description ?? "").matchAll(/query "([^"]+)"/g)].map((m) => norm(m[1]!))));
    const panels: string[] = [];
    const walk = (ps: any[]) => ps.forEach((p) => (panels.push(...(p.targets ?? []).map((t: any) => norm(t.expr))), walk(p.panels ?? [])));
    walk(JSON.parse(readFileSync(join(OLD_KIT_DIR, "payflux-ops.json"), "utf8")).panels ?? []);
    expect(new Set(OLD_KIT_QUERIES)).toEqual(new Set([...exprs, ...templated, ...panels]));
  });
});

describe("docs a newcomer tripped over", () => {
  const readme = readFileSync(join(ROOT, "README.md"), "utf8");

  test("README names the Debian packages `npm test` installs, all of them", () => {
    const script = readFileSync(join(ROOT, "test", "support", "ensure-system-deps.sh"), "utf8");
    const packages = [...new Set([...script.matchAll(/^\s+\[[\w-]+\]=([\w-]+)$/gm)].map((m) => m[1]!))];
    expect(packages.length).toBeGreaterThan(1);
    const words = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"];
    expect(readme).toContain(`the ${words[packages.length]} Debian packages`);
    for (const p of packages) expect(readme).toContain(`\`${p}\``);
    expect(readme).not.toMatch(/installs the one system package/);
  });

  test("keygen from a source checkout: `npm start -- keygen` works as the README says, and package.json has a bin entry", async () => {
    expect(readme).toContain("`npm start -- keygen`");
    const pkg = JSON.parse(readFileSync(join(ROOT, "package.json"), "utf8"));
    expect(pkg.bin?.payflux).toBe("src/main.ts");
    // Bun reads a .env in the working directory unless told not to: the config comes only from the environment and the config file.
    expect(readFileSync(join(ROOT, pkg.bin.payflux), "utf8").startsWith("#!/usr/bin/env -S bun --no-env-file\n")).toBe(true);
    expect(pkg.scripts.start).toBe("bun --no-env-file src/main.ts");
    const env = { ...process.env, PATH: `${join(ROOT, "node_modules", ".bin")}:${process.env.PATH}` };
    const p = Bun.spawn(["npm", "start", "--silent", "--", "keygen"], { cwd: ROOT, env, stdout: "pipe", stderr: "pipe" });
    const timer = setTimeout(() => p.kill("SIGKILL"), 30_000);
    const [code, out] = await Promise.all([p.exited, new Response(p.stdout).text()]);
    clearTimeout(timer);
    expect([code, out.trim()]).toEqual([0, expect.stringMatching(/^key: +[0-9a-f]{64}\nconfig: +PAYFLUX_API_KEYS=sha256:[0-9a-f]{64}\nkey_id: +[0-9a-f]{12}$/)]);
  });

  test("deploy/README.md says what the proxies do with /metrics: loopback only", () => {
    const deployReadme = readFileSync(join(ROOT, "deploy", "README.md"), "utf8");
    expect(deployReadme).not.toMatch(/do not expose\s+`\/metrics`/);
    expect(deployReadme).toMatch(/`\/metrics` only to loopback/);
    const nginx = readFileSync(join(ROOT, "deploy", "nginx", "payflux.conf"), "utf8");
    expect(nginx).toMatch(/location = \/metrics \{[^}]*allow 127\.0\.0\.1;[^}]*deny all;/);
    const haproxy = readFileSync(join(ROOT, "deploy", "haproxy", "haproxy.cfg"), "utf8");
    expect(haproxy).toMatch(/deny .* if \{ path \/metrics \} !\{ src 127\.0\.0\.1 \}/);
    expect(statSync(join(ROOT, "deploy", "prometheus", "prometheus.yml")).isFile()).toBe(true);
  });
});
