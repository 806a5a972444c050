import { TupleParam } from '@clickhouse/client';
import {
  chDay,
  chInstant,
  DAY_MS,
  type RangeSplit,
  splitByDay,
  type TimeRange,
  wholeMonths,
} from './range.js';

/**
 * SQL of the analytics and billing routes, as pure functions. Every value a caller supplies travels as a
 * server-side query parameter (`{name:Type}` + `query_params`); the SQL text is assembled only from the
 * fixed fragments below, chosen by which filters are present — never from request text.
 */
export interface Sql {
  query: string;
  params: Record<string, string | number | bigint[] | string[] | TupleParam[]>;
}

export interface Filters {
  product: string;
  customer?: string | undefined;
  agent?: string | undefined;
  tool?: string | undefined;
}

export interface Page {
  limit: number;
  offset: number;
}

export type Source = 'views' | 'raw';

const DT = "DateTime64(3, 'UTC')";

function filterParams(f: Filters): Record<string, string> {
  const p: Record<string, string> = { product: f.product };
  if (f.customer !== undefined) p.customer = f.customer;
  if (f.agent !== undefined) p.agent = f.agent;
  if (f.tool !== undefined) p.tool = f.tool;
  return p;
}

/** `product = … AND customer = …` for the filters present, on tables that have those columns. */
function filterConds(f: Filters, columns: ReadonlyArray<'customer' | 'agent' | 'tool'>): string[] {
  const conds = ['product = {product:String}'];
  if (f.customer !== undefined && columns.includes('customer')) conds.push('customer = {customer:String}');
  if (f.agent !== undefined && columns.includes('agent')) conds.push('agent = {agent:String}');
  if (f.tool !== undefined && columns.includes('tool')) conds.push('tool = {tool:String}');
  return conds;
}

const ALL_DIMS = ['customer', 'agent', 'tool'] as const;

export type Dim = 'customer' | 'agent' | 'tool' | 'day' | 'hour';

const DIM_VIEW: Record<Dim, string | undefined> = {
  customer: 'customer',
  agent: 'agent',
  tool: 'tool',
  day: 'day',
  hour: undefined,
};
const DIM_RAW: Record<Dim, string> = {
  customer: 'customer',
  agent: 'agent',
  tool: 'tool',
  day: 'toDate(started_at) AS day',
  hour: 'toStartOfHour(started_at) AS hour',
};

const VIEW_MEASURES = `sum(calls) AS calls, sum(errors) AS errors, sum(billed_calls) AS billed_calls,
    sum(free_calls) AS free_calls, sum(toInt128(revenue_nano)) AS revenue_nano, sum(toInt128(cost_nano)) AS cost_nano,
    sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, sum(duration_us_sum) AS duration_us_sum`;
const RAW_MEASURES = `count() AS calls, countIf(status = 'error') AS errors, countIf(price_nano > 0) AS billed_calls,
    countIf(decision = 'free') AS free_calls, sum(toInt128(price_nano)) AS revenue_nano, sum(toInt128(cost_nano)) AS cost_nano,
    sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, sum(duration_us) AS duration_us_sum`;
const VIEW_QUANTILES = ', quantilesTDigestMergeState(0.5, 0.95)(duration_quantiles) AS duration_quantiles';
const RAW_QUANTILES = ', quantilesTDigestState(0.5, 0.95)(duration_us) AS duration_quantiles';

/** Outer measures over the union of view and raw parts. */
const MERGED_MEASURES = `sum(calls) AS calls, sum(errors) AS errors, sum(billed_calls) AS billed_calls,
    sum(free_calls) AS free_calls, sum(toInt128(revenue_nano)) AS revenue_nano, sum(toInt128(cost_nano)) AS cost_nano,
    sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, sum(duration_us_sum) AS duration_us_sum`;
const MERGED_QUANTILES = ', quantilesTDigestMerge(0.5, 0.95)(duration_quantiles) AS duration_p50_p95';

/** A query and the tables it reads (reported to callers as `readFrom`). */
export interface Read extends Sql {
  readFrom: string[];
}

/**
 * The daily views, smallest first, with the dimensions each keeps. All have the same call measures; the
 * duration digest is in the two that keep tools. mcp_customer_daily_stats also holds the per-day session sets
 * (see sessionsCountSql).
 */
const DAILY_VIEWS: readonly { table: string; dims: readonly Dim[]; quantiles: boolean }[] = [
  { table: 'mcp_tool_daily_stats', dims: ['day', 'tool'], quantiles: true },
  { table: 'mcp_customer_daily_stats', dims: ['day', 'customer'], quantiles: false },
  { table: 'mcp_daily_stats', dims: ['day', 'customer', 'agent', 'tool'], quantiles: true },
];

/** The smallest daily view that keeps the grouping dimensions and every filtered column. */
export function dailyViewFor(f: Filters, dims: readonly Dim[], quantiles = false): string {
  const needed = [...dims, ...ALL_DIMS.filter((d) => f[d] !== undefined)];
  const view = DAILY_VIEWS.find(
    (v) => (!quantiles || v.quantiles) && needed.every((d) => v.dims.includes(d)),
  );
  return view?.table ?? 'mcp_daily_stats';
}

