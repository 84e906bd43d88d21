import { configuredDigest, HASH_PREFIX, OTHER_CLIENT } from "./auth.ts";
import { BURST_RANGE, RPS_RANGE } from "./limiter.ts";
import { PAUSE_EVERY, runSync, type Sliced } from "./slices.ts";

/**
 * The clients file (PAYFLUX_CLIENTS_FILE): one named client per line,
 *
 *   # name      secret                      options
 *   acme        sha256:3b4c...e9            rps=200 burst=1000
 *   globex      sha256:91aa...07            not_after=2027-03-31T00:00:00Z
 *   acme-old    sha256:5d0f...c2            revoked
 *
 * Fields are separated by spaces or tabs; `#` starts a comment at the start of
 * a line or in the options column. Every problem names the line and never
 * quotes a field that could be a secret (a pasted key may sit in any column).
 */
export interface ClientSpec {
  name: string;
  /** 1-based line in the file. */
  line: number;
  digest: string;
  /** Overrides of PAYFLUX_INGEST_RPS/BURST, or null for the default. */
  rps: number | null;
  burst: number | null;
  /** Epoch ms of `not_after`, or null. */
  notAfter: number | null;
  revoked: boolean;
}

export const CLIENT_NAME = /^[a-z0-9][a-z0-9_.-]{0,63}$/;
/** Named clients that get their own `client` label value in payflux_client_requests_total; the rest count under "other". */
export const PER_CLIENT_METRICS_CAP = 100;
export const CLIENT_OPTIONS = ["rps=", "burst=", "not_after=", "revoked"] as const;

export interface ClientsFileResult {
  clients: ClientSpec[];
  errors: string[];
  warnings: string[];
}

export function parseClientsFile(text: string, file: string, minKeyLength: number): ClientsFileResult {
  return runSync(parseClientsFileSliced(text, file, minKeyLength));
}

/** parseClientsFile as sliced work (a reload; see runSliced). */
export function* parseClientsFileSliced(text: string, file: string, minKeyLength: number): Sliced<ClientsFileResult> {
  const clients: ClientSpec[] = [];
  const errors: string[] = [];
  const warnings: string[] = [];
  const nameLine = new Map<string, number>();
  const digestLine = new Map<string, number>();
  const lines = text.split("\n");
  let plain = 0;
  for (let i = 0; i < lines.length; i++) {
    if (i % PAUSE_EVERY === PAUSE_EVERY - 1) yield;
    const lineNo = i + 1;
    const at = `${file}:${lineNo}`;
    const line = lines[i]!.replace(/\r$/, "").trim();
    if (line === "" || line.startsWith("#")) continue;
    if (!/^[\x20-\x7e\t]*$/.test(line)) {
      errors.push(`${at}: contains non-printable or non-ASCII characters`);
      continue;
    }
    const fields = line.split(/[ \t]+/);
    const comment = fields.findIndex((f, j) => j >= 2 && f.startsWith("#"));
    if (comment >= 0) fields.length = comment;
    if (fields.length < 2) {
      errors.push(`${at}: expected \`name secret [options]\`, found one field`);
      continue;
    }
    const [name, secret, ...options] = fields as [string, string, ...string[]];
    let ok = true;
    const problem = nameProblem(name);
    if (problem !== null) {
      errors.push(`${at}: ${problem}`);
      ok = false;
    } else if (nameLine.has(name)) {
      errors.push(`${at}: the name ${name} is already used on line ${nameLine.get(name)}`);
      ok = false;
    }
    let digest: string | null = null;
    if (secret.startsWith(HASH_PREFIX)) {
      digest = configuredDigest(secret);
      if (digest === null) errors.push(`${at}: the secret starts with ${HASH_PREFIX} but is not ${HASH_PREFIX}<64 hex digits>`);
    } else if (secret.length < minKeyLength) {
      errors.push(`${at}: the secret is shorter than ${minKeyLength} characters; use \`payflux keygen\` for a strong key`);
    } else {
      digest = configuredDigest(secret);
      plain++;
    }
    if (digest === null) ok = false;
    else if (digestLine.has(digest)) {
      errors.push(`${at}: the same secret as line ${digestLine.get(digest)}`);
      ok = false;
    }

    const spec: ClientSpec = { name, line: lineNo, digest: digest ?? "", rps: null, burst: null, notAfter: null, revoked: false };
    const seen = new Set<string>();
    options.forEach((opt, j) => {
      const eq = opt.indexOf("=");
      const key = eq < 0 ? opt : opt.slice(0, eq);
      const value = eq < 0 ? null : opt.slice(eq + 1);
      // Only a short lowercase word is quoted back: a misplaced secret never is.
      const label = /^[a-z_]{1,12}$/.test(key) ? key : `(field ${j + 3})`;
      if (seen.has(key)) {
        errors.push(`${at}: option ${label} is given twice`);
        ok = false;
        return;
      }
      seen.add(key);
      const bad = (what: string) => {
        errors.push(`${at}: ${key} must be ${what}`);
        ok = false;
      };
      switch (eq < 0 ? opt : `${key}=`) {
        case "rps=": {
          const n = /^\d+(\.\d+)?$/.test(value!) ? Number(value) : NaN;
          if (n >= RPS_RANGE.min && n <= RPS_RANGE.max) spec.rps = n;
          else bad(`a number from ${RPS_RANGE.min} to ${RPS_RANGE.max}`);
          break;
        }
        case "burst=": {
          const n = /^\d+$/.test(value!) ? Number(value) : NaN;
          if (n >= BURST_RANGE.min && n <= BURST_RANGE.max) spec.burst = n;
          else bad(`a whole number from ${BURST_RANGE.min} to ${BURST_RANGE.max}`);
          break;
        }
        case "not_after=": {
          const ms = parseRfc3339(value!);
          if (ms !== null) spec.notAfter = ms;
          else bad("an RFC 3339 time with a zone, such as 2027-03-31T00:00:00Z");
          break;
        }
        case "revoked":
          spec.revoked = true;
          break;
        default:
          errors.push(`${at}: unknown option ${label} (options: ${CLIENT_OPTIONS.join(" ")})`);
          ok = false;
      }
    });
    if (!ok) continue;
    nameLine.set(name, lineNo);
    digestLine.set(spec.digest, lineNo);
    clients.push(spec);
  }
  if (plain > 0) {
    warnings.push(`${file}: ${plain} secret(s) in plain text; \`payflux hash-key\` converts each to its ${HASH_PREFIX} form`);
  }
  return { clients, errors, warnings };
}

