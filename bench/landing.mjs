// Landing benchmark: CPU per rated row of turning rated calls into a ClickHouse insert and running it on
// embedded chDB — encoding on the main thread plus chDB's insert threads — split into the main thread (what
// the pipeline competes with) and the whole process. Variants alternate in one process against one chDB:
//   string TSV + client.insert  the landing before this change: a TSV string per record (encodeTsvRow),
//                               joined per block, inserted through @clickhouse/client (chDB's connection
//                               decodes it to a string and runs `SET …; INSERT … FORMAT TabSeparated\n<rows>`)
//   TsvWriter + client.insert   bytes written by TsvWriter, the same client.insert (the encoder's share)
//   TsvWriter + raw insert      TsvWriter's bytes to chDB as a Buffer (chDB's raw insert), with
//                               ClickHouse's parallel parsing (its default) and with one parser (the
//                               lander's landingSettings)
//   TsvWriter + file()          the same bytes written to a file and inserted with INSERT … SELECT * FROM
//                               file(…) (today's ClickHouseHandle.insertTsv on chDB), one parser
//   now, no views               today's path into a copy of mcp_tool_calls without the materialized views
// Rows are shaped like bench/e2e.mjs's spans after rating: records of 512 calls of one customer and session,
// 50 customers, 4 tools, 5 agents, 400 sessions. `BENCH_BLOCKS` (rows per insert), `BENCH_ROWS` (rows per
// variant and round), `BENCH_ROUNDS`. BENCH_PER_VIEW=1 measures each materialized view on its own instead.
//
// With BENCH_BASE=/path/to/another/checkout (built), a second part runs bench/e2e.mjs's load (512-span OTLP
// exports, 8 senders, enforcement on) against that checkout's Tollgate and this one, alternating, and reads each
// Tollgate process's CPU from /proc: CPU per acknowledged-and-landed span, the whole process and its main thread.
// BENCH_FLAGS="--landing-flush-ms 2000" starts this build (not the base) with those flags. BENCH_PARSE=1 splits
// an insert's CPU into the parser, the column types, the table and the views (see parseVariants).
// BENCH_FORMAT=1 puts text and binary side by side (see formatVariants): TabSeparated inline (`--chdb-insert
// inline`), TabSeparated through a file, and NativeWriter's blocks joined, through a file (the default), each into a
// Null-engine copy of mcp_tool_calls (the format's share alone) and into mcp_tool_calls with every view.
// BENCH_NO_MERGES=1 stops chDB's merges for the run (SYSTEM STOP MERGES): a variant's CPU is then its inserts
// alone, without the merges that earlier variants' parts happen to trigger (the same rows make the same parts
// in every format, so merges are not what a format changes).
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import {
  drive,
  INGEST_HEADERS as headers,
  metric,
  protobufBatches,
  ROOT,
  startTollgate,
  table,
  writeResult,
} from './lib.mjs';

const dist = (p) => import(join(ROOT, 'collector-processor/dist', p));
const { migrate, insertSettings, openClickHouse } = await dist('storage/clickhouse.js');
const { encodeTsvRow, TsvWriter, TSV_COLUMNS } = await dist('landing/tsv.js');
const { NativeWriter, NATIVE_COLUMNS, joinNativeBlocks } = await dist('landing/native.js');
const { landingSettings } = await dist('landing/lander.js');

const BLOCK_SIZES = (process.env.BENCH_BLOCKS ?? '6656,25088').split(',').map(Number);
const ROWS_PER_ROUND = Number(process.env.BENCH_ROWS ?? 50_000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 3);
const RECORD = 512;
/** Only the variants named (separated by `|`), e.g. BENCH_VARIANTS='TsvWriter + raw insert, one parser (now)|now, no views'. */
const ONLY = process.env.BENCH_VARIANTS?.split('|');