/** Whether the session queries read the raw table (an agent or tool filter: the session views have neither). */
export function sessionsFromRaw(source: Source, f: Filters): boolean {
  return source === 'raw' || f.tool !== undefined || f.agent !== undefined;
}

/**
 * Per-call measures grouped by `dims` over a time range, as a union of
 * - the smallest daily view that has `dims` and the filtered columns (see dailyViewFor) for the whole UTC
 *   days inside the range, and
 * - `mcp_tool_calls` (raw) for the partial days at its ends — or for everything when `source` is `raw`
 *   or the grouping needs hours (the views have no hour).
 * Each part is pre-aggregated by `dims`; the caller merges them with MERGED_MEASURES.
 */
export function dailyParts(
  f: Filters,
  range: TimeRange,
  dims: readonly Dim[],
  opts: { source: Source; quantiles?: boolean },
): Read {
  const rawOnly = opts.source === 'raw' || dims.includes('hour');
  const split: RangeSplit = rawOnly
    ? { wholeFromMs: range.fromMs, wholeToMs: range.fromMs, hasWholeDays: false, hasPartialDays: true }
    : splitByDay(range);
  const view = dailyViewFor(f, dims, opts.quantiles);
  const params: Record<string, string | number> = {
    ...filterParams(f),
    from: chInstant(range.fromMs),
    to: chInstant(range.toMs),
    whole_from: chInstant(split.wholeFromMs),
    whole_to: chInstant(split.wholeToMs),
    whole_from_day: chDay(split.wholeFromMs),
    whole_to_day: chDay(split.wholeToMs),
  };
  const parts: string[] = [];
  if (split.hasWholeDays) {
    const cols = dims.map((d) => DIM_VIEW[d] as string);
    parts.push(`SELECT ${[...cols, VIEW_MEASURES].join(', ')}${opts.quantiles ? VIEW_QUANTILES : ''}
  FROM ${view}
  WHERE ${[...filterConds(f, ALL_DIMS), 'day >= {whole_from_day:Date}', 'day < {whole_to_day:Date}'].join(' AND ')}
  ${cols.length ? `GROUP BY ${dims.join(', ')}` : ''}`);
  }
  if (split.hasPartialDays) {
    const timeConds = [`started_at >= {from:${DT}}`, `started_at < {to:${DT}}`];
    if (split.hasWholeDays)
      timeConds.push(`(started_at < {whole_from:${DT}} OR started_at >= {whole_to:${DT}})`);
    parts.push(`SELECT ${[...dims.map((d) => DIM_RAW[d]), RAW_MEASURES].join(', ')}${opts.quantiles ? RAW_QUANTILES : ''}
  FROM mcp_tool_calls
  WHERE ${[...filterConds(f, ALL_DIMS), ...timeConds].join(' AND ')}
  ${dims.length ? `GROUP BY ${dims.join(', ')}` : ''}`);
  }
  return {
    query: parts.join('\nUNION ALL\n'),
    params,
    readFrom: [...(split.hasWholeDays ? [view] : []), ...(split.hasPartialDays ? ['mcp_tool_calls'] : [])],
  };
}

function paged<T extends Sql>(sql: T, page: Page): T {
  return {
    ...sql,
    query: `${sql.query}\nLIMIT {limit:UInt32} OFFSET {offset:UInt32}`,
    params: { ...sql.params, limit: page.limit, offset: page.offset },
  };
}

/** Per tool: calls, errors, revenue, cost, tokens, p50/p95 duration. Most revenue first. */
export function byToolSql(f: Filters, range: TimeRange, page: Page, source: Source): Read {
  const inner = dailyParts(f, range, ['tool'], { source, quantiles: true });
  return paged(
    {
      readFrom: inner.readFrom,
      query: `SELECT tool, ${MERGED_MEASURES}${MERGED_QUANTILES}, count() OVER () AS total_rows
FROM (${inner.query})
GROUP BY tool
ORDER BY revenue_nano DESC, tool ASC`,
      params: inner.params,
    },
    page,
  );
}

/**
 * Per tool and usage line: calls that reported it, quantity (micro-units), revenue and cost over the range:
 * `mcp_usage_daily_stats` for the whole days, the raw rows (ARRAY JOIN) for the partial days at the ends or
 * for everything when `source` is `raw`. For the tools of one page of byToolSql (`tools`).
 */
