// Analytics query latency: every analytics endpoint over N seeded calls (default 10 million), answered
// from the materialized views (what the API does) vs from a full scan of the raw table (the same API built
// with `source: 'raw'`), through the HTTP stack (fastify inject: routing, validation, serialization).
// Seeding goes straight into chDB in a temporary data directory: INSERT … SELECT from numbers() into
// mcp_tool_calls, so the rows reach every view (mcp_daily_stats, mcp_tool_daily_stats,
// mcp_customer_daily_stats, mcp_session_daily, mcp_session_summary) through the real MV path.
//
//   node bench/analytics.mjs                      (after `npm run build`)
//   BENCH_ANALYTICS_ROWS=1000000 node bench/analytics.mjs   (a quicker run)
//
// A/B: BENCH_ANALYTICS_AB='before=/path/to/other/billing-api/dist/index.js,…' times other builds of the API
// (an earlier commit's billing-api, built elsewhere) against the same seeded data in the same run, their
// requests interleaved round-robin with this build's so that load on the machine falls on all alike;
// BENCH_ANALYTICS_ONLY='sessions' keeps the endpoints whose name matches. The path `lander-connection` is this
// build reading on the lander's chDB connection with engine-bound parameters (clickhouse.chdbReadConnections
// 0) instead of the read connections `tollgate start` gives the API (`ch.readClient()`).
//
// After seeding, a snapshot of session intervals is built as `tollgate start`'s job would (migration 0016; margin
// 0: this process is the only writer and its inserts have returned), then BENCH_ANALYTICS_TOUCHED calls
// (default 20,000, again the month's last ones) land after it: the sessions a past range must group again.
//
// Fairness between endpoints (every endpoint is timed in the same state):
// - Before the first endpoint, the bench waits until the engine runs no merge, then writes the seed's dirty
//   pages out (`sync -f` on the data directory's file system; BENCH_ANALYTICS_SETTLE=0 skips both): the seed's
//   parts are still being merged for a few seconds after the last insert, on the same two cores, and ~0.8 GiB
//   of them are still unwritten, which the kernel writes back 30 s after (vm.dirty_expire_centisecs); without
//   this only the first endpoints measured (revenue/by-tool first) ran beside them.
// - Each build of the API gets BENCH_ANALYTICS_WARMUP (default 5) untimed requests per endpoint, the raw scan
//   one: ClickHouse compiles an expression (JIT, LLVM) the 4th time a query uses it in a process
//   (min_count_to_compile_expression / _aggregate_expression / _sort_description = 3), which makes that one
//   request 30–250 ms slower; with one warm-up it fell on the 3rd timed request of most endpoints, the
//   maximum (the "p95" of 15) of revenue/by-tool in every run. The warm-up times are kept in the result
//   (`warmupMs`): what the first requests of a fresh process cost. The raw scan's own compile falls on its
//   last timed run, which its median of three leaves out.
// - BENCH_ANALYTICS_ORDER=reverse measures the endpoints last to first.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildApi } from '../billing-api/dist/index.js';
import { insertSettings, migrate, openClickHouse } from '../collector-processor/dist/storage/clickhouse.js';
import { buildSessionIntervals } from '../collector-processor/dist/storage/session-intervals.js';
import { analyticsEndpoints, benchAnalyticsApi, seedCallsSql, table, writeResult } from './lib.mjs';

const ROWS = Number(process.env.BENCH_ANALYTICS_ROWS ?? 10_000_000);
const CHUNK = 1_000_000;
const VIEW_RUNS = 15;
const WARMUP = Number(process.env.BENCH_ANALYTICS_WARMUP ?? 5);
const SETTLE = process.env.BENCH_ANALYTICS_SETTLE !== '0';
const RAW_RUNS = 3;
const KEY = 'bench-finance-key';

const PERIOD = '2026-03';
const NEXT_PERIOD = '2026-04';

const dir = mkdtempSync(join(tmpdir(), 'tollgate-bench-analytics-'));
const ch = openClickHouse({ url: '', dataDir: dir, database: 'default', username: 'default', password: '' });

