import { randomBytes } from "node:crypto";
import { loadConfig, redactUrl } from "./config.ts";
import { describeCert } from "./tls.ts";
import { EXIT } from "./exit-codes.ts";
import { serve } from "./server.ts";
import { RUNTIME, VERSION } from "./version.ts";

export const USAGE = `Usage:
  payflux [serve] [--config FILE]      run the ingest server
  payflux check-config [--config FILE] validate the config exactly as serve and SIGHUP would
  payflux keygen                       print a new random API key (32 bytes, hex)
  payflux --version                    print the version
  payflux --help                       print this help

The config comes from the environment, then FILE (or PAYFLUX_CONFIG), whose values win.
Exit codes: 0 ok, 1 failure, 64 usage, 69 cannot listen, 73 data dir unusable or in use, 78 bad config.`;

type Command = { name: "serve" | "check-config"; configFile: string | undefined } | { name: "keygen" | "version" | "help" };

/** Parses argv (without the runtime and script); returns an error message for bad usage. */
export function parseArgs(argv: string[]): Command | { error: string } {
  const args = [...argv];
  if (args.length === 1 && (args[0] === "--version" || args[0] === "-V" || args[0] === "version")) return { name: "version" };
  if (args.length === 1 && (args[0] === "--help" || args[0] === "-h" || args[0] === "help")) return { name: "help" };
  if (args[0] === "keygen") return args.length === 1 ? { name: "keygen" } : { error: `keygen takes no arguments` };
  let name: "serve" | "check-config" = "serve";
  if (args[0] === "serve" || args[0] === "check-config") name = args.shift() as typeof name;
  let configFile: string | undefined;
  while (args.length > 0) {
    const arg = args.shift()!;
    if (arg === "--config") {
      const value = args.shift();
      if (value === undefined || value === "") return { error: "--config needs a file name" };
      configFile = value;
    } else if (arg.startsWith("--config=") && arg.length > 9) {
      configFile = arg.slice(9);
    } else {
      return { error: arg.startsWith("-") ? `unknown flag ${arg}` : `unknown command ${arg}` };
    }
  }
  return { name, configFile };
}

export async function main(argv: string[]): Promise<void> {
  const cmd = parseArgs(argv);
  if ("error" in cmd) {
    console.error(`payflux: ${cmd.error}\n\n${USAGE}`);
    process.exit(EXIT.USAGE);
  }
  switch (cmd.name) {
    case "version":
      console.log(`payflux ${VERSION} (${RUNTIME})`);
      return;
    case "help":
      console.log(USAGE);
      return;
    case "keygen":
      console.log(randomBytes(32).toString("hex"));
      return;
    case "check-config":
      return checkConfig(cmd.configFile);
    case "serve":
      return serve(cmd.configFile);
  }
}

/** Prints a summary (counts, never keys) and exits 0, or every problem and exits 78. */
function checkConfig(configFile: string | undefined): void {
  const result = loadConfig(process.env, configFile);
  for (const w of result.ok ? result.config.warnings : result.warnings) console.error(`warning: ${w}`);
  if (!result.ok) {
    for (const e of result.errors) console.error(`config error: ${e}`);
    console.error(`${result.errors.length} problem(s) found; nothing was started`);
    process.exit(EXIT.CONFIG);
  }
  const c = result.config;
  console.log(
    [
      `config OK (${c.source})`,
      `  keys:         ${c.keys.activeCount} active, ${c.keys.revokedCount} revoked`,
      `  listen:       ${c.host}:${c.port} (${c.tls === null ? "HTTP" : "HTTPS only"})`,
      `  tls:          ${c.tls === null ? "off" : `${c.tls.certFile}: ${describeCert(c.tls)}`}`,
      `  data dir:     ${c.dataDir}`,
      `  rate limit:   ${c.ingestRps}/s per key, burst ${c.ingestBurst}`,
      `  limits:       body ${c.maxBodyBytes} bytes, batch ${c.maxBatch} events, dedup window ${c.dedupWindowMs / 1000}s`,
      `  metrics:      ${c.metricsEnabled ? (c.metricsTokenDigest ? "enabled, token required" : "enabled, open") : "disabled"}`,
      `  log level:    ${c.logLevel}`,
      `  forward:      ${c.forwardRedisUrl === null ? "off" : `${redactUrl(c.forwardRedisUrl)} -> ${c.forwardStream} (maxlen ${c.forwardMaxlen})`}`,
      `  fingerprint:  ${c.fingerprint}`,
    ].join("\n"),
  );
}
