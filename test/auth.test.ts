/**
 * Authentication against the real server: the runbook's three denial reasons
 * with their metric values, revoked-wins, the key union, the Bearer scheme,
 * the 401 response shape, and auth before the body is read.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  BATCH,
  E2E_TARGETS,
  event,
  KEY,
  KEY2,
  metric,
  metricsText,
  post,
  SINGLE,
  startServer,
  stopAll,
  storedEvents,
  type Server,
} from "./support/harness.ts";

afterAll(stopAll);

const REVOKED = "revoked-key-cccccccccccccccccccccccc";
const UNKNOWN = "unknown-key-dddddddddddddddddddddddd";
const REASONS = ["missing_key", "revoked_key", "invalid_key"] as const;
type Reason = (typeof REASONS)[number];

const denied = (reason: Reason) => `payflux_auth_denied_total{reason="${reason}"}`;

async function deniedCounts(server: Server): Promise<Record<Reason, number | undefined>> {
  const text = await metricsText(server);
  return Object.fromEntries(REASONS.map((r) => [r, metric(text, denied(r))])) as Record<Reason, number | undefined>;
}

/** Every sample line of one metric family, e.g. all `payflux_ingest_rejected_total{...}` lines. */
function samples(text: string, name: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split("\n")) {
    if (line.startsWith(name + "{") || line.startsWith(name + " ")) {
      const sp = line.lastIndexOf(" ");
      out.set(line.slice(0, sp), Number(line.slice(sp + 1)));
    }
  }
  return out;
}

/** POST with raw headers (no Authorization unless given). */
function rawPost(server: Server, path: string, headers: Record<string, string>, body: string = JSON.stringify(event())) {
  return fetch(server.url + path, { method: "POST", headers: { "content-type": "application/json", ...headers }, body });
}

const CHALLENGE_NO_TOKEN = 'Bearer realm="payflux"';
const CHALLENGE_BAD_TOKEN = 'Bearer realm="payflux", error="invalid_token"';

/** Asserts the full shape of a 401 and returns its body. */
async function expectDenied(res: Response, reason: Reason): Promise<Record<string, any>> {
  expect(res.status).toBe(401);
  expect(res.headers.get("content-type")).toBe("application/problem+json");
  expect(res.headers.get("www-authenticate")).toBe(reason === "missing_key" ? CHALLENGE_NO_TOKEN : CHALLENGE_BAD_TOKEN);
  const body = (await res.json()) as Record<string, any>;
  expect(body.code).toBe(reason);
  expect(body.status).toBe(401);
  return body;
}

/** Sends one request, asserts the 401 and that exactly `reason` went up by one. */
async function expectDenialCounted(server: Server, send: () => Promise<Response>, reason: Reason): Promise<void> {
  const before = await deniedCounts(server);
  await expectDenied(await send(), reason);
  const after = await deniedCounts(server);
  for (const r of REASONS) expect(after[r]).toBe(before[r]! + (r === reason ? 1 : 0));
}

