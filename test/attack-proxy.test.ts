/**
 * Attack: reaching /metrics past the proxy rule with dot segments (issue 8,
 * item 6). The shipped HAProxy and nginx examples run for real (Debian
 * packages) in front of the real service; a client bound to 127.0.0.2, which
 * the /metrics rule denies, sends targets that Bun (and Deno's URL parser)
 * resolve to /metrics: none of them gets metrics, while 127.0.0.1 still
 * scrapes /metrics and 127.0.0.2 still reaches /health and ingest through the
 * proxy. On Deno, which sees the raw target, the service itself answers 400.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { E2E_TARGETS, event, freePort, KEY, ROOT, SINGLE, startServer, stopAll, tempDir, until, type Server } from "./support/harness.ts";
import { rawRequest } from "./support/bound-client.ts";

const procs: ReturnType<typeof Bun.spawn>[] = [];
afterAll(async () => {
  for (const p of procs) p.kill("SIGKILL");
  await Promise.all(procs.map((p) => p.exited));
  await stopAll();
});

/** Targets that Bun or Deno's URL parsing turn into /metrics (or that a proxy could read otherwise). */
const SNEAKY = [
  "/x/../metrics",
  "/./metrics",
  "/x/%2e%2e/metrics",
  "/x/%2E%2E/metrics",
  "/%2e/metrics",
  "/x/.%2e/metrics",
  "/x/%2e./metrics",
  "/health/../metrics",
  "/v1/events/../../metrics",
  "/v1/../metrics?a=1",
  "/x/..%2fmetrics",
  "/x%2f..%2fmetrics",
  "/%2fmetrics",
  "/x%5c..%5cmetrics",
  "/x\\..\\metrics",
  "/x\\../metrics",
  "//metrics",
  "/metrics/.",
  "/metrics/./",
  "/metrics#x",
];

function tool(cmd: string, pkg: string): string {
  const path = Bun.which(cmd, { PATH: `${process.env.PATH ?? "/usr/bin:/bin"}:/usr/sbin:/sbin` });
  if (path === null) throw new Error(`${cmd} is not installed: install the Debian package \`${pkg}\` (apt-get install ${pkg})`);
  return path;
}

