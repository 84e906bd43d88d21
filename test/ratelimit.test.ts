/**
 * Per-key rate limiting: the real server (burst, 429, headers, metrics,
 * independent buckets, refill) and RateLimiter itself with an injected clock.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { rateLimitHeader, RateLimiter } from "../src/limiter.ts";
import { BATCH, E2E_TARGETS, event, KEY, KEY2, metric, metricsText, post, SINGLE, startServer, stopAll, storedEvents, type Server } from "./support/harness.ts";

afterAll(stopAll);

const POLICY = /^"ingest";q=(\d+);w=(\d+)$/;
const STATE = /^"ingest";r=(\d+);t=(\d+)$/;
const limited = (endpoint: string) => `payflux_ingest_rate_limited_total{endpoint="${endpoint}"}`;
const REJECTED_RATE = 'payflux_ingest_rejected_total{reason="rate_limited"}';

/** Asserts both RateLimit headers are well-formed with quota `q`, and returns `r`. */
function rateHeaders(res: Response, q: number): number {
  const policy = POLICY.exec(res.headers.get("ratelimit-policy") ?? "");
  expect(policy).not.toBeNull();
  expect(Number(policy![1])).toBe(q);
  expect(Number(policy![2])).toBeGreaterThanOrEqual(1);
  const state = STATE.exec(res.headers.get("ratelimit") ?? "");
  expect(state).not.toBeNull();
  return Number(state![1]);
}

async function expectRateLimited(res: Response): Promise<number> {
  expect(res.status).toBe(429);
  expect(res.headers.get("content-type")).toBe("application/problem+json");
  const retryAfter = res.headers.get("retry-after");
  expect(retryAfter).toMatch(/^\d+$/);
  expect(Number(retryAfter)).toBeGreaterThanOrEqual(1);
  const body = (await res.json()) as Record<string, any>;
  expect(body.code).toBe("rate_limited");
  expect(body.status).toBe(429);
  return Number(retryAfter);
}

