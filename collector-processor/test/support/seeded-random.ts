/**
 * A repeatable stream of numbers in [0, 1) for randomized tests: the C library's linear congruential
 * generator (×1103515245 + 12345 mod 2³¹), so a failing case comes back with the same seed.
 */
export function seededRandom(seed: number): () => number {
  let s = seed;
  return () => {
    s = (s * 1_103_515_245 + 12_345) % 2 ** 31;
    return s / 2 ** 31;
  };
}