/** Dirty page cache in MiB (Linux; undefined elsewhere): written by the seed, not yet on disk. */
function dirtyMiB() {
  try {
    const kb = /^Dirty:\s+(\d+) kB/m.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1];
    return kb === undefined ? undefined : Math.round(Number(kb) / 1024);
  } catch {
    return undefined;
  }
}

async function one(query) {
  const rs = await ch.client.query({ query, format: 'JSONEachRow' });
  return (await rs.json())[0];
}

const AB = (process.env.BENCH_ANALYTICS_AB ?? '')
  .split(',')
  .filter(Boolean)
  .map((kv) => {
    const [label, path] = kv.split('=');
    return { label, path };
  });
const ONLY = process.env.BENCH_ANALYTICS_ONLY ? new RegExp(process.env.BENCH_ANALYTICS_ONLY) : undefined;

const appOf = (source, build = buildApi, clickhouse = ch.readClient()) =>
  benchAnalyticsApi(build, { key: KEY, clickhouse, source });

async function timed(app, url, runs) {
  const ms = [];
  let body;
  for (let i = 0; i < runs; i++) {
    const t = performance.now();
    const res = await app.inject({ url, headers: { authorization: `Bearer ${KEY}` } });
    ms.push(performance.now() - t);
    if (res.statusCode !== 200) throw new Error(`${url}: ${res.statusCode} ${res.body}`);
    body = res.json();
  }
  const inOrder = [...ms];
  ms.sort((a, b) => a - b);
  return {
    inOrder,
    median: ms[Math.floor(ms.length / 2)],
    p95: ms[Math.min(ms.length - 1, Math.floor(ms.length * 0.95))],
    body,
  };
}

/** The answer without the fields that legitimately differ between the two sources. */
function comparable(body) {
  return JSON.stringify({ ...body, readFrom: undefined }, (k, v) =>
    k === 'durationP50Us' || k === 'durationP95Us' || k === 'agent' ? undefined : v,
  );
}

