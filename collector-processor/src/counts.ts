/** Adds `d` to `key`'s count in `counts`; a count that reaches 0 (or less) leaves the map. */
export function addCount(counts: Map<string, number>, key: string, d: number): void {
  const n = (counts.get(key) ?? 0) + d;
  if (n > 0) counts.set(key, n);
  else counts.delete(key);
}
