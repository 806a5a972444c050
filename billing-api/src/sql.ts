import { chDay, chInstant, type RangeSplit, splitByDay, type TimeRange } from './range.js';

/**
 * SQL of the analytics and billing routes, as pure functions. Every value a caller supplies travels as a
 * server-side query parameter (`{name:Type}` + `query_params`); the SQL text is assembled only from the
 * fixed fragments below, chosen by which filters are present — never from request text.
 */
export interface Sql {
  query: string;
  params: Record<string, string | number>;
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
    sum(free_calls) AS free_calls, sum(revenue_nano) AS revenue_nano, sum(cost_nano) AS cost_nano,
    sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, sum(duration_us_sum) AS duration_us_sum`;
const RAW_MEASURES = `count() AS calls, countIf(status = 'error') AS errors, countIf(price_nano > 0) AS billed_calls,
    countIf(decision = 'free') AS free_calls, sum(price_nano) AS revenue_nano, sum(cost_nano) AS cost_nano,
    sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, sum(duration_us) AS duration_us_sum`;
const VIEW_QUANTILES = ', quantilesTDigestMergeState(0.5, 0.95)(duration_quantiles) AS duration_quantiles';
const RAW_QUANTILES = ', quantilesTDigestState(0.5, 0.95)(duration_us) AS duration_quantiles';

/** Outer measures over the union of view and raw parts. */
const MERGED_MEASURES = `sum(calls) AS calls, sum(errors) AS errors, sum(billed_calls) AS billed_calls,
    sum(free_calls) AS free_calls, sum(revenue_nano) AS revenue_nano, sum(cost_nano) AS cost_nano,
    sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens, sum(duration_us_sum) AS duration_us_sum`;
const MERGED_QUANTILES = ', quantilesTDigestMerge(0.5, 0.95)(duration_quantiles) AS duration_p50_p95';

/** The tables `dailyParts` reads for a range (reported to callers as `readFrom`). */
export function dailyTables(range: TimeRange, source: Source, hours = false): string[] {
  if (source === 'raw' || hours) return ['mcp_tool_calls'];
  const split = splitByDay(range);
  return [
    ...(split.hasWholeDays ? ['mcp_daily_stats'] : []),
    ...(split.hasPartialDays ? ['mcp_tool_calls'] : []),
  ];
}

/** Whether the session queries read the raw table (see sessionsCountSql). */
export function sessionsFromRaw(source: Source, f: Filters): boolean {
  return source === 'raw' || f.tool !== undefined || f.agent !== undefined;
}

/**
 * Per-call measures grouped by `dims` over a time range, as a union of
 * - `mcp_daily_stats` (the daily view) for the whole UTC days inside the range, and
 * - `mcp_tool_calls` (raw) for the partial days at its ends — or for everything when `source` is `raw`
 *   or the grouping needs hours (the view has no hour).
 * Each part is pre-aggregated by `dims`; the caller merges them with MERGED_MEASURES.
 */
export function dailyParts(
  f: Filters,
  range: TimeRange,
  dims: readonly Dim[],
  opts: { source: Source; quantiles?: boolean },
): Sql {
  const rawOnly = opts.source === 'raw' || dims.includes('hour');
  const split: RangeSplit = rawOnly
    ? { wholeFromMs: range.fromMs, wholeToMs: range.fromMs, hasWholeDays: false, hasPartialDays: true }
    : splitByDay(range);
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
  FROM mcp_daily_stats
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
  return { query: parts.join('\nUNION ALL\n'), params };
}

function paged(sql: Sql, page: Page): Sql {
  return {
    query: `${sql.query}\nLIMIT {limit:UInt32} OFFSET {offset:UInt32}`,
    params: { ...sql.params, limit: page.limit, offset: page.offset },
  };
}

/** Per tool: calls, errors, revenue, cost, tokens, p50/p95 duration. Most revenue first. */
export function byToolSql(f: Filters, range: TimeRange, page: Page, source: Source): Sql {
  const inner = dailyParts(f, range, ['tool'], { source, quantiles: true });
  return paged(
    {
      query: `SELECT tool, ${MERGED_MEASURES}${MERGED_QUANTILES}, count() OVER () AS total_rows
FROM (${inner.query})
GROUP BY tool
ORDER BY revenue_nano DESC, tool ASC`,
      params: inner.params,
    },
    page,
  );
}

/** Per time bucket and agent: calls, revenue, cost. Oldest bucket first. */
export function byAgentSql(
  f: Filters,
  range: TimeRange,
  bucket: 'day' | 'hour',
  page: Page,
  source: Source,
): Sql {
  const inner = dailyParts(f, range, [bucket, 'agent'], { source });
  return paged(
    {
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
export function byCustomerSql(f: Filters, range: TimeRange, page: Page, source: Source): Sql {
  const inner = dailyParts(f, range, ['customer'], { source });
  return paged(
    {
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
export function summarySql(f: Filters, range: TimeRange, source: Source): Sql {
  const inner = dailyParts(f, range, ['customer'], { source });
  return {
    query: `SELECT ${MERGED_MEASURES}, uniqExact(customer) AS customers
FROM (${inner.query})`,
    params: inner.params,
  };
}

/**
 * Sessions (customer + session id, calls without a session excluded) active in the range: first seen
 * before its end and last seen after its start. From `mcp_session_summary`; with an agent or tool filter
 * from the raw table (the view has no tool, and one agent per session), over that agent's or tool's calls.
 */
export function sessionsCountSql(f: Filters, range: TimeRange, source: Source): Sql {
  const inner = sessionsInner(f, range, source);
  return { query: `SELECT count() AS sessions FROM (${inner.query})`, params: inner.params };
}

function sessionsInner(f: Filters, range: TimeRange, source: Source): Sql {
  const params = { ...filterParams(f), from: chInstant(range.fromMs), to: chInstant(range.toMs) };
  if (sessionsFromRaw(source, f)) {
    return {
      query: `SELECT customer, session_id, anyLast(agent) AS session_agent, anyLast(transport) AS session_transport,
    min(started_at) AS first_seen_at, max(started_at) AS last_seen_at, count() AS calls,
    countIf(status = 'error') AS errors, sum(price_nano) AS revenue_nano, sum(cost_nano) AS cost_nano
  FROM mcp_tool_calls
  WHERE ${[...filterConds(f, ALL_DIMS), "session_id != ''"].join(' AND ')}
  GROUP BY customer, session_id
  HAVING first_seen_at < {to:${DT}} AND last_seen_at >= {from:${DT}}`,
      params,
    };
  }
  return {
    query: `SELECT customer, session_id, anyLast(agent) AS session_agent, anyLast(transport) AS session_transport,
    min(first_seen) AS first_seen_at, max(last_seen) AS last_seen_at, sum(calls) AS calls,
    sum(errors) AS errors, sum(revenue_nano) AS revenue_nano, sum(cost_nano) AS cost_nano
  FROM mcp_session_summary
  WHERE ${[...filterConds(f, ['customer']), "session_id != ''"].join(' AND ')}
  GROUP BY customer, session_id
  HAVING first_seen_at < {to:${DT}} AND last_seen_at >= {from:${DT}}`,
    params,
  };
}

/** Sessions active in the range, most recently active first. */
export function sessionsListSql(f: Filters, range: TimeRange, page: Page, source: Source): Sql {
  const inner = sessionsInner(f, range, source);
  return paged(
    {
      query: `SELECT *, count() OVER () AS total_rows FROM (${inner.query})
ORDER BY last_seen_at DESC, customer ASC, session_id ASC`,
      params: inner.params,
    },
    page,
  );
}

/** One session's totals per customer (a session id is the client's: two customers may share one). */
export function sessionSummarySql(f: Filters, sessionId: string, source: Source): Sql {
  const params = { ...filterParams(f), session: sessionId };
  const conds = [...filterConds(f, ['customer']), 'session_id = {session:String}'].join(' AND ');
  if (source === 'raw') {
    return {
      query: `SELECT customer, anyLast(agent) AS session_agent, anyLast(transport) AS session_transport,
    min(started_at) AS first_seen_at, max(started_at) AS last_seen_at, count() AS calls,
    countIf(status = 'error') AS errors, sum(price_nano) AS revenue_nano, sum(cost_nano) AS cost_nano
  FROM mcp_tool_calls WHERE ${conds} GROUP BY customer ORDER BY customer`,
      params,
    };
  }
  return {
    query: `SELECT customer, anyLast(agent) AS session_agent, anyLast(transport) AS session_transport,
    min(first_seen) AS first_seen_at, max(last_seen) AS last_seen_at, sum(calls) AS calls,
    sum(errors) AS errors, sum(revenue_nano) AS revenue_nano, sum(cost_nano) AS cost_nano
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
    price_duration_nano, cost_nano, trace_id, span_id, event_id, plan_id, plan_version, transport,
    count() OVER () AS total_rows
  FROM mcp_tool_calls
  WHERE ${[...filterConds(f, ['customer']), 'session_id = {session:String}'].join(' AND ')}
  ORDER BY started_at ASC, customer ASC, span_id ASC`,
      params: { ...filterParams(f), session: sessionId },
    },
    page,
  );
}

export const ENFORCEMENT_ACTIONS = ['warn', 'throttle', 'kill', 'resume', 'lift'] as const;

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

/** Enforcement events in the range, newest first. */
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
  ORDER BY at DESC, customer ASC, scope ASC, subject_id ASC`,
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
    query: `SELECT component, tool, tier, unit_nano, quantity, amount_nano FROM (
  SELECT 'call' AS component, tool, tier, price_call_nano AS unit_nano, toUInt64(count()) AS quantity,
      sum(price_call_nano) AS amount_nano
    FROM mcp_tool_calls WHERE ${w} AND decision NOT IN ('free', 'failed_not_billed')
    GROUP BY tool, tier, unit_nano
  UNION ALL
  SELECT 'free_call', tool, toUInt16(0), toInt64(0), toUInt64(count()), toInt64(0)
    FROM mcp_tool_calls WHERE ${w} AND decision = 'free' GROUP BY tool
  UNION ALL
  SELECT 'failed_call', tool, toUInt16(0), toInt64(0), toUInt64(count()), toInt64(0)
    FROM mcp_tool_calls WHERE ${w} AND decision = 'failed_not_billed' GROUP BY tool
  UNION ALL
  SELECT 'input_tokens', tool, toUInt16(0), intDiv(price_input_nano, input_tokens) AS unit_nano,
      toUInt64(sum(input_tokens)), sum(price_input_nano)
    FROM mcp_tool_calls WHERE ${w} AND price_input_nano != 0 GROUP BY tool, unit_nano
  UNION ALL
  SELECT 'output_tokens', tool, toUInt16(0), intDiv(price_output_nano, output_tokens) AS unit_nano,
      toUInt64(sum(output_tokens)), sum(price_output_nano)
    FROM mcp_tool_calls WHERE ${w} AND price_output_nano != 0 GROUP BY tool, unit_nano
  UNION ALL
  SELECT 'duration', tool, toUInt16(0), toInt64(0), toUInt64(sum(duration_us)), sum(price_duration_nano)
    FROM mcp_tool_calls WHERE ${w} AND price_duration_nano != 0 GROUP BY tool
)
ORDER BY tool ASC, indexOf(['call', 'free_call', 'failed_call', 'input_tokens', 'output_tokens', 'duration'], component) ASC,
  tier ASC, unit_nano ASC`,
    params: { product, customer, period, from: chInstant(range.fromMs), to: chInstant(range.toMs) },
  };
}

/** Totals of a customer's period from the raw rows, to reconcile the lines against. */
export function invoiceTotalsSql(product: string, customer: string, period: string, range: TimeRange): Sql {
  return {
    query: `SELECT count() AS calls, sum(price_nano) AS price_nano, sum(cost_nano) AS cost_nano,
    sum(price_call_nano) AS call_nano, sum(price_input_nano) AS input_nano, sum(price_output_nano) AS output_nano,
    sum(price_duration_nano) AS duration_nano,
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