export function usageByToolSql(f: Filters, range: TimeRange, source: Source, tools: readonly string[]): Read {
  const split: RangeSplit =
    source === 'raw'
      ? { wholeFromMs: range.fromMs, wholeToMs: range.fromMs, hasWholeDays: false, hasPartialDays: true }
      : splitByDay(range);
  const params: Record<string, string | number | string[]> = {
    ...filterParams(f),
    tools: [...tools],
    from: chInstant(range.fromMs),
    to: chInstant(range.toMs),
    whole_from: chInstant(split.wholeFromMs),
    whole_to: chInstant(split.wholeToMs),
    whole_from_day: chDay(split.wholeFromMs),
    whole_to_day: chDay(split.wholeToMs),
  };
  const conds = [...filterConds(f, ALL_DIMS), 'tool IN {tools:Array(String)}'];
  const parts: string[] = [];
  if (split.hasWholeDays)
    parts.push(`SELECT tool, line, sum(calls) AS calls, sum(quantity_micro) AS quantity_micro,
    sum(toInt128(price_nano)) AS price_nano, sum(toInt128(cost_nano)) AS cost_nano
  FROM mcp_usage_daily_stats
  WHERE ${[...conds, 'day >= {whole_from_day:Date}', 'day < {whole_to_day:Date}'].join(' AND ')}
  GROUP BY tool, line`);
  if (split.hasPartialDays) {
    const timeConds = [`started_at >= {from:${DT}}`, `started_at < {to:${DT}}`];
    if (split.hasWholeDays)
      timeConds.push(`(started_at < {whole_from:${DT}} OR started_at >= {whole_to:${DT}})`);
    // a line priced in graduated tiers has a piece per tier a call's units fall in: a call counts once
    parts.push(`SELECT tool, u_line AS line, toUInt64(countIf(u_nth = 1)) AS calls, sum(u_quantity) AS quantity_micro,
    sum(toInt128(u_price)) AS price_nano, sum(toInt128(u_cost)) AS cost_nano
  FROM mcp_tool_calls
  ARRAY JOIN usage_lines AS u_line, usage_quantity_micro AS u_quantity, usage_price_nano AS u_price,
    usage_cost_nano AS u_cost, arrayEnumerateUniq(usage_lines) AS u_nth
  WHERE ${[...conds, ...timeConds].join(' AND ')}
  GROUP BY tool, line`);
  }
  return {
    readFrom: [
      ...(split.hasWholeDays ? ['mcp_usage_daily_stats'] : []),
      ...(split.hasPartialDays ? ['mcp_tool_calls'] : []),
    ],
    query: `SELECT tool, line, sum(calls) AS calls, sum(quantity_micro) AS quantity_micro,
    sum(toInt128(price_nano)) AS price_nano, sum(toInt128(cost_nano)) AS cost_nano
FROM (${parts.join('\nUNION ALL\n')})
GROUP BY tool, line
ORDER BY tool ASC, line ASC`,
    params,
  };
}

/** Per time bucket and agent: calls, revenue, cost. Oldest bucket first. */
export function byAgentSql(
  f: Filters,
  range: TimeRange,
  bucket: 'day' | 'hour',
  page: Page,
  source: Source,
): Read {
  const inner = dailyParts(f, range, [bucket, 'agent'], { source });
  return paged(
    {
      readFrom: inner.readFrom,
      query: `SELECT toString(${bucket}) AS bucket, agent, ${MERGED_MEASURES}, count() OVER () AS total_rows
FROM (${inner.query})
GROUP BY ${bucket}, agent
ORDER BY ${bucket} ASC, agent ASC`,
      params: inner.params,
    },
    page,
  );
}

/** Per customer: calls, revenue, cost (margin health). Most revenue first. */
export function byCustomerSql(f: Filters, range: TimeRange, page: Page, source: Source): Read {
  const inner = dailyParts(f, range, ['customer'], { source });
  return paged(
    {
      readFrom: inner.readFrom,
      query: `SELECT customer, ${MERGED_MEASURES}, count() OVER () AS total_rows
FROM (${inner.query})
GROUP BY customer
ORDER BY revenue_nano DESC, customer ASC`,
      params: inner.params,
    },
    page,
  );
}

/** Totals of the range, and the number of customers with calls in it. */
export function summarySql(f: Filters, range: TimeRange, source: Source): Read {
  const inner = dailyParts(f, range, ['customer'], { source });
  return {
    readFrom: inner.readFrom,
    query: `SELECT ${MERGED_MEASURES}, uniqExact(customer) AS customers
FROM (${inner.query})`,
    params: inner.params,
  };
}

/**
 * Where the session queries read:
 * - `raw`: `mcp_tool_calls`, with an agent or tool filter (over that agent's or tool's calls) or source raw;
 * - `daily`: the per-day views, when no session has a call at or after the range's end (sessionsLaterSql
 *   finds none) — the usual case, since the default range is the current billing period;
 * - `lifetime`: `mcp_session_summary` otherwise.
 *
 * A session (customer + session id, calls without one excluded) is active in the range when it was first
 * seen before its end and last seen at or after its start, over all its calls; a listed session shows the
 * totals of all its calls. Without calls at or after the end, every session's calls are before the end, so
 * the active sessions are exactly those with a call at or after the start: a read of the range's days. With
 * such calls, a session may have calls before and after the range and none in it, and only its whole life
 * tells: hence `lifetime`, which reads every session of the tenant (or customer).
 */
export type SessionsFrom = 'raw' | 'daily' | 'lifetime';

/** One row when a session in scope has a call at or after the range's end (then `lifetime`, not `daily`). */
export function sessionsLaterSql(f: Filters, range: TimeRange): Sql {
  return {
    query: `SELECT 1 AS later FROM mcp_session_daily
  WHERE ${[...filterConds(f, ['customer']), "session_id != ''", 'day >= {to_day:Date}', `last_seen >= {to:${DT}}`].join(' AND ')}
  LIMIT 1`,
    params: { ...filterParams(f), to: chInstant(range.toMs), to_day: chDay(range.toMs) },
  };
}

