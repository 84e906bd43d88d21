/**
 * The dedup index against a plain Map model: random claims, commits and
 * releases with an injected clock, across expiry, the id cap, growth of the
 * typed arrays and ids that share hash slots. Exactness matters both ways: a
 * false "seen" drops an event, a false "unseen" stores a duplicate.
 */
import { describe, expect, test } from "bun:test";
import { DedupIndex, IdTable } from "../src/dedup.ts";
import { parseUuid } from "../src/events.ts";
import { frame, storedId } from "../src/record.ts";
import { rng } from "./support/rng.ts";

const hex = (r: () => number, n: number) => Array.from({ length: n }, () => "0123456789abcdef"[Math.floor(r() * 16)]).join("");
const uuid = (r: () => number) => `${hex(r, 8)}-${hex(r, 4)}-4${hex(r, 3)}-a${hex(r, 3)}-${hex(r, 12)}`;

describe("DedupIndex matches a Map model", () => {
  for (const [seed, maxIds, windowMs] of [[1, 50, 5_000], [2, 3000, 60_000], [3, 100_000, 3_600_000]] as const) {
    test(`seed ${seed}: cap ${maxIds}, window ${windowMs} ms`, async () => {
      const r = rng(seed);
      let evicted = 0;
      const dedup = new DedupIndex(windowMs, maxIds, (n) => (evicted += n));
      const model = new Map<string, number>(); // id -> expiry ms, insertion order = age
      let modelEvicted = 0;
      const pool: string[] = [];
      let now = 1_800_000_000_000;
      for (let step = 0; step < 20_000; step++) {
        now += 10 * Math.floor(r() * (windowMs / 2000)); // whole ticks: expiries are kept to 10 ms
        // Ids: new ones, and repeats of earlier ones (some expired, some evicted).
        const ids = Array.from({ length: 1 + Math.floor(r() * 4) }, () => {
          if (pool.length > 0 && r() < 0.4) return pool[Math.floor(r() * pool.length)]!;
          const id = uuid(r);
          pool.push(id);
          if (pool.length > maxIds * 3) pool.splice(0, maxIds);
          return id;
        });
        const claim = await dedup.claim(ids, now);
        // The model's answer: owned = first occurrence of an id not seen (or expired).
        const seenInRequest = new Set<string>();
        const expected = ids.map((id) => {
          const dup = seenInRequest.has(id) || (model.get(id) ?? 0) > now;
          seenInRequest.add(id);
          return !dup;
        });
        expect(claim.owned).toEqual(expected);
        if (r() < 0.1) {
          dedup.release(claim);
          continue;
        }
        dedup.commit(claim, now);
        ids.forEach((id, i) => {
          if (!claim.owned[i]) return;
          model.delete(id);
          model.set(id, now + windowMs);
        });
        for (const [id, exp] of model) {
          if (model.size <= maxIds && exp > now) break;
          model.delete(id);
          if (exp > now) modelEvicted++;
        }
      }
      // Every id the model holds is held, nothing else is (sizes agree once expired ones are gone).
      const check = await dedup.claim([...model.keys()].filter((id) => model.get(id)! > now), now);
      expect(check.owned.every((o) => !o)).toBe(true);
      expect(evicted).toBe(modelEvicted);
    }, 60_000);
  }

  test("an id is exact: ids that differ in one bit are different", async () => {
    const dedup = new DedupIndex(60_000, 10);
    const a = "123e4567-e89b-12d3-a456-426614174000";
    const b = "123e4567-e89b-12d3-a456-426614174001";
    const c = await dedup.claim([a], 0);
    dedup.commit(c, 0);
    expect((await dedup.claim([b], 1)).owned).toEqual([true]);
    expect((await dedup.claim([a], 1)).owned).toEqual([false]);
  });

  test("memory follows the ids held, not the cap", async () => {
    const dedup = new DedupIndex(86_400_000, 10_000_000);
    const r = rng(9);
    const ids = Array.from({ length: 200_000 }, () => uuid(r));
    const words = new Uint32Array(4 * ids.length);
    ids.forEach((id, i) => parseUuid(id, words, 4 * i));
    dedup.restore([{ words, expiries: new Float64Array(ids.length).fill(1_900_000_000_000), count: ids.length }]);
    expect(dedup.size).toBe(200_000);
    expect(dedup.bytes / dedup.size).toBeLessThanOrEqual(32);
  });

  test("concurrent claims: an id is never held by two requests, waiters go on when its holder settles, across thousands of ids in flight", async () => {
    const r = rng(11);
    const dedup = new DedupIndex(86_400_000, 1_000_000);
    const pool = Array.from({ length: 4000 }, () => uuid(r));
    const holder = new Map<string, number>(); // id -> request holding it
    const seen = new Set<string>();
    const active: { n: number; ids: string[]; claim: Awaited<ReturnType<DedupIndex["claim"]>> }[] = [];
    let pending = 0;
    let resolved = 0;
    const ticks = async () => {
      for (let i = 0; i < 4; i++) await new Promise((res) => setImmediate(res));
    };
    for (let n = 0; n < 1500; n++) {
      // Up to 2,000 ids in flight: past the set's first size, with deletions all over it.
      const ids = Array.from({ length: 1 + Math.floor(r() * 20) }, () => pool[Math.floor(r() * pool.length)]!);
      pending++;
      void dedup.claim(ids).then((claim) => {
        pending--;
        resolved++;
        const mine = new Set<string>();
        ids.forEach((id, i) => {
          // Resolved only when no other request holds any of its ids.
          expect(holder.has(id)).toBe(false);
          expect(claim.owned[i]).toBe(!seen.has(id) && !mine.has(id));
          mine.add(id);
        });
        for (const id of ids.filter((_, i) => claim.owned[i])) holder.set(id, n);
        active.push({ n, ids, claim });
      });
      await ticks();
      while (active.length > 0 && (holder.size > 2000 || r() < 0.04)) {
        const [done] = active.splice(Math.floor(r() * active.length), 1);
        const owned = done!.ids.filter((_, i) => done!.claim.owned[i]);
        for (const id of owned) holder.delete(id);
        if (r() < 0.8) {
          dedup.commit(done!.claim);
          for (const id of owned) seen.add(id);
        } else dedup.release(done!.claim);
        await ticks();
      }
    }
    while (active.length > 0 || pending > 0) {
      const done = active.pop();
      if (done !== undefined) {
        for (const id of done.ids.filter((_, i) => done.claim.owned[i])) holder.delete(id);
        dedup.commit(done.claim);
        for (const id of done.ids.filter((_, i) => done.claim.owned[i])) seen.add(id);
      }
      await ticks();
    }
    expect(resolved).toBe(1500);
    expect(dedup.size).toBe(seen.size);
  });

  test("a release after the commit (something failed after it) changes nothing, and leaves other requests' ids held", async () => {
    const dedup = new DedupIndex(60_000, 100);
    const [x, y] = [crypto.randomUUID(), crypto.randomUUID()];
    const a = await dedup.claim([x]);
    dedup.commit(a);
    const b = await dedup.claim([y]); // in flight
    expect(() => dedup.release(a)).not.toThrow();
    let waited = false;
    const c = dedup.claim([y]).then((claim) => ((waited = true), claim));
    await new Promise((r) => setTimeout(r, 10));
    expect(waited).toBe(false); // y is still b's
    dedup.commit(b);
    expect((await c).owned).toEqual([false]);
    expect((await dedup.claim([x])).owned).toEqual([false]); // x stays remembered
  });

  test("only UUIDs are ids", () => {
    const w = new Uint32Array(4);
    expect(parseUuid("123e4567-e89b-12d3-a456-426614174000", w)).toBe(true);
    expect([...w]).toEqual([0x123e4567, 0xe89b12d3, 0xa4564266, 0x14174000]);
    expect(parseUuid("not-a-uuid", w)).toBe(false);
  });
});

