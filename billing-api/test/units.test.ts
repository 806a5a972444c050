import { describe, expect, it } from 'vitest';
import { csvField, toCsv } from '../src/csv.js';
import { marginBps, microsToSeconds, money } from '../src/money.js';
import { bucketFor, parseInstant, periodRange, resolveRange, splitByDay, wholeMonths } from '../src/range.js';
import {
  byAgentSql,
  byCustomerSql,
  byToolSql,
  dailyViewFor,
  enforcementCountsSql,
  enforcementEventsSql,
  invoiceLinesSql,
  invoiceTotalsSql,
  lifetimePageKeys,
  type Sql,
  sessionCallsSql,
  sessionSummarySql,
  sessionsCountSql,
  sessionsLaterSql,
  sessionsLifetimePageSql,
  sessionsListSql,
  sessionsPageSql,
  sessionsSnapshotPageSql,
  sessionTotalsByKeySql,
  sessionTotalsSql,
  summarySql,
} from '../src/sql.js';

/** The pure parts: ranges, money, CSV, and the SQL builders. */

const H = 3_600_000;
const D = 24 * H;
const T0 = Date.UTC(2026, 2, 10); // 2026-03-10T00:00Z

describe('ranges', () => {
  it.each([
    ['2026-03-10', T0],
    ['2026-03-10T05:30:00Z', T0 + 5.5 * H],
    ['2026-03-10T05:30Z', T0 + 5.5 * H],
    ['2026-03-10T07:30:00.250+02:00', T0 + 5.5 * H + 250],
  ])('parses %s', (text, ms) => {
    expect(parseInstant(text, 'from')).toBe(ms);
  });

  it.each([
    '2026-02-30',
    '2026-13-01',
    '2026-00-10',
    '2026-12-01T24:00:00Z',
    '2026-12-01T24:00Z',
    '2026-12-01T23:59:60Z',
  ])('refuses the date %s that does not exist', (text) => {
    expect(() => parseInstant(text, 'from')).toThrow(/not a valid date/);
  });

  // Date.UTC maps the years 0–99 to 1900–1999: 0000-01 used to answer January 1900.
  it.each(['0000-01', '0099-12', '1969-12', '2149-01', '9999-12'])(
    'refuses the period %s outside 1970-01 … 2148-12 with the range error',
    (period) => {
      expect(() => periodRange(period)).toThrow(/outside 1970-01-01 … 2149-01-01/);
      expect(() => resolveRange({ period })).toThrow(expect.objectContaining({ code: 'API_BAD_REQUEST' }));
    },
  );

  it.each([
    ['from', '0000-01-01'],
    ['from', '0050-06-01T00:00:00Z'],
    ['from', '1969-12-31T23:59:59Z'],
    ['to', '2149-01-01T00:00:00.001Z'],
    ['to', '9999-12-31'],
  ])('refuses %s=%s outside 1970-01-01 … 2149-01-01 with the range error', (name, text) => {
    expect(() => resolveRange({ [name]: text })).toThrow(/outside 1970-01-01 … 2149-01-01/);
  });

  it('accepts the edges of the representable range', () => {
    expect(periodRange('1970-01')).toEqual({ fromMs: 0, toMs: Date.UTC(1970, 1, 1) });
    expect(periodRange('2148-12')).toEqual({ fromMs: Date.UTC(2148, 11, 1), toMs: Date.UTC(2149, 0, 1) });
    expect(resolveRange({ from: '2148-12-01', to: '2149-01-01' }).toMs).toBe(Date.UTC(2149, 0, 1));
  });

  it('defaults to the billing period of now; period and from/to are exclusive', () => {
    const now = Date.UTC(2026, 11, 31, 23, 59);
    expect(resolveRange({}, now)).toEqual({ fromMs: Date.UTC(2026, 11, 1), toMs: Date.UTC(2027, 0, 1) });
    expect(resolveRange({ period: '2026-02' }, now)).toEqual({
      fromMs: Date.UTC(2026, 1, 1),
      toMs: Date.UTC(2026, 2, 1),
    });
    expect(resolveRange({ from: '2026-12-15' }, now)).toEqual({
      fromMs: Date.UTC(2026, 11, 15),
      toMs: Date.UTC(2027, 0, 1),
    });
    expect(() => resolveRange({ period: '2026-02', to: '2026-03-01' }, now)).toThrow(/not both/);
    expect(() => resolveRange({ from: '2026-03-01', to: '2026-03-01' }, now)).toThrow(/before/);
  });

  it('splits a range into whole days (view) and partial days (raw)', () => {
    expect(splitByDay({ fromMs: T0, toMs: T0 + 3 * D })).toEqual({
      wholeFromMs: T0,
      wholeToMs: T0 + 3 * D,
      hasWholeDays: true,
      hasPartialDays: false,
    });
    expect(splitByDay({ fromMs: T0 + 5 * H, toMs: T0 + 2 * D + H })).toEqual({
      wholeFromMs: T0 + D,
      wholeToMs: T0 + 2 * D,
      hasWholeDays: true,
      hasPartialDays: true,
    });
    // less than a whole day: everything from the raw table
    expect(splitByDay({ fromMs: T0 + 5 * H, toMs: T0 + D + 4 * H })).toMatchObject({
      hasWholeDays: false,
      hasPartialDays: true,
    });
  });

  it('hour buckets up to 48 h by default, allowed up to 7 days', () => {
    expect(bucketFor('auto', { fromMs: T0, toMs: T0 + 48 * H })).toBe('hour');
    expect(bucketFor('auto', { fromMs: T0, toMs: T0 + 48 * H + 1 })).toBe('day');
    expect(bucketFor(undefined, { fromMs: T0, toMs: T0 + 3 * D })).toBe('day');
    expect(bucketFor('hour', { fromMs: T0, toMs: T0 + 7 * D })).toBe('hour');
    expect(() => bucketFor('hour', { fromMs: T0, toMs: T0 + 7 * D + 1 })).toThrow(/7 days/);
    expect(bucketFor('day', { fromMs: T0, toMs: T0 + H })).toBe('day');
  });
});

