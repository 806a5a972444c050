// Landing benchmark: CPU per rated row of inserting blocks of rated calls into embedded chDB, split into the
// main thread (what the pipeline competes with) and the whole process (chDB's insert threads included).
// Variants run alternately in one process against one chDB, so they see the same load:
//   views      — TabSeparated through @clickhouse/client into mcp_tool_calls with every materialized view (today)
//   no views   — the same rows into a copy of mcp_tool_calls without views (what the views cost)
//   raw buffer — the same TSV handed to chDB as a Buffer (connection.chdb.rawInsert), views on
// Rows are shaped like bench/e2e.mjs's spans after rating: 50 customers, 4 tools, 5 agents, 400 sessions.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { createClient } from '@clickhouse/client';
import { createChdbConnection } from 'chdb/connection';
import { ROOT, table, writeResult } from './lib.mjs';

const dist = (p) => import(join(ROOT, 'collector-processor/dist', p));
const { migrate, insertSettings } = await dist('storage/clickhouse.js');
const { encodeTsvRow, TSV_COLUMNS } = await dist('landing/tsv.js');

const BLOCK_SIZES = (process.env.BENCH_BLOCKS ?? '1000,6500,50000').split(',').map(Number);
const ROWS_PER_ROUND = Number(process.env.BENCH_ROWS ?? 100_000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2);
const ONLY = process.env.BENCH_VARIANTS?.split(',');

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

/** TSV of `rows` rated calls in exports of 512 (one customer and session per export, like e2e). */
function block(rows) {
  let tsv = '';
  for (let i = 0; i < rows; i++) tsv += encodeTsvRow(ratedRow(Math.floor(seq / 512), i % 512));
  return tsv;
}

/** CPU seconds of the main thread (utime + stime of this task in /proc, clock ticks of 10 ms). */
function mainThreadCpu() {
  const stat = readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100;
}

const dir = mkdtempSync(join(tmpdir(), 'tollgate-bench-landing-'));
const connection = createChdbConnection({ path: join(dir, 'chdb') });
const client = createClient({ connection });
await migrate(client);
await client.command({ query: 'CREATE TABLE calls_noviews AS mcp_tool_calls' });
await client.command({ query: 'CREATE TABLE calls_nodedup AS mcp_tool_calls' });
await client.command({
  query: 'ALTER TABLE calls_nodedup MODIFY SETTING non_replicated_deduplication_window = 0',
});

let bid = 0;
const VARIANTS = {
  'buffer only': async (tsv) => Buffer.from(tsv),
  views: (tsv) =>
    client.insert({
      table: 'mcp_tool_calls',
      columns: TSV_COLUMNS,
      format: 'TabSeparated',
      values: Readable.from([Buffer.from(tsv)], { objectMode: false }),
      clickhouse_settings: insertSettings(`bench.${bid++}`),
    }),
  'no views': (tsv) =>
    client.insert({
      table: 'calls_noviews',
      columns: TSV_COLUMNS,
      format: 'TabSeparated',
      values: Readable.from([Buffer.from(tsv)], { objectMode: false }),
      clickhouse_settings: insertSettings(`bench.${bid++}`),
    }),
  'no views, no dedup log': (tsv) =>
    client.insert({
      table: 'calls_nodedup',
      columns: TSV_COLUMNS,
      format: 'TabSeparated',
      values: Readable.from([Buffer.from(tsv)], { objectMode: false }),
      clickhouse_settings: insertSettings(`bench.${bid++}`),
    }),
  'raw buffer, no views': (tsv) =>
    connection.chdb.rawInsert({
      table: 'calls_noviews',
      columns: TSV_COLUMNS,
      format: 'TabSeparated',
      values: Buffer.from(tsv),
      settings: insertSettings(`bench.${bid++}`),
    }),
  'raw buffer': (tsv) =>
    connection.chdb.rawInsert({
      table: 'mcp_tool_calls',
      columns: TSV_COLUMNS,
      format: 'TabSeparated',
      values: Buffer.from(tsv),
      settings: insertSettings(`bench.${bid++}`),
    }),
};

const results = new Map();
for (let round = 0; round < ROUNDS; round++) {
  for (const size of BLOCK_SIZES) {
    for (const [name, insert] of Object.entries(VARIANTS)) {
      if (ONLY && !ONLY.includes(name)) continue;
      const blocks = Array.from({ length: Math.max(1, Math.round(ROWS_PER_ROUND / size)) }, () =>
        block(size),
      );
      const rows = blocks.length * size;
      const cpu0 = process.cpuUsage();
      const main0 = mainThreadCpu();
      const t0 = performance.now();
      for (const tsv of blocks) await insert(tsv);
      const wall = (performance.now() - t0) / 1000;
      const cpu = process.cpuUsage(cpu0);
      const main = mainThreadCpu() - main0;
      const key = `${name}|${size}`;
      const r = results.get(key) ?? { name, size, rows: 0, wall: 0, cpu: 0, main: 0 };
      r.rows += rows;
      r.wall += wall;
      r.cpu += (cpu.user + cpu.system) / 1e6;
      r.main += main;
      results.set(key, r);
    }
  }
}
await client.close();
rmSync(dir, { recursive: true, force: true });

const us = (s, rows) => ((s / rows) * 1e6).toFixed(1);
const rows = [...results.values()];
console.log(
  `\nLanding into embedded chDB: ${ROUNDS} rounds of ${ROWS_PER_ROUND.toLocaleString('en-US')} rated rows per variant and block size, alternating`,
);
console.log(
  table([
    ['variant', 'rows/block', 'process CPU µs/row', 'main thread µs/row', 'wall µs/row', 'rows/s'],
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
writeResult('landing', {
  at: new Date().toISOString(),
  rounds: ROUNDS,
  rowsPerRound: ROWS_PER_ROUND,
  results: rows.map((r) => ({
    ...r,
    cpuUsPerRow: (r.cpu / r.rows) * 1e6,
    mainUsPerRow: (r.main / r.rows) * 1e6,
    wallUsPerRow: (r.wall / r.rows) * 1e6,
  })),
});
