import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { inspectSpool } from '../src/spool/spool.js';
import { TEST_PLANS, tempDir } from './support/harness.js';
import { exportOf, toolSpan } from './support/otlp-json.js';
import {
  type ServerProcess,
  sendExport,
  sql,
  startServerProcess,
  stopServerProcess,
  waitExit,
} from './support/process.js';

// Both ways rows reach embedded chDB: TabSeparated inline (the default) and Native blocks through a file
// (`--chdb-insert file`), whose block file a kill may leave half written.
describe.each(['inline', 'file'])('kill -9 in the middle of a load (--chdb-insert %s)', (mode) => {
  const dataDir = tempDir(`tollgate-crash-${mode}-`);
  const plans = join(dataDir, 'plans.yaml');
  writeFileSync(plans, TEST_PLANS);
  const args = ['--data-dir', dataDir, '--plans', plans, '--landing-flush-ms', '100', '--chdb-insert', mode];
  let server: ServerProcess | undefined;

  afterAll(() => stopServerProcess(server, dataDir));

  it('every acknowledged span is in ClickHouse exactly once after restart and drain', async () => {
    const BATCHES = 80;
    const batches = Array.from({ length: BATCHES }, (_, b) =>
      JSON.stringify(exportOf(Array.from({ length: 200 }, () => toolSpan({ customer: `crash-${b % 7}` })))),
    );
    server = await startServerProcess(args);
    const first = server;
    const acked = new Set<number>();
    const unacked = new Set<number>();
    let next = 0;
    let killed = false;
    const worker = async () => {
      while (next < BATCHES) {
        const b = next++;
        if (await sendExport(first.otlpUrl, batches[b] as string)) acked.add(b);
        else unacked.add(b);
        if (!killed && acked.size >= 25) {
          killed = true;
          first.child.kill('SIGKILL');
        }
      }
    };
    await Promise.all([worker(), worker(), worker(), worker()]);
    await waitExit(first.child);
    expect(killed).toBe(true);
    expect(acked.size).toBeGreaterThanOrEqual(25);
    const ackedBeforeRestart = new Set(acked);
    // The crash must have left accepted-but-unlanded records in the spool, or this test proves nothing.
    expect(inspectSpool(join(dataDir, 'spool')).pendingRecords).toBeGreaterThan(0);

    // Restart on the same data directory: the spool is replayed, then the exporter retries what failed.
    server = await startServerProcess(args);
    for (const b of unacked) {
      for (
        let attempt = 0;
        attempt < 20 && !(await sendExport(server.otlpUrl, batches[b] as string));
        attempt++
      ) {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    // A retry of batches that were acknowledged (e.g. the response was lost) must not double them either.
    for (const b of [...ackedBeforeRestart].slice(0, 5))
      expect(await sendExport(server.otlpUrl, batches[b] as string)).toBe(true);
    server.child.kill('SIGTERM'); // graceful: drains the landing queue
    expect(await waitExit(server.child)).toBe(0);

    const expectedSpans = new Set(
      batches.flatMap((b) =>
        (JSON.parse(b) as ReturnType<typeof exportOf>).resourceSpans[0]!.scopeSpans[0]!.spans.map(
          (s) => (s as { spanId: string }).spanId,
        ),
      ),
    );
    const [totals] = await sql(
      ['--data-dir', dataDir],
      'SELECT count() AS n, uniqExact(span_id) AS ids FROM mcp_tool_calls',
    );
    expect(totals).toEqual({ n: String(expectedSpans.size), ids: String(expectedSpans.size) });
    const dup = await sql(
      ['--data-dir', dataDir],
      'SELECT span_id FROM mcp_tool_calls GROUP BY span_id HAVING count() > 1 LIMIT 5',
    );
    expect(dup).toEqual([]);
    const landed = new Set(
      (await sql<{ span_id: string }>(['--data-dir', dataDir], 'SELECT span_id FROM mcp_tool_calls')).map(
        (r) => r.span_id,
      ),
    );
    for (const id of expectedSpans) expect(landed.has(id)).toBe(true);
    const [raw] = await sql(
      ['--data-dir', dataDir],
      'SELECT count() c, sum(price_nano) r FROM mcp_tool_calls',
    );
    const [mv] = await sql(
      ['--data-dir', dataDir],
      'SELECT sum(calls) c, sum(revenue_nano) r FROM mcp_daily_stats',
    );
    expect(mv).toEqual(raw);
    // every view, not only mcp_daily_stats: after migration 0016 altered mcp_session_summary_mv with MODIFY QUERY,
    // replayed inserts were deduplicated in the raw table but counted again in that view (16,200 calls for
    // 16,000 in 5 of 6 runs); migration 0017 creates every view anew
    for (const view of [
      'mcp_session_summary',
      'mcp_session_daily',
      'mcp_customer_daily_stats',
      'mcp_tool_daily_stats',
    ]) {
      const [v] = await sql(['--data-dir', dataDir], `SELECT sum(calls) c, sum(revenue_nano) r FROM ${view}`);
      expect(v, view).toEqual(raw);
    }
  }, 180_000);
});