describe('money', () => {
  it('nano and decimal strings, exactly', () => {
    expect(money('revenue', 52_418_001n)).toEqual({ revenueNano: '52418001', revenue: '0.052418001' });
    expect(money('cost', -1_500_000_000n)).toEqual({ costNano: '-1500000000', cost: '-1.50' });
    expect(money('x', 9_223_372_036_854_775_807n).x).toBe('9223372036.854775807');
  });

  it('margin in basis points, rounded down like the guard (also below zero)', () => {
    expect(marginBps(0n, 5n)).toBeNull();
    expect(marginBps(3n, 1n)).toBe(6666);
    expect(marginBps(3n, 4n)).toBe(-3334);
    expect(marginBps(100n, 200n)).toBe(-10000);
  });

  it('microseconds as exact seconds', () => {
    expect(microsToSeconds(1_500_000n)).toBe('1.5');
    expect(microsToSeconds(5n)).toBe('0.000005');
    expect(microsToSeconds(2_000_000n)).toBe('2');
  });
});

describe('whole months', () => {
  it.each([
    ['2026-03-01', '2026-04-01', ['2026-03-01', '2026-04-01']],
    ['2026-03-02', '2026-04-01', undefined],
    ['2026-02-20', '2026-05-03', ['2026-03-01', '2026-05-01']],
    ['2026-12-01', '2027-01-01', ['2026-12-01', '2027-01-01']],
    ['2026-03-10', '2026-03-11', undefined],
  ])('days [%s, %s) hold the months %j', (from, to, months) => {
    const m = wholeMonths(Date.parse(`${from}T00:00:00Z`), Date.parse(`${to}T00:00:00Z`));
    expect(m && [m.fromMs, m.toMs].map((ms) => new Date(ms).toISOString().slice(0, 10))).toEqual(months);
  });
});

describe('lifetime page keys', () => {
  // most recent last call first; b, c, d tied
  const keys = [
    { key: 'a', lastSeen: '2026-03-12 11:00:00.000000' },
    { key: 'b', lastSeen: '2026-03-12 10:00:00.000000' },
    { key: 'c', lastSeen: '2026-03-12 10:00:00.000000' },
    { key: 'd', lastSeen: '2026-03-12 10:00:00.000000' },
    { key: 'e', lastSeen: '2026-03-11 00:00:00.000000' },
  ];
  it.each([
    [{ limit: 1, offset: 0 }, ['a'], 0],
    [{ limit: 2, offset: 0 }, ['a', 'b', 'c', 'd'], 0],
    [{ limit: 1, offset: 2 }, ['b', 'c', 'd'], 1],
    [{ limit: 2, offset: 3 }, ['b', 'c', 'd', 'e'], 2],
    [{ limit: 10, offset: 4 }, ['e'], 0],
    [{ limit: 10, offset: 5 }, [], 5],
  ])('page %j: keys %j at offset %i among them', (page, expected, offset) => {
    const got = lifetimePageKeys(keys, page);
    expect(got.keys).toEqual(expected);
    expect(got.page).toEqual({ limit: page.limit, offset });
  });
});

