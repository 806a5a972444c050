// The past range's two queries (docs/benchmarks.md, "Session analytics, step by step", step 4) against
// variants of them, as SQL in one process: 10 million calls seeded like bench/analytics.mjs (the same
// seeding, the real views), plus two candidate copies of mcp_session_summary ordered by session_key, each
// fed by a view from mcp_session_summary's inserts so that they hold as many parts as it does. Each variant
// runs interleaved round-robin with the current query; medians of wall time and of process CPU time (chDB
// runs inside this process, so CPU time is what the query cost, whatever else the machine runs).
// The candidates are not part of the schema: no migration creates them. The first rows compare the API's own
// queries (billing-api/dist/sql.js) without and with a session-interval snapshot (migration 0016), built after
// seeding; then BENCH_TOUCHED calls (default 20,000) land after it into sessions of the queried day (the worst
// case for the snapshot: every session it must group again is in the range).
//
//   node bench/sessions-lifetime-sql.mjs                      (after `npm run build`)
//   BENCH_ANALYTICS_ROWS=1000000 node bench/sessions-lifetime-sql.mjs   (a quicker run)
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sessionsCountSql } from '../billing-api/dist/sql.js';
import { insertSettings, migrate, openClickHouse } from '../collector-processor/dist/storage/clickhouse.js';
import { buildSessionIntervals } from '../collector-processor/dist/storage/session-intervals.js';
import { seedCallsSql, table } from './lib.mjs';

const ROWS = Number(process.env.BENCH_ANALYTICS_ROWS ?? 10_000_000);
const TOUCHED = Number(process.env.BENCH_TOUCHED ?? 20_000);
const CHUNK = 1_000_000;
const GROUP_RUNS = 11;
const PAGE_RUNS = 21;
const FROM = "toDateTime64('2026-03-10 00:00:00', 6, 'UTC')";
const TO = "toDateTime64('2026-03-11 00:00:00', 6, 'UTC')";

const KEY = 'reinterpretAsUInt128(sipHash128(customer, session_id)) AS session_key';
const CANDIDATES = [
  // a narrow copy: the key, first and last call
  `CREATE TABLE lifetime_narrow (product LowCardinality(String), session_key UInt128,
    first_seen SimpleAggregateFunction(min, DateTime64(6, 'UTC')), last_seen SimpleAggregateFunction(max, DateTime64(6, 'UTC')))
  ENGINE = AggregatingMergeTree ORDER BY (product, session_key)`,
  `CREATE MATERIALIZED VIEW lifetime_narrow_mv TO lifetime_narrow AS
  SELECT product, ${KEY}, first_seen, last_seen FROM mcp_session_summary WHERE session_id != ''`,
];
const wide = (name, settings) => [
  `CREATE TABLE ${name} (product LowCardinality(String), session_key UInt128, customer String, session_id String,
    agent SimpleAggregateFunction(max, String), transport SimpleAggregateFunction(max, LowCardinality(String)),
    session_rule SimpleAggregateFunction(max, LowCardinality(String)),
    first_seen SimpleAggregateFunction(min, DateTime64(6, 'UTC')), last_seen SimpleAggregateFunction(max, DateTime64(6, 'UTC')),
    calls SimpleAggregateFunction(sum, UInt64), errors SimpleAggregateFunction(sum, UInt64),
    revenue_nano SimpleAggregateFunction(sum, Int64), cost_nano SimpleAggregateFunction(sum, Int64))
  ENGINE = AggregatingMergeTree ORDER BY (product, session_key, customer, session_id) SETTINGS ${settings}`,
  `CREATE MATERIALIZED VIEW ${name}_mv TO ${name} AS
  SELECT product, ${KEY}, customer, session_id, agent, transport, session_rule, first_seen, last_seen, calls, errors,
    revenue_nano, cost_nano
  FROM mcp_session_summary WHERE session_id != ''`,
];
CANDIDATES.push(
  ...wide('lifetime_1024', 'index_granularity = 1024'),
  ...wide('lifetime_128', 'index_granularity = 128'),
  ...wide(
    'lifetime_128_small_blocks',
    'index_granularity = 128, min_compress_block_size = 2048, max_compress_block_size = 8192',
  ),
);

