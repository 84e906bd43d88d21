/** Settings whose effect is not covered by a feature's own test file. */
import { afterAll, expect, test } from "bun:test";
import { event, post, SINGLE, startServer, stopAll } from "./support/harness.ts";

afterAll(stopAll);

test("PAYFLUX_DEDUP_WINDOW: an id is a duplicate inside the window and new again after it", async () => {
  const server = await startServer({ env: { PAYFLUX_DEDUP_WINDOW: "1s" } });
  const ev = event();
  expect(await (await post(server, SINGLE, ev)).json()).toEqual({ accepted: 1, duplicates: 0 });
  expect(await (await post(server, SINGLE, ev)).json()).toEqual({ accepted: 0, duplicates: 1 });
  await Bun.sleep(1100);
  expect(await (await post(server, SINGLE, ev)).json()).toEqual({ accepted: 1, duplicates: 0 });
});

test("PAYFLUX_LOG_LEVEL: debug logs accepted requests, the default level does not", async () => {
  const debug = await startServer({ env: { PAYFLUX_LOG_LEVEL: "debug" } });
  const quiet = await startServer();
  for (const s of [debug, quiet]) expect((await post(s, SINGLE, event())).status).toBe(202);
  await debug.waitForLog((l) => l.msg === "events accepted" && l.level === "debug" && l.accepted === 1);
  await debug.stop();
  await quiet.stop();
  expect(quiet.logs().some((l) => l.msg === "events accepted")).toBe(false);
});

test("PAYFLUX_HOST: the service binds the configured address only", async () => {
  const server = await startServer({ env: { PAYFLUX_HOST: "127.0.0.1" } });
  const line = server.logs().find((l) => l.msg === "payflux listening")!;
  expect(line.address).toBe(`http://127.0.0.1:${server.port}`);
  expect((await fetch(`http://127.0.0.1:${server.port}/health`)).status).toBe(200);
  // 127.0.0.2 is loopback too, but not the bound address.
  await expect(fetch(`http://127.0.0.2:${server.port}/health`)).rejects.toThrow();
});
