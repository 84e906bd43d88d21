/**
 * Compressed request bodies on every target: gzip and deflate batches are
 * stored byte-for-byte like plain ones; the decompressed size is what the
 * body limit counts, enforced while decompressing (a 2 MiB bomb that inflates
 * to 2 GiB is refused with 413 and the server's resident memory stays
 * bounded); an unknown coding is 415 with Accept-Encoding; corrupt data is
 * 400. Each refusal counts under its reason and stores nothing.
 */
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { constants, crc32, createDeflateRaw, deflateSync, gzipSync } from "node:zlib";
import { BATCH, E2E_TARGETS, event, metric, metricsText, post, SINGLE, startServer, stopAll, storedEvents, type Server } from "./support/harness.ts";

afterAll(stopAll);

const LIMIT = 4 * 1024 * 1024;
const MiB = 1 << 20;

/**
 * A gzip and a zlib ("deflate") stream of 2 GiB of zeros, both valid to the
 * last checksum, about 2 MiB each: 2048 copies of one fully flushed deflate
 * segment of 1 MiB of zeros (so the bomb is built in milliseconds, not by
 * compressing 2 GiB).
 */
async function bombs(): Promise<{ gzip: Buffer; deflate: Buffer; inflatedBytes: number }> {
  const d = createDeflateRaw({ level: 9 });
  const out: Buffer[] = [];
  d.on("data", (c: Buffer) => out.push(c));
  d.write(Buffer.alloc(MiB));
  await new Promise<void>((resolve) => d.flush(constants.Z_FULL_FLUSH, () => resolve()));
  const segment = Buffer.concat(out);
  const copies = 2048;
  const size = copies * MiB;
  const blocks = Buffer.concat([...Array<Buffer>(copies).fill(segment), Buffer.from([3, 0])]); // then an empty final block
  const adler = Buffer.alloc(4);
  adler.writeUInt32BE((((size % 65521) << 16) | 1) >>> 0); // Adler-32 of zeros: a = 1, b = n mod 65521
  let crc = 0;
  const zeros = Buffer.alloc(MiB);
  for (let i = 0; i < copies; i++) crc = crc32(zeros, crc);
  const trailer = Buffer.alloc(8);
  trailer.writeUInt32LE(crc >>> 0, 0);
  trailer.writeUInt32LE(size % 2 ** 32, 4);
  return {
    gzip: Buffer.concat([Buffer.from([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 255]), blocks, trailer]),
    deflate: Buffer.concat([Buffer.from([0x78, 0xda]), blocks, adler]),
    inflatedBytes: size,
  };
}

function rawPost(server: Server, path: string, body: Uint8Array | string, encoding: string | null, contentType = "application/json"): Promise<Response> {
  const headers: Record<string, string> = { authorization: "Bearer test-key-aaaaaaaaaaaaaaaaaaaaaaaaaaaa", "content-type": contentType };
  if (encoding !== null) headers["content-encoding"] = encoding;
  return fetch(server.url + path, { method: "POST", headers, body: body as BodyInit });
}

/** Lines of the segment files, as stored (framing included). */
function rawLines(dataDir: string): string[] {
  return readdirSync(dataDir)
    .filter((n) => n.startsWith("segment-"))
    .sort()
    .flatMap((n) => readFileSync(join(dataDir, n), "utf8").split("\n").filter((l) => l !== ""));
}

/** The stored line without what the service appends (received_at, key_id, crc): the event as it was sent. */
function asSent(line: string): string {
  return line.slice(0, line.indexOf(',"received_at":')) + "}";
}

function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (m === null) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]);
}

const rejected = (text: string, reason: string) => metric(text, `payflux_ingest_rejected_total{reason="${reason}"}`);