/**
 * The latest finished snapshot of session intervals (collector-processor/src/storage/session-intervals.ts), asked
 * on the lifetime path only (asked in the later-calls check's query instead, it cost every daily-path request
 * 2–4 ms). A snapshot started more than a day ago is not used: with the job stopped, every session landed since
 * would be grouped on top of reading the snapshot, more work than grouping them all.
 */
export function sessionSnapshotSql(): Sql {
  return {
    query: `SELECT toString(snapshot) AS snapshot, toString(watermark) AS watermark
  FROM mcp_session_interval_snapshots
  WHERE done = 1 AND started_at >= now64(3, 'UTC') - INTERVAL 1 DAY
  ORDER BY started_at DESC, snapshot DESC LIMIT 1`,
    params: {},
  };
}

/** The days of a range for the daily session queries: the first (maybe partial) and the last it touches. */
function sessionDays(range: TimeRange) {
  return {
    fromIsMidnight: range.fromMs % DAY_MS === 0,
    params: {
      from: chInstant(range.fromMs),
      from_day: chDay(range.fromMs),
      last_day: chDay(range.toMs - 1),
    },
  };
}

/**
 * The number of sessions active in the range. `daily`: the sessions with a call at or after the start (see
 * SessionsFrom), as the union of per-customer session sets — summed per customer, since a session belongs to
 * one customer: the monthly sets of mcp_customer_monthly_sessions for the whole calendar months of the range,
 * the per-day sets of mcp_customer_daily_stats for its other whole days, and, when the range starts inside a
 * day, that day's sessions last seen at or after the start (from mcp_session_daily). `lifetime`: the sessions
 * whose first and last call bracket the range (lifetimeActive: from the session-interval snapshot when given).
 */
export function sessionsCountSql(
  f: Filters,
  range: TimeRange,
  from: SessionsFrom,
  snap?: SessionSnapshot,
): Read {
  if (from === 'raw') {
    const inner = sessionsInner(f, range);
    return { ...inner, query: `SELECT count() AS sessions FROM (${inner.query})` };
  }
  if (from === 'lifetime') {
    return {
      query: `SELECT count() AS sessions FROM (${lifetimeActive(f, snap)})`,
      ...lifetimeParams(f, range, snap),
    };
  }
  const days = sessionDays(range);
  const scope = filterConds(f, ['customer']);
  // the whole days of the range: from its first midnight (its start when at midnight) to the end of its last day
  const firstDayMs = Math.ceil(range.fromMs / DAY_MS) * DAY_MS;
  const endDayMs = Math.floor((range.toMs - 1) / DAY_MS) * DAY_MS + DAY_MS;
  const months = wholeMonths(firstDayMs, endDayMs);
  const firstDay = `day >= {${days.fromIsMidnight ? 'from_day' : 'next_day'}:Date}`;
  const parts: string[] = [];
  const readFrom: string[] = [];
  const params: Record<string, string | number> = { ...filterParams(f), ...days.params };
  if (!days.fromIsMidnight) params.next_day = chDay(range.fromMs + DAY_MS);
  if (months) {
    params.month_from = chDay(months.fromMs);
    params.month_to = chDay(months.toMs);
    parts.push(`SELECT customer, sessions AS s FROM mcp_customer_monthly_sessions
    WHERE ${[...scope, 'month >= {month_from:Date}', 'month < {month_to:Date}'].join(' AND ')}`);
    readFrom.push('mcp_customer_monthly_sessions');
  }
  const daysOutsideMonths = months ? firstDayMs < months.fromMs || months.toMs < endDayMs : true;
  if (daysOutsideMonths) {
    const outside = months ? ['(day < {month_from:Date} OR day >= {month_to:Date})'] : [];
    parts.push(`SELECT customer, sessions AS s FROM mcp_customer_daily_stats
    WHERE ${[...scope, firstDay, 'day <= {last_day:Date}', ...outside].join(' AND ')}`);
    readFrom.push('mcp_customer_daily_stats');
  }
  if (!days.fromIsMidnight) {
    parts.push(`SELECT customer, uniqExactState(customer, session_id) AS s FROM mcp_session_daily
    WHERE ${[...scope, "session_id != ''", 'day = {from_day:Date}', `last_seen >= {from:${DT}}`].join(' AND ')}
    GROUP BY customer`);
    readFrom.push('mcp_session_daily');
  }
  return {
    query: `SELECT sum(n) AS sessions FROM (
  SELECT customer, uniqExactMerge(s) AS n FROM (
    ${parts.join('\n    UNION ALL\n    ')}
  ) GROUP BY customer
)`,
    params,
    readFrom,
  };
}

const SESSION_TOTALS = `max(agent) AS session_agent, max(transport) AS session_transport, max(session_rule) AS rule,
    min(first_seen) AS first_seen_at, max(last_seen) AS last_seen_at, sum(calls) AS calls,
    sum(errors) AS errors, sum(toInt128(revenue_nano)) AS revenue_nano, sum(toInt128(cost_nano)) AS cost_nano`;

