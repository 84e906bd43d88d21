import { randomBytes } from "node:crypto";
import { EXPIRING_SOON_MS, HASH_PREFIX, KEY_ID_PREFIX, keyDigest, keyIdOf, type KeyEntry, type KeyRing } from "./auth.ts";
import { nameProblem } from "./clients.ts";
import { loadConfig, MIN_KEY_LENGTH, redactUrl } from "./config.ts";
import { waitUntilQuiet } from "./config-file.ts";
import { describeCert } from "./tls.ts";
import { EXIT } from "./exit-codes.ts";
import { serve } from "./server.ts";
import { RUNTIME, VERSION } from "./version.ts";

export const USAGE = `Usage:
  payflux [serve] [--config FILE]      run the ingest server
  payflux check-config [--config FILE] validate the config exactly as serve and SIGHUP would
  payflux keygen [--name NAME]         print a new random API key (32 bytes, hex) once, and the config
                                       line that holds only its hash (a clients-file line with --name)
  payflux hash-key                     read a key on stdin; print its sha256: form and key_id
  payflux --version                    print the version
  payflux --help                       print this help

The config comes from the environment, then FILE (or PAYFLUX_CONFIG), whose values win.
Exit codes: 0 ok, 1 failure, 64 usage, 65 bad input (hash-key), 69 cannot listen, 73 data dir unusable or in use, 78 bad config.`;

type Command =
  | { name: "serve" | "check-config"; configFile: string | undefined }
  | { name: "keygen"; clientName: string | null }
  | { name: "hash-key" | "version" | "help" };

/** Parses argv (without the runtime and script); returns an error message for bad usage. */
export function parseArgs(argv: string[]): Command | { error: string } {
  const args = [...argv];
  if (args.length === 1 && (args[0] === "--version" || args[0] === "-V" || args[0] === "version")) return { name: "version" };
  if (args.length === 1 && (args[0] === "--help" || args[0] === "-h" || args[0] === "help")) return { name: "help" };
  if (args[0] === "keygen") return parseKeygen(args.slice(1));
  if (args[0] === "hash-key") return args.length === 1 ? { name: "hash-key" } : { error: "hash-key takes no arguments (it reads the key on stdin)" };
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
      return keygen(cmd.clientName);
    case "hash-key":
      return hashKey();
    case "check-config":
      return checkConfig(cmd.configFile);
    case "serve":
      return serve(cmd.configFile);
  }
}

/** Prints a summary (counts, never keys) and exits 0, or every problem and exits 78. */
async function checkConfig(configFile: string | undefined): Promise<void> {
  // As serve and SIGHUP do: a file being written is read once it is quiet.
  const file = configFile ?? (process.env.PAYFLUX_CONFIG || undefined);
  if (file !== undefined) await waitUntilQuiet(file);
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
      ...keySummary(c.keys, c.clientsFile),
      `  listen:       ${c.host}:${c.port} (${c.tls === null ? "HTTP" : "HTTPS only"})`,
      `  tls:          ${c.tls === null ? "off" : `${c.tls.certFile}: ${describeCert(c.tls)}`}`,
      `  data dir:     ${c.dataDir}`,
      `  rate limit:   ${c.ingestRps}/s per key, burst ${c.ingestBurst}`,
      `  failed auth:  ${c.authFailRps > 0 && c.authFailBurst > 0 ? `${c.authFailRps}/s per address, burst ${c.authFailBurst}` : "no limit"}; X-Forwarded-For ${c.trustProxy === "" ? "ignored" : `believed from ${c.trustProxy}`}`,
      `  limits:       body ${c.maxBodyBytes} bytes, batch ${c.maxBatch} events, dedup window ${c.dedupWindowMs / 1000}s`,
      `  metrics:      ${c.metricsEnabled ? (c.metricsTokenDigest ? "enabled, token required" : "enabled, open") : "disabled"}`,
      `  log level:    ${c.logLevel}`,
      `  forward:      ${c.forwardRedisUrl === null ? "off" : `${redactUrl(c.forwardRedisUrl)} -> ${c.forwardStream} (maxlen ${c.forwardMaxlen})`}`,
      `  fingerprint:  ${c.fingerprint}`,
    ].join("\n"),
  );
}