for (const target of E2E_TARGETS) {
  describe(`[${target}] burst, then 429 (BURST=5, RPS=0.01)`, () => {
    let server: Server;
    const accepted: string[] = [];
    /** When the first request (which created the bucket) was sent and answered, and the 6th. */
    const at = { firstSent: 0, firstDone: 0, sixthSent: 0, sixthDone: 0, retryAfter: 0 };
    beforeAll(async () => {
      server = await startServer({
        target,
        env: { PAYFLUX_API_KEYS: `${KEY},${KEY2}`, PAYFLUX_INGEST_BURST: "5", PAYFLUX_INGEST_RPS: "0.01" },
      });
    });
    afterAll(stopAll);

    test("rate-limit series exist at 0 right after start-up", async () => {
      const text = await metricsText(server);
      expect(metric(text, limited(SINGLE))).toBe(0);
      expect(metric(text, limited(BATCH))).toBe(0);
      expect(metric(text, REJECTED_RATE)).toBe(0);
    });

    test("5 requests get 202 with RateLimit headers counting down 4,3,2,1,0", async () => {
      const remaining: number[] = [];
      for (let i = 0; i < 5; i++) {
        const ev = event();
        if (i === 0) at.firstSent = performance.now();
        const res = await post(server, SINGLE, ev);
        if (i === 0) at.firstDone = performance.now();
        expect(res.status).toBe(202);
        expect(await res.json()).toEqual({ accepted: 1, duplicates: 0 });
        accepted.push(ev.event_id as string);
        remaining.push(rateHeaders(res, 5));
      }
      expect(remaining).toEqual([4, 3, 2, 1, 0]);
    });

    test("the 6th gets 429 with the Retry-After the limiter computes, problem+json and RateLimit headers; its body is not stored", async () => {
      const ev = event();
      at.sixthSent = performance.now();
      const res = await post(server, SINGLE, ev);
      at.sixthDone = performance.now();
      expect(rateHeaders(res, 5)).toBe(0);
      at.retryAfter = await expectRateLimited(res);
      // The same limiter, on a clock bracketing the real one: the bucket was created by the
      // first request and refilled at 0.01/s until the 6th, so Retry-After is ceil(100 - elapsed).
      const expected = (elapsedMs: number) => {
        const limiter = new RateLimiter(0.01, 5);
        for (let i = 0; i < 5; i++) limiter.take("k", 0);
        return limiter.take("k", elapsedMs).retryAfterSeconds;
      };
      const lo = expected(at.sixthDone - at.firstSent);
      const hi = expected(at.sixthSent - at.firstDone);
      expect(lo).toBeGreaterThan(90);
      expect(at.retryAfter).toBeGreaterThanOrEqual(lo);
      expect(at.retryAfter).toBeLessThanOrEqual(hi);
      const stored = (await storedEvents(server.dataDir)).map((e) => e.event_id);
      expect(stored).toEqual(accepted);
      expect(stored).not.toContain(ev.event_id);
    });

    test("the 429 is logged at warn with key_id, client_ip 127.0.0.1, endpoint and retry_after", async () => {
      const line = await server.waitForLog((l) => l.msg === "rate limit hit", 5000);
      expect(line.level).toBe("warn");
      expect(line.client_ip).toBe("127.0.0.1");
      expect(line.endpoint).toBe(SINGLE);
      expect(line.key_id).toMatch(/^[0-9a-f]{12}$/);
      // The log line carries the very value the client got.
      expect(line.retry_after).toBe(at.retryAfter);
    });

    test("the 429 is counted under its endpoint and as a rejection", async () => {
      const text = await metricsText(server);
      expect(metric(text, limited(SINGLE))).toBe(1);
      expect(metric(text, limited(BATCH))).toBe(0);
      expect(metric(text, REJECTED_RATE)).toBe(1);
      expect(metric(text, "payflux_ingest_accepted_total")).toBe(5);
    });

    test("the batch route shares the key's bucket but has its own endpoint label", async () => {
      const res = await post(server, BATCH, [event(), event()]);
      expect(rateHeaders(res, 5)).toBe(0);
      await expectRateLimited(res);
      const text = await metricsText(server);
      expect(metric(text, limited(SINGLE))).toBe(1);
      expect(metric(text, limited(BATCH))).toBe(1);
      expect(metric(text, REJECTED_RATE)).toBe(2);
      expect((await storedEvents(server.dataDir)).length).toBe(5);
    });

    test("a rate-limited request with a malformed body is still 429 (limit checked before parsing)", async () => {
      await expectRateLimited(await post(server, SINGLE, "{not json"));
      const text = await metricsText(server);
      expect(metric(text, 'payflux_ingest_rejected_total{reason="malformed_json"}')).toBe(0);
      expect(metric(text, REJECTED_RATE)).toBe(3);
    });

    test("buckets are per key: KEY is exhausted, KEY2 still gets 202 with a full bucket", async () => {
      const res = await post(server, SINGLE, event(), { key: KEY2 });
      expect(res.status).toBe(202);
      expect(rateHeaders(res, 5)).toBe(4);
      const batch = await post(server, BATCH, [event()], { key: KEY2 });
      expect(batch.status).toBe(202);
      expect(rateHeaders(batch, 5)).toBe(3);
      // KEY is still limited.
      await expectRateLimited(await post(server, SINGLE, event()));
    });

    test("auth denials are not counted as rate-limit rejections and leave buckets alone", async () => {
      for (let i = 0; i < 3; i++) {
        expect((await post(server, SINGLE, event(), { key: "not-a-configured-key-zzzzzzzzzz" })).status).toBe(401);
      }
      const res = await post(server, SINGLE, event(), { key: KEY2 });
      expect(res.status).toBe(202);
      expect(rateHeaders(res, 5)).toBe(2);
      const text = await metricsText(server);
      expect(metric(text, REJECTED_RATE)).toBe(4);
      expect(metric(text, limited(SINGLE))).toBe(3);
    });
  });

  describe(`[${target}] refill (RPS=20, BURST=1)`, () => {
    let server: Server;
    beforeAll(async () => {
      server = await startServer({ target, env: { PAYFLUX_INGEST_BURST: "1", PAYFLUX_INGEST_RPS: "20" } });
    });
    afterAll(stopAll);

    test("after a 429 the bucket refills and a later request gets 202", async () => {
      // Fire requests back to back until one is refused (a token returns every 50 ms, so a
      // slow machine may need a few tries); bounded so a limiter that never refuses fails.
      let refused: Response | null = null;
      for (let i = 0; i < 50 && refused === null; i++) {
        const burst = await Promise.all([post(server, SINGLE, event()), post(server, SINGLE, event()), post(server, SINGLE, event())]);
        for (const res of burst) {
          if (res.status === 429 && refused === null) refused = res;
          else {
            expect([202, 429]).toContain(res.status);
            await res.body?.cancel();
          }
        }
      }
      expect(refused).not.toBeNull();
      // Retry-After is whole seconds and at least 1, even though a token is back within 50 ms.
      expect(await expectRateLimited(refused!)).toBe(1);

      // Poll until accepted again, bounded to a few seconds.
      const deadline = Date.now() + 5000;
      let status = 0;
      while (Date.now() < deadline) {
        const res = await post(server, SINGLE, event());
        status = res.status;
        await res.body?.cancel();
        if (status === 202) break;
        await Bun.sleep(100);
      }
      expect(status).toBe(202);
    });
  });
}