const active = (from, key = 'session_key', where = 'AND session_key != 0') =>
  `SELECT count() FROM (SELECT ${key} AS k, min(first_seen) AS a, max(last_seen) AS b FROM ${from}
  WHERE product = 'demo-mcp' ${where} GROUP BY k HAVING a < ${TO} AND b >= ${FROM})`;
const GROUPING = [
  ['current: mcp_session_summary, hash on session_key', active('mcp_session_summary')],
  ['same, max_threads = 1', active('mcp_session_summary'), { max_threads: 1 }],
  [
    'same, by (customer, session id) in key order',
    `SELECT count() FROM (SELECT customer, session_id, min(first_seen) AS a, max(last_seen) AS b FROM mcp_session_summary
  WHERE product = 'demo-mcp' AND session_id != '' GROUP BY customer, session_id HAVING a < ${TO} AND b >= ${FROM})`,
    { optimize_aggregation_in_order: 1 },
  ],
  ['same, by the low 64 bits of the key (not exact)', active('mcp_session_summary', 'toUInt64(session_key)')],
  [
    'same, keys IN those first seen before the end',
    active(
      'mcp_session_summary',
      'session_key',
      `AND session_key != 0 AND session_key IN (SELECT session_key FROM mcp_session_summary WHERE product = 'demo-mcp' AND first_seen < ${TO})`,
    ),
  ],
  [
    'mcp_session_summary FINAL, no grouping',
    `SELECT count() FROM mcp_session_summary FINAL WHERE product = 'demo-mcp' AND session_id != '' AND first_seen < ${TO} AND last_seen >= ${FROM}`,
  ],
  ['narrow copy by key, hash', active('lifetime_narrow', 'session_key', '')],
  [
    'narrow copy by key, in key order',
    active('lifetime_narrow', 'session_key', ''),
    { optimize_aggregation_in_order: 1 },
  ],
  [
    'narrow copy by key, FINAL',
    `SELECT count() FROM lifetime_narrow FINAL WHERE product = 'demo-mcp' AND first_seen < ${TO} AND last_seen >= ${FROM}`,
  ],
];
const TOTALS = `max(agent) AS session_agent, max(transport) AS session_transport, max(session_rule) AS rule,
    min(first_seen) AS first_seen_at, max(last_seen) AS last_seen_at, sum(calls) AS calls, sum(errors) AS errors,
    sum(revenue_nano) AS revenue_nano, sum(cost_nano) AS cost_nano`;
const page = (from) => `SELECT customer, session_id, ${TOTALS} FROM ${from}
  WHERE product = 'demo-mcp' AND session_key IN {keys:Array(UInt128)}
  GROUP BY customer, session_id ORDER BY last_seen_at DESC, customer ASC, session_id ASC LIMIT 100`;
const PAGE = [
  ['current: mcp_session_summary by key', page('mcp_session_summary')],
  ['same, max_threads = 1', page('mcp_session_summary'), { max_threads: 1 }],
  [
    'only counting the matching rows',
    "SELECT count() FROM mcp_session_summary WHERE product = 'demo-mcp' AND session_key IN {keys:Array(UInt128)}",
  ],
  ['copy by key, granules of 1024', page('lifetime_1024')],
  ['copy by key, granules of 128', page('lifetime_128')],
  ['copy by key, granules of 128, 2-8 KiB blocks', page('lifetime_128_small_blocks')],
  ['SELECT 1', 'SELECT 1'],
];

const dir = mkdtempSync(join(tmpdir(), 'tollgate-bench-lifetime-'));
const ch = openClickHouse({ url: '', dataDir: dir, database: 'default', username: 'default', password: '' });
const rowsOf = async (query, params = {}, settings = {}) =>
  (
    await ch.client.query({
      query,
      format: 'JSONEachRow',
      query_params: params,
      clickhouse_settings: settings,
    })
  ).json();