function sessionsInner(f: Filters, range: TimeRange): Read {
  return {
    query: `SELECT customer, session_id, max(agent) AS session_agent, max(transport) AS session_transport,
    max(session_rule) AS rule,
    min(started_at) AS first_seen_at, max(started_at) AS last_seen_at, count() AS calls,
    countIf(status = 'error') AS errors, sum(toInt128(price_nano)) AS revenue_nano, sum(toInt128(cost_nano)) AS cost_nano
  FROM mcp_tool_calls
  WHERE ${[...filterConds(f, ALL_DIMS), "session_id != ''"].join(' AND ')}
  GROUP BY customer, session_id
  HAVING first_seen_at < {to:${DT}} AND last_seen_at >= {from:${DT}}`,
    params: { ...filterParams(f), from: chInstant(range.fromMs), to: chInstant(range.toMs) },
    readFrom: ['mcp_tool_calls'],
  };
}

/**
 * Sessions active in the range over the raw table (an agent or tool filter, or source raw), most recently
 * active first, with the totals of their calls and the number of sessions in `total_rows`. The views' paths
 * are sessionsPageSql (daily) and sessionsLifetimePageSql (lifetime), then the totals of the page by key.
 */
export function sessionsListSql(f: Filters, range: TimeRange, page: Page): Read {
  const inner = sessionsInner(f, range);
  return paged(
    {
      ...inner,
      query: `SELECT *, count() OVER () AS total_rows FROM (${inner.query})
ORDER BY last_seen_at DESC, customer ASC, session_id ASC`,
    },
    page,
  );
}

/** The latest finished snapshot of session intervals (migration 0016), when one has been built. */
export interface SessionSnapshot {
  /** Decimal UInt64. */
  snapshot: string;
  /** Summary rows landed at or after this instant may be missing from the snapshot: their sessions are grouped again (DateTime64(3) text, UTC). */
  watermark: string;
}

/**
 * The sessions active in the range ({from}, {to}) with their first and last call, one row each by session_key
 * (a 16-byte hash of customer and session id, migration 0012), reading only the key and the first and last
 * call — the columns the question needs.
 *
 * Without a snapshot: every row of mcp_session_summary grouped by key (a session's rows from different inserts
 * stay apart until a merge). With one (migration 0016): the snapshot's merged intervals, filtered without
 * grouping, for the sessions with no summary row landed since its watermark; and, for those that have one
 * (the few touched since), their snapshot row grouped with those summary rows. A first or last call is a min
 * or a max, so rows counted in both give the same interval: the answer is the one without a snapshot.
 */
function lifetimeActive(f: Filters, snap?: SessionSnapshot): string {
  if (!snap) {
    return `SELECT session_key, min(first_seen) AS first_seen_at, max(last_seen) AS last_seen_at
  FROM mcp_session_summary
  WHERE ${[...filterConds(f, ['customer']), 'session_key != 0'].join(' AND ')}
  GROUP BY session_key
  HAVING first_seen_at < {to:${DT}} AND last_seen_at >= {from:${DT}}`;
  }
  return snapshotActive(f, false);
}

/**
 * lifetimeActive from a snapshot (see there). `totals`: also each session's customer, session id and totals
 * under the names of SESSION_TOTALS — from the snapshot for a session with no summary row landed since its
 * watermark (all its rows were read by the build, each once: exact), left at zero with `touched = 1` for the
 * others (their totals must be read from mcp_session_summary: sums, unlike a first or last call, would count
 * rows in both the snapshot and the summary twice).
 */
function snapshotActive(f: Filters, totals: boolean): string {
  const scope = filterConds(f, ['customer']);
  const since = [...scope, 'session_key != 0', `landed_at >= {watermark:${DT}}`].join(' AND ');
  const names = totals ? 'customer, session_id, ' : '';
  const touched = `SELECT session_key FROM mcp_session_summary WHERE ${since}`;
  const snapshot = [...scope, 'snapshot = {snapshot:UInt64}'];
  const asIs = totals
    ? `, 0 AS touched, agent AS session_agent, transport AS session_transport, session_rule AS rule, calls,
    errors, revenue_nano, cost_nano`
    : '';
  const grouped = totals
    ? `any(customer) AS customer, any(session_id) AS session_id, session_key, min(first_seen) AS first_seen_at,
    max(last_seen) AS last_seen_at, 1 AS touched, '' AS session_agent, '' AS session_transport, '' AS rule,
    0 AS calls, 0 AS errors, 0 AS revenue_nano, 0 AS cost_nano`
    : 'session_key, min(first_seen) AS first_seen_at, max(last_seen) AS last_seen_at';
  return `SELECT ${names}session_key, first_seen AS first_seen_at, last_seen AS last_seen_at${asIs}
  FROM mcp_session_intervals
  WHERE ${[...snapshot, `first_seen < {to:${DT}}`, `last_seen >= {from:${DT}}`, `session_key NOT IN (${touched})`].join(' AND ')}
  UNION ALL
  SELECT ${grouped} FROM (
    SELECT ${names}session_key, first_seen, last_seen FROM mcp_session_summary WHERE ${since}
    UNION ALL
    SELECT ${names}session_key, first_seen, last_seen FROM mcp_session_intervals
      WHERE ${[...snapshot, `session_key IN (${touched})`].join(' AND ')}
  )
  GROUP BY session_key
  HAVING first_seen_at < {to:${DT}} AND last_seen_at >= {from:${DT}}`;
}

/**
 * The lifetime path's page from a snapshot, in one query: the sessions on the page in the page's order, with
 * their totals (`touched = 1`: totals still to be read by key, see snapshotActive) and the number of active
 * sessions in `total_rows`.
 */
