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
 * A faster way to the same bytes than `request.body`, registered by the HTTP
 * server (src/runtime.ts) for the requests it creates: a web ReadableStream
 * per request costs more than the rest of a small ingest request. It follows
 * the same rules (limit, watch) and is only used through readBody.
 */
export type BodySource = (limit: number, watch?: (chunk: Uint8Array) => boolean) => Promise<BodyResult>;
const sources = new WeakMap<Request, BodySource>();

export function registerBodySource(request: Request, source: BodySource): void {
  sources.set(request, source);
}

/**
 * `watch`, if given, sees every chunk as it arrives and may stop the read
 * early (returns false): the result is then `stopped` and the rest is never
 * read or buffered. A compressed body (Content-Encoding) is decoded with the
 * limit applied to its decompressed size; the caller checks what it holds
 * once it is whole.
 */
export async function readBody(request: Request, limit: number, watch?: (chunk: Uint8Array) => boolean): Promise<BodyResult> {
  const coding = contentCoding(request.headers.get("content-encoding"));
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

async function read(request: Request, limit: number, watch?: (chunk: Uint8Array) => boolean): Promise<BodyResult> {
  const declared = request.headers.get("content-length");
  if (declared !== null) {
    const n = Number(declared);
    if (n > limit) return { ok: false, reason: "too_large" };
  }
  const source = sources.get(request);
  if (source !== undefined) return source(limit, watch);
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