/** Medians of wall and CPU ms per variant, the variants interleaved round-robin; the answers compared. */
async function interleaved(variants, runs, params = {}) {
  const wall = variants.map(() => []);
  const cpu = variants.map(() => []);
  const answers = [];
  for (let i = 0; i <= runs; i++) {
    for (const [k, [, variant, settings]] of variants.entries()) {
      const { sql, params: own } = typeof variant === 'string' ? { sql: variant, params } : variant;
      const t = performance.now();
      const c = process.cpuUsage();
      const out = await rowsOf(sql, own, settings);
      const used = process.cpuUsage(c);
      answers[k] = JSON.stringify(out.map((r) => Object.values(r)));
      if (i === 0) continue; // warm-up
      wall[k].push(performance.now() - t);
      cpu[k].push((used.user + used.system) / 1000);
    }
  }
  const median = (xs) => xs.sort((a, b) => a - b)[xs.length >> 1].toFixed(1);
  return variants.map(([name], k) => [
    name,
    median(wall[k]),
    median(cpu[k]),
    answers[k] === answers[0] ? 'yes' : '—',
  ]);
}

try {
  await migrate(ch.client);
  for (const sql of CANDIDATES) await ch.client.command({ query: sql });
  for (let start = 0; start < ROWS; start += CHUNK) {
    await ch.client.command({
      query: seedCallsSql({ start, count: Math.min(CHUNK, ROWS - start), rows: ROWS, period: '2026-03' }),
      clickhouse_settings: insertSettings(`bench-${start}`),
    });
  }
  const snap = await buildSessionIntervals(ch.client, { marginMs: 0 });
  if (TOUCHED > 0) {
    // calls of the day queried (n from 30% of the month), again, under new ids: landed after the snapshot
    await ch.client.command({
      query: seedCallsSql({
        start: Math.floor(ROWS * 0.3),
        count: TOUCHED,
        rows: ROWS,
        period: '2026-03',
      }).replace('toString(n) AS event_id', "concat('after-snapshot-', toString(n)) AS event_id"),
      clickhouse_settings: insertSettings('bench-after-snapshot'),
    });
  }
  const range = { fromMs: Date.parse('2026-03-10T00:00:00Z'), toMs: Date.parse('2026-03-11T00:00:00Z') };
  const api = (s) => {
    const q = sessionsCountSql({ product: 'demo-mcp' }, range, 'lifetime', s);
    return { sql: q.query, params: q.params };
  };
  GROUPING.unshift(
    ["the API's count, no snapshot (as before migration 0016)", api(undefined)],
    ["the API's count from the snapshot (migration 0016)", api(snap)],
  );
  const parts = await rowsOf(`SELECT table, count() AS parts, sum(rows) AS rows FROM system.parts
    WHERE active AND (table = 'mcp_session_summary' OR table LIKE 'lifetime%') GROUP BY table ORDER BY table`);
  const keys = (
    await rowsOf(`SELECT toString(session_key) AS k FROM (SELECT session_key, min(first_seen) AS a, max(last_seen) AS b
      FROM mcp_session_summary WHERE product = 'demo-mcp' AND session_key != 0 GROUP BY session_key
      HAVING a < ${TO} AND b >= ${FROM}) ORDER BY b DESC LIMIT 100 WITH TIES`)
  ).map((r) => BigInt(r.k));
  console.log(
    `${ROWS.toLocaleString()} calls; parts: ${parts.map((p) => `${p.table} ${p.parts} (${p.rows} rows)`).join(', ')}`,
  );
  console.log(
    `\nthe past range's active sessions, counted (${GROUP_RUNS} interleaved rounds; same = same count)`,
  );
  console.log(
    table([['variant', 'wall ms', 'CPU ms', 'same'], ...(await interleaved(GROUPING, GROUP_RUNS))]),
  );
  console.log(`\nthe page's totals by key, ${keys.length} keys (${PAGE_RUNS} interleaved rounds)`);
  console.log(
    table([['variant', 'wall ms', 'CPU ms', 'same'], ...(await interleaved(PAGE, PAGE_RUNS, { keys }))]),
  );
} finally {
  await ch.close();
  rmSync(dir, { recursive: true, force: true });
}
