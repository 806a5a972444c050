/**
 * Instants as the API and the admin routes take them: RFC 3339 (`2025-03-01T12:00:00Z`, an offset instead of
 * `Z`, seconds and up to three decimals optional) or a UTC day (`2025-03-01`). One parser for every route, so
 * a date one route refuses is refused by all.
 */

/** The shape of an instant, as a JSON-schema pattern (the routes' schemas check it before any handler runs). */
export const INSTANT_PATTERN =
  '^[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{1,3})?)?(Z|[+-][0-9]{2}:[0-9]{2}))?$';
const INSTANT = new RegExp(INSTANT_PATTERN);

/**
 * The first instant (ms) of a UTC calendar day, for every year: `Date.UTC` maps the years 0–99 to
 * 1900–1999, so `Date.UTC(0, 0, 1)` is 1900-01-01. `month` is 0-based and may overflow like Date.UTC's.
 */
export function utcDayMs(year: number, month: number, day: number): number {
  const d = new Date(0);
  d.setUTCFullYear(year, month, day);
  return d.getTime();
}

/**
 * Every instant Tollgate keeps lies within [1970-01-01, 2149-01-01): no call predates the Unix epoch (Redis
 * scripts and ClickHouse's `DateTime` read times as unsigned), and ClickHouse's `Date` ends in June 2149.
 */
export const EARLIEST_INSTANT_MS = 0;
export const LATEST_INSTANT_MS = utcDayMs(2149, 0, 1);
export const INSTANT_BOUNDS_TEXT = '1970-01-01 … 2149-01-01';

/**
 * Epoch ms of an instant, or undefined when the text is not one: a day that does not exist (`2027-02-30`),
 * ISO 8601's `24:00` (not RFC 3339; JavaScript would read it as the next midnight), an hour, minute, second
 * or offset out of range. JavaScript's own parser rolls impossible days over to the next month; this does
 * not. Bounds are the caller's (`EARLIEST_INSTANT_MS`, `LATEST_INSTANT_MS`).
 */
export function parseInstantMs(text: string): number | undefined {
  if (!INSTANT.test(text)) return undefined;
  const dateOnly = text.length === 10;
  const ms = Date.parse(dateOnly ? `${text}T00:00:00Z` : text);
  if (Number.isNaN(ms)) return undefined;
  if (!dateOnly && text.slice(11, 13) === '24') return undefined;
  const [y, mo, d] = text.slice(0, 10).split('-').map(Number) as [number, number, number];
  const calendar = new Date(utcDayMs(y, mo - 1, d));
  if (calendar.getUTCFullYear() !== y || calendar.getUTCMonth() !== mo - 1 || calendar.getUTCDate() !== d) {
    return undefined;
  }
  return ms;
}
