import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { createLogger } from '../src/app.js';
import { EnforcementLog } from '../src/enforcement/events.js';
import { insertSettings, migrate, openClickHouse } from '../src/storage/clickhouse.js';

// chDB's connection turns per-query settings into session-level SET statements, so a lander token
// leaked into later inserts and the second audit event was silently dropped as a "retry".
const ch = openClickHouse({
  url: '',
  dataDir: mkdtempSync(join(tmpdir(), 'tollgate-leak-')),
  database: 'default',
  username: 'default',
  password: '',
});
afterAll(() => ch.close());

it('an insert with a dedup token does not swallow later inserts into other tables', async () => {
  await migrate(ch.client);
  await ch.client.insert({
    table: 'tollgate_schema_migrations',
    values: [{ version: 999, name: 'probe', checksum: 'x' }],
    format: 'JSONEachRow',
    clickhouse_settings: insertSettings('leaky-token'),
  });
  const log = new EnforcementLog(ch.client, createLogger('silent'));
  const event = (customer: string) => ({
    atMs: Date.now(),
    product: 'p',
    customer,
    scope: 'customer',
    subjectId: customer,
    action: 'kill',
    reason: 'test',
    marginBps: null,
    spendNano: 0n,
    actor: 'test',
    note: '',
  });
  log.record(event('first'));
  await log.flush();
  log.record(event('second'));
  await log.flush();
  const rows = await (
    await ch.client.query({
      query: 'SELECT customer FROM enforcement_events ORDER BY customer',
      format: 'JSONEachRow',
    })
  ).json();
  expect(rows).toEqual([{ customer: 'first' }, { customer: 'second' }]);
});
