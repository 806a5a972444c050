import type { FastifyBaseLogger, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ApiKeyring } from './auth.js';
import { type Cell, sendCsv, wantsCsv } from './csv.js';
import { ApiError } from './errors.js';
import { big, count, microsToSeconds, money, revenueCostMargin } from './money.js';
import type { AnalyticsDeps, GuardBands } from './ports.js';
import { contextOf, isoFromCh, pageOf, type RequestContext, rangeOf, rows } from './query.js';
import { bucketFor } from './range.js';
import {
  type CommonQuery,
  identifier,
  moneyProps,
  pageSchema,
  querystring,
  rangeSchema,
  responses,
  revenueCostMarginProps,
  SECURITY,
} from './schemas.js';
import {
  byAgentSql,
  byCustomerSql,
  byToolSql,
  ENFORCEMENT_ACTIONS,
  enforcementCountsSql,
  enforcementEventsSql,
  type Filters,
  lifetimePageKeys,
  type SessionSnapshot,
  type SessionsFrom,
  sessionCallsSql,
  sessionSnapshotSql,
  sessionSummarySql,
  sessionsCountSql,
  sessionsFromRaw,
  sessionsLaterSql,
  sessionsLifetimePageSql,
  sessionsListSql,
  sessionsPageSql,
  sessionsSnapshotPageSql,
  sessionTotalsByKeySql,
  sessionTotalsSql,
  summarySql,
  usageByToolSql,
} from './sql.js';

type Row = Record<string, unknown>;
const TAGS = ['analytics'];
const LIST_KEYS = [
  'product',
  'customer',
  'agent',
  'tool',
  'from',
  'to',
  'period',
  'format',
  'limit',
  'offset',
] as const;

function callMeasures(r: Row) {
  return {
    calls: count(r.calls),
    errors: count(r.errors),
    billedCalls: count(r.billed_calls),
    freeCalls: count(r.free_calls),
    ...revenueCostMargin(big(r.revenue_nano), big(r.cost_nano)),
    inputTokens: count(r.input_tokens),
    outputTokens: count(r.output_tokens),
  };
}

const callMeasureProps = {
  calls: { type: 'integer' },
  errors: { type: 'integer' },
  billedCalls: { type: 'integer', description: 'calls with a price above zero' },
  freeCalls: { type: 'integer', description: 'calls inside the free allowance' },
  ...revenueCostMarginProps,
  inputTokens: { type: 'integer' },
  outputTokens: { type: 'integer' },
} as const;

/** Margin-guard band of a margin: where the guard would put it (`not_judged` below its minimum revenue). */
export function bandOf(revenueNano: bigint, bps: number | null, g: GuardBands | undefined): string {
  if (!g?.enabled) return 'off';
  if (bps === null || revenueNano < g.minRevenueNano) return 'not_judged';
  if (bps < g.killBelowBps) return 'kill';
  if (bps < g.throttleBelowBps) return 'throttle';
  if (bps < g.warnBelowBps) return 'warn';
  return 'ok';
}

function guardFields(g: GuardBands | undefined) {
  return {
    guardEnabled: g?.enabled ?? false,
    warnBelowBps: g?.warnBelowBps ?? null,
    throttleBelowBps: g?.throttleBelowBps ?? null,
    killBelowBps: g?.killBelowBps ?? null,
    ...money('minRevenue', g?.minRevenueNano ?? 0n),
  };
}

const guardProps = {
  guardEnabled: { type: 'boolean' },
  warnBelowBps: { type: ['integer', 'null'] },
  throttleBelowBps: { type: ['integer', 'null'] },
  killBelowBps: { type: ['integer', 'null'] },
  ...moneyProps('minRevenue'),
} as const;

function listSchema(rowProps: Record<string, unknown>, extra: Record<string, unknown> = {}) {
  return {
    type: 'object',
    properties: {
      product: { type: 'string' },
      currency: { type: 'string' },
      range: rangeSchema,
      readFrom: { type: 'array', items: { type: 'string' } },
      ...extra,
      rows: { type: 'array', items: { type: 'object', properties: rowProps } },
      page: pageSchema,
    },
  } as const;
}

