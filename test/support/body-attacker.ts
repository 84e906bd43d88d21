/**
 * A separate process that sends expensive bodies (so that building and
 * uploading them does not slow the measuring client in the test process).
 * Usage: bun body-attacker.ts <url> <key> <durationMs> <maxRequests> <offset> <pauseMs>
 * Each request is followed by a pause: the attack is about what one request
 * costs everyone else, not about saturating the CPU.
 * Prints one JSON line: [{ path, status, code }, ...].
 */
const [url, key, durationMs, maxRequests, offset, pauseMs] = process.argv.slice(2) as [string, string, string, string, string, string];
const DEEP = 200_000;
const NDJSON_LINES = 12_000_000;

const base = JSON.stringify({ event_type: "payment_failed", event_timestamp: "2026-11-22T08:00:00Z", event_id: crypto.randomUUID(), processor: "stripe" });
const deepArrays = `${base.slice(0, -1)},"extra":${"[".repeat(DEEP)}${"]".repeat(DEEP)}}`;
const deepObjects = `${base.slice(0, -1)},"extra":${'{"a":'.repeat(DEEP / 2)}1${"}".repeat(DEEP / 2)}}`;
const ndjson = new Uint8Array(NDJSON_LINES * 2).fill(0x0a);
for (let i = 0; i < ndjson.length; i += 2) ndjson[i] = 0x31; // "1\n" repeated
// Encoded once: the attacker's own CPU must not be what slows the machine.
const enc = (s: string) => new TextEncoder().encode(s);
const attacks: [string, Uint8Array, string][] = [
  ["/v1/events/payment_exhaust", enc(deepArrays), "application/json"],
  ["/v1/events/payment_exhaust", enc(deepObjects), "application/json"],
  ["/v1/events/batch", enc(`[${deepArrays}]`), "application/json"],
  ["/v1/events/batch", ndjson, "application/x-ndjson"],
];

const results: { path: string; ct: string; status: number | string; code?: string }[] = [];
const deadline = Date.now() + Number(durationMs);
for (let n = 0; n < Number(maxRequests) && Date.now() < deadline; n++) {
  const [path, body, ct] = attacks[(n + Number(offset)) % attacks.length]!;
  try {
    const r = await fetch(url + path, { method: "POST", headers: { authorization: `Bearer ${key}`, "content-type": ct }, body: body as BodyInit, signal: AbortSignal.timeout(30_000) });
    results.push({ path, ct, status: r.status, code: ((await r.json()) as { code?: string }).code });
  } catch (err) {
    results.push({ path, ct, status: (err as Error).name });
  }
  await Bun.sleep(Number(pauseMs));
}
console.log(JSON.stringify(results));

export {};