export function sessionsSnapshotPageSql(
  f: Filters,
  range: TimeRange,
  page: Page,
  snap: SessionSnapshot,
): Read {
  const { params, readFrom } = lifetimeParams(f, range, snap);
  return paged(
    {
      query: `SELECT customer, session_id, toString(session_key) AS session_key, touched, session_agent,
    session_transport, rule, first_seen_at, last_seen_at, calls, errors, revenue_nano, cost_nano,
    count() OVER () AS total_rows
  FROM (${snapshotActive(f, true)})
ORDER BY last_seen_at DESC, customer ASC, session_id ASC`,
      params,
      readFrom,
    },
    page,
  );
}

/** Parameters and tables of lifetimeActive. */
function lifetimeParams(f: Filters, range: TimeRange, snap?: SessionSnapshot) {
  return {
    params: {
      ...filterParams(f),
      from: chInstant(range.fromMs),
      to: chInstant(range.toMs),
      ...(snap ? { snapshot: snap.snapshot, watermark: snap.watermark } : {}),
    },
    readFrom: snap ? ['mcp_session_summary', 'mcp_session_intervals'] : ['mcp_session_summary'],
  };
}

/**
 * The lifetime path's first step without a snapshot (see SessionsFrom): the keys of the active sessions that can be on the page —
 * the latest `offset + limit` by last call, with every session tied with the last of them (the page's order
 * breaks ties by customer and session id, which the keys do not carry) — and the number of active sessions in
 * `total_rows`. sessionTotalsByKeySql then reads those sessions' totals and cuts the exact page.
 */
export function sessionsLifetimePageSql(f: Filters, range: TimeRange, page: Page): Read {
  const { params, readFrom } = lifetimeParams(f, range);
  return {
    query: `SELECT toString(session_key) AS session_key, toString(last_seen_at) AS last_seen,
    count() OVER () AS total_rows
  FROM (${lifetimeActive(f)})
ORDER BY last_seen_at DESC
LIMIT {top:UInt32} WITH TIES`,
    params: { ...params, top: page.offset + page.limit },
    readFrom,
  };
}

/**
 * Of the keys sessionsLifetimePageSql returned (most recent last call first), those the page can hold: the
 * sessions whose last call is between those at the page's first and last positions, ties at both edges
 * included (their order is decided by customer and session id, which the keys do not carry), and the page's
 * offset among them (the sessions with a later last call come before it). `lastSeen` compares as text
 * (ClickHouse's fixed-width DateTime64 text).
 */
export function lifetimePageKeys(
  keys: readonly { key: string; lastSeen: string }[],
  page: Page,
): { keys: string[]; page: Page } {
  const first = keys[page.offset];
  const last = keys[Math.min(page.offset + page.limit, keys.length) - 1];
  if (!first || !last) return { keys: [], page };
  const before = keys.filter((k) => k.lastSeen > first.lastSeen).length;
  return {
    keys: keys.filter((k) => k.lastSeen <= first.lastSeen && k.lastSeen >= last.lastSeen).map((k) => k.key),
    page: { limit: page.limit, offset: page.offset - before },
  };
}

/** The page of the given sessions (by session_key) with the totals of all their calls, most recent first. */
export function sessionTotalsByKeySql(f: Filters, keys: readonly string[], page: Page): Read {
  return paged(
    {
      query: `SELECT customer, session_id, ${SESSION_TOTALS}
  FROM mcp_session_summary
  WHERE ${[...filterConds(f, ['customer']), 'session_key IN {keys:Array(UInt128)}'].join(' AND ')}
  GROUP BY customer, session_id
  ORDER BY last_seen_at DESC, customer ASC, session_id ASC`,
      params: { ...filterParams(f), keys: keys.map((k) => BigInt(k)) },
      readFrom: ['mcp_session_summary'],
    },
    page,
  );
}

/**
 * The page of active sessions (customer, session id), most recently active first, from mcp_session_daily:
 * each session once, at its latest row, which holds its last call (see SessionsFrom).
 *
 * `latestRows`: look only at the rows at least as recent as the latest `latestRows` ones (a top-N read of one
 * column instead of sorting every row). Those rows are a prefix of all the rows in that order, and a session
 * kept at its first row in that order comes in the order of its last call; so when the page comes back full,
 * or with every session after the offset (compare with sessionsCountSql), it is the exact page. When it comes
 * back short, some sessions had several of those rows: ask again without `latestRows`.
 */
export function sessionsPageSql(f: Filters, range: TimeRange, page: Page, latestRows?: number): Read {
  const where = [
    ...filterConds(f, ['customer']),
    "session_id != ''",
    'day >= {from_day:Date}',
    'day <= {last_day:Date}',
    `last_seen >= {from:${DT}}`,
  ].join(' AND ');
  const recent =
    latestRows === undefined
      ? ''
      : `\n    AND last_seen >= (SELECT last_seen FROM (SELECT last_seen FROM mcp_session_daily WHERE ${where}
      ORDER BY last_seen DESC LIMIT {latest_rows:UInt32}) ORDER BY last_seen ASC LIMIT 1)`;
  return paged(
    {
      query: `SELECT customer, session_id FROM mcp_session_daily
  WHERE ${where}${recent}
  ORDER BY last_seen DESC, customer ASC, session_id ASC
  LIMIT 1 BY customer, session_id`,
      params: {
        ...filterParams(f),
        ...sessionDays(range).params,
        ...(latestRows === undefined ? {} : { latest_rows: latestRows }),
      },
      readFrom: ['mcp_session_daily'],
    },
    page,
  );
}

