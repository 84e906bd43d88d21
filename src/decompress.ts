/**
 * Compressed request bodies (`Content-Encoding`), decoded with the web
 * standard DecompressionStream, which Bun and Deno both provide. The
 * decompressed size is what counts against the body limit, and it is counted
 * while decompressing: a small bomb is abandoned as soon as its output passes
 * the limit, never inflated in full.
 *
 * zstd is not offered: Bun's DecompressionStream decodes it, Deno's (2.9)
 * does not, and both runtimes must behave the same.
 */

/** Codings a client may send, as listed in `Accept-Encoding` on a 415. */
export const SUPPORTED_ENCODINGS = ["gzip", "deflate"] as const;
export const ACCEPT_ENCODING = SUPPORTED_ENCODINGS.join(", ");

type Format = "gzip" | "deflate";
/** `x-gzip` is gzip (RFC 9110, 8.4.1.3); `deflate` is the zlib format, as DecompressionStream's "deflate". */
const FORMATS: Record<string, Format> = { gzip: "gzip", "x-gzip": "gzip", deflate: "deflate" };

/** null: no coding (or `identity`); a format; or "unsupported" (anything else, stacked codings included). */
export function contentCoding(header: string | null): Format | null | "unsupported" {
  if (header === null) return null;
  const coding = header.trim().toLowerCase();
  if (coding === "" || coding === "identity") return null;
  return FORMATS[coding] ?? "unsupported";
}

/**
 * Deflate's output is at most ~1032 times its input. The compressed body is
 * fed to the decompressor in slices small enough that one slice cannot
 * produce much past what is left of the limit: Deno's DecompressionStream
 * returns everything one write produces as a single chunk.
 */
const MAX_RATIO = 1032;
const MIN_SLICE = 64;
const MAX_SLICE = 16 * 1024;

export type DecodeResult = { ok: true; bytes: Uint8Array } | { ok: false; reason: "too_large" | "corrupt" | "incomplete" };

/**
 * Decompresses `body` (the compressed request body) into at most `limit`
 * bytes. Output past the limit, or compressed input past it: too_large. Data
 * the decompressor refuses (bad header, checksum, truncated stream, trailing
 * garbage): corrupt. A body that broke off while arriving: incomplete.
 */
export async function decompressBody(body: ReadableStream<Uint8Array>, format: Format, limit: number): Promise<DecodeResult> {
  const stream = new DecompressionStream(format);
  const writer = stream.writable.getWriter();
  const reader = stream.readable.getReader();
  const source = body.getReader();
  let produced = 0;
  let consumed = 0;
  /** Set by the input side before it aborts the decompressor. */
  let inputOutcome: "too_large" | "incomplete" | null = null;
  /** The answer is decided: the rest of the input is only read off the wire (a client that is still uploading gets its answer). */
  let refused = false;

  const feed = (async () => {
    for (;;) {
      let chunk: Awaited<ReturnType<typeof source.read>>;
      try {
        chunk = await source.read();
      } catch {
        inputOutcome ??= "incomplete";
        break;
      }
      if (chunk.done) break;
      const data = chunk.value;
      // The compressed input is bounded too: empty deflate blocks produce nothing and could go on forever.
      consumed += data.byteLength;
      if (consumed > limit) {
        inputOutcome ??= "too_large";
        await source.cancel().catch(() => {});
        break;
      }
      for (let i = 0; i < data.byteLength && !refused; ) {
        const slice = Math.max(MIN_SLICE, Math.min(MAX_SLICE, Math.floor((limit - produced) / MAX_RATIO)));
        try {
          await writer.write(data.subarray(i, i + slice) as Uint8Array<ArrayBuffer>);
        } catch {
          refused = true; // corrupt data or output past the limit: the reader side says which
        }
        i += slice;
      }
    }
    if (inputOutcome === null && !refused) await writer.close().catch(() => {});
    else await writer.abort().catch(() => {});
  })();

  const chunks: Uint8Array[] = [];
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      produced += value.byteLength;
      if (produced > limit) {
        refused = true;
        await reader.cancel().catch(() => {});
        await feed; // reads off what is left of the upload (at most `limit` bytes), so the client gets the answer
        return { ok: false, reason: "too_large" };
      }
      chunks.push(value);
    }
    await feed;
  } catch {
    refused = true;
    await feed;
    return { ok: false, reason: inputOutcome ?? "corrupt" };
  }
  if (inputOutcome !== null) return { ok: false, reason: inputOutcome };
  return { ok: true, bytes: concat(chunks, produced) };
}

function concat(chunks: Uint8Array[], total: number): Uint8Array {
  if (chunks.length === 1) return chunks[0]!;
  const bytes = new Uint8Array(total);
  let offset = 0;
  for (const c of chunks) {
    bytes.set(c, offset);
    offset += c.byteLength;
  }
  return bytes;
}