for (const target of E2E_TARGETS) {
  describe(`[${target}] compressed request bodies`, () => {
    let server: Server;
    beforeAll(async () => {
      server = await startServer({ target, env: { PAYFLUX_MAX_BODY_BYTES: String(LIMIT), PAYFLUX_INGEST_RPS: "100000", PAYFLUX_INGEST_BURST: "100000" } });
    });

    test("gzip, x-gzip and deflate batches (JSON and NDJSON) and single events are stored byte-for-byte like plain ones", async () => {
      const unicode = { geo_bucket: "Zürich-😀", failure_category: "carte refusée" };
      const plain = [event(unicode), event()];
      const gz = [event(unicode), event({ extra: { nested: [1, "ü"] } })];
      const xgz = [event(unicode)];
      const df = [event(unicode), event()];
      const nd = [event(unicode), event()];
      const single = event(unicode);
      const sent = [
        await post(server, BATCH, plain),
        await rawPost(server, BATCH, gzipSync(JSON.stringify(gz)), "gzip"),
        await rawPost(server, BATCH, gzipSync(JSON.stringify(xgz)), "X-GZIP"),
        await rawPost(server, BATCH, deflateSync(JSON.stringify(df)), "deflate"),
        await rawPost(server, BATCH, gzipSync(nd.map((e) => JSON.stringify(e)).join("\n")), " gzip ", "application/x-ndjson"),
        await rawPost(server, SINGLE, deflateSync(JSON.stringify(single)), "deflate"),
      ];
      const answers = await Promise.all(sent.map(async (r) => ({ status: r.status, body: await r.json() })));
      expect(answers).toEqual([2, 2, 1, 2, 2, 1].map((n) => ({ status: 202, body: { accepted: n, duplicates: 0 } })));
      const events = [...plain, ...gz, ...xgz, ...df, ...nd, single];
      expect(rawLines(server.dataDir).map(asSent)).toEqual(events.map((e) => JSON.stringify(e)));
      // And each line is framed and readable like any other.
      expect((await storedEvents(server.dataDir)).map((e) => e.event_id)).toEqual(events.map((e) => e.event_id));
      // A repeat of a compressed batch is a duplicate, as a plain one would be.
      const again = await rawPost(server, BATCH, gzipSync(JSON.stringify(gz)), "gzip");
      expect({ status: again.status, body: await again.json() }).toEqual({ status: 202, body: { accepted: 0, duplicates: 2 } });
    });

    test("a 2 MiB bomb that inflates to 2 GiB is refused with 413 at the limit, with the server's memory bounded", async () => {
      const b = await bombs();
      expect(b.gzip.length).toBeLessThan(LIMIT); // the compressed body alone is under the limit
      expect(b.inflatedBytes).toBe(2 ** 31);
      const storedBefore = rawLines(server.dataDir).length;
      const before = await metricsText(server);
      const rssBefore = rssKiB(server.proc.pid);
      let peak = rssBefore;
      const sampler = setInterval(() => (peak = Math.max(peak, rssKiB(server.proc.pid))), 5);
      const results: { status: number; code: string }[] = [];
      try {
        for (const [encoding, body] of [["gzip", b.gzip], ["deflate", b.deflate], ["gzip", b.gzip], ["deflate", b.deflate]] as const) {
          const res = await rawPost(server, BATCH, body, encoding);
          results.push({ status: res.status, code: (await res.json()).code });
        }
      } finally {
        clearInterval(sampler);
      }
      peak = Math.max(peak, rssKiB(server.proc.pid));
      expect(results).toEqual(Array(4).fill({ status: 413, code: "payload_too_large" }));
      // Inflating even one bomb in full would take 2 GiB; the limit is 4 MiB.
      expect({ growthMiB: Math.round((peak - rssBefore) / 1024), under: peak - rssBefore < 160 * 1024 }).toMatchObject({ under: true });
      const after = await metricsText(server);
      expect(rejected(after, "payload_too_large")).toBe(rejected(before, "payload_too_large")! + 4);
      expect(rawLines(server.dataDir).length).toBe(storedBefore);
      // The server is fine afterwards.
      expect((await rawPost(server, SINGLE, gzipSync(JSON.stringify(event())), "gzip")).status).toBe(202);
    });

    test("decompressed size counts: a body over the limit once inflated is 413, one just under is stored", async () => {
      const filler = "x".repeat(LIMIT); // compresses to a few KiB
      const over = await rawPost(server, SINGLE, gzipSync(JSON.stringify(event({ amount_bucket: filler }))), "gzip");
      expect({ status: over.status, code: (await over.json()).code }).toEqual({ status: 413, code: "payload_too_large" });
      const justUnder = event({ amount_bucket: "" });
      const pad = LIMIT - JSON.stringify(justUnder).length;
      justUnder.amount_bucket = "y".repeat(pad);
      expect(JSON.stringify(justUnder).length).toBe(LIMIT);
      const under = await rawPost(server, SINGLE, gzipSync(JSON.stringify(justUnder)), "gzip");
      expect({ status: under.status, body: await under.json() }).toEqual({ status: 202, body: { accepted: 1, duplicates: 0 } });
    });

    test("unknown codings are 415 with Accept-Encoding; nothing is read or stored", async () => {
      const storedBefore = rawLines(server.dataDir).length;
      const before = await metricsText(server);
      const body = JSON.stringify([event()]);
      for (const coding of ["br", "zstd", "compress", "gzip, gzip", "deflate-raw"]) {
        const res = await rawPost(server, BATCH, body, coding);
        expect({ coding, status: res.status, accept: res.headers.get("accept-encoding"), type: res.headers.get("content-type"), code: (await res.json()).code }).toEqual({
          coding,
          status: 415,
          accept: "gzip, deflate",
          type: "application/problem+json",
          code: "unsupported_media_type",
        });
      }
      // identity is no coding at all.
      expect((await rawPost(server, BATCH, JSON.stringify([event()]), "identity")).status).toBe(202);
      const after = await metricsText(server);
      expect(rejected(after, "unsupported_media_type")).toBe(rejected(before, "unsupported_media_type")! + 5);
      expect(rawLines(server.dataDir).length).toBe(storedBefore + 1);
    });

    test("corrupt, truncated or mislabelled compressed data is 400 malformed_encoding", async () => {
      const storedBefore = rawLines(server.dataDir).length;
      const before = await metricsText(server);
      const good = gzipSync(JSON.stringify([event()]));
      const flipped = Buffer.from(good);
      flipped[flipped.length - 6]! ^= 0xff; // the CRC no longer matches
      const cases: [string, Uint8Array | string][] = [
        ["gzip", "this is not gzip at all"],
        ["gzip", good.subarray(0, good.length - 10)],
        ["gzip", flipped],
        ["deflate", gzipSync("[]")],
        ["gzip", new Uint8Array(0)],
      ];
      for (const [coding, body] of cases) {
        const res = await rawPost(server, BATCH, body, coding);
        expect({ status: res.status, code: (await res.json()).code }).toEqual({ status: 400, code: "malformed_encoding" });
      }
      const after = await metricsText(server);
      expect(rejected(after, "malformed_encoding")).toBe(rejected(before, "malformed_encoding")! + cases.length);
      expect(rawLines(server.dataDir).length).toBe(storedBefore);
    });
  });
}