function parseKeygen(args: string[]): Command | { error: string } {
  let clientName: string | null = null;
  while (args.length > 0) {
    const arg = args.shift()!;
    const value = arg === "--name" ? args.shift() : arg.startsWith("--name=") ? arg.slice(7) : undefined;
    if (value === undefined) return { error: arg.startsWith("-") && arg !== "--name" ? `unknown flag ${arg}` : arg === "--name" ? "--name needs a client name" : `unknown argument ${arg}` };
    const problem = nameProblem(value);
    if (problem !== null) return { error: `--name: ${problem}` };
    clientName = value;
  }
  return { name: "keygen", clientName };
}

/**
 * A new key, shown once on a labelled line of its own, and the config line
 * that holds only its hash: the service never needs the key itself.
 */
function keygen(clientName: string | null): void {
  const key = randomBytes(32).toString("hex");
  const digest = keyDigest(key);
  const config = clientName === null ? `PAYFLUX_API_KEYS=${HASH_PREFIX}${digest}` : `${clientName} ${HASH_PREFIX}${digest}`;
  console.log([`key:    ${key}`, `config: ${config}`, `key_id: ${keyIdOf(digest)}`].join("\n"));
  console.error(
    clientName === null
      ? "Give the key to the client now: it is not stored anywhere and is not shown again. Add the config value to PAYFLUX_API_KEYS (comma-separated)."
      : "Give the key to the client now: it is not stored anywhere and is not shown again. Add the config line to PAYFLUX_CLIENTS_FILE.",
  );
}

/** Longest input read by hash-key: a key is short; anything longer is not one. */
const HASH_KEY_MAX_BYTES = 4096;

/** Reads one key on stdin (a trailing newline is dropped) and prints its sha256: form and key_id; never the key. */
async function hashKey(): Promise<void> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of process.stdin as AsyncIterable<Buffer>) {
    chunks.push(chunk);
    size += chunk.length;
    if (size > HASH_KEY_MAX_BYTES) break;
  }
  const fail = (msg: string) => {
    console.error(`payflux hash-key: ${msg}`);
    process.exit(EXIT.DATAERR);
  };
  if (size > HASH_KEY_MAX_BYTES) return fail(`input is longer than ${HASH_KEY_MAX_BYTES} bytes; send one key`);
  const key = Buffer.concat(chunks).toString("utf8").replace(/\r?\n$/, "");
  if (key === "") return fail("no key on stdin (example: printf %s \"$KEY\" | payflux hash-key)");
  if (!/^[\x21-\x7e]+$/.test(key)) return fail("the key must be one line of printable ASCII without spaces");
  if (key.startsWith(HASH_PREFIX)) return fail(`the input is already a ${HASH_PREFIX} form`);
  if (key.length < MIN_KEY_LENGTH) console.error(`warning: the key is shorter than ${MIN_KEY_LENGTH} characters; replace it with \`payflux keygen\``);
  const digest = keyDigest(key);
  console.log([`hash:   ${HASH_PREFIX}${digest}`, `key_id: ${keyIdOf(digest)}`].join("\n"));
}

/** check-config's key lines: counts by state, then each named client with its state and options (never a secret). */
function keySummary(keys: KeyRing, clientsFile: string | null, now = Date.now()): string[] {
  const state = (e: KeyEntry) => (e.revoked ? "revoked" : now >= e.notAfter ? "expired" : e.notAfter - now <= EXPIRING_SOON_MS ? "expiring" : "active");
  const n = keys.counts(now);
  const clients = keys.named();
  const lines = [
    `  keys:         ${n.active} active, ${n.revoked} revoked, ${n.expired} expired, ${n.expiringSoon} expiring within 7 days`,
  ];
  if (clientsFile !== null) lines.push(`  clients:      ${clients.length} named in ${clientsFile}`);
  const width = Math.max(0, ...clients.map((e) => e.client!.length));
  for (const e of clients) {
    const s = state(e);
    const opts = [
      `${KEY_ID_PREFIX}${e.keyId}`,
      `rps=${e.limits.rps}`,
      `burst=${e.limits.burst}`,
      ...(Number.isFinite(e.notAfter) ? [`not_after=${new Date(e.notAfter).toISOString()}`] : []),
    ];
    lines.push(`    ${e.client!.padEnd(width)}  ${(s === "expiring" ? "active, expiring within 7 days" : s).padEnd(30)} ${opts.join(" ")}`);
  }
  return lines;
}