/** Sends a list as JSON or CSV (the rows' fields, in schema order, are the CSV columns). */
function sendList(
  req: FastifyRequest,
  reply: FastifyReply,
  name: string,
  columns: readonly string[],
  body: { rows: Record<string, Cell | readonly unknown[]>[]; page?: { nextOffset: number | null } } & Record<
    string,
    unknown
  >,
) {
  if (wantsCsv(req as FastifyRequest<{ Querystring: { format?: string } }>)) {
    return sendCsv(reply, name, columns, body.rows as Record<string, Cell>[], body.page?.nextOffset);
  }
  return reply.send(body);
}

/**
 * Which tables answer the session questions of a request (see SessionsFrom), and the tables read to decide
 * (the check for calls at or after the range's end).
 */
async function sessionsFrom(
  d: AnalyticsDeps,
  ctx: RequestContext,
  log: FastifyBaseLogger,
): Promise<{ from: SessionsFrom; checked: string[]; snap?: SessionSnapshot }> {
  if (sessionsFromRaw(ctx.source, ctx.filters)) return { from: 'raw', checked: [] };
  const later = await rows(d, sessionsLaterSql(ctx.filters, ctx.range), log);
  if (later.length === 0) return { from: 'daily', checked: ['mcp_session_daily'] };
  // the lifetime path: the latest snapshot of session intervals, when one was built (an answer without it is
  // the same, only slower)
  const [snap] = await rows(d, sessionSnapshotSql(), log);
  const checked = ['mcp_session_daily', 'mcp_session_interval_snapshots'];
  return snap
    ? {
        from: 'lifetime',
        checked,
        snap: { snapshot: String(snap.snapshot), watermark: String(snap.watermark) },
      }
    : { from: 'lifetime', checked };
}

/**
 * A page of the sessions list on the daily path (see SessionsFrom), with the number of sessions in
 * `total_rows`: the count, side by side with the page's keys and then the totals of those sessions by key.
 * Tenant-wide, the page is first looked for among the latest rows; it is exact when it comes back with
 * every session the count says it holds, else it is asked again from all the rows (sessionsPageSql). A
 * customer's rows are few: its page is read from all of them at once.
 */
async function dailySessionsPage(
  d: AnalyticsDeps,
  ctx: RequestContext,
  readFrom: Set<string>,
  log: FastifyBaseLogger,
): Promise<Row[]> {
  const { filters, range, page } = ctx;
  const latestRows =
    filters.customer === undefined
      ? (page.offset + page.limit) * (d.sessionPageRowsPerSession ?? 4)
      : undefined;
  const sessionsOfPage = async (latest?: number) => {
    const keys = await rows(d, sessionsPageSql(filters, range, page, latest), log);
    const sql = sessionTotalsSql(
      filters,
      keys.map((k) => ({ customer: String(k.customer), sessionId: String(k.session_id) })),
    );
    return keys.length ? rows(d, sql, log) : [];
  };
  const countSql = sessionsCountSql(filters, range, 'daily');
  const [first, [counted]] = await Promise.all([sessionsOfPage(latestRows), rows(d, countSql, log)]);
  const total = count(counted?.sessions ?? 0);
  const list =
    latestRows === undefined || first.length >= Math.min(page.limit, total - page.offset)
      ? first
      : await sessionsOfPage();
  for (const t of [...countSql.readFrom, 'mcp_session_daily', 'mcp_session_summary']) readFrom.add(t);
  return list.map((r) => ({ ...r, total_rows: total }));
}

/**
 * A page of the sessions list on the lifetime path (see SessionsFrom). From a snapshot of session intervals:
 * the exact page in one query, the totals of sessions touched since the snapshot then read by key. Without
 * one: the keys of the sessions that can be on the page and the number of active sessions, then those
 * sessions' totals by key, cut to the exact page.
 */
