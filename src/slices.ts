import { setImmediate } from "node:timers";

/**
 * Long CPU work (a reload of 100,000 keys) written once as a generator that
 * yields where it may pause, then run either to completion (start-up,
 * check-config) or in slices that let requests and timers run in between
 * (SIGHUP), so that no request waits behind the whole of it.
 */
export type Sliced<T> = Generator<void, T, void>;

/** Items a loop handles between two pause points: a yield costs far less than the items. */
export const PAUSE_EVERY = 1024;

/** Longest stretch a sliced run keeps the event loop before letting other callbacks run. */
export const SLICE_MS = 5;

/** Runs the work to its end without pausing. */
export function runSync<T>(work: Sliced<T>): T {
  for (;;) {
    const step = work.next();
    if (step.done) return step.value;
  }
}

/** Runs the work, giving the event loop back (setImmediate: pending I/O runs first) after every SLICE_MS. */
export async function runSliced<T>(work: Sliced<T>, sliceMs = SLICE_MS): Promise<T> {
  let sliceStart = performance.now();
  for (;;) {
    const step = work.next();
    if (step.done) return step.value;
    if (performance.now() - sliceStart >= sliceMs) {
      await new Promise<void>((resolve) => setImmediate(resolve));
      sliceStart = performance.now();
    }
  }
}
