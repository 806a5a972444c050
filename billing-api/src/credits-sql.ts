import { chInstant, type TimeRange } from './range.js';
import type { Page, Sql } from './sql.js';

/**
 * SQL of the credit routes (table `credit_ledger`, migration 0011). Like sql.ts: every caller-supplied value
 * is a server-side query parameter. The ledger is a ReplacingMergeTree keyed by (product, customer, seq):
 * an entry written twice (a retry of the outbox drain) is one entry, so reads use FINAL.
 */

const DT = "DateTime64(3, 'UTC')";

export function ledgerSql(
  product: string,
  customer: string | undefined,
  range: TimeRange | undefined,
  type: string | undefined,
  page: Page,
): Sql {
  const conds = ['product = {product:String}'];
  const params: Record<string, string | number> = { product, limit: page.limit, offset: page.offset };
  if (customer !== undefined) {
    conds.push('customer = {customer:String}');
    params.customer = customer;
  }
  if (range) {
    conds.push(`at >= {from:${DT}}`, `at < {to:${DT}}`);
    params.from = chInstant(range.fromMs);
    params.to = chInstant(range.toMs);
  }
  if (type !== undefined) {
    conds.push('entry_type = {type:String}');
    params.type = type;
  }
  return {
    query: `SELECT customer, seq, toString(at) AS at_text, entry_type, bucket, amount_nano, period, currency,
    length(event_ids) AS calls, event_ids, event_amounts_nano, actor, note, count() OVER () AS total_rows
  FROM credit_ledger FINAL
  WHERE ${conds.join(' AND ')}
  ORDER BY customer ASC, seq ASC
  LIMIT {limit:UInt32} OFFSET {offset:UInt64}`,
    params,
  };
}

/**
 * Credits applied to a customer's period, reconciled call by call: every call a drawdown names is matched
 * with its landed row; `mismatched` counts calls whose drawdowns do not add up to their price (0 when the
 * ledger reconciles), `unlanded` calls whose row is not in ClickHouse yet (landing lags the ledger by a
 * flush). `undrawn_*`: billed calls of the period that no drawdown names (before the wallet existed, or
 * rated while Redis was unreachable): they stay due on the invoice.
 */
export function creditsAppliedSql(product: string, customer: string, period: string): Sql {
  return {
    query: `WITH drawn AS (
    SELECT e.1 AS event_id, sum(e.2) AS drawn_nano
    FROM credit_ledger FINAL
    ARRAY JOIN arrayZip(event_ids, event_amounts_nano) AS e
    WHERE product = {product:String} AND customer = {customer:String} AND period = {period:String}
      AND entry_type = 'drawdown'
    GROUP BY event_id
  ),
  calls AS (
    SELECT event_id, price_nano FROM mcp_tool_calls
    WHERE product = {product:String} AND customer = {customer:String} AND period = {period:String}
  )
  SELECT
    (SELECT count() FROM drawn) AS drawn_calls,
    (SELECT sum(drawn_nano) FROM drawn) AS drawn_nano,
    (SELECT sum(toInt128(c.price_nano)) FROM drawn AS d INNER JOIN calls AS c ON c.event_id = d.event_id) AS matched_price_nano,
    (SELECT countIf(d.drawn_nano != c.price_nano) FROM drawn AS d INNER JOIN calls AS c ON c.event_id = d.event_id) AS mismatched,
    (SELECT count() FROM drawn WHERE event_id NOT IN (SELECT event_id FROM calls)) AS unlanded,
    (SELECT count() FROM calls WHERE price_nano != 0 AND event_id NOT IN (SELECT event_id FROM drawn)) AS undrawn_calls,
    (SELECT sum(toInt128(price_nano)) FROM calls WHERE event_id NOT IN (SELECT event_id FROM drawn)) AS undrawn_nano`,
    params: { product, customer, period },
  };
}
