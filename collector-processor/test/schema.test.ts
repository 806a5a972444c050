import { cpSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { RATED_CALL_COLUMNS, type RatedCall } from '@tollgate/contracts';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger } from '../src/app.js';
import { Lander } from '../src/landing/lander.js';
import { encodeTsvRow, TsvWriter } from '../src/landing/tsv.js';
import { createMetrics } from '../src/metrics.js';
import { Spool } from '../src/spool/spool.js';
import {
  type ClickHouseHandle,
  MIGRATIONS_DIR,
  MigrationError,
  migrate,
  openClickHouse,
  readMigrations,
} from '../src/storage/clickhouse.js';

let ch: ClickHouseHandle;
const dir = mkdtempSync(join(tmpdir(), 'tollgate-schema-'));
beforeAll(async () => {
  ch = openClickHouse({ url: '', dataDir: dir, database: 'default', username: 'default', password: '' });
});
afterAll(async () => {
  await ch?.close();
});

describe('migrations', () => {
  it('apply in order, once', async () => {
    const first = await migrate(ch.client);
    expect(first).toEqual(
      readdirSync(MIGRATIONS_DIR)
        .filter((f) => f.endsWith('.sql'))
        .sort()
        .map((f) => f.replace('.sql', '')),
    );
    expect(await migrate(ch.client)).toEqual([]);
  });

  it('the raw table matches the RatedCall contract column for column', async () => {
    const cols = await (
      await ch.client.query({ query: 'DESCRIBE TABLE mcp_tool_calls', format: 'JSONEachRow' })
    ).json<{ name: string; type: string }>();
    expect(cols.map((c) => [c.name, c.type])).toEqual(RATED_CALL_COLUMNS.map(([name, type]) => [name, type]));
  });

  it('refuses to start when an applied migration was edited', async () => {
    const copy = mkdtempSync(join(tmpdir(), 'tollgate-mig-'));
    cpSync(MIGRATIONS_DIR, copy, { recursive: true });
    writeFileSync(join(copy, '0001_mcp_tool_calls.sql'), '-- edited\nSELECT 1;\n');
    await expect(migrate(ch.client, readMigrations(pathToFileURL(`${copy}/`)))).rejects.toThrow(
      MigrationError,
    );
  });
});

describe('landing encoding', () => {
  it('a row with hostile strings round-trips through TabSeparated exactly', async () => {
    const row: RatedCall = {
      eventId: 'e'.repeat(48),
      traceId: 'a'.repeat(32),
      spanId: 'b'.repeat(16),
      product: 'prod',
      customer: 'cust\\with\\backslashes',
      agent: 'agent\twith\ttabs',
      sessionId: 'sess\nnewline',
      tool: 'tööl-ünïcode-🔧',
      transport: 'stdio',
      source: 'sdk',
      status: 'error',
      errorType: 'tool_error',
      protocolVersion: '2025-06-18',
      instanceId: 'inst\r\0',
      startUnixUs: 1_764_000_000_123_456,
      durationUs: 987_654,
      inputTokens: 1_000_000_000_000,
      outputTokens: 0,
      priceNano: 9_223_372_036_854_775_807n,
      costNano: -5n,
      priceCallNano: 1n,
      priceInputNano: 2n,
      priceOutputNano: 3n,
      priceDurationNano: 4n,
      tier: 3,
      planId: 'std',
      planVersion: 'abcdef012345',
      currency: 'EUR',
      decision: 'billed',
      period: '2025-11',
      receivedAtMs: 1_764_000_001_234,
      sessionRule: 'activity',
      pricePerSecondNano: 5n,
      inputTokensPriced: 999_999_999_000,
      outputTokensPriced: 0,
      usageLines: ['cached_input_tokens', 'gb_seconds'],
      usageQuantityMicro: [1_000_000_000n, 18_446_744_073_709_551_615n],
      usageUnitNano: [300n, 0n],
      usagePriceNano: [300_000n, -1n],
      usageCostNano: [0n, 9_223_372_036_854_775_807n],
    };
    const spoolDir = join(dir, 'spool');
    const { spool } = await Spool.open({ dir: spoolDir, fsync: false, segmentBytes: 1 << 20 });
    const lander = new Lander(
      ch,
      spool,
      { batchRows: 10, flushIntervalMs: 10, blockPrefix: 'test' },
      createLogger('silent'),
      createMetrics(),
    );
    lander.start();
    await spool.appendAccepted({
      t: 'a',
      rid: 'r1',
      product: 'prod',
      planVersion: 'v',
      receivedAtMs: 0,
      format: 'calls-json',
      payload: Buffer.from('[]'),
    });
    const writer = new TsvWriter();
    writer.add(row);
    const bytes = writer.take();
    expect(bytes.toString('utf8')).toBe(encodeTsvRow(row));
    lander.enqueue('r1', bytes, 1);
    await lander.idle();
    await lander.stop(1000);
    const [back] = await (
      await ch.client.query({
        query: `SELECT *, toUnixTimestamp64Micro(started_at) AS us, toUnixTimestamp64Milli(received_at) AS ms FROM mcp_tool_calls WHERE event_id = {e:String}`,
        query_params: { e: row.eventId },
        format: 'JSONEachRow',
      })
    ).json<Record<string, string>>();
    for (const [col, , field] of RATED_CALL_COLUMNS) {
      if (col === 'started_at' || col === 'received_at') continue;
      expect(String(back?.[col]), col).toBe(String(row[field]));
    }
    expect(back?.us).toBe(String(row.startUnixUs));
    expect(back?.ms).toBe(String(row.receivedAtMs));
  });
});