describe("reading an id back out of a stored record", () => {
  const tail = ',"received_at":"2026-11-22T08:00:01.234Z","key_id":"0123456789ab"}';
  const at = Date.parse("2026-11-22T08:00:01.234Z");
  const ID = "123e4567-e89b-12d3-a456-426614174000";
  /** storedId of the record framed as a log line: the id as its words, and received_at. */
  const read = (record: string) => {
    const line = frame([record]).subarray(0, -1);
    const words = new Uint32Array(5).fill(7);
    const receivedAt = storedId(line, words, 1);
    return Number.isNaN(receivedAt) ? null : { words: [...words], receivedAt };
  };
  const want = (id: string, receivedAt = at) => {
    const words = new Uint32Array(5).fill(7);
    parseUuid(id, words, 1);
    return { words: [...words], receivedAt };
  };
  test("the top-level event_id (any case) and received_at, read where they lie", () => {
    expect(read(`{"event_type":"x","event_id":"123E4567-E89B-12D3-A456-426614174000","processor":"stripe"${tail}`)).toEqual(want(ID));
    const late = ',"received_at":"2031-02-28T23:59:59.999Z","key_id":"0123456789ab"}';
    expect(read(`{"event_id":"${ID}"${late}`)).toEqual(want(ID, Date.parse("2031-02-28T23:59:59.999Z")));
  });
  test("received_at read by digits agrees with Date.parse from record to record (the day kept from the last one: day, month and year changes, leap days, a bad date between)", () => {
    const line = (iso: string) => `{"event_id":"${ID}","received_at":"${iso}","key_id":"0123456789ab"}`;
    // Each step changes one part of the date (or none): a cache keyed on less than the whole date answers one of them wrongly.
    const sequence = [
      "2028-02-28T10:00:00.000Z", "2028-02-29T10:00:00.000Z", "2028-03-01T10:00:00.000Z", "2029-03-01T10:00:00.000Z",
      "2028-03-01T10:00:00.000Z", "2028-04-01T10:00:00.000Z", "2028-04-11T10:00:00.000Z", "2028-11-01T10:00:00.000Z",
      "2128-11-01T10:00:00.000Z", "2128-11-01T23:59:59.999Z", "2000-02-29T00:00:00.000Z", "2000-02-29T00:00:00.001Z",
    ];
    let seed = 1;
    const random = () => ((seed = (Math.imul(seed, 48271) >>> 0) % 2147483647) / 2147483647); // reproducible
    for (let i = 0; i < 2000; i++) sequence.push(new Date(Math.floor(random() * 4e12) + (i % 3 === 0 ? 0 : 86_400_000 * Math.floor(random() * 3))).toISOString());
    for (const [i, iso] of sequence.entries()) {
      if (i % 50 === 7) expect(read(line("2028-13-01T10:00:00.000Z"))).toEqual(want(ID, Date.UTC(2028, 12, 1, 10))); // a month out of range rolls over, as Date.UTC does
      expect(read(line(iso))).toEqual(want(ID, Date.parse(iso)));
    }
  });
  test("a nested event_id never passes for the event's own, wherever it sits", () => {
    for (const body of [
      `{"meta":{"event_id":"00000000-0000-4000-8000-000000000000"},"event_id":"${ID}"`,
      `{"event_id":"${ID}","meta":{"event_id":"00000000-0000-4000-8000-000000000000"}`,
      `{"note":"he said \\"event_id\\":\\"00000000-0000-4000-8000-000000000000\\"","event_id":"${ID}"`,
    ]) {
      expect(read(body + tail)).toEqual(want(ID));
    }
  });
  test("a record without the service's tail is parsed; no UUID id, or garbage, is none", () => {
    expect(read(`{"event_id":"${ID}","received_at":"2026-11-22T08:00:01.234Z"}`)).toEqual(want(ID));
    expect(read(`{"event_id":"${ID}x"${tail}`)).toBeNull();
    // Years 0-99 (Date.UTC would read them as 1900-1999) take the parse.
    const early = ',"received_at":"0050-02-28T08:00:01.234Z","key_id":"0123456789ab"}';
    expect(read(`{"event_id":"${ID}"${early}`)).toEqual(want(ID, Date.parse("0050-02-28T08:00:01.234Z")));
    expect(read(`{"event_id":"not-a-uuid"${tail}`)).toBeNull();
    expect(read("{nope}")).toBeNull();
  });
});