async function lifetimeSessionsPage(
  d: AnalyticsDeps,
  ctx: RequestContext,
  readFrom: Set<string>,
  log: FastifyBaseLogger,
  snap: SessionSnapshot | undefined,
): Promise<Row[]> {
  const { filters, range, page } = ctx;
  if (snap) {
    // from the snapshot: the exact page with the totals of its untouched sessions, then the touched ones' by key
    const pageSql = sessionsSnapshotPageSql(filters, range, page, snap);
    const list = await rows(d, pageSql, log);
    for (const t of pageSql.readFrom) readFrom.add(t);
    const touched = list.filter((r) => Number(r.touched) === 1);
    if (!touched.length) return list;
    const keys = touched.map((r) => String(r.session_key));
    const totals = await rows(
      d,
      sessionTotalsByKeySql(filters, keys, { limit: keys.length, offset: 0 }),
      log,
    );
    const byId = new Map(totals.map((t) => [`${t.customer}\u0000${t.session_id}`, t]));
    return list.map((r) =>
      Number(r.touched) === 1
        ? { ...byId.get(`${r.customer}\u0000${r.session_id}`), total_rows: r.total_rows }
        : r,
    );
  }
  const keysSql = sessionsLifetimePageSql(filters, range, page);
  const keys = await rows(d, keysSql, log);
  for (const t of keysSql.readFrom) readFrom.add(t);
  const total = count(keys[0]?.total_rows ?? 0);
  const onPage = lifetimePageKeys(
    keys.map((k) => ({ key: String(k.session_key), lastSeen: String(k.last_seen) })),
    page,
  );
  if (!onPage.keys.length) return [];
  const list = await rows(d, sessionTotalsByKeySql(filters, onPage.keys, onPage.page), log);
  return list.map((r) => ({ ...r, total_rows: total }));
}

