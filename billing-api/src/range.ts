import {
  EARLIEST_INSTANT_MS,
  INSTANT_BOUNDS_TEXT,
  LATEST_INSTANT_MS,
  parseInstantMs,
  utcDayMs,
} from '@tollgate/contracts';
import { ApiError } from './errors.js';

/** A half-open UTC time range [fromMs, toMs). */
export interface TimeRange {
  fromMs: number;
  toMs: number;
}

export const DAY_MS = 86_400_000;
const HOUR_MS = 3_600_000;
/** Longest range one request may cover. */
export const MAX_RANGE_DAYS = 400;
/** Ranges up to this long get hour buckets when the caller asks for `bucket=auto`. */
export const AUTO_HOUR_BUCKETS_MAX_MS = 48 * HOUR_MS;
/** Longest range hour buckets may cover. */
export const HOUR_BUCKETS_MAX_MS = 7 * DAY_MS;

export const PERIOD_PATTERN = '^[0-9]{4}-(0[1-9]|1[0-2])$';
export { INSTANT_PATTERN } from '@tollgate/contracts';

/**
 * Every range lies within [1970-01-01, 2149-01-01) (contracts' instant bounds): no call predates the Unix
 * epoch, and ClickHouse's `Date` (the daily views' day column) ends in June 2149. Outside it is the same 400
 * as any other bad range.
 */
export const EARLIEST_MS = EARLIEST_INSTANT_MS;
export const LATEST_MS = LATEST_INSTANT_MS;
const BOUNDS_TEXT = INSTANT_BOUNDS_TEXT;

function outsideBounds(name: string, text: string): ApiError {
  return new ApiError('API_BAD_REQUEST', `${name}: ${text} is outside ${BOUNDS_TEXT}`);
}

/** `YYYY-MM` → its first instant and the first instant of the next month (UTC); 1970-01 … 2148-12. */
export function periodRange(period: string): TimeRange {
  const [y, m] = period.split('-').map(Number) as [number, number];
  const range = { fromMs: utcDayMs(y, m - 1, 1), toMs: utcDayMs(y, m, 1) };
  if (!(range.fromMs >= EARLIEST_MS && range.toMs <= LATEST_MS)) throw outsideBounds('period', period);
  return range;
}

/** The billing period (`YYYY-MM`, UTC calendar month) of an instant. */
export function periodOfMs(ms: number): string {
  return new Date(ms).toISOString().slice(0, 7);
}

/** `2025-03-01` or `2025-03-01T12:00:00Z` (offsets allowed) → epoch ms; a date that does not exist is a 400. */
export function parseInstant(text: string, name: string): number {
  const ms = parseInstantMs(text);
  if (ms === undefined) throw new ApiError('API_BAD_REQUEST', `${name}: ${text} is not a valid date`);
  if (ms < EARLIEST_MS || ms > LATEST_MS) throw outsideBounds(name, text);
  return ms;
}

/**
 * The range of a request: `period=YYYY-MM`, or `from`/`to` (a missing `from` is the start of the current
 * billing period, a missing `to` its end), or by default the current billing period.
 */
export function resolveRange(
  q: { from?: string; to?: string; period?: string },
  nowMs = Date.now(),
): TimeRange {
  if (q.period !== undefined && (q.from !== undefined || q.to !== undefined)) {
    throw new ApiError('API_BAD_REQUEST', 'give period or from/to, not both');
  }
  const current = periodRange(periodOfMs(nowMs));
  const range = q.period
    ? periodRange(q.period)
    : {
        fromMs: q.from !== undefined ? parseInstant(q.from, 'from') : current.fromMs,
        toMs: q.to !== undefined ? parseInstant(q.to, 'to') : current.toMs,
      };
  if (range.toMs <= range.fromMs) throw new ApiError('API_BAD_REQUEST', 'from must be before to');
  if (range.toMs - range.fromMs > MAX_RANGE_DAYS * DAY_MS) {
    throw new ApiError('API_BAD_REQUEST', `a range may cover at most ${MAX_RANGE_DAYS} days`);
  }
  return range;
}

/**
 * How a range splits between the daily view and the raw table: whole UTC days [wholeFromMs, wholeToMs)
 * come from the view, the partial days at either end from the raw table. `hasWholeDays` false: no whole
 * day inside the range, everything is read from the raw table.
 */
export interface RangeSplit {
  wholeFromMs: number;
  wholeToMs: number;
  hasWholeDays: boolean;
  hasPartialDays: boolean;
}

export function splitByDay(r: TimeRange): RangeSplit {
  const wholeFromMs = Math.ceil(r.fromMs / DAY_MS) * DAY_MS;
  const wholeToMs = Math.floor(r.toMs / DAY_MS) * DAY_MS;
  if (wholeToMs <= wholeFromMs) {
    return { wholeFromMs: r.fromMs, wholeToMs: r.fromMs, hasWholeDays: false, hasPartialDays: true };
  }
  return {
    wholeFromMs,
    wholeToMs,
    hasWholeDays: true,
    hasPartialDays: wholeFromMs !== r.fromMs || wholeToMs !== r.toMs,
  };
}

/**
 * The whole UTC calendar months inside the days [fromDayMs, toDayMs) (both at midnight): [fromMs, toMs), or
 * undefined when no whole month fits.
 */
export function wholeMonths(fromDayMs: number, toDayMs: number): TimeRange | undefined {
  const a = new Date(fromDayMs);
  const fromMs = a.getUTCDate() === 1 ? fromDayMs : Date.UTC(a.getUTCFullYear(), a.getUTCMonth() + 1, 1);
  const b = new Date(toDayMs);
  const toMs = Date.UTC(b.getUTCFullYear(), b.getUTCMonth(), 1);
  return toMs > fromMs ? { fromMs, toMs } : undefined;
}

export type Bucket = 'day' | 'hour';

/** `auto`: hours for ranges up to 48 h, days beyond. Hours are refused beyond 7 days. */
export function bucketFor(requested: 'auto' | Bucket | undefined, r: TimeRange): Bucket {
  const span = r.toMs - r.fromMs;
  if (requested === 'hour' || (requested !== 'day' && span <= AUTO_HOUR_BUCKETS_MAX_MS)) {
    if (span > HOUR_BUCKETS_MAX_MS) {
      throw new ApiError('API_BAD_REQUEST', 'hour buckets cover at most 7 days: use bucket=day');
    }
    return 'hour';
  }
  return 'day';
}

/** An instant as a ClickHouse DateTime64(3, 'UTC') parameter value. */
export function chInstant(ms: number): string {
  return new Date(ms).toISOString().replace('T', ' ').replace('Z', '');
}

/** An instant as a ClickHouse Date parameter value (the UTC day). */
export function chDay(ms: number): string {
  return new Date(ms).toISOString().slice(0, 10);
}

export function isoOf(ms: number): string {
  return new Date(ms).toISOString();
}
