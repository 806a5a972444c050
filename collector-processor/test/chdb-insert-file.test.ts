import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { tempDir } from './support/harness.js';
import { exportOf, toolSpan } from './support/otlp-json.js';
import {
  type ServerProcess,
  sendExport,
  sql,
  startServerProcess,
  stopServerProcess,
} from './support/process.js';

/**
 * With `--chdb-insert file` the lander's rows reach chDB as Native blocks through a file of their own
 * (`INSERT … SELECT * FROM file(…, Native)`, see ClickHouseHandle.insertNative). The data directory is the
 * operator's: a quote in its path must be escaped in the statement, and a glob character (`file()` would
 * expand it) sends the rows inline instead, as TabSeparated. Either way
 * every acknowledged call lands once, and no file is left behind — a crash's leftovers go before the next
 * process's first insert.
 */
let server: ServerProcess | undefined;
let dataDir = '';
afterEach(async () => {
  await stopServerProcess(server, dataDir);
  server = undefined;
});

async function landsEveryCall(dir: string): Promise<void> {
  dataDir = dir;
  mkdirSync(join(dir, 'chdb-inserts'), { recursive: true });
  writeFileSync(join(dir, 'chdb-inserts', 'left-by-a-crash.tsv'), 'not\ta\trow\n');
  writeFileSync(join(dir, 'chdb-inserts', 'left-by-a-crash.native'), Buffer.from([40, 1, 0x0a, 0x0a]));
  server = await startServerProcess(['--data-dir', dir, '--chdb-insert', 'file']);
  const spans = Array.from({ length: 40 }, (_, i) => toolSpan({ customer: `odd-${i % 3}` }));
  const body = JSON.stringify(exportOf(spans));
  expect(await sendExport(server.otlpUrl, body)).toBe(true);
  expect(await sendExport(server.otlpUrl, body)).toBe(true); // a retry: counted once
  server.child.kill('SIGTERM'); // a graceful stop lands what is queued
  await new Promise((r) => server!.child.once('exit', r));
  const rows = await sql(
    ['--data-dir', dir],
    'SELECT count() AS n, uniqExact(span_id) AS ids FROM mcp_tool_calls',
  );
  expect(rows).toEqual([{ n: '40', ids: '40' }]);
  const daily = await sql(['--data-dir', dir], 'SELECT sum(calls) AS n FROM mcp_daily_stats');
  expect(daily).toEqual([{ n: '40' }]);
  // nothing left behind: the insert files are removed, and so is what a crash had left (on the file path)
  const left = readdirSync(join(dir, 'chdb-inserts')).sort();
  expect(left).toEqual(dir.includes('[') ? ['left-by-a-crash.native', 'left-by-a-crash.tsv'] : []);
}

describe('landing through a file on chDB', () => {
  it("a data directory with a quote and a backslash in its path: the file's path is escaped", async () => {
    await landsEveryCall(join(tempDir(), "it's a \\ dir"));
  }, 90_000);

  it('a data directory with glob characters: the rows go inline (raw insert), nothing is lost', async () => {
    await landsEveryCall(join(tempDir(), 'data [a*b]{1,2}?'));
  }, 90_000);
});