/** Why a client name is refused (never quoting it: it may be a key in the wrong column), or null. */
export function nameProblem(name: string): string | null {
  if (!CLIENT_NAME.test(name)) return "the name must match [a-z0-9][a-z0-9_.-]{0,63} (lowercase letters, digits, _ . -)";
  // A generated key in the name column (columns swapped?) would be printed as a name.
  if (/^[0-9a-f]{24,}$/.test(name)) return "the name looks like a key (24 or more hex digits); put the name first, then the secret";
  if (name === OTHER_CLIENT) return `the name "${OTHER_CLIENT}" is reserved (metrics count unnamed keys under it)`;
  return null;
}

/** The first PER_CLIENT_METRICS_CAP clients in file order keep their name as metric label. */
export function metricLabelOf(index: number, name: string): string {
  return index < PER_CLIENT_METRICS_CAP ? name : OTHER_CLIENT;
}

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$/;

/** Epoch ms of an RFC 3339 date-time (zone required), or null; impossible dates (Feb 30) are refused. */
export function parseRfc3339(raw: string): number | null {
  const m = RFC3339.exec(raw);
  if (m === null) return null;
  const [y, mo, d, h, mi, s] = m.slice(1, 7).map(Number) as [number, number, number, number, number, number];
  const frac = m[7] === undefined ? 0 : Math.floor(Number(`0${m[7]}`) * 1000);
  if (mo < 1 || mo > 12 || d < 1 || h > 23 || mi > 59 || s > 59) return null;
  if (d > new Date(Date.UTC(y, mo, 0)).getUTCDate()) return null;
  let offsetMin = 0;
  const zone = m[8]!;
  if (zone !== "Z" && zone !== "z") {
    const oh = Number(zone.slice(1, 3));
    const om = Number(zone.slice(4, 6));
    if (oh > 23 || om > 59) return null;
    offsetMin = (zone[0] === "-" ? -1 : 1) * (oh * 60 + om);
  }
  return Date.UTC(y, mo - 1, d, h, mi, s, frac) - offsetMin * 60_000;
}
