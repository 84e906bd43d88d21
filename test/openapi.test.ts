/**
 * docs/openapi.yaml cannot drift from the code: it is a valid OpenAPI 3.1
 * document (checked by @apidevtools/swagger-parser), its routes and problem
 * codes are the ones the code has, its event schema accepts and refuses what
 * the validator does, and real responses of the running service (every
 * target) match it: status, content type, body schema and required headers.
 */
import SwaggerParser from "@apidevtools/swagger-parser";
import Ajv2020 from "ajv/dist/2020";
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { DENIAL_REASONS } from "../src/auth.ts";
import { validateEvent } from "../src/events.ts";
import { REJECT_REASONS } from "../src/metrics.ts";
import { ROUTES } from "../src/routes.ts";
import { BATCH, E2E_TARGETS, event, KEY, KEY2, post, ROOT, SINGLE, startServer, stopAll, type Server } from "./support/harness.ts";

const DOC_PATH = join(ROOT, "docs", "openapi.yaml");
const METRICS_TOKEN = "openapi-metrics-token-0123456789abcdef";

type Json = Record<string, any>;
let doc: Json;
const ajv = new Ajv2020({ strict: false, allErrors: true, formats: { "date-time": true, uuid: true } });
const compiled = new WeakMap<object, ReturnType<typeof ajv.compile>>();

function validator(schema: Json) {
  let v = compiled.get(schema);
  if (v === undefined) compiled.set(schema, (v = ajv.compile(schema)));
  return v;
}

beforeAll(async () => {
  // validate() throws on a document that is not valid OpenAPI; dereference() inlines every $ref for the checks below.
  await SwaggerParser.validate(DOC_PATH);
  doc = (await SwaggerParser.dereference(DOC_PATH)) as Json;
});
afterAll(stopAll);

/** Codes that only appear in `info.description`-level behaviour or on failures a test cannot cause on purpose. */
const GENERIC_CODES = ["not_found", "method_not_allowed", "internal_error", "metrics_unauthorized"];

describe("docs/openapi.yaml", () => {
  test("is valid OpenAPI 3.1 (swagger-parser)", async () => {
    const api = (await SwaggerParser.validate(DOC_PATH)) as Json;
    expect(api.openapi).toStartWith("3.1.");
  });

  test("describes exactly the service's routes and methods, with the bearer scheme on ingest", () => {
    expect(Object.keys(doc.paths).sort()).toEqual([...ROUTES].sort());
    const methods = Object.fromEntries(Object.entries(doc.paths as Json).map(([p, item]) => [p, Object.keys(item).filter((k) => k !== "parameters").sort()]));
    expect(methods).toEqual({
      "/v1/events/payment_exhaust": ["post"],
      "/v1/events/batch": ["post"],
      "/health": ["get", "head"],
      "/metrics": ["get", "head"],
    });
    expect(doc.components.securitySchemes.apiKey).toMatchObject({ type: "http", scheme: "bearer" });
    for (const route of [SINGLE, BATCH]) expect(doc.paths[route].post.security).toEqual([{ apiKey: [] }]);
    expect(doc.paths["/health"].get.security).toEqual([]);
  });

  test("names every problem code the service can return, and no other", () => {
    const documented = doc.components.schemas.Problem.properties.code.enum as string[];
    expect([...documented].sort()).toEqual([...new Set([...REJECT_REASONS, ...DENIAL_REASONS, ...GENERIC_CODES])].sort());
  });

  test("its event schema accepts and refuses what the validator does", () => {
    const schema = validator(doc.components.schemas.Event);
    const samples: [string, unknown][] = [
      ["complete", event()],
      ["required only", { event_type: "x", event_timestamp: "2026-11-22T08:00:00.5+01:00", event_id: crypto.randomUUID().toUpperCase(), processor: "adyen" }],
      ["nulls", event({ merchant_id_hash: null, retry_count: null, channel: null })],
      ["unknown fields kept", event({ extra: { nested: [1, 2] } })],
      ["limits exactly", event({ geo_bucket: "g".repeat(20), merchant_id_hash: "😀".repeat(100), retry_count: 100 })],
      ["no event_type", event({ event_type: undefined })],
      ["empty event_type", event({ event_type: "" })],
      ["no event_id", event({ event_id: undefined })],
      ["bad uuid", event({ event_id: "123e4567-e89b-12d3-a456-42661417400" })],
      ["timestamp with a space", event({ event_timestamp: "2026-11-22 08:00:00Z" })],
      ["timestamp without zone", event({ event_timestamp: "2026-11-22T08:00:00" })],
      ["unknown processor", event({ processor: "paypal" })],
      ["no processor", event({ processor: undefined })],
      ["retry_count 101", event({ retry_count: 101 })],
      ["retry_count -1", event({ retry_count: -1 })],
      ["retry_count 1.5", event({ retry_count: 1.5 })],
      ["retry_count as string", event({ retry_count: "3" })],
      ["geo_bucket 21", event({ geo_bucket: "g".repeat(21) })],
      ["merchant_id_hash 101", event({ merchant_id_hash: "m".repeat(101) })],
      ["failure_category not a string", event({ failure_category: 7 })],
      ["amount_bucket not a string", event({ amount_bucket: true })],
      ["an array", [event()]],
      ["a string", "event"],
      ["null", null],
    ];
    const verdicts = samples.map(([name, value]) => {
      const copy = JSON.parse(JSON.stringify(value)); // undefined members dropped, as on the wire
      return { name, validator: validateEvent(copy, 0, []), schema: schema(copy) };
    });
    expect(verdicts.filter((v) => v.validator !== v.schema)).toEqual([]);
    expect(verdicts.filter((v) => v.validator).length).toBe(5);
  });
});