/** Starts a proxy process and waits until it answers /health on `port`. */
async function startProxy(cmd: string[], port: number): Promise<() => string> {
  const p = Bun.spawn(cmd, { stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  procs.push(p);
  let output = "";
  (async () => {
    for await (const c of p.stderr as unknown as AsyncIterable<Uint8Array>) output += new TextDecoder().decode(c);
  })();
  await until(
    `${cmd[0]} answering`,
    async () => {
      if (p.exitCode !== null) throw new Error(`${cmd[0]} exited with ${p.exitCode}: ${output}`);
      try {
        return (await rawRequest(port, { target: "/health" })).status === 200 || undefined;
      } catch {
        return undefined;
      }
    },
    15_000,
  );
  return () => output;
}

/** The shipped haproxy.cfg, listening on `port` and balancing to the one test instance. */
async function startHaproxy(service: number): Promise<number> {
  const port = await freePort();
  let cfg = readFileSync(join(ROOT, "deploy", "haproxy", "haproxy.cfg"), "utf8");
  const edits: [RegExp, string][] = [
    [/^\s*bind :80\s*$/m, `    bind 127.0.0.1:${port}`],
    [/^\s*server payflux1 .*$/m, `    server payflux1 127.0.0.1:${service}`],
    [/^\s*server payflux2 .*\n/m, ""],
    [/^\s*(user|group) haproxy\s*\n/gm, ""],
    [/^\s*log \/dev\/log.*\n/m, ""],
  ];
  for (const [re, by] of edits) {
    expect(re.test(cfg)).toBe(true);
    cfg = cfg.replace(re, by);
  }
  const file = join(tempDir("payflux-haproxy-"), "haproxy.cfg");
  writeFileSync(file, cfg);
  await startProxy([tool("haproxy", "haproxy"), "-db", "-f", file], port);
  return port;
}

/** The shipped nginx.conf + payflux.conf, listening on `port` with the one test instance as upstream. */
async function startNginx(service: number): Promise<number> {
  const port = await freePort();
  const prefix = tempDir("payflux-nginx-");
  mkdirSync(join(prefix, "logs"), { recursive: true });
  let include = readFileSync(join(ROOT, "deploy", "nginx", "payflux.conf"), "utf8");
  const edits: [RegExp, string][] = [
    [/^(\s*)listen 80;/m, `$1listen 127.0.0.1:${port};`],
    [/^(\s*)server 10\.0\.0\.11:8080 (.*)$/m, `$1server 127.0.0.1:${service} $2`],
    [/^\s*server 10\.0\.0\.12:8080 .*\n/m, ""],
  ];
  for (const [re, by] of edits) {
    expect(re.test(include)).toBe(true);
    include = include.replace(re, by);
  }
  writeFileSync(join(prefix, "payflux.conf"), include);
  writeFileSync(join(prefix, "nginx.conf"), readFileSync(join(ROOT, "deploy", "nginx", "nginx.conf"), "utf8"));
  const nginx = tool("nginx", "nginx");
  await startProxy([nginx, "-p", prefix + "/", "-c", join(prefix, "nginx.conf"), "-e", "stderr", "-g", `daemon off; pid ${join(prefix, "nginx.pid")};`], port);
  return port;
}

async function expectNoMetricsFor127002(port: number, proxy: string) {
  for (const target of SNEAKY) {
    let res: { status: number; body: string };
    try {
      res = await rawRequest(port, { from: "127.0.0.2", target });
    } catch (err) {
      // A proxy that drops the connection gives nothing away either.
      res = { status: 0, body: String(err) };
    }
    expect({ proxy, target, metrics: res.body.includes("payflux_build_info") }).toEqual({ proxy, target, metrics: false });
    // Refused at the proxy with 400, never passed on.
    expect({ proxy, target, status: res.status }).toEqual({ proxy, target, status: 400 });
  }
  expect((await rawRequest(port, { from: "127.0.0.2", target: "/metrics" })).status).toBe(403);
}

async function allowedStillWork(port: number, server: Server) {
  const scrape = await rawRequest(port, { from: "127.0.0.1", target: "/metrics" });
  expect(scrape.status).toBe(200);
  expect(scrape.body).toContain("payflux_build_info");
  const health = await rawRequest(port, { from: "127.0.0.2", target: "/health" });
  expect(health.status).toBe(200);
  const ok = await rawRequest(port, {
    from: "127.0.0.2",
    method: "POST",
    target: SINGLE,
    headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
    body: JSON.stringify(event()),
  });
  expect(ok.status).toBe(202);
  const q = await rawRequest(port, { from: "127.0.0.2", target: "/health?probe=1" });
  expect(q.status).toBe(200);
  expect(server.port).toBeGreaterThan(0);
}

for (const target of E2E_TARGETS) {
  describe(`[${target}] /metrics behind the shipped proxies, from a denied address`, () => {
    let server: Server;
    test("HAProxy: dot segments, encoded dots and slashes, backslashes are refused; allowed paths still work", async () => {
      server = await startServer({ target });
      const port = await startHaproxy(server.port);
      await expectNoMetricsFor127002(port, "haproxy");
      await allowedStillWork(port, server);
    }, 60_000);

    test("nginx: the same", async () => {
      server ??= await startServer({ target });
      const port = await startNginx(server.port);
      await expectNoMetricsFor127002(port, "nginx");
      await allowedStillWork(port, server);
    }, 60_000);

    if (target.startsWith("deno")) {
      test("Deno sees the raw target: the service itself answers 400 to them", async () => {
        for (const t of SNEAKY.filter((t) => !t.includes("#") && t !== "//metrics")) {
          const res = await rawRequest(server.port, { from: "127.0.0.2", target: t });
          expect({ t, status: res.status }).toEqual({ t, status: 400 });
        }
        expect((await rawRequest(server.port, { target: "/metrics" })).status).toBe(200);
        expect((await rawRequest(server.port, { target: "/health?x=../y" })).status).toBe(200);
      }, 30_000);
    }
  });
}
