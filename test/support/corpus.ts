/**
 * A generated corpus of malformed requests, deterministic (seeded PRNG), one
 * or more raw HTTP/1.1 requests per case, each with the documented answer it
 * must get. No case is a valid event: a server that stores anything, answers
 * a 5xx or anything but the expected 4xx fails the corpus test.
 */
import { KEY } from "./harness.ts";
import { rng } from "./rng.ts";

/** Settings the corpus server runs with (the expectations depend on them). */
export const CORPUS_LIMITS = { maxBodyBytes: 4096, maxBatch: 10 };
export const METRICS_TOKEN = "corpus-metrics-token-0123456789";

export interface Expect {
  status: number;
  code: string;
}
export interface Case {
  cls: string;
  /** The raw bytes, written in one write. */
  bytes: Buffer;
  /** One expectation per request in `bytes`, in order. */
  expect: Expect[];
}

const SINGLE = "/v1/events/payment_exhaust";
const BATCH = "/v1/events/batch";
const ROUTES = [SINGLE, BATCH, "/health", "/metrics"];

/** Picks the cases (the shared mulberry32). */
export const prng = rng;

/**
 * `strictParser`: the runtime's HTTP parser refuses HTTP/0.9, bare-LF line
 * endings and the like (Bun's does, with our 400 bad_request); Deno's accepts
 * bare LF as RFC 9112 §2.2 allows and leaves HTTP/0.9 unanswered until the
 * idle timeout, so that class is left out there.
 */
