/**
 * Reading facts back out of a stored record (one event as the event log keeps
 * it, framing removed): `{...the event as sent...,"received_at":"<ISO 8601,
 * 24 chars>","key_id":"<12 hex>"}`. The service writes every record with
 * JSON.stringify, so member names are never escaped.
 */
const TAIL = ',"received_at":"';
/** `,"received_at":"` + 24 + `","key_id":"` + 12 + `"}` */
const TAIL_BYTES = 16 + 24 + 12 + 12 + 2;
const ID_MEMBER = Buffer.from('"event_id":"');

/**
 * The event_id (lowercased) and received_at (ms) of a stored record, or null
 * when it has neither. Fast path without JSON.parse: received_at sits at a
 * fixed place from the end, and a record whose text holds `"event_id":"`
 * exactly once has it as its top-level member (string values cannot hold the
 * unescaped quotes; a nested object with its own event_id makes it appear
 * twice, and then the record is parsed).
 */
export function storedId(record: Buffer): { id: string; receivedAt: number } | null {
  const n = record.length;
  if (n > TAIL_BYTES && record.toString("latin1", n - TAIL_BYTES, n - TAIL_BYTES + 16) === TAIL) {
    const first = record.indexOf(ID_MEMBER);
    if (first >= 0 && record.indexOf(ID_MEMBER, first + 1) < 0) {
      const start = first + ID_MEMBER.length;
      const end = record.indexOf(0x22 /* " */, start);
      const receivedAt = Date.parse(record.toString("latin1", n - 50, n - 26));
      if (end > start && receivedAt === receivedAt) return { id: record.toString("utf8", start, end).toLowerCase(), receivedAt };
    }
  }
  let e: { event_id?: unknown; received_at?: unknown };
  try {
    e = JSON.parse(record.toString("utf8"));
  } catch {
    return null;
  }
  const at = typeof e.received_at === "string" ? Date.parse(e.received_at) : NaN;
  if (typeof e.event_id !== "string" || at !== at) return null;
  return { id: e.event_id.toLowerCase(), receivedAt: at };
}
