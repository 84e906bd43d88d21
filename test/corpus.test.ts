/**
 * Issue 8: a generated corpus of malformed requests (more than 10,000, every
 * route, every class of bad input: deep nesting, bad UTF-8, bad JSON, wrong
 * types and values, bad methods, routes, keys, tokens and content types,
 * oversize and chunked oversize bodies, unparsable HTTP, pipelining) against
 * the real server: every answer the documented 4xx with its problem code, no
 * 5xx, no crash, nothing stored.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { CORPUS_LIMITS, generateCorpus, METRICS_TOKEN, type Case } from "./support/corpus.ts";
import { E2E_TARGETS, metric, runtimeOf, startServer, stopAll, storedEvents } from "./support/harness.ts";
import { RawConnection, type RawResponse } from "./support/raw-http.ts";

afterAll(stopAll);

const SEED = Number(process.env.PAYFLUX_CORPUS_SEED ?? 20261122);
const PER_CLASS = Number(process.env.PAYFLUX_CORPUS_PER_CLASS ?? 620);
const WORKERS = 8;
const CRASH = /uncaught|unhandled|exception|panic|segmentation fault|RangeError|TypeError/i;

interface Failure {
  cls: string;
  request: string;
  want: string;
  got: string;
}

const describeResponse = (r: RawResponse | undefined) => {
  if (r === undefined) return "no response";
  let code: unknown;
  try {
    code = JSON.parse(r.body).code;
  } catch {
    code = `(not JSON: ${r.body.slice(0, 60)})`;
  }
  return `${r.status} ${code} ${r.headers["content-type"] ?? ""}`;
};

for (const target of E2E_TARGETS) {
  describe(`malformed-request corpus on ${target}`, () => {
    test(`${PER_CLASS} cases per class (seed ${SEED}): every answer the documented 4xx, nothing stored, no 5xx, no crash`, async () => {
      const cases = generateCorpus(SEED, PER_CLASS, runtimeOf(target) === "bun");
      if (process.env.PAYFLUX_CORPUS_PER_CLASS === undefined) expect(cases.length).toBeGreaterThanOrEqual(10_000);
      const server = await startServer({
        target,
        env: {
          PAYFLUX_MAX_BODY_BYTES: String(CORPUS_LIMITS.maxBodyBytes),
          PAYFLUX_MAX_BATCH: String(CORPUS_LIMITS.maxBatch),
          PAYFLUX_METRICS_TOKEN: METRICS_TOKEN,
          PAYFLUX_INGEST_RPS: "1000000",
          PAYFLUX_INGEST_BURST: "1000000",
          // Thousands of bad keys from one address would trip the failed-login limit (429 auth_throttled,
          // tested on its own in attack-bruteforce): the corpus checks each answer, not the throttle.
          PAYFLUX_AUTH_FAIL_BURST: "0",
        },
      });

      const failures: Failure[] = [];
      let next = 0;
      let answered = 0;
      const deadline = Date.now() + 120_000;
      const worker = async () => {
        let conn: RawConnection | null = null;
        while (next < cases.length && Date.now() < deadline) {
          const c: Case = cases[next++]!;
          conn ??= await RawConnection.open(server.port);
          const responses = await conn.sendMany(c.bytes, c.expect.length, 10_000);
          c.expect.forEach((want, i) => {
            const got = responses[i];
            let code: unknown;
            try {
              code = got ? JSON.parse(got.body).code : undefined;
            } catch {
              code = undefined;
            }
            const ok = got !== undefined && got.status === want.status && code === want.code && (got.headers["content-type"] ?? "").startsWith("application/problem+json");
            if (ok) answered++;
            else failures.push({ cls: c.cls, request: c.bytes.subarray(0, 200).toString("latin1"), want: `${want.status} ${want.code}`, got: describeResponse(got) });
          });
          // A refused body or an unparsable request ends the connection (Connection: close): open another.
          const last = responses.at(-1);
          if (conn.closed || responses.length < c.expect.length || last?.headers.connection === "close") {
            conn.close();
            conn = null;
          }
        }
        conn?.close();
      };
      await Promise.all(Array.from({ length: WORKERS }, worker));

      const total = cases.reduce((n, c) => n + c.expect.length, 0);
      // One example per (class, answer) pair keeps a failure readable.
      const examples = new Map<string, Failure & { count: number }>();
      for (const f of failures) {
        const k = `${f.cls} ${f.want} -> ${f.got}`;
        const seen = examples.get(k);
        if (seen) seen.count++;
        else examples.set(k, { ...f, count: 1 });
      }
      expect({ failures: failures.length, examples: [...examples.values()] }).toEqual({ failures: 0, examples: [] });
      expect(answered).toBe(total);

      // Nothing stored, no 5xx, no crash.
      expect(await storedEvents(server.dataDir)).toEqual([]);
      const metrics = await (await fetch(server.url + "/metrics", { headers: { authorization: `Bearer ${METRICS_TOKEN}` } })).text();
      expect(metric(metrics, "payflux_ingest_accepted_total")).toBe(0);
      const fives = metrics.split("\n").filter((l) => l.startsWith("payflux_http_requests_total{") && /status="5\d\d"/.test(l));
      expect(fives).toEqual([]);
      expect(server.proc.exitCode).toBeNull();
      expect(server.stderr()).not.toMatch(CRASH);
      expect((await fetch(server.url + "/health")).status).toBe(200);
    }, 180_000);
  });
}
