import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RUNNING_FILE } from '../src/running.js';
import { startTestTollgate, type TestTollgate } from './support/harness.js';
import { runCli, sql } from './support/process.js';

/**
 * Issue 12, point 5: `tollgate sql` on an embedded data directory that a running Tollgate holds (chDB opens a
 * directory in one process only). It used to die with a chDB stack trace; it now names the running process
 * and the API routes that answer the same question, and exits 1.
 */

let tg: TestTollgate;

beforeAll(async () => {
  tg = await startTestTollgate();
}, 60_000);
afterAll(async () => {
  await tg?.cleanup();
});

function runSql(query: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return runCli(['sql', query, '--data-dir', tg.dataDir]);
}

describe('tollgate sql while the embedded server runs', () => {
  it('names the running process and the routes for the tables the query reads, exits 1, no stack trace', async () => {
    const r = await runSql('SELECT session_id, sum(calls) FROM mcp_session_summary GROUP BY session_id');
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain(`pid ${process.pid}`); // the test process runs the server
    expect(r.stderr).toContain(tg.instanceId);
    expect(r.stderr).toContain(`${tg.apiUrl}/analytics/mcp/sessions`);
    expect(r.stderr).toContain(`kill -TERM ${process.pid}`);
    expect(r.stderr).not.toMatch(/\n\s+at /); // no stack trace
  });

  it.each([
    ['SELECT count() FROM mcp_tool_calls', '/analytics/mcp/revenue/by-tool'],
    ['SELECT * FROM enforcement_events', '/analytics/mcp/enforcement-events'],
    ['SELECT day, sum(calls) FROM mcp_daily_stats GROUP BY day', '/analytics/mcp/by-agent'],
    ['SELECT 1', '/analytics/mcp/summary'],
  ])('%s → points at %s', async (query, route) => {
    const r = await runSql(query);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`${tg.apiUrl}${route}`);
  });

  it('after the server stopped the record is gone and the query runs', async () => {
    const file = join(tg.dataDir, RUNNING_FILE);
    expect(existsSync(file)).toBe(true);
    await tg.stop();
    expect(existsSync(file)).toBe(false);
    const rows = await sql<{ n: string }>(
      ['--data-dir', tg.dataDir],
      'SELECT count() AS n FROM mcp_tool_calls',
    );
    expect(rows).toEqual([{ n: '0' }]);
  });
});
