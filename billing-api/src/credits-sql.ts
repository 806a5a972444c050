import { chInstant, periodRange, type TimeRange } from './range.js';
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
 * Grant money that repaid the overdraft bucket between {from} and {to}: the wallet's "overdraft repaid" pair
 * (credits.lua `normalize`, actor `tollgate`) — a grant's −x followed, at the next sequence number, by the
 * overdraft bucket's +x. Matching the pair keeps an operator's adjustment (one entry, its own actor) out.
 */
const REPAID_NANO = `(SELECT -sum(toInt128(g.amount_nano)) FROM (
      SELECT seq, amount_nano FROM credit_ledger FINAL
      WHERE product = {product:String} AND customer = {customer:String} AND entry_type = 'adjustment'
        AND bucket != 'overdraft' AND actor = 'tollgate' AND note = 'overdraft repaid'
        AND at >= {from:${DT}} AND at < {to:${DT}}) AS g
    INNER JOIN (
      SELECT seq, amount_nano FROM credit_ledger FINAL
      WHERE product = {product:String} AND customer = {customer:String} AND entry_type = 'adjustment'
        AND bucket = 'overdraft' AND actor = 'tollgate' AND note = 'overdraft repaid') AS o
    ON o.seq = g.seq + 1 AND o.amount_nano = -g.amount_nano)`;

/**
 * Credits applied to a customer's period, reconciled call by call: every call a drawdown names is matched
 * with its landed row; `mismatched` counts calls whose drawdowns do not add up to their price (0 when the
 * ledger reconciles), `unlanded` calls whose row is not in ClickHouse yet (landing lags the ledger by a
 * flush). `undrawn_*`: billed calls of the period that no drawdown names (before the wallet existed, or
 * rated while Redis was unreachable): they stay due on the invoice.
 * What prepaid grants paid is split from what the overdraft bucket lent: `grant_drawn_nano` (drawdowns of
 * grants for the period's calls), `overdraft_drawn_nano` (drawdowns of the overdraft bucket: nobody has paid
 * them, they stay due) and `overdraft_repaid_nano` (grant money that repaid an overdraft while the period
 * ran, by the entry's time: applied to this period, whichever period the overdraft was drawn in).
 */
export function creditsAppliedSql(product: string, customer: string, period: string): Sql {
  const range = periodRange(period);
  return {
    query: `WITH drawn AS (
    SELECT e.1 AS event_id, sum(toInt128(e.2)) AS drawn_nano,
      sumIf(toInt128(e.2), bucket = 'overdraft') AS overdraft_nano
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
    (SELECT sum(drawn_nano - overdraft_nano) FROM drawn) AS grant_drawn_nano,
    (SELECT sum(overdraft_nano) FROM drawn) AS overdraft_drawn_nano,
    ${REPAID_NANO} AS overdraft_repaid_nano,
    (SELECT sum(toInt128(c.price_nano)) FROM drawn AS d INNER JOIN calls AS c ON c.event_id = d.event_id) AS matched_price_nano,
    (SELECT countIf(d.drawn_nano != c.price_nano) FROM drawn AS d INNER JOIN calls AS c ON c.event_id = d.event_id) AS mismatched,
    (SELECT count() FROM drawn WHERE event_id NOT IN (SELECT event_id FROM calls)) AS unlanded,
    (SELECT count() FROM calls WHERE price_nano != 0 AND event_id NOT IN (SELECT event_id FROM drawn)) AS undrawn_calls,
    (SELECT sum(toInt128(price_nano)) FROM calls WHERE event_id NOT IN (SELECT event_id FROM drawn)) AS undrawn_nano`,
    params: { product, customer, period, from: chInstant(range.fromMs), to: chInstant(range.toMs) },
  };
}

/**
 * What prepaid grants paid for a customer's period from its start up to `range.toMs` (the Stripe sync's
 * running total, one closed unit after another): grant drawdowns for the period's calls that started in
 * `range` and have landed (the invoice lines are the landed calls: a drawdown is credited with its call),
 * plus overdraft repayments made in `range`.
 */
export function creditsThroughSql(product: string, customer: string, period: string, range: TimeRange): Sql {
  return {
    query: `WITH calls AS (
    SELECT event_id FROM mcp_tool_calls
    WHERE product = {product:String} AND customer = {customer:String} AND period = {period:String}
      AND started_at >= {from:${DT}} AND started_at < {to:${DT}}
  )
  SELECT
    (SELECT sum(toInt128(e.2)) FROM credit_ledger FINAL
      ARRAY JOIN arrayZip(event_ids, event_amounts_nano) AS e
      WHERE product = {product:String} AND customer = {customer:String} AND period = {period:String}
        AND entry_type = 'drawdown' AND bucket != 'overdraft' AND e.1 IN (SELECT event_id FROM calls)) AS grant_drawn_nano,
    ${REPAID_NANO} AS overdraft_repaid_nano`,
    params: { product, customer, period, from: chInstant(range.fromMs), to: chInstant(range.toMs) },
  };
}

/** One row when the customer has a wallet's ledger (any entry): credits are in play for it. */
export function creditLedgerExistsSql(product: string, customer: string): Sql {
  return {
    query:
      'SELECT 1 AS x FROM credit_ledger WHERE product = {product:String} AND customer = {customer:String} LIMIT 1',
    params: { product, customer },
  };
}
