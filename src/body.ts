import type { Incoming } from "./exchange.ts";
import { contentCoding, decompressBody } from "./decompress.ts";

/**
 * Reads a request body up to `limit` bytes, on any runtime: a declared
 * Content-Length over the limit is refused before reading anything, and a
 * streamed body is abandoned as soon as it passes the limit. A body that
 * breaks off (the client went away, or sent less than it announced) is
 * `incomplete`, not an error of the service.
 */
export type BodyResult =
  | { ok: true; bytes: Uint8Array }
  | { ok: false; reason: "too_large" | "incomplete" | "stopped" | "unsupported_encoding" | "corrupt_encoding" };

/**
 * Reads the raw bytes of a body up to `limit`, following the same rules
 * (limit, watch); the HTTP server provides one per request (src/runtime.ts),
 * `requestBody` makes one from a web Request.
 */
export type BodySource = (limit: number, watch?: (chunk: Uint8Array) => boolean) => Promise<BodyResult>;

/**
 * `watch`, if given, sees every chunk as it arrives and may stop the read
 * early (returns false): the result is then `stopped` and the rest is never
 * read or buffered. A compressed body (Content-Encoding) is decoded with the
 * limit applied to its decompressed size; the caller checks what it holds
 * once it is whole.
 */
export async function readBody(request: Incoming, limit: number, watch?: (chunk: Uint8Array) => boolean): Promise<BodyResult> {
  const coding = contentCoding(request.header("content-encoding"));
  if (coding === "unsupported") return { ok: false, reason: "unsupported_encoding" };
  try {
    if (coding === null) return await read(request, limit, watch);
    // The compressed bytes first (at most the limit, through the same reader), then decoded with
    // the limit on what they inflate to: memory stays within twice the limit whatever the ratio.
    const packed = await read(request, limit);
    if (!packed.ok) return packed;
    const bytes = packed.bytes;
    const decoded = await decompressBody(new ReadableStream<Uint8Array>({ start: (c) => (c.enqueue(bytes), c.close()) }), coding, limit);
    if (decoded.ok) return decoded;
    return { ok: false, reason: decoded.reason === "corrupt" ? "corrupt_encoding" : decoded.reason };
  } catch {
    return { ok: false, reason: "incomplete" };
  }
}

function read(request: Incoming, limit: number, watch?: (chunk: Uint8Array) => boolean): Promise<BodyResult> {
  const declared = request.header("content-length");
  if (declared !== null && Number(declared) > limit) return Promise.resolve({ ok: false, reason: "too_large" });
  return request.body(limit, watch);
}

/** The body of a web Request as a BodySource (in-process callers). */
export function requestBody(request: Request): BodySource {
  return (limit, watch) => readStream(request, limit, watch);
}

async function readStream(request: Request, limit: number, watch?: (chunk: Uint8Array) => boolean): Promise<BodyResult> {
  const declared = request.headers.get("content-length");
  if (declared !== null) {
    const n = Number(declared);
    if (Number.isSafeInteger(n) && watch === undefined) return { ok: true, bytes: new Uint8Array(await request.arrayBuffer()) };
  }
  if (request.body === null) return { ok: true, bytes: new Uint8Array(0) };
  const reader = request.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > limit) {
      await reader.cancel().catch(() => {});
      return { ok: false, reason: "too_large" };
    }
    if (watch !== undefined && !watch(value)) {
      await reader.cancel().catch(() => {});
      return { ok: false, reason: "stopped" };
    }
    chunks.push(value);
  }
  if (chunks.length === 1) return { ok: true, bytes: chunks[0]! };
  const bytes = new Uint8Array(total);
  let offset = 0;
  for (const c of chunks) {
    bytes.set(c, offset);
    offset += c.byteLength;
  }
  return { ok: true, bytes };
}
