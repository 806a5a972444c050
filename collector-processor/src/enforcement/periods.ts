/** End of the billing period `YYYY-MM` (the first instant of the next UTC month), in ms. */
export function periodEndMs(period: string): number {
  const [y, m] = period.split('-').map(Number) as [number, number];
  return Date.UTC(y, m, 1);
}

/** End of the UTC day `YYYY-MM-DD`, in ms. */
export function dayEndMs(day: string): number {
  const [y, m, d] = day.split('-').map(Number) as [number, number, number];
  return Date.UTC(y, m - 1, d + 1);
}

export function dayOf(unixMs: number): string {
  return new Date(unixMs).toISOString().slice(0, 10);
}
