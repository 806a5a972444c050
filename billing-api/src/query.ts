import type { FastifyBaseLogger, FastifyRequest } from 'fastify';
import { type ApiKeyring, type Principal, scopeFor } from './auth.js';
import { ApiError } from './errors.js';
import { count } from './money.js';
import type { AnalyticsDeps } from './ports.js';
import { isoOf, resolveRange, type TimeRange } from './range.js';
import { type CommonQuery, DEFAULT_LIMIT } from './schemas.js';
import type { Filters, Page, Source, Sql } from './sql.js';

/** What one analytics request may read: the caller, the tenant-scoped filters, the range and the page. */
export interface RequestContext {
  principal: Principal;
  filters: Filters;
  range: TimeRange;
  page: Page;
  source: Source;
}

/**
 * Authenticates the request and scopes its filters: the product must be one of the key's, and a customer
 * key is pinned to its own customer (naming another one in `customer` is a 403).
 */
export function contextOf(
  req: FastifyRequest,
  keyring: ApiKeyring,
  deps: AnalyticsDeps,
  q: CommonQuery,
): RequestContext {
  const principal = keyring.authenticate(req);
  const scope = scopeFor(principal, { product: q.product, customer: q.customer });
  return {
    principal,
    filters: { product: scope.product, customer: scope.customer, agent: q.agent, tool: q.tool },
    range: resolveRange(q),
    page: { limit: q.limit ?? DEFAULT_LIMIT, offset: q.offset ?? 0 },
    source: deps.source ?? 'views',
  };
}

/** Runs one query (no per-query settings: under chDB they would stick to the session, see insertSettings). */
export async function rows<T = Record<string, unknown>>(
  deps: AnalyticsDeps,
  sql: Sql,
  log: FastifyBaseLogger,
): Promise<T[]> {
  try {
    const rs = await deps.clickhouse.query({
      query: sql.query,
      query_params: sql.params,
      format: 'JSONEachRow',
    });
    return await rs.json<T>();
  } catch (err) {
    log.error({ err: (err as Error).message }, 'analytics query failed');
    throw new ApiError('API_UNAVAILABLE', 'the analytics query failed');
  }
}

/** The page block of a list answer, from the `total_rows` window column of its rows. */
export function pageOf(page: Page, list: readonly { total_rows?: unknown }[]) {
  const first = list[0];
  const total = first ? count(first.total_rows) : page.offset === 0 ? 0 : null;
  const end = page.offset + list.length;
  return {
    limit: page.limit,
    offset: page.offset,
    total,
    nextOffset: total !== null && end < total ? end : null,
  };
}

export function rangeOf(r: TimeRange) {
  return { from: isoOf(r.fromMs), to: isoOf(r.toMs) };
}

/** ClickHouse `YYYY-MM-DD hh:mm:ss[.ffffff]` (UTC) → RFC 3339. */
export function isoFromCh(text: unknown): string {
  const s = String(text);
  return /^\d{4}-\d{2}-\d{2}$/.test(s) ? s : `${s.replace(' ', 'T')}Z`;
}