/** The totals of all the calls of the given sessions (a page), by key from mcp_session_summary. */
export function sessionTotalsSql(f: Filters, keys: readonly { customer: string; sessionId: string }[]): Read {
  return {
    query: `SELECT customer, session_id, ${SESSION_TOTALS}
  FROM mcp_session_summary
  WHERE ${[...filterConds(f, ['customer']), '(customer, session_id) IN {keys:Array(Tuple(String, String))}'].join(' AND ')}
  GROUP BY customer, session_id
  ORDER BY last_seen_at DESC, customer ASC, session_id ASC`,
    params: { ...filterParams(f), keys: keys.map((k) => new TupleParam([k.customer, k.sessionId])) },
    readFrom: ['mcp_session_summary'],
  };
}

/** One session's totals per customer (a session id is the client's: two customers may share one). */
export function sessionSummarySql(f: Filters, sessionId: string, source: Source): Sql {
  const params = { ...filterParams(f), session: sessionId };
  const conds = [...filterConds(f, ['customer']), 'session_id = {session:String}'].join(' AND ');
  if (source === 'raw') {
    return {
      query: `SELECT customer, max(agent) AS session_agent, max(transport) AS session_transport,
    max(session_rule) AS rule,
    min(started_at) AS first_seen_at, max(started_at) AS last_seen_at, count() AS calls,
    countIf(status = 'error') AS errors, sum(toInt128(price_nano)) AS revenue_nano, sum(toInt128(cost_nano)) AS cost_nano
  FROM mcp_tool_calls WHERE ${conds} GROUP BY customer ORDER BY customer`,
      params,
    };
  }
  return {
    query: `SELECT customer, ${SESSION_TOTALS}
  FROM mcp_session_summary WHERE ${conds} GROUP BY customer ORDER BY customer`,
    params,
  };
}

/** One session's calls in the order they started (the raw table: prices, decisions, trace ids). */
export function sessionCallsSql(f: Filters, sessionId: string, page: Page): Sql {
  return paged(
    {
      query: `SELECT toString(started_at) AS started, customer, agent, tool, status, error_type, decision, tier,
    duration_us, input_tokens, output_tokens, price_nano, price_call_nano, price_input_nano, price_output_nano,
    price_duration_nano, arraySum(usage_price_nano) AS price_usage_nano, cost_nano, trace_id, span_id, event_id, plan_id, plan_version, transport,
    count() OVER () AS total_rows
  FROM mcp_tool_calls
  WHERE ${[...filterConds(f, ['customer']), 'session_id = {session:String}'].join(' AND ')}
  ORDER BY started_at ASC, customer ASC, span_id ASC`,
      params: { ...filterParams(f), session: sessionId },
    },
    page,
  );
}

export const ENFORCEMENT_ACTIONS = [
  'warn',
  'throttle',
  'kill',
  'resume',
  'lift',
  // prepaid credits: operator actions on wallets, and refused attempts (docs/enforcement.md#prepaid-credits)
  'credit_grant',
  'credit_top_up',
  'credit_adjustment',
  'credit_replayed',
  'credit_refused',
] as const;

/** Enforcement state changes and operator actions in the range, by action. */
export function enforcementCountsSql(f: Filters, range: TimeRange): Sql {
  return {
    query: `SELECT countIf(action = 'kill') AS kills, countIf(action = 'throttle') AS throttles,
    countIf(action = 'warn') AS warns, countIf(action IN ('resume', 'lift')) AS resumes
  FROM enforcement_events
  WHERE ${[...filterConds(f, ['customer']), `at >= {from:${DT}}`, `at < {to:${DT}}`].join(' AND ')}`,
    params: { ...filterParams(f), from: chInstant(range.fromMs), to: chInstant(range.toMs) },
  };
}

/**
 * Enforcement events in the range, newest first, in a total order: several events share a millisecond
 * (concurrent credit actions, one export's kills), so every column breaks ties — pages never overlap, and
 * rows that tie on all of them are the same row to the reader.
 */
export function enforcementEventsSql(
  f: Filters,
  range: TimeRange,
  action: string | undefined,
  page: Page,
): Sql {
  const conds = [...filterConds(f, ['customer']), `at >= {from:${DT}}`, `at < {to:${DT}}`];
  const params: Record<string, string | number> = {
    ...filterParams(f),
    from: chInstant(range.fromMs),
    to: chInstant(range.toMs),
  };
  if (action !== undefined) {
    conds.push('action = {action:String}');
    params.action = action;
  }
  return paged(
    {
      query: `SELECT toString(at) AS at_text, customer, scope, subject_id, action, reason, margin_bps, spend_nano, actor, note,
    count() OVER () AS total_rows
  FROM enforcement_events
  WHERE ${conds.join(' AND ')}
  ORDER BY at DESC, customer ASC, scope ASC, subject_id ASC, action ASC, reason ASC, margin_bps ASC,
    spend_nano ASC, actor ASC, note ASC`,
      params,
    },
    page,
  );
}