describe("expiry ticks", () => {
  test("an id is remembered for the window to within 10 ms, and a process can run for years", async () => {
    const dedup = new DedupIndex(1000, 100);
    const id = "123e4567-e89b-12d3-a456-426614174000";
    let now = Date.now();
    const c = await dedup.claim([id], now);
    dedup.commit(c, now);
    const peek = async (ids: string[], at: number) => {
      const claim = await dedup.claim(ids, at);
      dedup.release(claim);
      return claim.owned;
    };
    expect(await peek([id], now + 990)).toEqual([false]);
    expect(await peek([id], now + 1011)).toEqual([true]);
    // 600 days later (past 2^32 ticks of 10 ms): expiries are rebased, old ones stay gone.
    for (const days of [300, 600, 1200]) {
      now += days * 86_400_000;
      const fresh = crypto.randomUUID();
      const claim = await dedup.claim([fresh, id], now);
      expect(claim.owned).toEqual([true, true]);
      dedup.commit(claim, now);
      expect(await peek([fresh, id], now + 500)).toEqual([false, false]);
      expect(await peek([fresh], now + 1011)).toEqual([true]);
    }
  });
});

test("parseUuid takes exactly the UUID shape", () => {
  const w = new Uint32Array(4);
  for (const bad of ["123e4567-e89b-12d3-a456-42661417400g", "123e4567e89b-12d3-a456-4266141740000", "123e4567-e89b-12d3-a456-42661417400", "123e4567-e89b-12d3-a456-4266141740é0", "+23e4567-e89b-12d3-a456-426614174000"]) {
    expect(parseUuid(bad, w)).toBe(false);
  }
  expect(parseUuid("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF", w)).toBe(true);
  expect([...w]).toEqual([0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff]);
});

