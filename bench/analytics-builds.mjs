// Analytics A/B of builds and schemas in one process: N calls (default 10 million) seeded as in
// bench/analytics.mjs under the schema of BENCH_SCHEMA_ROOT (a checkout whose collector-processor is built; default
// this one), then this build's API and each of BENCH_APIS ('label=/path/to/billing-api/dist/index.js,…') over the
// same data, each with source views and raw, every endpoint's requests interleaved round-robin with the order
// turned every round (BENCH_VIEW_ROUNDS, default 15; BENCH_RAW_ROUNDS, default 3) after one warm-up request of
// every API on every endpoint. Checks that the builds' answers are equal (without the fields a build may add or
// that differ between sources: duration quantiles, agent, priceUsageNano). bench/analytics.mjs's
// BENCH_ANALYTICS_AB swaps only the API; this also swaps the schema, one schema per process (chDB: one data
// directory per process), so run it once per schema, alternated:
//
//   BENCH_SCHEMA_ROOT=/tmp/base-ana BENCH_APIS=base=/tmp/base-ana/billing-api/dist/index.js node bench/analytics-builds.mjs
//   BENCH_APIS=base=/tmp/base-ana/billing-api/dist/index.js node bench/analytics-builds.mjs
//
// BENCH_ANALYTICS_ROWS and BENCH_ANALYTICS_ONLY as in bench/analytics.mjs; BENCH_OUT=file.json writes the medians.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildApi } from '../billing-api/dist/index.js';
import { analyticsEndpoints, benchAnalyticsApi, ROOT, seedCallsSql } from './lib.mjs';

const SCHEMA_ROOT = process.env.BENCH_SCHEMA_ROOT ?? ROOT;
const { insertSettings, migrate, openClickHouse } = await import(
  join(SCHEMA_ROOT, 'collector-processor/dist/storage/clickhouse.js')
);
const { buildSessionIntervals } = await import(
  join(SCHEMA_ROOT, 'collector-processor/dist/storage/session-intervals.js')
);
const builds = { this: buildApi };
for (const kv of (process.env.BENCH_APIS ?? '').split(',').filter(Boolean)) {
  const [label, path] = kv.split('=');
  builds[label] = (await import(path)).buildApi;
}
const ROWS = Number(process.env.BENCH_ANALYTICS_ROWS ?? 10_000_000);
const VIEW_ROUNDS = Number(process.env.BENCH_VIEW_ROUNDS ?? 15);
const RAW_ROUNDS = Number(process.env.BENCH_RAW_ROUNDS ?? 3);
const ONLY = process.env.BENCH_ANALYTICS_ONLY ? new RegExp(process.env.BENCH_ANALYTICS_ONLY) : undefined;
const PERIOD = '2026-03',
  NEXT = '2026-04',
  KEY = 'k';
const dir = mkdtempSync(join(tmpdir(), 'tollgate-bench-analytics-builds-'));
const ch = openClickHouse({ url: '', dataDir: dir, database: 'default', username: 'default', password: '' });
const mk = (build, source) => benchAnalyticsApi(build, { key: KEY, clickhouse: ch.readClient(), source });
const comparable = (b) =>
  JSON.stringify({ ...b, readFrom: undefined }, (k, v) =>
    k === 'durationP50Us' || k === 'durationP95Us' || k === 'agent' || k === 'priceUsageNano' ? undefined : v,
  );
const med = (a) => {
  const s = [...a].sort((x, y) => x - y);
  return s[Math.floor(s.length / 2)];
};
try {
  await migrate(ch.client);
  const t0 = performance.now();
  for (let start = 0; start < ROWS; start += 1_000_000)
    await ch.client.command({
      query: seedCallsSql({ start, count: Math.min(1_000_000, ROWS - start), rows: ROWS, period: PERIOD }),
      clickhouse_settings: insertSettings(`s-${start}`),
    });
  const seedS = (performance.now() - t0) / 1000;
  await buildSessionIntervals(ch.client, { marginMs: 0 });
  await ch.client.command({
    query: seedCallsSql({ start: ROWS - 20000, count: 20000, rows: ROWS, period: PERIOD }).replace(
      'toString(n) AS event_id',
      "concat('after-snapshot-', toString(n)) AS event_id",
    ),
    clickhouse_settings: insertSettings('after'),
  });
  const types = await (
    await ch.client.query({
      query:
        "SELECT table, type FROM system.columns WHERE database = currentDatabase() AND name = 'revenue_nano' ORDER BY table",
      format: 'JSONEachRow',
    })
  ).json();
  console.log(
    `schema ${SCHEMA_ROOT}: seeded in ${seedS.toFixed(0)} s; revenue_nano: ${types.map((t) => `${t.table} ${t.type}`).join('; ')}`,
  );
  const apps = {};
  for (const b of Object.keys(builds))
    for (const s of ['views', 'raw']) {
      apps[`${b}/${s}`] = mk(builds[b], s);
      await apps[`${b}/${s}`].ready();
    }
  const eps = analyticsEndpoints(PERIOD, NEXT, ROWS).filter(([n]) => !ONLY || ONLY.test(n));
  const req = async (app, url) => {
    const t = performance.now();
    const r = await app.inject({ url, headers: { authorization: `Bearer ${KEY}` } });
    const ms = performance.now() - t;
    if (r.statusCode !== 200) throw new Error(`${url} ${r.statusCode} ${r.body}`);
    return { ms, body: r.json() };
  };
  // warm-up: every app, every endpoint, once
  for (const [, url] of eps) for (const a of Object.values(apps)) await req(a, url);
  const out = [];
  for (const [name, url] of eps) {
    const row = { endpoint: name };
    for (const source of ['views', 'raw']) {
      const labels = Object.keys(apps).filter((l) => l.endsWith(source));
      const ms = Object.fromEntries(labels.map((l) => [l, []]));
      const bodies = {};
      const rounds = source === 'views' ? VIEW_ROUNDS : RAW_ROUNDS;
      for (let i = 0; i < rounds; i++) {
        const order = i % 2 ? [...labels].reverse() : labels;
        for (const l of order) {
          const r = await req(apps[l], url);
          ms[l].push(r.ms);
          bodies[l] = comparable(r.body);
        }
      }
      for (const l of labels) row[l] = med(ms[l]);
      row[`${source} same`] = new Set(Object.values(bodies)).size === 1;
    }
    out.push(row);
    console.log(
      `${name}: ${Object.entries(row)
        .filter(([k]) => k !== 'endpoint')
        .map(([k, v]) => `${k} ${typeof v === 'number' ? v.toFixed(1) : v}`)
        .join(', ')}`,
    );
  }
  if (process.env.BENCH_OUT)
    writeFileSync(process.env.BENCH_OUT, JSON.stringify({ schema: SCHEMA_ROOT, seedS, out }, null, 1));
  for (const a of Object.values(apps)) await a.close();
} finally {
  await ch.close();
  rmSync(dir, { recursive: true, force: true });
}