/**
 * Invoice lines of a customer's period from the raw rows (the views have no tier or price components):
 * - `call`: counted calls that were priced (billed, over_limit, unenforced) by tool, tier and unit price;
 * - `free_call`, `failed_call`: calls at zero price by tool;
 * - `input_tokens`, `output_tokens`: tokens by tool and unit price (the component ÷ tokens, exact);
 * - `duration`: seconds by tool (rounded per call to the nano-unit, so no unit price).
 */
export function invoiceLinesSql(product: string, customer: string, period: string, range: TimeRange): Sql {
  const w = `product = {product:String} AND customer = {customer:String} AND period = {period:String}
    AND started_at >= {from:${DT}} AND started_at < {to:${DT}}`;
  return {
    query: `SELECT component, tool, tier, unit_nano, quantity, amount_nano, line FROM (
  SELECT 'call' AS component, tool, tier, price_call_nano AS unit_nano, toUInt64(count()) AS quantity,
      sum(toInt128(price_call_nano)) AS amount_nano, '' AS line
    FROM mcp_tool_calls WHERE ${w} AND decision NOT IN ('free', 'failed_not_billed')
    GROUP BY tool, tier, unit_nano
  UNION ALL
  SELECT 'free_call', tool, toUInt16(0), toInt64(0), toUInt64(count()), toInt64(0), ''
    FROM mcp_tool_calls WHERE ${w} AND decision = 'free' GROUP BY tool
  UNION ALL
  SELECT 'failed_call', tool, toUInt16(0), toInt64(0), toUInt64(count()), toInt64(0), ''
    FROM mcp_tool_calls WHERE ${w} AND decision = 'failed_not_billed' GROUP BY tool
  UNION ALL
  SELECT 'input_tokens', tool, toUInt16(0), intDiv(price_input_nano, input_tokens_priced) AS unit_nano,
      toUInt64(sum(input_tokens_priced)), sum(toInt128(price_input_nano)), ''
    FROM mcp_tool_calls WHERE ${w} AND price_input_nano != 0 GROUP BY tool, unit_nano
  UNION ALL
  SELECT 'output_tokens', tool, toUInt16(0), intDiv(price_output_nano, output_tokens_priced) AS unit_nano,
      toUInt64(sum(output_tokens_priced)), sum(toInt128(price_output_nano)), ''
    FROM mcp_tool_calls WHERE ${w} AND price_output_nano != 0 GROUP BY tool, unit_nano
  UNION ALL
  SELECT 'duration', tool, toUInt16(0), price_per_second_nano AS unit_nano, toUInt64(sum(duration_us)),
      sum(toInt128(price_duration_nano)), ''
    FROM mcp_tool_calls WHERE ${w} AND (price_per_second_nano != 0 OR price_duration_nano != 0)
    GROUP BY tool, unit_nano
  UNION ALL
  SELECT 'usage', tool, toUInt16(0), u_unit AS unit_nano, toUInt64(sum(u_quantity)), sum(toInt128(u_price)), u_line
    FROM mcp_tool_calls
    ARRAY JOIN usage_lines AS u_line, usage_quantity_micro AS u_quantity, usage_unit_nano AS u_unit,
      usage_price_nano AS u_price
    WHERE ${w} AND (u_unit != 0 OR u_price != 0)
    GROUP BY tool, u_line, unit_nano
)
ORDER BY tool ASC, indexOf(['call', 'free_call', 'failed_call', 'input_tokens', 'output_tokens', 'duration', 'usage'], component) ASC,
  line ASC, tier ASC, unit_nano ASC`,
    params: { product, customer, period, from: chInstant(range.fromMs), to: chInstant(range.toMs) },
  };
}

/** Totals of a customer's period from the raw rows, to reconcile the lines against. */
export function invoiceTotalsSql(product: string, customer: string, period: string, range: TimeRange): Sql {
  return {
    query: `SELECT count() AS calls, sum(toInt128(price_nano)) AS price_nano, sum(toInt128(cost_nano)) AS cost_nano,
    sum(toInt128(price_call_nano)) AS call_nano, sum(toInt128(price_input_nano)) AS input_nano, sum(toInt128(price_output_nano)) AS output_nano,
    sum(toInt128(price_duration_nano)) AS duration_nano, sum(toInt128(arraySum(usage_price_nano))) AS usage_nano,
    countIf(decision = 'billed') AS billed, countIf(decision = 'free') AS free,
    countIf(decision = 'failed_not_billed') AS failed_not_billed, countIf(decision = 'over_limit') AS over_limit,
    countIf(decision = 'unenforced') AS unenforced,
    arraySort(groupUniqArray(plan_id)) AS plan_ids, arraySort(groupUniqArray(plan_version)) AS plan_versions,
    arraySort(groupUniqArray(currency)) AS currencies
  FROM mcp_tool_calls
  WHERE product = {product:String} AND customer = {customer:String} AND period = {period:String}
    AND started_at >= {from:${DT}} AND started_at < {to:${DT}}`,
    params: { product, customer, period, from: chInstant(range.fromMs), to: chInstant(range.toMs) },
  };
}