describe('CSV', () => {
  it('quotes what needs quoting and defuses formulas, but not negative amounts', () => {
    expect(csvField('a,b')).toBe('"a,b"');
    expect(csvField('say "hi"')).toBe('"say ""hi"""');
    expect(csvField('=HYPERLINK("x")')).toBe('"\'=HYPERLINK(""x"")"');
    expect(csvField('@cmd')).toBe("'@cmd");
    // after what a spreadsheet trims, and the fullwidth forms
    expect(csvField(' =1+1')).toBe("' =1+1");
    expect(csvField('\uFEFF=1+1')).toBe("'\uFEFF=1+1");
    expect(csvField('\uFF1DSUM(A1)')).toBe("'\uFF1DSUM(A1)");
    expect(csvField('\tx')).toBe("'\tx");
    expect(csvField('a = b')).toBe('a = b');
    expect(csvField('-0.5')).toBe('-0.5');
    expect(csvField(null)).toBe('');
    expect(toCsv(['a', 'b'], [{ a: 1, b: 'x\ny' }])).toBe('a,b\r\n1,"x\ny"\r\n');
    expect(toCsv(['a'], [])).toBe('a\r\n');
  });
});

describe('SQL builders', () => {
  const MARK = "zz'mark";
  const f = { product: `${MARK}p`, customer: `${MARK}c`, agent: `${MARK}a`, tool: `${MARK}t` };
  const r = { fromMs: T0 + 5 * H, toMs: T0 + 3 * D + H };
  const page = { limit: 10, offset: 20 };
  const all: [string, Sql][] = [
    ['byTool', byToolSql(f, r, page, 'views')],
    ['byTool raw', byToolSql(f, r, page, 'raw')],
    ['byAgent day', byAgentSql(f, r, 'day', page, 'views')],
    ['byAgent hour', byAgentSql(f, r, 'hour', page, 'views')],
    ['byCustomer', byCustomerSql(f, r, page, 'views')],
    ['summary', summarySql(f, r, 'views')],
    ['sessionsLater', sessionsLaterSql(f, r)],
    ['sessionsCount daily', sessionsCountSql(f, r, 'daily')],
    ['sessionsCount lifetime', sessionsCountSql(f, r, 'lifetime')],
    ['sessionsCount raw', sessionsCountSql(f, r, 'raw')],
    ['sessionsList raw', sessionsListSql(f, r, page)],
    ['sessionsLifetimePage', sessionsLifetimePageSql(f, r, page)],
    [
      'sessionsSnapshotPage',
      sessionsSnapshotPageSql(f, r, page, { snapshot: `${MARK}n`, watermark: `${MARK}w` }),
    ],
    [
      'sessionsCount lifetime snapshot',
      sessionsCountSql(f, r, 'lifetime', { snapshot: `${MARK}n`, watermark: `${MARK}w` }),
    ],
    ['sessionTotalsByKey', sessionTotalsByKeySql(f, ['340282366920938463463374607431768211455'], page)],
    ['sessionsPage', sessionsPageSql(f, r, page)],
    ['sessionsPage latest rows', sessionsPageSql(f, r, page, 120)],
    ['sessionTotals', sessionTotalsSql(f, [{ customer: f.customer, sessionId: `${MARK}s` }])],
    ['sessionSummary', sessionSummarySql(f, `${MARK}s`, 'views')],
    ['sessionCalls', sessionCallsSql(f, `${MARK}s`, page)],
    ['enforcementCounts', enforcementCountsSql(f, r)],
    ['enforcementEvents', enforcementEventsSql(f, r, `${MARK}x`, page)],
    ['invoiceLines', invoiceLinesSql(f.product, f.customer, `${MARK}period`, r)],
    ['invoiceTotals', invoiceTotalsSql(f.product, f.customer, `${MARK}period`, r)],
  ];

  it.each(all)('%s: values only as query parameters, every placeholder bound', (_name, sql) => {
    expect(sql.query).not.toMatch(/zz.{0,3}mark/);
    expect(Object.values(sql.params).some((v) => String(v).includes(MARK))).toBe(true);
    for (const m of sql.query.matchAll(/\{(\w+):[^}]+\}/g)) expect(sql.params).toHaveProperty(m[1] as string);
  });

  it('reads a daily view for whole days and the raw table only for the partial ends', () => {
    const whole = byToolSql(f, { fromMs: T0, toMs: T0 + 2 * D }, page, 'views');
    expect(whole.query).toContain('FROM mcp_daily_stats');
    expect(whole.query).not.toContain('FROM mcp_tool_calls');
    expect(whole.readFrom).toEqual(['mcp_daily_stats']);
    const partial = byToolSql(f, r, page, 'views');
    expect(partial.query).toContain('FROM mcp_daily_stats');
    expect(partial.query).toContain('FROM mcp_tool_calls');
    expect(partial.readFrom).toEqual(['mcp_daily_stats', 'mcp_tool_calls']);
    expect(byToolSql(f, r, page, 'raw').query).not.toContain('mcp_daily_stats');
    expect(byToolSql(f, r, page, 'raw').readFrom).toEqual(['mcp_tool_calls']);
    expect(byAgentSql(f, { fromMs: T0, toMs: T0 + D }, 'hour', page, 'views').query).not.toContain(
      'mcp_daily_stats',
    );
  });

  it('picks the smallest daily view that keeps the grouping and the filtered columns', () => {
    const p = { product: 'p' };
    expect(dailyViewFor(p, ['tool'], true)).toBe('mcp_tool_daily_stats');
    expect(dailyViewFor({ ...p, tool: 't' }, ['tool'], true)).toBe('mcp_tool_daily_stats');
    expect(dailyViewFor({ ...p, customer: 'c' }, ['tool'], true)).toBe('mcp_daily_stats');
    expect(dailyViewFor({ ...p, agent: 'a' }, ['tool'], true)).toBe('mcp_daily_stats');
    expect(dailyViewFor(p, ['customer'])).toBe('mcp_customer_daily_stats');
    expect(dailyViewFor({ ...p, customer: 'c' }, ['customer'])).toBe('mcp_customer_daily_stats');
    expect(dailyViewFor({ ...p, tool: 't' }, ['customer'])).toBe('mcp_daily_stats');
    expect(dailyViewFor(p, ['day', 'agent'])).toBe('mcp_daily_stats');
    expect(dailyViewFor(p, [], true)).toBe('mcp_tool_daily_stats');
  });

  it('session queries: per-day views, the lifetime view or the raw table', () => {
    const p = { product: 'p' };
    const pageSql = sessionsPageSql(p, r, page);
    expect(pageSql.query).toContain('FROM mcp_session_daily');
    expect(pageSql.query).not.toContain('latest_rows');
    expect(sessionsPageSql(p, r, page, 120).params).toMatchObject({
      latest_rows: 120,
      limit: 10,
      offset: 20,
    });
    expect(sessionTotalsSql(p, [{ customer: 'c', sessionId: 's' }]).query).toContain(
      'FROM mcp_session_summary',
    );
    expect(sessionsLifetimePageSql(p, r, page).query).not.toContain('mcp_session_daily');
    expect(sessionsLifetimePageSql(p, r, page).params).toMatchObject({ top: 30 });
    expect(sessionsCountSql(p, r, 'lifetime').readFrom).toEqual(['mcp_session_summary']);
    expect(sessionsListSql({ ...p, tool: 't' }, r, page).query).not.toContain('mcp_session');
    // a range starting inside a day: that day from mcp_session_daily, the next ones from their session sets
    const inside = sessionsCountSql(p, r, 'daily');
    expect(inside.readFrom).toEqual(['mcp_customer_daily_stats', 'mcp_session_daily']);
    expect(inside.params).toMatchObject({
      from_day: '2026-03-10',
      next_day: '2026-03-11',
      last_day: '2026-03-13',
    });
    const midnight = sessionsCountSql(p, { fromMs: T0, toMs: T0 + 2 * D }, 'daily');
    expect(midnight.readFrom).toEqual(['mcp_customer_daily_stats']);
    expect(midnight.params).toMatchObject({ from_day: '2026-03-10', last_day: '2026-03-11' });
    // whole calendar months from their monthly session sets, the days around them from the per-day sets
    const month = sessionsCountSql(p, { fromMs: Date.UTC(2026, 2, 1), toMs: Date.UTC(2026, 3, 1) }, 'daily');
    expect(month.readFrom).toEqual(['mcp_customer_monthly_sessions']);
    expect(month.params).toMatchObject({ month_from: '2026-03-01', month_to: '2026-04-01' });
    const around = sessionsCountSql(
      p,
      { fromMs: Date.UTC(2026, 1, 20, 6), toMs: Date.UTC(2026, 4, 3, 12) },
      'daily',
    );
    expect(around.readFrom).toEqual([
      'mcp_customer_monthly_sessions',
      'mcp_customer_daily_stats',
      'mcp_session_daily',
    ]);
    expect(around.params).toMatchObject({
      from_day: '2026-02-20',
      next_day: '2026-02-21',
      last_day: '2026-05-03',
      month_from: '2026-03-01',
      month_to: '2026-05-01',
    });
    expect(around.query).toContain('(day < {month_from:Date} OR day >= {month_to:Date})');
  });
});
