/**
 * Attack: fill the event store (issue 8, item 9). While every write is refused
 * with 503 storage_full, /health must say so (503, "status":"full") so a load
 * balancer moves the keys elsewhere; once room is made (here: an operator
 * deletes old segments) it is ready again by itself, with no write needed.
 */
import { afterAll, describe, expect, test } from "bun:test";
import { readdirSync, unlinkSync } from "node:fs";
import { join } from "node:path";
import { BATCH, E2E_TARGETS, event, post, startServer, stopAll, until } from "./support/harness.ts";

afterAll(stopAll);

for (const target of E2E_TARGETS) {
  describe(`[${target}] /health while the store is full`, () => {
    test("503 full while storage_full refuses writes (GET and HEAD); 200 ok once room is freed", async () => {
      const server = await startServer({
        target,
        env: { PAYFLUX_INGEST_RPS: "100000", PAYFLUX_INGEST_BURST: "100000", PAYFLUX_SEGMENT_BYTES: "4096", PAYFLUX_STORAGE_MAX_BYTES: "65536", PAYFLUX_RETENTION: "30d" },
      });
      const ok = await fetch(server.url + "/health");
      expect(ok.status).toBe(200);
      expect((await ok.json()).status).toBe("ok");

      // Fill: batches of 10 events, then single events, until storage_full (bounded).
      let last = 0;
      let code = "";
      for (let i = 0; i < 200; i++) {
        const res = await post(server, BATCH, Array.from({ length: 10 }, () => event()));
        last = res.status;
        code = ((await res.json()) as { code?: string }).code ?? "";
        if (last !== 202) break;
      }
      expect([last, code]).toEqual([503, "storage_full"]);
      // Even a single small event no longer fits once the store answered full to it.
      for (let i = 0; i < 100; i++) {
        const res = await post(server, "/v1/events/payment_exhaust", event());
        await res.arrayBuffer();
        if (res.status === 503) break;
      }

      const full = await fetch(server.url + "/health");
      expect(full.status).toBe(503);
      expect(full.headers.get("cache-control")).toBe("no-store");
      const body = (await full.json()) as Record<string, any>;
      expect(body.status).toBe("full");
      expect(body.reason).toContain("PAYFLUX_STORAGE_MAX_BYTES");
      expect(body.config_fingerprint).toMatch(/^[0-9a-f]{12}$/);
      expect((await fetch(server.url + "/health", { method: "HEAD" })).status).toBe(503);
      // Still full a moment later: the state follows the store, not one request.
      await Bun.sleep(700);
      expect((await fetch(server.url + "/health")).status).toBe(503);

      // The operator frees room; no client writes: /health recovers by itself.
      const segments = readdirSync(server.dataDir).filter((n) => n.startsWith("segment-")).sort();
      expect(segments.length).toBeGreaterThan(3);
      for (const n of segments.slice(0, 3)) unlinkSync(join(server.dataDir, n));
      const back = await until("/health 200", async () => {
        const res = await fetch(server.url + "/health");
        const b = (await res.json()) as Record<string, any>;
        return res.status === 200 ? b : undefined;
      });
      expect(back.status).toBe("ok");
      expect((await post(server, "/v1/events/payment_exhaust", event())).status).toBe(202);
    }, 60_000);
  });
}