const CUSTOMERS = Array.from({ length: 50 }, (_, i) => `customer-${i}`);
const TOOLS = ['get_forecast', 'search_docs', 'run_report', 'lookup_customer'];
const now = Date.now() - 60_000;
let seq = 0;
function ratedRow(b, i) {
  const n = seq++;
  const input = 100 + (i % 50);
  const output = 400 + (i % 300);
  const price = 2_000_000n + BigInt(input) * 1000n + BigInt(output) * 3000n;
  return {
    eventId: `${n.toString(16).padStart(32, '0')}${(n * 7).toString(16).padStart(16, '0')}`,
    traceId: n.toString(16).padStart(32, '0'),
    spanId: (n * 7).toString(16).padStart(16, '0'),
    product: 'demo-mcp',
    customer: CUSTOMERS[b % CUSTOMERS.length],
    agent: `agent-${i % 5}`,
    sessionId: `session-${b % 400}`,
    tool: TOOLS[i % TOOLS.length],
    transport: 'stdio',
    source: 'otlp',
    status: 'ok',
    errorType: '',
    protocolVersion: '2025-06-18',
    instanceId: `bench-${b % 8}`,
    startUnixUs: (now + n) * 1000,
    durationUs: 35_000 + (n % 1000),
    inputTokens: input,
    outputTokens: output,
    priceNano: price,
    costNano: 500_000n,
    priceCallNano: 2_000_000n,
    priceInputNano: BigInt(input) * 1000n,
    priceOutputNano: BigInt(output) * 3000n,
    priceDurationNano: 0n,
    tier: 1,
    planId: 'std',
    planVersion: 'bench',
    currency: 'USD',
    decision: 'billed',
    period: '2026-12',
    receivedAtMs: now,
    sessionRule: 'protocol',
    pricePerSecondNano: 0n,
    inputTokensPriced: input,
    outputTokensPriced: output,
    usageLines: [],
    usageQuantityMicro: [],
    usageUnitNano: [],
    usagePriceNano: [],
    usageCostNano: [],
  };
}

/** The rated calls of one block, as the pipeline hands them over: records of 512 calls. */
function block(rows) {
  const records = [];
  for (let r = 0; r < rows / RECORD; r++) {
    const b = Math.floor(seq / RECORD);
    records.push(Array.from({ length: RECORD }, (_, i) => ratedRow(b, i)));
  }
  return records;
}