describe("RateLimiter (injected clock)", () => {
  test("starts full, one token per request, refuses when empty", () => {
    const rl = new RateLimiter(2, 3);
    expect([0, 0, 0].map((t) => rl.take("a", t).remaining)).toEqual([2, 1, 0]);
    const d = rl.take("a", 0);
    expect(d.allowed).toBe(false);
    expect(d.remaining).toBe(0);
    expect(d.retryAfterSeconds).toBe(1); // ceil((1 - 0) / 2)
  });

  test("refills continuously at rps tokens per second", () => {
    const rl = new RateLimiter(2, 3);
    for (let i = 0; i < 3; i++) expect(rl.take("a", 0).allowed).toBe(true);
    expect(rl.take("a", 250).allowed).toBe(false); // 0.5 tokens
    const d = rl.take("a", 500); // 0.5 + 0.5 = 1 token
    expect(d.allowed).toBe(true);
    expect(d.remaining).toBe(0);
    expect(rl.take("a", 500).allowed).toBe(false);
    expect(rl.take("a", 1500).allowed).toBe(true); // +2 tokens, 1 left
    expect(rl.take("a", 1500).allowed).toBe(true);
    expect(rl.take("a", 1500).allowed).toBe(false);
  });

  test("tokens are capped at the burst however long the key was idle", () => {
    const rl = new RateLimiter(10, 4);
    expect(rl.take("a", 0).remaining).toBe(3);
    const d = rl.take("a", 3_600_000);
    expect(d.allowed).toBe(true);
    expect(d.remaining).toBe(3); // full (4) minus this request, not 36000
    expect([1, 2, 3].map(() => rl.take("a", 3_600_000).allowed)).toEqual([true, true, true]);
    expect(rl.take("a", 3_600_000).allowed).toBe(false);
  });

  test("retryAfterSeconds = ceil((1 - tokens) / rps), at least 1", () => {
    const slow = new RateLimiter(0.1, 1);
    expect(slow.take("a", 0).allowed).toBe(true);
    expect(slow.take("a", 0).retryAfterSeconds).toBe(10); // 1 token at 0.1/s
    expect(slow.take("a", 2500).retryAfterSeconds).toBe(8); // 0.25 tokens: ceil(0.75 / 0.1) = 8
    expect(slow.take("a", 5000).retryAfterSeconds).toBe(5); // 0.5 tokens: 0.5 / 0.1 = 5

    const fast = new RateLimiter(1000, 1);
    expect(fast.take("a", 0).allowed).toBe(true);
    const d = fast.take("a", 0);
    expect(d.allowed).toBe(false);
    expect(d.retryAfterSeconds).toBe(1); // 1 ms away, still reported as 1 s
  });

  test("resetSeconds is the whole seconds until the bucket is full", () => {
    const rl = new RateLimiter(1, 5);
    expect(rl.take("a", 0).resetSeconds).toBe(1);
    expect(rl.take("a", 0).resetSeconds).toBe(2);
    expect(rateLimitHeader(rl.take("a", 0))).toBe('"ingest";r=2;t=3');
  });

  test("buckets are independent per digest", () => {
    const rl = new RateLimiter(1, 2);
    rl.take("a", 0);
    rl.take("a", 0);
    expect(rl.take("a", 0).allowed).toBe(false);
    expect(rl.take("b", 0)).toMatchObject({ allowed: true, remaining: 1 });
    expect(rl.size).toBe(2);
  });

  test("policyHeader: quota = burst, window = seconds to refill it (at least 1)", () => {
    expect(new RateLimiter(0.01, 5).policyHeader()).toBe('"ingest";q=5;w=500');
    expect(new RateLimiter(100, 500).policyHeader()).toBe('"ingest";q=500;w=5');
    expect(new RateLimiter(1000, 1).policyHeader()).toBe('"ingest";q=1;w=1');
  });

  test("reconfigure keeps tokens of kept keys, capped at the new burst, and drops removed keys", () => {
    const rl = new RateLimiter(1, 10);
    for (let i = 0; i < 3; i++) rl.take("keep-high", 0); // 7 tokens left
    for (let i = 0; i < 9; i++) rl.take("keep-low", 0); // 1 token left
    rl.take("gone", 0);
    expect(rl.size).toBe(3);

    rl.reconfigure(1, 4, (id) => ["keep-high", "keep-low", "new"].includes(id));
    expect(rl.size).toBe(2); // "gone" dropped; "new" has no bucket until it is used

    // keep-high: 7 capped at 4.
    expect([1, 2, 3, 4].map(() => rl.take("keep-high", 0).allowed)).toEqual([true, true, true, true]);
    expect(rl.take("keep-high", 0).allowed).toBe(false);
    // keep-low: keeps its 1 token (not refilled to the new burst).
    expect(rl.take("keep-low", 0)).toMatchObject({ allowed: true, remaining: 0 });
    expect(rl.take("keep-low", 0).allowed).toBe(false);
    // gone: a fresh bucket at the new burst if it ever comes back.
    expect(rl.take("gone", 0)).toMatchObject({ allowed: true, remaining: 3 });
    expect(rl.policyHeader()).toBe('"ingest";q=4;w=4');
  });

  test("reconfigure applies the new rate to the refill", () => {
    const rl = new RateLimiter(1, 2);
    rl.take("a", 0);
    rl.take("a", 0);
    rl.reconfigure(4, 2, (id) => id === "a");
    expect(rl.take("a", 250)).toMatchObject({ allowed: true, remaining: 0 }); // 0.25 s * 4/s = 1 token
  });
});