for (const target of E2E_TARGETS) {
  describe(`[${target}] denial reasons and their metrics`, () => {
    let server: Server;
    beforeAll(async () => {
      server = await startServer({ target, env: { PAYFLUX_API_KEYS: KEY, PAYFLUX_REVOKED_KEYS: REVOKED } });
    });
    afterAll(stopAll);

    test("all three denial series exist at 0 right after start-up", async () => {
      const text = await metricsText(server);
      for (const r of REASONS) expect(metric(text, denied(r))).toBe(0);
    });

    test("payflux_api_keys reports 1 active and 1 revoked key", async () => {
      const text = await metricsText(server);
      expect(metric(text, 'payflux_api_keys{state="active"}')).toBe(1);
      expect(metric(text, 'payflux_api_keys{state="revoked"}')).toBe(1);
    });

    test("no Authorization header -> 401 missing_key", async () => {
      await expectDenialCounted(server, () => rawPost(server, SINGLE, {}), "missing_key");
    });

    test("Basic scheme -> 401 missing_key", async () => {
      await expectDenialCounted(server, () => rawPost(server, SINGLE, { authorization: `Basic ${btoa(`user:${KEY}`)}` }), "missing_key");
    });

    test("another scheme carrying the real key -> 401 missing_key", async () => {
      await expectDenialCounted(server, () => rawPost(server, SINGLE, { authorization: `Token ${KEY}` }), "missing_key");
    });

    test("`Bearer ` with an empty token -> 401 missing_key", async () => {
      await expectDenialCounted(server, () => rawPost(server, SINGLE, { authorization: "Bearer " }), "missing_key");
    });

    test("`Bearer` followed only by spaces -> 401 missing_key", async () => {
      await expectDenialCounted(server, () => rawPost(server, SINGLE, { authorization: "Bearer     " }), "missing_key");
    });

    test("unknown token -> 401 invalid_key with error=invalid_token", async () => {
      await expectDenialCounted(server, () => post(server, SINGLE, event(), { key: UNKNOWN }), "invalid_key");
    });

    test("a prefix of a valid key -> 401 invalid_key", async () => {
      await expectDenialCounted(server, () => post(server, SINGLE, event(), { key: KEY.slice(0, -1) }), "invalid_key");
    });

    test("token in PAYFLUX_REVOKED_KEYS -> 401 revoked_key", async () => {
      await expectDenialCounted(server, () => post(server, SINGLE, event(), { key: REVOKED }), "revoked_key");
    });

    test("denials on the batch route count the same way", async () => {
      await expectDenialCounted(server, () => post(server, BATCH, [event()], { key: UNKNOWN }), "invalid_key");
      await expectDenialCounted(server, () => post(server, BATCH, [event()], { key: null }), "missing_key");
    });

    test("key in the query string without a header -> 401 missing_key", async () => {
      await expectDenialCounted(server, () => rawPost(server, `${SINGLE}?access_token=${KEY}`, {}), "missing_key");
      await expectDenialCounted(server, () => rawPost(server, `${BATCH}?access_token=${KEY}`, {}, JSON.stringify([event()])), "missing_key");
    });

    test("each denial reason is logged at warn with client_ip 127.0.0.1 (the peer address, on every runtime)", async () => {
      for (const reason of REASONS) {
        const line = await server.waitForLog((l) => l.msg === "auth denied" && l.reason === reason, 5000);
        expect([reason, line.level]).toEqual([reason, "warn"]);
        expect(["/v1/events/payment_exhaust", "/v1/events/batch"]).toContain(line.endpoint);
      }
      const lines = server.logs().filter((l) => l.msg === "auth denied");
      expect(lines.map((l) => l.client_ip)).toEqual(lines.map(() => "127.0.0.1"));
    });

    test("the configured key is accepted (the server is not refusing everything)", async () => {
      const res = await post(server, SINGLE, event());
      expect(res.status).toBe(202);
      expect(await res.json()).toEqual({ accepted: 1, duplicates: 0 });
    });
  });

  describe(`[${target}] auth runs before the body is read`, () => {
    let server: Server;
    beforeAll(async () => {
      server = await startServer({ target, env: { PAYFLUX_API_KEYS: KEY, PAYFLUX_REVOKED_KEYS: REVOKED } });
    });
    afterAll(stopAll);

    test("denied request with malformed JSON gets 401, not 400", async () => {
      await expectDenied(await rawPost(server, SINGLE, {}, "{not json"), "missing_key");
      await expectDenied(await post(server, SINGLE, "{not json", { key: UNKNOWN }), "invalid_key");
      await expectDenied(await post(server, SINGLE, "{not json", { key: REVOKED }), "revoked_key");
      await expectDenied(await post(server, BATCH, "[{", { key: UNKNOWN }), "invalid_key");
    });

    test("denied request with a wrong content type gets 401, not 415", async () => {
      await expectDenied(await post(server, SINGLE, "hello", { key: UNKNOWN, contentType: "text/plain" }), "invalid_key");
    });

    test("denied requests with valid events store nothing and count no ingest rejection", async () => {
      const ids: string[] = [];
      const send = async (path: string, key: string | null, reason: Reason) => {
        const ev = event();
        ids.push(ev.event_id as string);
        await expectDenied(await post(server, path, path === BATCH ? [ev] : ev, { key }), reason);
      };
      await send(SINGLE, null, "missing_key");
      await send(SINGLE, UNKNOWN, "invalid_key");
      await send(SINGLE, REVOKED, "revoked_key");
      await send(BATCH, null, "missing_key");
      await send(BATCH, UNKNOWN, "invalid_key");
      await send(BATCH, REVOKED, "revoked_key");

      expect(await storedEvents(server.dataDir)).toEqual([]);
      const text = await metricsText(server);
      const rejected = samples(text, "payflux_ingest_rejected_total");
      // The reasons the service defines (at least these) all exist, and every one is still 0.
      for (const reason of ["rate_limited", "malformed_json", "payload_too_large", "unsupported_media_type", "validation_failed"]) {
        expect(rejected.get(`payflux_ingest_rejected_total{reason="${reason}"}`)).toBe(0);
      }
      for (const [series, value] of rejected) expect([series, value]).toEqual([series, 0]);
      expect(metric(text, "payflux_ingest_accepted_total")).toBe(0);
      // Every denial above (plus the ones of the earlier tests) is counted.
      expect(metric(text, denied("missing_key"))).toBe(3);
      expect(metric(text, denied("invalid_key"))).toBe(5);
      expect(metric(text, denied("revoked_key"))).toBe(3);

      // The same events are accepted once authenticated: the denials did not mark them as seen.
      for (const id of ids.slice(0, 3)) {
        const res = await post(server, SINGLE, event({ event_id: id }));
        expect(res.status).toBe(202);
        expect(await res.json()).toEqual({ accepted: 1, duplicates: 0 });
      }
      expect((await storedEvents(server.dataDir)).map((e) => e.event_id)).toEqual(ids.slice(0, 3));
    });
  });

  describe(`[${target}] key configuration: union, trimming, revoked wins, scheme case`, () => {
    const A = "union-key-a-1111111111111111111111";
    const B = "union-key-b-2222222222222222222222";
    const C = "single-key-c-333333333333333333333";
    const BOTH = "both-lists-key-44444444444444444444";
    let server: Server;
    beforeAll(async () => {
      server = await startServer({
        target,
        env: {
          PAYFLUX_API_KEYS: ` ${A}, ${B} ,${BOTH}`,
          PAYFLUX_API_KEY: C,
          PAYFLUX_REVOKED_KEYS: ` ${BOTH} , ${REVOKED}`,
        },
      });
    });
    afterAll(stopAll);

    test("payflux_api_keys counts 3 active and 2 revoked keys", async () => {
      const text = await metricsText(server);
      expect(metric(text, 'payflux_api_keys{state="active"}')).toBe(3);
      expect(metric(text, 'payflux_api_keys{state="revoked"}')).toBe(2);
    });

    test("PAYFLUX_API_KEYS (spaces trimmed) and PAYFLUX_API_KEY are all accepted", async () => {
      for (const key of [A, B, C]) {
        const res = await post(server, SINGLE, event(), { key });
        expect([key, res.status]).toEqual([key, 202]);
      }
    });

    test("the harness default KEY is not allowed here (the env replaces it)", async () => {
      await expectDenied(await post(server, SINGLE, event(), { key: KEY }), "invalid_key");
      await expectDenied(await post(server, SINGLE, event(), { key: KEY2 }), "invalid_key");
    });

    test("a key in both PAYFLUX_API_KEYS and PAYFLUX_REVOKED_KEYS -> 401 revoked_key", async () => {
      await expectDenialCounted(server, () => post(server, SINGLE, event(), { key: BOTH }), "revoked_key");
    });

    test("a key only in PAYFLUX_REVOKED_KEYS -> 401 revoked_key", async () => {
      await expectDenialCounted(server, () => post(server, SINGLE, event(), { key: REVOKED }), "revoked_key");
    });

    test("the Bearer scheme is matched case-insensitively", async () => {
      for (const scheme of ["bearer", "BEARER", "BeArEr"]) {
        const res = await rawPost(server, SINGLE, { authorization: `${scheme} ${A}` });
        expect([scheme, res.status]).toEqual([scheme, 202]);
      }
    });

    test("the key itself is case-sensitive", async () => {
      await expectDenied(await post(server, SINGLE, event(), { key: A.toUpperCase() }), "invalid_key");
    });

    test("accepted events are stored once each", async () => {
      const stored = await storedEvents(server.dataDir);
      expect(stored.length).toBe(6);
    });
  });
}
