/**
 * The multi-instance examples in deploy/: nginx and HAProxy accept them
 * (`nginx -t`, `haproxy -c`; no daemon is started, nothing is sent to the
 * placeholder upstream addresses), they balance on the Authorization header
 * with consistent hashing, and no log format writes the API key.
 * A missing nginx or haproxy fails the test (never skips it).
 */
import { afterAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";

const ROOT = resolve(import.meta.dir, "..");
const DEPLOY = join(ROOT, "deploy");
const NGINX_CONF = join(DEPLOY, "nginx", "nginx.conf");
const NGINX_INCLUDE = join(DEPLOY, "nginx", "payflux.conf");
const HAPROXY_CFG = join(DEPLOY, "haproxy", "haproxy.cfg");

const dirs: string[] = [];
afterAll(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

/** Path of a tool; missing -> a failure naming the Debian package. */
function tool(cmd: string, pkg: string): string {
  const path = Bun.which(cmd, { PATH: `${process.env.PATH ?? "/usr/bin:/bin"}:/usr/sbin:/sbin` });
  if (path === null) throw new Error(`${cmd} is not installed: install the Debian package \`${pkg}\` (apt-get install ${pkg})`);
  return path;
}

function run(cmd: string[]) {
  const r = Bun.spawnSync(cmd, { cwd: ROOT, stdout: "pipe", stderr: "pipe", env: { PATH: process.env.PATH ?? "/usr/bin:/bin", LANG: "C.UTF-8" } });
  return { code: r.exitCode, output: r.stdout.toString() + r.stderr.toString() };
}

/** Text without comments (`#` to end of line; neither config uses `#` inside values here). */
const uncommented = (text: string) => text.replace(/#.*$/gm, "");

/** Every file under deploy/, recursively. */
function deployFiles(dir = DEPLOY): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? deployFiles(path) : [path];
  });
}

/**
 * `nginx -t` binds the listen ports, so as non-root it cannot check `listen 80`:
 * then check copies of both files, identical except for a free high port.
 */
function nginxConfFor(prefix: string): string {
  if (process.getuid?.() === 0) return NGINX_CONF;
  const probe = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = probe.port;
  probe.stop(true);
  const include = readFileSync(NGINX_INCLUDE, "utf8");
  expect(include).toMatch(/^\s*listen 80;/m);
  writeFileSync(join(prefix, "payflux.conf"), include.replace(/^(\s*)listen 80;/gm, `$1listen 127.0.0.1:${port};`));
  writeFileSync(join(prefix, "nginx.conf"), readFileSync(NGINX_CONF, "utf8"));
  return join(prefix, "nginx.conf");
}

describe("nginx example", () => {
  test("nginx -t accepts it", () => {
    const nginx = tool("nginx", "nginx");
    const prefix = mkdtempSync(join(tmpdir(), "payflux-nginx-"));
    dirs.push(prefix);
    const r = run([nginx, "-t", "-q", "-p", prefix + "/", "-c", nginxConfFor(prefix), "-e", "stderr", "-g", `pid ${join(prefix, "nginx.pid")};`]);
    if (r.code !== 0) throw new Error(`nginx -t failed (exit ${r.code}):\n${r.output}`);
    expect(r.code).toBe(0);
  });

  test("balances on the Authorization header with consistent hashing, keepalive, 1m bodies", () => {
    const text = uncommented(readFileSync(NGINX_INCLUDE, "utf8"));
    expect(text).toMatch(/^\s*hash \$http_authorization consistent;/m);
    expect(text).toMatch(/^\s*keepalive \d+;/m);
    expect(text).toMatch(/^\s*client_max_body_size 1m;/m);
    expect(text).toMatch(/X-Forwarded-For \$proxy_add_x_forwarded_for;/);
    // /metrics is not open to the world through the load balancer.
    expect(text).toMatch(/location = \/metrics \{[^}]*deny all;/);
    // The wrapper only includes the real file.
    expect(readFileSync(NGINX_CONF, "utf8")).toMatch(/^\s*include payflux\.conf;/m);
  });
});

describe("HAProxy example", () => {
  test("haproxy -c accepts it", () => {
    const haproxy = tool("haproxy", "haproxy");
    const r = run([haproxy, "-c", "-f", HAPROXY_CFG]);
    if (r.code !== 0) throw new Error(`haproxy -c failed (exit ${r.code}):\n${r.output}`);
    expect(r.output).toContain("Configuration file is valid");
  });

  test("balances on the Authorization header with consistent hashing and checks /health", () => {
    const text = uncommented(readFileSync(HAPROXY_CFG, "utf8"));
    expect(text).toMatch(/^\s*balance hdr\(Authorization\)\s*$/m);
    expect(text).toMatch(/^\s*hash-type consistent\s*$/m);
    expect(text).toMatch(/^\s*option httpchk GET \/health\s*$/m);
    expect(text).toMatch(/^\s*http-check expect status 200\s*$/m);
    expect(text).toMatch(/^\s*option forwardfor\b/m);
  });
});

test("no deploy file logs the Authorization header", () => {
  const files = deployFiles().filter((f) => /\.(conf|cfg)$/.test(f));
  expect(files.length).toBeGreaterThanOrEqual(3);
  for (const file of files) {
    const text = uncommented(readFileSync(file, "utf8"));
    // nginx: log_format statements run to the next `;`.
    for (const m of text.matchAll(/\blog_format\b[^;]*;/g)) expect(m[0].toLowerCase()).not.toContain("authorization");
    // HAProxy: header captures and custom log formats.
    for (const line of text.split("\n").filter((l) => /\b(capture|log-format|log-format-sd)\b/.test(l))) {
      expect(line.toLowerCase()).not.toContain("authorization");
    }
  }
});