try {
  await migrate(ch.client);
  const t0 = performance.now();
  for (let start = 0; start < ROWS; start += CHUNK) {
    await ch.client.command({
      query: seedCallsSql({ start, count: Math.min(CHUNK, ROWS - start), rows: ROWS, period: PERIOD }),
      clickhouse_settings: insertSettings(`bench-${start}`),
    });
    process.stderr.write(
      `\rseeded ${Math.min(start + CHUNK, ROWS).toLocaleString()} / ${ROWS.toLocaleString()} calls`,
    );
  }
  const seedSeconds = (performance.now() - t0) / 1000;
  process.stderr.write('\n');
  const views = [
    'mcp_daily_stats',
    'mcp_tool_daily_stats',
    'mcp_customer_daily_stats',
    'mcp_session_daily',
    'mcp_session_summary',
  ];
  const counts = await one(`SELECT (SELECT count() FROM mcp_tool_calls) AS raw_rows,
    ${views.map((v) => `(SELECT count() FROM ${v}) AS ${v}_rows, (SELECT sum(calls) FROM ${v}) AS ${v}_calls`).join(',\n    ')}`);
  if ([counts.raw_rows, ...views.map((v) => counts[`${v}_calls`])].some((n) => Number(n) !== ROWS)) {
    throw new Error(`seeding lost rows: ${JSON.stringify(counts)}`);
  }

  const TOUCHED = Number(process.env.BENCH_ANALYTICS_TOUCHED ?? 20_000);
  const snapshot = await buildSessionIntervals(ch.client, { marginMs: 0 });
  if (TOUCHED > 0) {
    await ch.client.command({
      query: seedCallsSql({ start: ROWS - TOUCHED, count: TOUCHED, rows: ROWS, period: PERIOD }).replace(
        'toString(n) AS event_id',
        "concat('after-snapshot-', toString(n)) AS event_id",
      ),
      clickhouse_settings: insertSettings('bench-after-snapshot'),
    });
  }

  // wait until no merge has run for 1 s (at most 5 minutes): see the header
  const settleStart = performance.now();
  let mergesAfterSeed = 0;
  if (SETTLE) {
    for (let quiet = 0; quiet < 10 && performance.now() - settleStart < 300_000; ) {
      const n = Number((await one('SELECT count() AS n FROM system.merges')).n);
      if (n === 0) quiet++;
      else {
        quiet = 0;
        mergesAfterSeed++;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  // then write the seed's dirty pages out (`sync -f`: the data directory's file system) rather than leave the
  // kernel's writeback (after vm.dirty_expire_centisecs, 30 s) to run beside the first endpoints
  const dirtyBeforeSync = dirtyMiB();
  const syncStart = performance.now();
  if (SETTLE && dirtyBeforeSync !== undefined) {
    try {
      execFileSync('sync', ['-f', dir]);
    } catch {
      // no GNU sync here: the writeback is left to the kernel
    }
  }
  const syncSeconds = (performance.now() - syncStart) / 1000;
  const settleSeconds = (performance.now() - settleStart) / 1000;

  const api = appOf('views');
  const raw = appOf('raw');
  await api.ready();
  await raw.ready();
  const variants = [];
  for (const { label, path } of AB) {
    const app =
      path === 'lander-connection'
        ? appOf('views', buildApi, ch.client)
        : appOf('views', (await import(path)).buildApi);
    await app.ready();
    variants.push({ label, app });
  }
  const allEndpoints = analyticsEndpoints(PERIOD, NEXT_PERIOD, ROWS);
  const endpoints = allEndpoints.filter(([name]) => !ONLY || ONLY.test(name));
  if (process.env.BENCH_ANALYTICS_ORDER === 'reverse') endpoints.reverse();
  const rows = [
    ['endpoint', 'views median ms', 'views p95 ms', 'raw scan median ms', 'ratio', 'same answer'],
  ];
  const abRows = [
    [
      'endpoint',
      ...variants.flatMap((v) => [`${v.label} ms`, `${v.label} ratio`]),
      'this build ms',
      'this build ratio',
      'raw scan ms',
    ],
  ];
  const results = [];
  for (const [name, url] of endpoints) {
    const mergesAtStart = Number((await one('SELECT count() AS n FROM system.merges')).n);
    const dirtyAtStart = dirtyMiB();
    let v;
    let abTimes = [];
    let warmup = [];
    if (variants.length) {
      const apps = [...variants.map((x) => x.app), api];
      // warm-up, interleaved too; this build's times kept
      for (let i = 0; i < WARMUP; i++) {
        for (const app of apps) {
          const w = await timed(app, url, 1);
          if (app === api) warmup.push(w.median);
        }
      }
      const runs = apps.map(() => []);
      for (let i = 0; i < VIEW_RUNS; i++) {
        for (const [k, app] of apps.entries()) runs[k].push(await timed(app, url, 1));
      }
      const merged = runs.map((rs) => {
        const ms = rs.map((x) => x.median).sort((a, b) => a - b);
        return {
          inOrder: rs.map((x) => x.median),
          median: ms[Math.floor(ms.length / 2)],
          p95: ms[Math.min(ms.length - 1, Math.floor(ms.length * 0.95))],
          body: rs[rs.length - 1].body,
        };
      });
      v = merged[merged.length - 1];
      abTimes = merged.slice(0, -1);
      for (const [k, t] of abTimes.entries()) {
        if (comparable(t.body) !== comparable(v.body)) {
          throw new Error(`${name}: ${variants[k].label} answers differently`);
        }
      }
    } else {
      warmup = WARMUP ? (await timed(api, url, WARMUP)).inOrder : [];
      v = await timed(api, url, VIEW_RUNS);
    }
    await timed(raw, url, 1); // warm-up
    const r = await timed(raw, url, RAW_RUNS);
    if (variants.length) {
      abRows.push([
        name,
        ...abTimes.flatMap((t) => [t.median.toFixed(1), `${(r.median / t.median).toFixed(1)}×`]),
        v.median.toFixed(1),
        `${(r.median / v.median).toFixed(1)}×`,
        r.median.toFixed(1),
      ]);
    }
    const ratio = r.median / v.median;
    const same = comparable(v.body) === comparable(r.body);
    rows.push([
      name,
      v.median.toFixed(1),
      v.p95.toFixed(1),
      r.median.toFixed(1),
      `${ratio.toFixed(1)}×`,
      same ? 'yes' : 'NO',
    ]);
    results.push({
      endpoint: name,
      url,
      viewsMedianMs: v.median,
      viewsP95Ms: v.p95,
      warmupMs: warmup.map((x) => Math.round(x * 10) / 10),
      viewsMsInOrder: v.inOrder.map((x) => Math.round(x * 10) / 10),
      ...(variants.length
        ? {
            abMsInOrder: Object.fromEntries(
              abTimes.map((t, k) => [variants[k].label, t.inOrder.map((x) => Math.round(x * 10) / 10)]),
            ),
          }
        : {}),
      mergesAtStart,
      dirtyMiBAtStart: dirtyAtStart,
      rawMedianMs: r.median,
      ratio,
      same,
      readFrom: v.body.readFrom,
    });
    process.stderr.write(
      `  ${name}: ${v.median.toFixed(1)} ms vs ${r.median.toFixed(1)} ms (merges at start ${mergesAtStart}; dirty ${dirtyAtStart} MiB; warm-up ${warmup.map((x) => x.toFixed(0)).join(' ')}; timed ${v.inOrder.map((x) => x.toFixed(0)).join(' ')})\n`,
    );
  }
  await api.close();
  await raw.close();
  for (const x of variants) await x.app.close();

  const viewRows = Object.fromEntries(views.map((v) => [v, Number(counts[`${v}_rows`])]));
  console.log(
    `analytics over ${ROWS.toLocaleString()} calls, seeded in ${seedSeconds.toFixed(0)} s; view rows: ${Object.entries(
      viewRows,
    )
      .map(([v, n]) => `${v} ${n.toLocaleString()}`)
      .join(', ')}`,
  );
  console.log(
    `session-interval snapshot: ${snapshot.sessions.toLocaleString()} sessions built in ${snapshot.ms} ms; ${TOUCHED.toLocaleString()} calls landed after it`,
  );
  console.log(
    SETTLE
      ? `merges after seeding: waited ${(settleSeconds - syncSeconds).toFixed(1)} s until none ran, then ${syncSeconds.toFixed(1)} s to write ${dirtyBeforeSync ?? '?'} MiB of dirty pages; ${WARMUP} warm-up requests per endpoint and build`
      : `merges after seeding: not waited for (BENCH_ANALYTICS_SETTLE=0); ${WARMUP} warm-up requests per endpoint and build`,
  );
  console.log(table(rows));
  if (variants.length) {
    console.log(`\nA/B in the same run (${VIEW_RUNS} requests each, interleaved; ratio = raw scan ÷ median)`);
    console.log(table(abRows));
  }
  writeResult('analytics', {
    rows: ROWS,
    viewRows,
    seedSeconds,
    sessionSnapshot: { sessions: snapshot.sessions, buildMs: snapshot.ms, touchedCalls: TOUCHED },
    settle: SETTLE
      ? {
          seconds: settleSeconds,
          pollsWithMerges: mergesAfterSeed,
          syncSeconds,
          dirtyMiBBeforeSync: dirtyBeforeSync,
        }
      : false,
    warmupRequests: WARMUP,
    order: process.env.BENCH_ANALYTICS_ORDER === 'reverse' ? 'reverse' : 'forward',
    viewRuns: VIEW_RUNS,
    rawRuns: RAW_RUNS,
    results,
    ...(variants.length ? { ab: abRows } : {}),
    note: 'medians through fastify inject; raw = the same API with source "raw" (full scan of mcp_tool_calls); hour buckets and session calls read the raw table in both; readFrom lists the tables the views answer read',
  });
} finally {
  await ch.close();
  rmSync(dir, { recursive: true, force: true });
}