export function generateCorpus(seed: number, perClass: number, strictParser = true): Case[] {
  const rnd = prng(seed);
  const int = (n: number) => Math.floor(rnd() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
  const hex = (n: number) => Array.from({ length: n }, () => "0123456789abcdef"[int(16)]).join("");
  const uuid = () => `${hex(8)}-${hex(4)}-4${hex(3)}-8${hex(3)}-${hex(12)}`;
  const event = (o: Record<string, unknown> = {}) => ({
    event_type: "payment_failed",
    event_timestamp: "2026-11-22T08:00:00Z",
    event_id: uuid(),
    processor: pick(["stripe", "adyen", "checkout", "internal"]),
    retry_count: int(101),
    channel: "web",
    ...o,
  });
  const json = (o: Record<string, unknown> = {}) => JSON.stringify(event(o));

  const req = (method: string, path: string, headers: string[], body?: string | Buffer, version = "HTTP/1.1"): Buffer => {
    const b = body === undefined ? undefined : typeof body === "string" ? Buffer.from(body, "utf8") : body;
    const head = `${method} ${path} ${version}\r\nHost: 127.0.0.1\r\n${headers.map((h) => h + "\r\n").join("")}${b !== undefined ? `Content-Length: ${b.length}\r\n` : ""}\r\n`;
    return b === undefined ? Buffer.from(head, "latin1") : Buffer.concat([Buffer.from(head, "latin1"), b]);
  };
  const auth = `Authorization: Bearer ${KEY}`;
  const jsonCt = "Content-Type: application/json";
  const ndCt = "Content-Type: application/x-ndjson";
  const ingest = (path: string, body: string | Buffer, ct = jsonCt) => req("POST", path, [auth, ct], body);
  const ingestRoute = () => pick([SINGLE, BATCH]);
  /** The body an ingest route expects around one event's JSON text. */
  const wrap = (path: string, eventText: string) => (path === BATCH && rnd() < 0.5 ? `[${eventText}]` : eventText);
  const e = (status: number, code: string): Expect => ({ status, code });

  const cases: Case[] = [];
  const add = (cls: string, bytes: Buffer, ...expect: Expect[]) => cases.push({ cls, bytes, expect });

  // Every class below yields `perClass` cases (a few yield more than one request per case).
  const classes: [string, () => void][] = [
    ["deep_nesting", () => {
      const depth = 33 + int(250); // the body stays under the 4 KiB limit
      const open = rnd() < 0.5 ? "[" : '{"a":';
      const close = open === "[" ? "]" : "}";
      const nested = open.repeat(depth - 1) + (open === "[" ? "" : "1") + close.repeat(depth - 1);
      const path = ingestRoute();
      const ev = json();
      const text = rnd() < 0.3 ? open.repeat(depth) + (open === "[" ? "" : "1") + close.repeat(depth) : `${ev.slice(0, -1)},"x":${nested}}`;
      if (path === BATCH && rnd() < 0.3) add("deep_nesting", ingest(BATCH, text, ndCt), e(400, "malformed_json"));
      else add("deep_nesting", ingest(path, path === BATCH ? `[${text}]` : text), e(400, "malformed_json"));
    }],
    ["bad_utf8", () => {
      const ev = Buffer.from(json());
      const bad = pick([[0xff], [0xc3, 0x28], [0xe2, 0x82], [0xf0, 0x28, 0x8c, 0xbc], [0xed, 0xa0, 0x80], [0xc0, 0xaf], [0x80]]);
      // Inside a string value, so that only the encoding is wrong.
      const at = ev.indexOf('"payment_failed"') + 1 + int(14);
      const body = Buffer.concat([ev.subarray(0, at), Buffer.from(bad), ev.subarray(at)]);
      const path = ingestRoute();
      if (path === BATCH && rnd() < 0.5) add("bad_utf8", ingest(BATCH, body, ndCt), e(400, "malformed_json"));
      else add("bad_utf8", ingest(path, path === BATCH ? Buffer.concat([Buffer.from("["), body, Buffer.from("]")]) : body), e(400, "malformed_json"));
    }],
    ["bad_json", () => {
      const path = ingestRoute();
      let text: string;
      for (;;) {
        const ev = wrap(path, json());
        const k = int(4);
        text =
          k === 0 ? ev.slice(0, int(ev.length)) // truncated
          : k === 1 ? ev.slice(0, int(ev.length)) + pick(["}", "]", ",", ":", "\\", '"', "{{", "nul", "tru", "01", "1.", "-", "+1", "'"]) + ev.slice(int(ev.length))
          : k === 2 ? pick(["", " ", "{", "[", "{]", "[}", "{'a':1}", "{a:1}", "NaN", "Infinity", "undefined", "0x10", '"\\x41"', "[1,]", '{"a":1,}', "//", "/*x*/{}", "\u0000"])
          : ev.replace(/"/, pick(["'", "", "`"]));
        try {
          JSON.parse(text);
        } catch {
          break; // really not JSON
        }
      }
      add("bad_json", ingest(path, text), e(400, "malformed_json"));
    }],
    ["wrong_types", () => {
      const field = pick(["event_type", "event_id", "event_timestamp", "processor", "retry_count", "merchant_id_hash", "geo_bucket", "channel"]);
      const value = pick([0, 1.5, -1, true, false, [], {}, [1], { a: 1 }, "", "x".repeat(200), 101, "3", null]);
      // null is allowed for optional fields: make those invalid some other way.
      const v = value === null && !["event_type", "event_id", "event_timestamp", "processor"].includes(field) ? 12345 : value;
      const valid =
        (field === "retry_count" && typeof v === "number" && Number.isInteger(v) && v >= 0 && v <= 100) ||
        (["channel"].includes(field) && typeof v === "string") ||
        (field === "event_type" && typeof v === "string" && v !== "") ||
        (["merchant_id_hash"].includes(field) && typeof v === "string" && v.length <= 100) ||
        (field === "geo_bucket" && typeof v === "string" && v.length <= 20);
      const ev = event({ [field]: valid ? { not: "valid" } : v });
      const path = ingestRoute();
      const k = int(3);
      if (path === BATCH && k === 0) {
        add("wrong_types", ingest(BATCH, [json(), JSON.stringify(ev)].join("\n"), ndCt), e(422, "validation_failed"));
      } else add("wrong_types", ingest(path, path === BATCH ? JSON.stringify([event(), ev]) : JSON.stringify(ev)), e(422, "validation_failed"));
    }],
    ["bad_values", () => {
      const bad = pick([
        { event_id: "not-a-uuid" },
        { event_id: uuid() + "0" },
        { processor: "paypal" },
        { event_timestamp: "0000-01-01T00:00:00Z" },
        { event_timestamp: "2026-11-22T08:00:60Z" },
        { event_timestamp: "2026-02-30T00:00:00Z" },
        { event_timestamp: "2026-11-22 08:00:00Z" },
        { event_timestamp: "2026-11-22T08:00:00" },
        { event_timestamp: "2026-11-22T24:00:00Z" },
        { event_timestamp: 1763798400 },
      ]);
      const raw = pick(["", "retry:-0", "retry:1e2", "retry:100.0000000000000001", "retry:100.0", "dup:event_id", "dup:processor", "dup:event\\u005fid"]);
      let text = json(bad);
      if (raw.startsWith("retry:")) text = json().replace(/"retry_count":\d+/, `"retry_count":${raw.slice(6)}`);
      else if (raw.startsWith("dup:")) text = `${json().slice(0, -1)},"${raw.slice(4)}":${raw.includes("processor") ? '"stripe"' : `"${uuid()}"`}}`;
      const path = ingestRoute();
      add("bad_values", ingest(path, path === BATCH ? `[${text}]` : text), e(422, "validation_failed"));
    }],
    ["batch_shape", () => {
      const k = int(5);
      if (k === 0) add("batch_shape", ingest(BATCH, pick(["[]", " [ ] "])), e(422, "empty_batch"));
      else if (k === 1) add("batch_shape", ingest(BATCH, pick(["", "\n", "\n\n \r\n"]), ndCt), e(422, "empty_batch"));
      else if (k === 2) add("batch_shape", ingest(BATCH, JSON.stringify(Array.from({ length: CORPUS_LIMITS.maxBatch + 1 + int(20) }, () => 1))), e(413, "batch_too_large"));
      else if (k === 3) add("batch_shape", ingest(BATCH, Array.from({ length: CORPUS_LIMITS.maxBatch + 1 + int(20) }, () => "{}").join("\n"), ndCt), e(413, "batch_too_large"));
      else add("batch_shape", ingest(BATCH, pick([json(), "1", '"x"', "null", "{}"])), e(422, "validation_failed"));
    }],
    ["single_shape", () => {
      add("single_shape", ingest(SINGLE, pick(["[]", `[${json()}]`, "1", '"x"', "null", "true", "{}"])), e(422, "validation_failed"));
    }],
    ["bad_methods", () => {
      const path = pick(ROUTES);
      const method = pick(path.startsWith("/v1") ? ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"] : ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"]);
      add("bad_methods", req(method, path, [auth, "Connection: keep-alive"], method === "GET" || method === "OPTIONS" ? undefined : "{}"), e(405, "method_not_allowed"));
    }],
    ["unknown_routes", () => {
      const path = pick(["/", "/v1", "/v1/events", "/v1/events/", "/v1/events/batch/", "/metrics/", "/health/", "/v2/events/batch", "/V1/EVENTS/BATCH", "/%2e%2e/etc", "/v1/events/payment_exhaust%00", "/x".repeat(1 + int(50))]);
      // A dot segment (also encoded) is refused before routing: a proxy rule could be side-stepped with it.
      const want = path === "/%2e%2e/etc" ? e(400, "bad_request") : e(404, "not_found");
      add("unknown_routes", req(pick(["GET", "POST"]), path + (rnd() < 0.3 ? "?a=" + hex(8) : ""), [auth], rnd() < 0.5 ? json() : undefined), want);
    }],
    ["bad_auth", () => {
      const path = ingestRoute();
      const [header, code] = pick([
        [[], "missing_key"],
        [["Authorization: Basic dXNlcjpwYXNz"], "missing_key"],
        [["Authorization: Bearer "], "missing_key"],
        [["Authorization: Bearer\t" + KEY], "missing_key"],
        [[`Authorization: Bearer ${KEY}x`], "invalid_key"],
        [[`Authorization: Bearer ${hex(32)}`], "invalid_key"],
        [[`Authorization: Bearer ${"k".repeat(4000)}`], "invalid_key"],
        [[auth, auth], "invalid_key"],
      ] as [string[], string][]);
      add("bad_auth", req("POST", path, [...header, jsonCt], json()), e(401, code));
    }],
    ["bad_metrics_token", () => {
      const header = pick([[], ["Authorization: Bearer wrong"], [`Authorization: Bearer ${METRICS_TOKEN}x`], ["Authorization: Basic eDp5"]]);
      add("bad_metrics_token", req("GET", "/metrics", header), e(401, "metrics_unauthorized"));
    }],
    ["bad_content_type", () => {
      const path = ingestRoute();
      const ct = pick(["text/plain", "application/xml", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded", "text/json", "application/octet-stream", "json", "*/*"]);
      const body = wrap(path, json());
      add("bad_content_type", ingest(path, body, `Content-Type: ${ct}`), e(415, "unsupported_media_type"));
      if (path === SINGLE && rnd() < 0.3) add("bad_content_type", ingest(SINGLE, body, ndCt), e(415, "unsupported_media_type"));
    }],
    ["oversize", () => {
      const path = ingestRoute();
      const n = CORPUS_LIMITS.maxBodyBytes + 1 + int(4000);
      const body = `{"event_type":"${"x".repeat(n)}"}`;
      add("oversize", ingest(path, body), e(413, "payload_too_large"));
    }],
    ["oversize_declared", () => {
      // A Content-Length over the limit is refused before a byte of the body is read.
      const path = ingestRoute();
      const head = `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n${auth}\r\n${jsonCt}\r\nContent-Length: ${CORPUS_LIMITS.maxBodyBytes + 1 + int(1e9)}\r\n\r\n{"a":`;
      add("oversize_declared", Buffer.from(head, "latin1"), e(413, "payload_too_large"));
    }],
    ["chunked_oversize", () => {
      const path = ingestRoute();
      const size = 256 + int(1024);
      const chunk = `${size.toString(16)}\r\n${"x".repeat(size)}\r\n`;
      const n = Math.ceil((CORPUS_LIMITS.maxBodyBytes + 1) / size) + int(4);
      const head = `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n${auth}\r\n${jsonCt}\r\nTransfer-Encoding: chunked\r\n\r\n`;
      add("chunked_oversize", Buffer.from(head + chunk.repeat(n), "latin1"), e(413, "payload_too_large"));
    }],
    ["bad_http", () => {
      const path = pick(ROUTES);
      const data = pick([
        `GET ${path}\r\n`,
        `GET ${path} HTTP/1.1\nHost: 127.0.0.1\n\n`,
        `POST ${path} HTTP/1.1\nHost: 127.0.0.1\n${auth}\nContent-Length: 2\n\n{}`,
        `GET ${path} HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n`,
        `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab`,
        `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -1\r\n\r\n`,
        `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 12abc\r\n\r\n`,
        `GET ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header: x\r\n\r\n`,
        `\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03`,
        `GET * HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`,
        `GET 127.0.0.1:80 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`,
        `GET http://[::1${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`,
      ]);
      add("bad_http", Buffer.from(data, "latin1"), e(400, "bad_request"));
    }],
    ["pipelined", () => {
      // Two to five malformed requests in one write: every one answered, in order.
      const parts: Buffer[] = [];
      const expects: Expect[] = [];
      const n = 2 + int(4);
      for (let i = 0; i < n; i++) {
        const k = int(6);
        const path = ingestRoute();
        if (k === 0) (parts.push(ingest(path, "{bad")), expects.push(e(400, "malformed_json")));
        else if (k === 1) (parts.push(req("POST", path, [jsonCt], json())), expects.push(e(401, "missing_key")));
        else if (k === 2) (parts.push(ingest(path, wrap(path, json({ processor: "nope" })))), expects.push(e(422, "validation_failed")));
        else if (k === 3) (parts.push(req("DELETE", path, [auth])), expects.push(e(405, "method_not_allowed")));
        else if (k === 4) (parts.push(req("GET", "/nope", [])), expects.push(e(404, "not_found")));
        else (parts.push(ingest(path, wrap(path, json()), "Content-Type: text/plain")), expects.push(e(415, "unsupported_media_type")));
      }
      add("pipelined", Buffer.concat(parts), ...expects);
    }],
  ];

  for (const [name, make] of classes) {
    if (name === "bad_http" && !strictParser) continue;
    for (let i = 0; i < perClass; i++) make();
  }
  return cases;
}