for (const target of E2E_TARGETS) {
  describe(`[${target}] real responses match docs/openapi.yaml`, () => {
    let main: Server;
    let guarded: Server;
    let disabled: Server;
    /** "METHOD path status code" of every response checked. */
    const seen = new Set<string>();

    beforeAll(async () => {
      [main, guarded, disabled] = await Promise.all([
        startServer({ target, env: { PAYFLUX_API_KEYS: `${KEY},${KEY2}`, PAYFLUX_REVOKED_KEYS: "openapi-revoked-key-0123456789", PAYFLUX_INGEST_RPS: "0.001", PAYFLUX_INGEST_BURST: "3", PAYFLUX_MAX_BODY_BYTES: "2048", PAYFLUX_MAX_BATCH: "3" } }),
        startServer({ target, env: { PAYFLUX_METRICS_TOKEN: METRICS_TOKEN, PAYFLUX_INGEST_RPS: "100000", PAYFLUX_INGEST_BURST: "100000", PAYFLUX_SEGMENT_BYTES: "4096", PAYFLUX_STORAGE_MAX_BYTES: "65536" } }),
        startServer({ target, env: { PAYFLUX_METRICS_ENABLED: "false" } }),
      ]);
    });

    /** Checks one real response against the document and records it. */
    async function conforms(res: Response, method: string, path: string): Promise<Json | string | null> {
      const operation = doc.paths[path]?.[method.toLowerCase()];
      expect(operation).toBeDefined();
      const documented = operation.responses[String(res.status)];
      if (documented === undefined) throw new Error(`${method} ${path} answered ${res.status}, which docs/openapi.yaml does not list`);
      for (const [name, header] of Object.entries((documented.headers ?? {}) as Json)) {
        const value = res.headers.get(name);
        if (header.required) expect({ name, present: value !== null }).toEqual({ name, present: true });
        if (value !== null) expect({ name, value, ok: validator(header.schema)(value) }).toEqual({ name, value, ok: true });
      }
      const text = await res.text();
      if (documented.content === undefined || method === "HEAD") {
        seen.add(`${method} ${path} ${res.status}`);
        return null;
      }
      const mediaType = (res.headers.get("content-type") ?? "").split(";", 1)[0]!.trim();
      const media = documented.content[mediaType];
      if (media === undefined) throw new Error(`${method} ${path} ${res.status} sent ${mediaType}; documented: ${Object.keys(documented.content).join(", ")}`);
      const body = mediaType.endsWith("json") ? JSON.parse(text) : text;
      const check = validator(media.schema);
      if (!check(body)) throw new Error(`${method} ${path} ${res.status}: body does not match the schema: ${ajv.errorsText(check.errors)}\n${text.slice(0, 500)}`);
      seen.add(`${method} ${path} ${res.status}${typeof body === "object" && body?.code ? ` ${body.code}` : ""}`);
      return body;
    }

    test("ingest: 202 and every error status an ingest request can cause", async () => {
      const send = (path: string, body: unknown, opts: Parameters<typeof post>[3] = {}) => post(main, path, body, opts);
      // KEY has a burst of 3: three accepted calls, then 429.
      expect(await conforms(await send(SINGLE, event()), "POST", SINGLE)).toEqual({ accepted: 1, duplicates: 0 });
      expect(await conforms(await send(BATCH, [event(), event()]), "POST", BATCH)).toEqual({ accepted: 2, duplicates: 0 });
      expect(await conforms(await send(BATCH, `${JSON.stringify(event())}\n`, { contentType: "application/x-ndjson" }), "POST", BATCH)).toEqual({ accepted: 1, duplicates: 0 });
      expect(await conforms(await send(SINGLE, event()), "POST", SINGLE)).toMatchObject({ code: "rate_limited" });
      // KEY2 (burst 3) for the refusals that consume a token.
      const other = { key: KEY2 };
      expect(await conforms(await send(SINGLE, "{nope", other), "POST", SINGLE)).toMatchObject({ code: "malformed_json" });
      expect(await conforms(await send(BATCH, [event(), event(), event(), event()], other), "POST", BATCH)).toMatchObject({ code: "batch_too_large" });
      expect(await conforms(await send(BATCH, [event({ processor: "paypal", retry_count: 500 })], other), "POST", BATCH)).toMatchObject({ code: "validation_failed", errors: [{ field: "processor" }, { field: "retry_count" }] });
      expect(await conforms(await send(BATCH, [], other), "POST", BATCH)).toMatchObject({ code: "rate_limited" });
      // Once a key is out of tokens every call is a 429, so the rest use the key of the guarded server.
      const g = (path: string, body: unknown, opts: Parameters<typeof post>[3] = {}) => post(guarded, path, body, opts);
      expect(await conforms(await g(BATCH, []), "POST", BATCH)).toMatchObject({ code: "empty_batch" });
      expect(await conforms(await g(SINGLE, "x".repeat(2_000_000)), "POST", SINGLE)).toMatchObject({ code: "payload_too_large" });
      expect(await conforms(await g(SINGLE, "<xml/>", { contentType: "application/xml" }), "POST", SINGLE)).toMatchObject({ code: "unsupported_media_type" });
      expect(await conforms(await g(BATCH, "<xml/>", { contentType: "text/plain" }), "POST", BATCH)).toMatchObject({ code: "unsupported_media_type" });
      expect(await conforms(await g(BATCH, "[nope"), "POST", BATCH)).toMatchObject({ code: "malformed_json" });
      const gzip = { headers: { "content-encoding": "gzip" } };
      expect(await conforms(await g(BATCH, "not gzip", gzip), "POST", BATCH)).toMatchObject({ code: "malformed_encoding" });
      expect(await conforms(await g(SINGLE, "{}", { headers: { "content-encoding": "br" } }), "POST", SINGLE)).toMatchObject({ code: "unsupported_media_type" });
      const gzipped = await fetch(guarded.url + BATCH, { method: "POST", headers: { authorization: `Bearer ${KEY}`, ...gzip.headers }, body: Bun.gzipSync(JSON.stringify([event()])) });
      expect(await conforms(gzipped, "POST", BATCH)).toEqual({ accepted: 1, duplicates: 0 });
      expect(await conforms(await g(SINGLE, event({ event_id: "nope" })), "POST", SINGLE)).toMatchObject({ code: "validation_failed", errors: [{ index: 0, field: "event_id" }] });
      expect(await conforms(await g(SINGLE, event(), { key: null }), "POST", SINGLE)).toMatchObject({ code: "missing_key" });
      expect(await conforms(await g(BATCH, [event()], { key: "openapi-not-a-key-0123456789" }), "POST", BATCH)).toMatchObject({ code: "invalid_key" });
      expect(await conforms(await send(SINGLE, event(), { key: "openapi-revoked-key-0123456789" }), "POST", SINGLE)).toMatchObject({ code: "revoked_key" });
      // Fill the 64 KiB store: 503 storage_full with Retry-After.
      let full: Json | string | null = null;
      for (let i = 0; i < 40 && full === null; i++) {
        const res = await g(BATCH, Array.from({ length: 40 }, () => event()));
        const body = await conforms(res, "POST", BATCH);
        if (res.status === 503) full = body;
      }
      expect(full).toMatchObject({ code: "storage_full" });
      // The space a batch did not fit in still takes single events, until it does not.
      let single: Json | string | null = null;
      for (let i = 0; i < 100 && single === null; i++) {
        const res = await g(SINGLE, event());
        const body = await conforms(res, "POST", SINGLE);
        if (res.status === 503) single = body;
      }
      expect(single).toMatchObject({ code: "storage_full" });
    });

    test("health and metrics: bodies, content types and the token", async () => {
      expect(await conforms(await fetch(main.url + "/health"), "GET", "/health")).toMatchObject({ status: "ok" });
      await conforms(await fetch(main.url + "/health", { method: "HEAD" }), "HEAD", "/health");
      expect(await conforms(await fetch(main.url + "/metrics"), "GET", "/metrics")).toContain("payflux_ingest_accepted_total");
      await conforms(await fetch(main.url + "/metrics", { method: "HEAD" }), "HEAD", "/metrics");
      expect(await conforms(await fetch(guarded.url + "/metrics"), "GET", "/metrics")).toMatchObject({ code: "metrics_unauthorized" });
      await conforms(await fetch(guarded.url + "/metrics", { method: "HEAD" }), "HEAD", "/metrics");
      const authorized = await fetch(guarded.url + "/metrics", { headers: { authorization: `Bearer ${METRICS_TOKEN}` } });
      expect(await conforms(authorized, "GET", "/metrics")).toContain("payflux_ingest_accepted_total");
      expect(await conforms(await fetch(disabled.url + "/metrics"), "GET", "/metrics")).toMatchObject({ code: "not_found" });
      await conforms(await fetch(disabled.url + "/metrics", { method: "HEAD" }), "HEAD", "/metrics");
    });

    test("unknown routes and wrong methods are the documented Problem", async () => {
      const problem = validator(doc.components.schemas.Problem);
      for (const [method, path, status, code] of [["GET", "/nope", 404, "not_found"], ["GET", SINGLE, 405, "method_not_allowed"], ["POST", "/health", 405, "method_not_allowed"]] as const) {
        const res = await fetch(main.url + path, { method });
        expect(res.status).toBe(status);
        expect(res.headers.get("content-type")).toBe("application/problem+json");
        const body = await res.json();
        expect({ valid: problem(body), code: body.code }).toEqual({ valid: true, code });
      }
    });

    test("every documented status of every operation was seen (apart from failures a test cannot cause)", () => {
      // 503 unhealthy: the event log must become unwritable (tests run as root); a code path shared with
      // storage_unavailable, covered by test/storage.test.ts. incomplete_body and storage_unavailable
      // share their status with codes seen here; test/robustness.test.ts and test/storage.test.ts cause them.
      const exempt = new Set(["GET /health 503", "HEAD /health 503"]);
      const statuses = new Set([...seen].map((s) => s.split(" ").slice(0, 3).join(" ")));
      const missing: string[] = [];
      for (const [path, item] of Object.entries(doc.paths as Json)) {
        for (const [method, op] of Object.entries(item as Json)) {
          for (const status of Object.keys(op.responses)) {
            const key = `${method.toUpperCase()} ${path} ${status}`;
            if (!statuses.has(key) && !exempt.has(key)) missing.push(key);
          }
        }
      }
      expect(missing).toEqual([]);
    });
  });
}
