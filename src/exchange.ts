import type { BodySource } from "./body.ts";

/**
 * One request as the ingest handler sees it, whichever server read it. The
 * HTTP server (src/runtime.ts) hands ingest requests over in this form, with
 * no web Request, Headers or Response built for them: on the hot path those
 * objects cost more than everything else a small event needs. Everything else
 * (and in-process callers) goes through the web fetch handler, which adapts
 * with `fromRequest` / `toResponse`.
 */
export interface Incoming {
  readonly method: string;
  /** The field's value (lower-case name); repeated fields joined with ", ", as `Headers.get` does. */
  header(name: string): string | null;
  /** The raw body bytes, read on demand with a limit (see src/body.ts). */
  readonly body: BodySource;
  /** The TCP peer's address, or null when unknown (in-process callers). */
  readonly peer: string | null;
}

/** An answer: every response of the service is small, in memory, and written in one piece. */
export interface Reply {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/**
 * A field's value from name/value pairs (`[name, value, name, value, ...]`, any
 * case), as `Headers.get` gives it: every field of that name, joined with ", ".
 */
export function fieldValue(fields: readonly string[], name: string): string | null {
  let value: string | null = null;
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const n = fields[i]!;
    if (n.length === name.length && n.toLowerCase() === name) value = value === null ? fields[i + 1]! : `${value}, ${fields[i + 1]}`;
  }
  return value;
}

export function reply(status: number, body: string, contentType: string, headers: Record<string, string> = {}): Reply {
  return { status, headers: { "content-type": contentType, ...headers }, body };
}

/** A web Request in the handler's form (in-process callers, and routes served through the fetch handler). */
export function fromRequest(request: Request, peer: string | null, body: BodySource): Incoming {
  return { method: request.method, header: (name) => request.headers.get(name), body, peer };
}

export function toResponse(r: Reply): Response {
  return new Response(r.body, { status: r.status, headers: r.headers });
}
