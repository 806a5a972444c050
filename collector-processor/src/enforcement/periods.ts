import { utcDayMs } from '@tollgate/contracts';

/** End of the billing period `YYYY-MM` (the first instant of the next UTC month), in ms. */
export function periodEndMs(period: string): number {
  const [y, m] = period.split('-').map(Number) as [number, number];
  return utcDayMs(y, m, 1);
}

/** End of the UTC day `YYYY-MM-DD`, in ms. */
export function dayEndMs(day: string): number {
  const [y, m, d] = day.split('-').map(Number) as [number, number, number];
  return utcDayMs(y, m - 1, d + 1);
}

const MS_PER_DAY = 86_400_000;
const dayNames = new Map<number, string>();

/** `YYYY-MM-DD` (UTC) of an instant in ms. Memoised per day: it runs for every call on the hot path. */
export function dayOf(unixMs: number): string {
  const index = Math.floor(unixMs / MS_PER_DAY);
  let name = dayNames.get(index);
  if (name === undefined) {
    name = new Date(index * MS_PER_DAY).toISOString().slice(0, 10);
    if (dayNames.size > 4096) dayNames.clear();
    dayNames.set(index, name);
  }
  return name;
}