/** The analytics routes (`/analytics/mcp/*`) and `/me`. */
export function registerAnalytics(
  app: FastifyInstance,
  keyring: ApiKeyring,
  analytics: AnalyticsDeps | undefined,
): void {
  const deps = (): AnalyticsDeps => {
    if (!analytics) throw new ApiError('API_UNAVAILABLE', 'analytics are not enabled in this process');
    return analytics;
  };

  app.get(
    '/me',
    {
      schema: {
        tags: ['access'],
        summary: 'The API key in use: name, role, products, customer',
        security: SECURITY,
        // no parameters: an unknown one is a 400, as on every other route
        querystring: { type: 'object', additionalProperties: false, properties: {} },
        response: responses(
          {
            type: 'object',
            properties: {
              name: { type: 'string' },
              role: { type: 'string' },
              products: { type: 'array', items: { type: 'string' } },
              customer: { type: ['string', 'null'] },
            },
          },
          false,
        ),
      },
    },
    async (req) => {
      const p = keyring.authenticate(req);
      return { name: p.name, role: p.role, products: p.products, customer: p.customer ?? null };
    },
  );

  const byToolRow = {
    tool: { type: 'string' },
    ...callMeasureProps,
    avgDurationUs: { type: ['integer', 'null'] },
    durationP50Us: { type: ['integer', 'null'], description: 't-digest estimate' },
    durationP95Us: { type: ['integer', 'null'], description: 't-digest estimate' },
    ...moneyProps('usageRevenue'),
  };
  const usageLineRow = {
    line: { type: 'string' },
    calls: { type: 'integer', description: 'calls that reported the line' },
    quantity: { type: 'string', description: 'units (exact decimal)' },
    ...moneyProps('revenue', 'cost'),
  } as const;
  app.get<{ Querystring: CommonQuery }>(
    '/analytics/mcp/revenue/by-tool',
    {
      schema: {
        tags: TAGS,
        summary: 'Per tool: calls, errors, revenue, cost, margin, tokens, p50/p95 duration',
        security: SECURITY,
        querystring: querystring(LIST_KEYS),
        response: responses(
          listSchema({
            ...byToolRow,
            usageLines: {
              type: 'array',
              description: 'the usage lines of the tool (JSON only; the CSV has usageRevenue)',
              items: { type: 'object', properties: usageLineRow },
            },
          }),
          true,
        ),
      },
    },
    async (req, reply) => {
      const d = deps();
      const ctx = contextOf(req, keyring, d, req.query);
      const sql = byToolSql(ctx.filters, ctx.range, ctx.page, ctx.source);
      const list = await rows(d, sql, req.log);
      const usageSql = usageByToolSql(
        ctx.filters,
        ctx.range,
        ctx.source,
        list.map((r) => String(r.tool)),
      );
      const usage = list.length ? await rows(d, usageSql, req.log) : [];
      const out = list.map((r) => {
        const calls = count(r.calls);
        const [p50, p95] = (r.duration_p50_p95 as number[] | undefined) ?? [];
        const lines = usage.filter((u) => String(u.tool) === String(r.tool));
        return {
          tool: String(r.tool),
          ...callMeasures(r),
          avgDurationUs: calls ? Number(big(r.duration_us_sum) / BigInt(calls)) : null,
          durationP50Us: calls && Number.isFinite(p50) ? Math.round(p50 as number) : null,
          durationP95Us: calls && Number.isFinite(p95) ? Math.round(p95 as number) : null,
          ...money(
            'usageRevenue',
            lines.reduce((a, u) => a + big(u.price_nano), 0n),
          ),
          usageLines: lines.map((u) => ({
            line: String(u.line),
            calls: count(u.calls),
            quantity: microsToSeconds(big(u.quantity_micro)),
            ...money('revenue', big(u.price_nano)),
            ...money('cost', big(u.cost_nano)),
          })),
        };
      });
      return sendList(req, reply, 'revenue-by-tool', Object.keys(byToolRow), {
        product: ctx.filters.product,
        currency: d.pricing.currency(),
        range: rangeOf(ctx.range),
        readFrom: list.length ? [...new Set([...sql.readFrom, ...usageSql.readFrom])] : sql.readFrom,
        rows: out,
        page: pageOf(ctx.page, list as { total_rows?: unknown }[]),
      });
    },
  );

  const byAgentRow = {
    bucket: { type: 'string', description: 'start of the day (YYYY-MM-DD) or hour (RFC 3339), UTC' },
    agent: { type: 'string' },
    calls: { type: 'integer' },
    errors: { type: 'integer' },
    ...revenueCostMarginProps,
  };
  app.get<{ Querystring: CommonQuery & { bucket?: 'auto' | 'day' | 'hour' } }>(
    '/analytics/mcp/by-agent',
    {
      schema: {
        tags: TAGS,
        summary: 'Per agent over time (day buckets, or hour buckets for ranges up to 48 h)',
        description:
          'Day buckets read the daily view (partial days at the ends of the range from the raw table); ' +
          'hour buckets read the raw table (the view has no hour), so they are limited to 7 days.',
        security: SECURITY,
        querystring: querystring(LIST_KEYS, {
          bucket: {
            type: 'string',
            enum: ['auto', 'day', 'hour'],
            default: 'auto',
            description: 'auto: hour for ranges up to 48 h, day beyond',
          },
        }),
        response: responses(listSchema(byAgentRow, { bucket: { type: 'string' } }), true),
      },
    },
    async (req, reply) => {
      const d = deps();
      const ctx = contextOf(req, keyring, d, req.query);
      const bucket = bucketFor(req.query.bucket, ctx.range);
      const sql = byAgentSql(ctx.filters, ctx.range, bucket, ctx.page, ctx.source);
      const list = await rows(d, sql, req.log);
      const out = list.map((r) => ({
        bucket: bucket === 'day' ? String(r.bucket) : isoFromCh(r.bucket),
        agent: String(r.agent),
        calls: count(r.calls),
        errors: count(r.errors),
        ...revenueCostMargin(big(r.revenue_nano), big(r.cost_nano)),
      }));
      return sendList(req, reply, 'by-agent', Object.keys(byAgentRow), {
        product: ctx.filters.product,
        currency: d.pricing.currency(),
        range: rangeOf(ctx.range),
        readFrom: sql.readFrom,
        bucket,
        rows: out,
        page: pageOf(ctx.page, list as { total_rows?: unknown }[]),
      });
    },
  );

  const byCustomerRow = {
    customer: { type: 'string' },
    calls: { type: 'integer' },
    errors: { type: 'integer' },
    ...revenueCostMarginProps,
    band: { type: 'string', enum: ['ok', 'warn', 'throttle', 'kill', 'not_judged', 'off'] },
    planId: { type: ['string', 'null'] },
    ...guardProps,
  };
  app.get<{ Querystring: CommonQuery }>(
    '/analytics/mcp/by-customer',
    {
      schema: {
        tags: TAGS,
        summary: "Per customer: revenue, cost, margin and its margin-guard band under the customer's plan",
        security: SECURITY,
        querystring: querystring(LIST_KEYS),
        response: responses(
          listSchema(byCustomerRow, {
            bands: {
              type: 'object',
              description: "the default plan's margin-guard thresholds",
              properties: guardProps,
            },
          }),
          true,
        ),
      },
    },
    async (req, reply) => {
      const d = deps();
      const ctx = contextOf(req, keyring, d, req.query);
      const sql = byCustomerSql(ctx.filters, ctx.range, ctx.page, ctx.source);
      const list = await rows(d, sql, req.log);
      const out = list.map((r) => {
        const customer = String(r.customer);
        const revenueNano = big(r.revenue_nano);
        const m = revenueCostMargin(revenueNano, big(r.cost_nano));
        const plan = d.pricing.planFor(ctx.filters.product, customer);
        return {
          customer,
          calls: count(r.calls),
          errors: count(r.errors),
          ...m,
          band: bandOf(revenueNano, m.marginBps, plan?.guard),
          planId: plan?.planId ?? null,
          ...guardFields(plan?.guard),
        };
      });
      return sendList(req, reply, 'by-customer', Object.keys(byCustomerRow), {
        product: ctx.filters.product,
        currency: d.pricing.currency(),
        range: rangeOf(ctx.range),
        readFrom: sql.readFrom,
        bands: guardFields(d.pricing.planFor(ctx.filters.product, '')?.guard),
        rows: out,
        page: pageOf(ctx.page, list as { total_rows?: unknown }[]),
      });
    },
  );

  const summaryProps = {
    product: { type: 'string' },
    currency: { type: 'string' },
    range: rangeSchema,
    readFrom: { type: 'array', items: { type: 'string' } },
    ...callMeasureProps,
    sessions: {
      type: 'integer',
      description: 'sessions active in the range (first seen before its end, last seen after its start)',
    },
    customers: { type: 'integer', description: 'customers with calls in the range' },
    kills: { type: 'integer', description: 'kill transitions and operator kills (enforcement_events)' },
    throttles: { type: 'integer' },
    warns: { type: 'integer' },
    resumes: { type: 'integer', description: 'resumes and operator lifts' },
  };
  app.get<{ Querystring: CommonQuery }>(
    '/analytics/mcp/summary',
    {
      schema: {
        tags: TAGS,
        summary: 'Totals of the range: calls, sessions, customers, revenue, cost, margin, kills, throttles',
        description: 'Enforcement counts honour product, customer and the range (not agent or tool).',
        security: SECURITY,
        querystring: querystring(['product', 'customer', 'agent', 'tool', 'from', 'to', 'period', 'format']),
        response: responses({ type: 'object', properties: summaryProps }, true),
      },
    },
    async (req, reply) => {
      const d = deps();
      const ctx = contextOf(req, keyring, d, req.query);
      const totalsSql = summarySql(ctx.filters, ctx.range, ctx.source);
      const sessionsRead = async () => {
        const { from, checked, snap } = await sessionsFrom(d, ctx, req.log);
        const sql = sessionsCountSql(ctx.filters, ctx.range, from, snap);
        const [row] = await rows(d, sql, req.log);
        return { row, readFrom: [...checked, ...sql.readFrom] };
      };
      const [[totals], sessions, [enforcement]] = await Promise.all([
        rows(d, totalsSql, req.log),
        sessionsRead(),
        rows(d, enforcementCountsSql(ctx.filters, ctx.range), req.log),
      ]);
      const t = totals ?? {};
      const body = {
        product: ctx.filters.product,
        currency: d.pricing.currency(),
        range: rangeOf(ctx.range),
        readFrom: [...new Set([...totalsSql.readFrom, ...sessions.readFrom, 'enforcement_events'])],
        ...callMeasures(t),
        sessions: count(sessions.row?.sessions ?? 0),
        customers: count(t.customers ?? 0),
        kills: count(enforcement?.kills ?? 0),
        throttles: count(enforcement?.throttles ?? 0),
        warns: count(enforcement?.warns ?? 0),
        resumes: count(enforcement?.resumes ?? 0),
      };
      if (wantsCsv(req)) {
        const flat = {
          ...body,
          range: undefined,
          readFrom: undefined,
          from: body.range.from,
          to: body.range.to,
        };
        const cols = [
          'product',
          'currency',
          'from',
          'to',
          ...Object.keys(callMeasureProps),
          'sessions',
          'customers',
          'kills',
          'throttles',
          'warns',
          'resumes',
        ];
        return sendCsv(reply, 'summary', cols, [flat as Record<string, Cell>]);
      }
      return body;
    },
  );

  const sessionRow = {
    customer: { type: 'string' },
    sessionId: { type: 'string' },
    agent: { type: 'string' },
    transport: { type: 'string' },
    /** Which billing-session rule made the session: protocol, connection, trace or activity. */
    rule: { type: 'string' },
    firstSeen: { type: 'string' },
    lastSeen: { type: 'string' },
    calls: { type: 'integer' },
    errors: { type: 'integer' },
    ...revenueCostMarginProps,
  };
  const sessionOf = (r: Row) => ({
    customer: String(r.customer),
    sessionId: String(r.session_id ?? ''),
    agent: String(r.session_agent),
    transport: String(r.session_transport),
    rule: String(r.rule ?? ''),
    firstSeen: isoFromCh(r.first_seen_at),
    lastSeen: isoFromCh(r.last_seen_at),
    calls: count(r.calls),
    errors: count(r.errors),
    ...revenueCostMargin(big(r.revenue_nano), big(r.cost_nano)),
  });
  app.get<{ Querystring: CommonQuery }>(
    '/analytics/mcp/sessions',
    {
      schema: {
        tags: TAGS,
        summary: 'Sessions active in the range, most recently active first',
        description:
          'Each session with the totals of all its calls. When no session has calls at or after the end of the ' +
          'range (the usual case) the page comes from the per-day session view; otherwise from the session view, ' +
          'which holds every session of the tenant. With `agent` or `tool` from the raw table, over that ' +
          'agent’s or tool’s calls.',
        security: SECURITY,
        querystring: querystring(LIST_KEYS),
        response: responses(listSchema(sessionRow), true),
      },
    },
    async (req, reply) => {
      const d = deps();
      const ctx = contextOf(req, keyring, d, req.query);
      const { from, checked, snap } = await sessionsFrom(d, ctx, req.log);
      const readFrom = new Set(checked);
      let list: Row[];
      if (from === 'daily') {
        list = await dailySessionsPage(d, ctx, readFrom, req.log);
      } else if (from === 'lifetime') {
        list = await lifetimeSessionsPage(d, ctx, readFrom, req.log, snap);
      } else {
        const sql = sessionsListSql(ctx.filters, ctx.range, ctx.page);
        list = await rows(d, sql, req.log);
        for (const t of sql.readFrom) readFrom.add(t);
      }
      return sendList(req, reply, 'sessions', Object.keys(sessionRow), {
        product: ctx.filters.product,
        currency: d.pricing.currency(),
        range: rangeOf(ctx.range),
        readFrom: [...readFrom],
        rows: list.map(sessionOf),
        page: pageOf(ctx.page, list as { total_rows?: unknown }[]),
      });
    },
  );

  const callRow = {
    seq: { type: 'integer', description: '1-based position of the call in the session' },
    startedAt: { type: 'string' },
    customer: { type: 'string' },
    agent: { type: 'string' },
    tool: { type: 'string' },
    status: { type: 'string' },
    errorType: { type: 'string' },
    decision: { type: 'string' },
    tier: { type: 'integer' },
    durationUs: { type: 'integer' },
    inputTokens: { type: 'integer' },
    outputTokens: { type: 'integer' },
    ...moneyProps('price'),
    priceCallNano: { type: 'string' },
    priceInputNano: { type: 'string' },
    priceOutputNano: { type: 'string' },
    priceDurationNano: { type: 'string' },
    priceUsageNano: {
      type: 'string',
      description: 'the usage lines of the call (rate-plans.md#usage-lines)',
    },
    ...moneyProps('cost'),
    traceId: { type: 'string' },
    spanId: { type: 'string' },
    traceLink: { type: 'string' },
    planId: { type: 'string' },
    planVersion: { type: 'string' },
  };
  app.get<{ Params: { id: string }; Querystring: CommonQuery }>(
    '/analytics/mcp/sessions/:id',
    {
      schema: {
        tags: TAGS,
        summary:
          'One session: totals, and its calls in order with prices, decisions, trace ids and trace links',
        description:
          'A session the key may not see answers 404, exactly like one that does not exist. Totals come from ' +
          'the session view; the calls from the raw table.',
        security: SECURITY,
        params: { type: 'object', required: ['id'], properties: { id: identifier } },
        querystring: querystring(['product', 'customer', 'format', 'limit', 'offset']),
        response: responses(
          {
            type: 'object',
            properties: {
              product: { type: 'string' },
              sessionId: { type: 'string' },
              currency: { type: 'string' },
              customers: { type: 'array', items: { type: 'object', properties: sessionRow } },
              totals: {
                type: 'object',
                properties: {
                  calls: { type: 'integer' },
                  errors: { type: 'integer' },
                  ...revenueCostMarginProps,
                },
              },
              calls: { type: 'array', items: { type: 'object', properties: callRow } },
              page: pageSchema,
            },
          },
          true,
        ),
      },
    },
    async (req, reply) => {
      const d = deps();
      const ctx = contextOf(req, keyring, d, req.query);
      const f: Filters = { product: ctx.filters.product, customer: ctx.filters.customer };
      const id = req.params.id;
      const [summary, calls] = await Promise.all([
        rows(d, sessionSummarySql(f, id, ctx.source), req.log),
        rows(d, sessionCallsSql(f, id, ctx.page), req.log),
      ]);
      if (summary.length === 0) throw new ApiError('API_NOT_FOUND', 'no such session');
      const customers = summary.map((r) => sessionOf({ ...r, session_id: id }));
      let revenue = 0n;
      let cost = 0n;
      for (const r of summary) {
        revenue += big(r.revenue_nano);
        cost += big(r.cost_nano);
      }
      const link = (traceId: string, spanId: string) =>
        d.traceLinkTemplate
          .replaceAll('{traceId}', encodeURIComponent(traceId))
          .replaceAll('{spanId}', encodeURIComponent(spanId));
      const callRows = calls.map((r, i) => ({
        seq: ctx.page.offset + i + 1,
        startedAt: isoFromCh(r.started),
        customer: String(r.customer),
        agent: String(r.agent),
        tool: String(r.tool),
        status: String(r.status),
        errorType: String(r.error_type),
        decision: String(r.decision),
        tier: count(r.tier),
        durationUs: count(r.duration_us),
        inputTokens: count(r.input_tokens),
        outputTokens: count(r.output_tokens),
        ...money('price', big(r.price_nano)),
        priceCallNano: String(big(r.price_call_nano)),
        priceInputNano: String(big(r.price_input_nano)),
        priceOutputNano: String(big(r.price_output_nano)),
        priceDurationNano: String(big(r.price_duration_nano)),
        priceUsageNano: String(big(r.price_usage_nano)),
        ...money('cost', big(r.cost_nano)),
        traceId: String(r.trace_id),
        spanId: String(r.span_id),
        traceLink: link(String(r.trace_id), String(r.span_id)),
        planId: String(r.plan_id),
        planVersion: String(r.plan_version),
      }));
      const page = pageOf(ctx.page, calls as { total_rows?: unknown }[]);
      if (wantsCsv(req))
        return sendCsv(
          reply,
          `session-${id.replace(/[^\w.-]/g, '_')}`,
          Object.keys(callRow),
          callRows,
          page.nextOffset,
        );
      return {
        product: ctx.filters.product,
        sessionId: id,
        currency: d.pricing.currency(),
        customers,
        totals: {
          calls: customers.reduce((n, c) => n + c.calls, 0),
          errors: customers.reduce((n, c) => n + c.errors, 0),
          ...revenueCostMargin(revenue, cost),
        },
        calls: callRows,
        page,
      };
    },
  );

  const eventRow = {
    at: { type: 'string' },
    customer: { type: 'string' },
    scope: { type: 'string' },
    subjectId: { type: 'string' },
    action: { type: 'string' },
    reason: { type: 'string' },
    marginBps: { type: ['integer', 'null'] },
    actor: { type: 'string', description: 'empty for customer keys' },
    note: { type: 'string', description: 'empty for customer keys' },
  };
  app.get<{ Querystring: CommonQuery & { action?: string } }>(
    '/analytics/mcp/enforcement-events',
    {
      schema: {
        tags: TAGS,
        summary:
          'Enforcement events (warn, throttle, kill, resume, operator lift) in the range, newest first',
        security: SECURITY,
        querystring: querystring(
          ['product', 'customer', 'from', 'to', 'period', 'format', 'limit', 'offset'],
          {
            action: { type: 'string', enum: [...ENFORCEMENT_ACTIONS] },
          },
        ),
        response: responses(listSchema(eventRow), true),
      },
    },
    async (req, reply) => {
      const d = deps();
      const ctx = contextOf(req, keyring, d, req.query);
      const list = await rows(
        d,
        enforcementEventsSql(ctx.filters, ctx.range, req.query.action, ctx.page),
        req.log,
      );
      const internal = ctx.principal.role !== 'customer';
      const out = list.map((r) => ({
        at: isoFromCh(r.at_text),
        customer: String(r.customer),
        scope: String(r.scope),
        subjectId: String(r.subject_id),
        action: String(r.action),
        // an operator's action names the key that took it (`operator:<key name>`): who it was is not the
        // customer's to read (as `actor` and `note`)
        reason: internal || !String(r.reason).startsWith('operator:') ? String(r.reason) : 'operator',
        marginBps: r.margin_bps === null || r.margin_bps === undefined ? null : count(r.margin_bps),
        actor: internal ? String(r.actor) : '',
        note: internal ? String(r.note) : '',
      }));
      return sendList(req, reply, 'enforcement-events', Object.keys(eventRow), {
        product: ctx.filters.product,
        currency: d.pricing.currency(),
        range: rangeOf(ctx.range),
        readFrom: ['enforcement_events'],
        rows: out,
        page: pageOf(ctx.page, list as { total_rows?: unknown }[]),
      });
    },
  );
}