describe("the id table against a model, through its growth", () => {
  test("adds, renewals, shifts from the front and lookups while the table grows a few slots at a time", () => {
    const r = rng(21);
    const table = new IdTable();
    const ring: { id: number[]; expiry: number }[] = []; // the model: entries in order
    let head = 0;
    const latest = new Map<string, number>(); // id -> index in ring of its newest entry
    const key = (w: number[]) => w.join(",");
    const fresh = () => [0, 0, 0, 0].map(() => Math.floor(r() * 2 ** 32));
    const held: number[][] = [];
    let grown = 0;
    let bytes = table.bytes;
    const entriesOf = (from: number) => ring.slice(from).flatMap((e) => [...e.id, e.expiry]);
    // Views taken part-way, read at the end: what the table did since (a drain included) must not show in them.
    const views: { view: ReturnType<IdTable["frozen"]>; want: number[] }[] = [];
    for (let step = 0; step < 300_000; step++) {
      if (step === 150_000 || step === 250_000) views.push({ view: table.frozen(1), want: entriesOf(head) });
      const x = r();
      if (step % 100_000 === 99_999) {
        // Drained to empty now and then: the ring's last block goes, and the table empties while it may be growing.
        while (head < ring.length) {
          const { id, expiry } = ring[head]!;
          const live = latest.get(key(id)) === head;
          if (live) latest.delete(key(id));
          expect(table.shift(step)).toBe(live && expiry > step);
          head++;
        }
        expect(table.size).toBe(0);
      } else if (x < 0.62 || head === ring.length) {
        // A new id, or a renewal of one held (it may sit in the table being emptied).
        const id = held.length > 0 && r() < 0.25 ? held[Math.floor(r() * held.length)]! : fresh();
        if (!latest.has(key(id))) held.push(id);
        const expiry = step;
        table.add(id[0]!, id[1]!, id[2]!, id[3]!, expiry);
        latest.set(key(id), ring.length);
        ring.push({ id, expiry });
      } else {
        const { id, expiry } = ring[head]!;
        const live = latest.get(key(id)) === head;
        if (live) latest.delete(key(id));
        const passed = step - 1000;
        expect(table.shift(passed)).toBe(live && expiry > passed);
        head++;
        // Gone from both tables, whichever it was in.
        if (live && !latest.has(key(id))) expect(table.expiryOf(id[0]!, id[1]!, id[2]!, id[3]!)).toBe(-1);
      }
      if (table.bytes > bytes) grown++;
      bytes = table.bytes;
      expect(table.size).toBe(latest.size);
      expect(table.entries).toBe(ring.length - head);
      if (step % 7 === 0) {
        // Ids held answer their newest expiry; ids gone or never added answer -1.
        const id = r() < 0.7 && held.length > 0 ? held[Math.floor(r() * held.length)]! : fresh();
        const at = latest.get(key(id));
        expect(table.expiryOf(id[0]!, id[1]!, id[2]!, id[3]!)).toBe(at === undefined ? -1 : ring[at]!.expiry);
      }
    }
    expect(grown).toBeGreaterThan(10);
    // A snapshot's view holds the ring's entries oldest first (superseded ones too), as they were when it was taken.
    views.push({ view: table.frozen(), want: entriesOf(head) });
    for (const { view, want } of views) {
      const out = Array.from(view.chunks(), (c) => [...c]).flat(); // each chunk copied before the next reuses its buffer
      expect(view.count * 5).toBe(want.length);
      expect(out).toEqual(want);
    }
  }, 60_000);
});