/** CPU seconds (utime + stime, clock ticks of 10 ms) of a /proc stat file: a process or one of its threads. */
function procCpu(path) {
  const stat = readFileSync(path, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
}
const mainThreadCpu = () => procCpu(`/proc/self/task/${process.pid}/stat`);

const dir = mkdtempSync(join(tmpdir(), 'tollgate-bench-landing-'));
const ch = openClickHouse({ url: '', dataDir: dir, database: 'default', username: 'default', password: '' });
await migrate(ch.client);
await ch.client.command({ query: 'CREATE TABLE calls_noviews AS mcp_tool_calls' });
if (process.env.BENCH_NO_MERGES) await ch.client.command({ query: 'SYSTEM STOP MERGES' });

let bid = 0;
/** The old encoding: one string per record (the pipeline's `tsv += encodeTsvRow(row)`), joined per block. */
function strings(records) {
  const parts = [];
  for (const rows of records) {
    let tsv = '';
    for (const r of rows) tsv += encodeTsvRow(r);
    parts.push(tsv);
  }
  return Buffer.from(parts.join(''));
}
/** A block as the pipeline and the lander make it: `writer`'s bytes per record, then `join`ed into one body. */
function encoded(writer, join, records) {
  const parts = [];
  for (const rows of records) {
    for (const r of rows) writer.add(r);
    parts.push(writer.take());
  }
  return join(parts);
}
const writer = new TsvWriter();
/** Today's encoding: TsvWriter's bytes per record, concatenated per block. */
const bytes = (records) => encoded(writer, (parts) => Buffer.concat(parts), records);
const nativeWriter = new NativeWriter();
/** NativeWriter's blocks, one per record, joined into one Native block. */
const nativeBytes = (records) => encoded(nativeWriter, joinNativeBlocks, records);
const clientInsert = (table, body) =>
  ch.client.insert({
    table,
    columns: TSV_COLUMNS,
    format: 'TabSeparated',
    values: Readable.from([body], { objectMode: false }),
    clickhouse_settings: insertSettings(`bench.${bid++}`),
  });
/**
 * BENCH_PER_VIEW=1: instead of the landing paths, today's path into copies of mcp_tool_calls that each feed a
 * copy of one view's table through a copy of that view (what each view costs), beside no views and all views.
 */
async function perViewVariants() {
  const createQuery = async (name) => {
    const [r] = await (
      await ch.client.query({
        query: `SELECT create_table_query AS q FROM system.tables WHERE database = currentDatabase() AND name = '${name}'`,
        format: 'JSONEachRow',
      })
    ).json();
    return r.q;
  };
  // [view, its table, the view fed from that table (0012's monthly sets) or none]
  const VIEWS = [
    ['mcp_daily_stats_mv', 'mcp_daily_stats'],
    ['mcp_session_summary_mv', 'mcp_session_summary'],
    ['mcp_tool_daily_stats_mv', 'mcp_tool_daily_stats'],
    ['mcp_session_daily_mv', 'mcp_session_daily'],
    [
      'mcp_customer_daily_stats_mv',
      'mcp_customer_daily_stats',
      ['mcp_customer_monthly_sessions_mv', 'mcp_customer_monthly_sessions'],
    ],
    ['mcp_usage_daily_stats_mv', 'mcp_usage_daily_stats'],
  ];
  const land = (table) => (records) =>
    ch.insertTsv(table, TSV_COLUMNS, bytes(records), landingSettings(`bench.${bid++}`));
  const variants = { 'no views': land('calls_noviews') };
  for (const [i, [view, target, next]] of VIEWS.entries()) {
    await ch.client.command({ query: `CREATE TABLE calls_v${i} AS mcp_tool_calls` });
    await ch.client.command({ query: `CREATE TABLE t_v${i} AS ${target}` });
    const copy = (q, from, to, mv, mvCopy, toCopy) =>
      q
        .replace(`.${mv} `, `.${mvCopy} `)
        .replace(`TO default.${to}`, `TO default.${toCopy}`)
        .replaceAll(`default.${from}`, `default.${from === 'mcp_tool_calls' ? `calls_v${i}` : `t_v${i}`}`);
    await ch.client.command({
      query: copy(await createQuery(view), 'mcp_tool_calls', target, view, `mv_v${i}`, `t_v${i}`),
    });
    if (next) {
      const [nextView, nextTarget] = next;
      await ch.client.command({ query: `CREATE TABLE t_v${i}_next AS ${nextTarget}` });
      await ch.client.command({
        query: copy(
          await createQuery(nextView),
          target,
          nextTarget,
          nextView,
          `mv_v${i}_next`,
          `t_v${i}_next`,
        ),
      });
    }
    variants[`+ ${view}${next ? ` (+ ${next[0]})` : ''}`] = land(`calls_v${i}`);
  }
  variants['all views (now)'] = land('mcp_tool_calls');
  return variants;
}

/** ClickHouseHandle.insertTsv with chDB's raw insert (the bytes inline) or through a file (today). */
const insertVia = (mode, table, body, settings) => {
  ch.chdbInsert = mode;
  return ch.insertTsv(table, TSV_COLUMNS, body, settings);
};
const LANDING_PATHS = {
  'string TSV + client.insert': (records) => clientInsert('mcp_tool_calls', strings(records)),
  'TsvWriter + client.insert': (records) => clientInsert('mcp_tool_calls', bytes(records)),
  'TsvWriter + raw insert, parallel parsing': (records) =>
    insertVia('raw', 'mcp_tool_calls', bytes(records), insertSettings(`bench.${bid++}`)),
  'TsvWriter + raw insert, one parser': (records) =>
    insertVia('raw', 'mcp_tool_calls', bytes(records), landingSettings(`bench.${bid++}`)),
  'TsvWriter + file(), one parser (now)': (records) =>
    insertVia('file', 'mcp_tool_calls', bytes(records), landingSettings(`bench.${bid++}`)),
  'now, no views': (records) =>
    insertVia('file', 'calls_noviews', bytes(records), landingSettings(`bench.${bid++}`)),
};
/**
 * BENCH_PARSE=1: where an insert's CPU goes — today's bytes into a Null-engine copy of mcp_tool_calls (the
 * TabSeparated parser and type conversion, nothing stored), into a Null table of the same columns all typed
 * String (the parser alone), into the MergeTree without views, and with every view.
 */
async function parseVariants() {
  const [r] = await (
    await ch.client.query({
      query:
        "SELECT groupArray(concat(name, ' ', if(type LIKE 'Array%', 'Array(String)', 'String'))) AS cols FROM (SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = 'mcp_tool_calls' ORDER BY position)",
      format: 'JSONEachRow',
    })
  ).json();
  await ch.client.command({ query: 'CREATE TABLE calls_null AS mcp_tool_calls ENGINE = Null' });
  await ch.client.command({ query: `CREATE TABLE calls_null_strings (${r.cols.join(', ')}) ENGINE = Null` });
  const land = (table) => (records) =>
    ch.insertTsv(table, TSV_COLUMNS, bytes(records), landingSettings(`bench.${bid++}`));
  return {
    'Null engine, every column String (the parser alone)': land('calls_null_strings'),
    'Null engine (parser + types, nothing stored)': land('calls_null'),
    'MergeTree, no views': land('calls_noviews'),
    'MergeTree + every view (now)': land('mcp_tool_calls'),
  };
}

/**
 * BENCH_FORMAT=1: text against binary, into a Null-engine copy of mcp_tool_calls (what the format costs the
 * engine: parsing or copying, and the conversion to the column types) and into mcp_tool_calls with every view.
 * Encoding included, as in every variant.
 */
async function formatVariants() {
  await ch.client.command({ query: 'CREATE TABLE calls_null AS mcp_tool_calls ENGINE = Null' });
  const variants = {};
  for (const [table, label] of [
    ['calls_null', 'Null engine'],
    ['mcp_tool_calls', 'every view'],
  ]) {
    variants[`${label}: TabSeparated inline (--chdb-insert inline)`] = (records) =>
      insertVia('raw', table, bytes(records), landingSettings(`bench.${bid++}`));
    variants[`${label}: TabSeparated file()`] = (records) =>
      insertVia('file', table, bytes(records), landingSettings(`bench.${bid++}`));
    variants[`${label}: Native file() (default)`] = (records) =>
      ch.insertNative(table, NATIVE_COLUMNS, nativeBytes(records), landingSettings(`bench.${bid++}`));
  }
  return variants;
}

const VARIANTS = process.env.BENCH_PER_VIEW
  ? await perViewVariants()
  : process.env.BENCH_PARSE
    ? await parseVariants()
    : process.env.BENCH_FORMAT
      ? await formatVariants()
      : LANDING_PATHS;

/** Waits until chDB has no merge running, so a variant's merges are not billed to the next one. */
async function settle() {
  for (let i = 0; i < 200; i++) {
    const [r] = await (
      await ch.client.query({ query: 'SELECT count() AS n FROM system.merges', format: 'JSONEachRow' })
    ).json();
    if (Number(r.n) === 0) return;
    await new Promise((res) => setTimeout(res, 50));
  }
}

const results = new Map();
for (let round = 0; round < ROUNDS; round++) {
  for (const size of BLOCK_SIZES) {
    // each round starts one variant later, so no variant always runs after the same one
    const entries = Object.entries(VARIANTS);
    for (const [name, land] of entries.map((_, k) => entries[(k + round) % entries.length])) {
      if (ONLY && !ONLY.includes(name)) continue;
      const blocks = Array.from({ length: Math.max(1, Math.round(ROWS_PER_ROUND / size)) }, () =>
        block(size),
      );
      const rows = blocks.length * blocks[0].length * RECORD;
      await settle();
      const cpu0 = process.cpuUsage();
      const main0 = mainThreadCpu();
      const t0 = performance.now();
      for (const records of blocks) await land(records);
      await settle();
      const wall = (performance.now() - t0) / 1000;
      const cpu = process.cpuUsage(cpu0);
      const main = mainThreadCpu() - main0;
      const key = `${name}|${size}`;
      const r = results.get(key) ?? {
        name,
        size: blocks[0].length * RECORD,
        rows: 0,
        wall: 0,
        cpu: 0,
        main: 0,
      };
      r.rows += rows;
      r.wall += wall;
      r.cpu += (cpu.user + cpu.system) / 1e6;
      r.main += main;
      results.set(key, r);
    }
  }
}
await ch.close();
rmSync(dir, { recursive: true, force: true });

const us = (s, rows) => ((s / rows) * 1e6).toFixed(1);
const rows = [...results.values()];
console.log(
  `\nLanding into embedded chDB: ${ROUNDS} rounds of ~${ROWS_PER_ROUND.toLocaleString('en-US')} rated rows per variant and block size, alternating (encoding included; merges waited for)`,
);
console.log(
  table([
    ['landing path', 'rows/insert', 'process CPU µs/row', 'main thread µs/row', 'wall µs/row', 'rows/s'],
    ...rows.map((r) => [
      r.name,
      r.size,
      us(r.cpu, r.rows),
      us(r.main, r.rows),
      us(r.wall, r.rows),
      Math.round(r.rows / r.wall).toLocaleString('en-US'),
    ]),
  ]),
);
const BASE = process.env.BENCH_BASE;
const e2e = [];
if (BASE) {
  const baseCli = join(BASE, 'collector-processor/dist/cli/main.js');
  const REPEAT = Number(process.env.BENCH_REPEAT ?? 3);
  const EXPORTS = Number(process.env.BENCH_EXPORTS ?? 120);
  const FLAGS = process.env.BENCH_FLAGS?.split(' ').filter(Boolean) ?? [];
  const load = () => readFileSync('/proc/loadavg', 'utf8').split(' ').slice(0, 3).join(' ');
  const loadBefore = load();
  for (let i = 0; i < REPEAT; i++) {
    for (const which of i % 2 ? ['this build', 'base'] : ['base', 'this build']) {
      const bodies = await protobufBatches(EXPORTS + 10, 512);
      const tg = await startTollgate(
        which === 'base' ? [] : FLAGS,
        {},
        [],
        which === 'base' ? baseCli : undefined,
      );
      try {
        const url = `${tg.otlpUrl}/v1/traces`;
        await drive(url, bodies.slice(0, 10), { concurrency: 8, headers });
        const landed0 = await metric(tg.apiUrl, 'tollgate_landed_rows_total');
        const pid = tg.child.pid;
        const cpu0 = procCpu(`/proc/${pid}/stat`);
        const main0 = procCpu(`/proc/${pid}/task/${pid}/stat`);
        const t0 = performance.now();
        const r = await drive(url, bodies.slice(10), { concurrency: 8, headers });
        const spans = EXPORTS * 512;
        while ((await metric(tg.apiUrl, 'tollgate_landed_rows_total')) - landed0 < spans)
          await new Promise((res) => setTimeout(res, 20));
        const landedMs = performance.now() - t0;
        if ((r.statuses.get(200) ?? 0) !== EXPORTS) throw new Error(`${which}: exports failed`);
        e2e.push({
          which,
          spans,
          ackedPerSec: spans / (r.wallMs / 1000),
          landedPerSec: spans / (landedMs / 1000),
          cpuUsPerSpan: ((procCpu(`/proc/${pid}/stat`) - cpu0) / spans) * 1e6,
          mainUsPerSpan: ((procCpu(`/proc/${pid}/task/${pid}/stat`) - main0) / spans) * 1e6,
        });
      } finally {
        await tg.stop();
      }
    }
  }
  const median = (xs) => xs.sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const summary = (which) => {
    const rs = e2e.filter((r) => r.which === which);
    return ['ackedPerSec', 'landedPerSec', 'cpuUsPerSpan', 'mainUsPerSpan'].map((k) =>
      median(rs.map((r) => r[k])),
    );
  };
  const b = summary('base');
  const n = summary('this build');
  const f = (v, d = 0) => v.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });
  console.log(
    `\nEnd to end, ${BASE} vs this build${FLAGS.length ? ` with ${FLAGS.join(' ')}` : ''}: ${EXPORTS} exports × 512 spans, 8 senders, ${REPEAT}× each alternating, medians (load average ${loadBefore} → ${load()})`,
  );
  console.log(
    table([
      ['build', 'acked spans/s', 'landed spans/s', 'Tollgate CPU µs/span', 'main thread µs/span'],
      ...e2e.map((r) => [
        r.which,
        f(r.ackedPerSec),
        f(r.landedPerSec),
        f(r.cpuUsPerSpan, 1),
        f(r.mainUsPerSpan, 1),
      ]),
      ['median base', f(b[0]), f(b[1]), f(b[2], 1), f(b[3], 1)],
      ['median this build', f(n[0]), f(n[1]), f(n[2], 1), f(n[3], 1)],
      ['ratio this build / base', ...n.map((v, k) => (v / b[k]).toFixed(2))],
    ]),
  );
}

writeResult('landing', {
  at: new Date().toISOString(),
  e2e,
  rounds: ROUNDS,
  rowsPerRound: ROWS_PER_ROUND,
  results: rows.map((r) => ({
    ...r,
    cpuUsPerRow: (r.cpu / r.rows) * 1e6,
    mainUsPerRow: (r.main / r.rows) * 1e6,
    wallUsPerRow: (r.wall / r.rows) * 1e6,
  })),
});
