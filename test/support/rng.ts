/** Deterministic PRNG (mulberry32), so that a failure of a randomised test can be replayed from its seed. */
export function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Replaces, deletes or inserts a few characters of `s`, drawn from `alphabet` (a set that stresses the parser under test). */
export function mutate(r: () => number, s: string, alphabet: readonly string[]): string {
  const int = (n: number) => Math.floor(r() * n);
  const chars = [...s];
  for (let n = int(3); n >= 0; n--) {
    const at = int(chars.length + 1);
    const op = int(3);
    if (op === 0 && at < chars.length) chars[at] = alphabet[int(alphabet.length)]!;
    else if (op === 1) chars.splice(at, 1);
    else chars.splice(at, 0, alphabet[int(alphabet.length)]!);
  }
  return chars.join("");
}
