import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startTestTollgate, type TestTollgate } from './support/harness.js';
import { runCli } from './support/process.js';

/**
 * Embedded chDB lets one process open a data directory. `tollgate sql` said so, naming the running
 * Tollgate; the two other commands that open it did not:
 * - a second `tollgate start` on the directory died with chDB's `ChdbConnectionError` and its stack trace;
 * - `tollgate billing sync stripe` printed the message of `tollgate sql` ("`tollgate sql` cannot read it
 *   now", "run tollgate sql again") and pointed at the analytics summary, where docs/stripe.md says: stop
 *   the server first, or run the background job.
 * The commands run as a user runs them (the built CLI in a child process) against a real Tollgate holding
 * the directory (this test process, chDB and a private redis-server).
 */

let tg: TestTollgate;

beforeAll(async () => {
  tg = await startTestTollgate();
}, 60_000);

afterAll(async () => {
  await tg?.cleanup();
});

function run(args: string[]): Promise<{ code: number; stderr: string }> {
  return runCli(args, { ...process.env, TOLLGATE_LOG_LEVEL: 'warn' });
}

describe('a command on a data directory a running Tollgate holds', () => {
  it('tollgate start: names the running Tollgate and what to do, no stack trace, exit 1', async () => {
    const r = await run([
      'start',
      '--data-dir',
      tg.dataDir,
      '--otlp-port',
      '0',
      '--otlp-grpc-port',
      '0',
      '--api-port',
      '0',
    ]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(
      `tollgate: ${join(tg.dataDir, 'chdb')} is open in a running Tollgate: pid ${process.pid}`,
    );
    expect(r.stderr).toContain(
      `stop it first (kill -TERM ${process.pid}), or start this one with another --data-dir`,
    );
    expect(r.stderr).not.toMatch(/ChdbConnectionError|\n\s+at /);
  }, 60_000);

  it('tollgate billing sync stripe: names the sync, not tollgate sql, and the background job, exit 1', async () => {
    const config = join(tg.dataDir, 'stripe.yaml');
    writeFileSync(
      config,
      'stripe: { product: demo-mcp, customers: { acme: cus_1 }, lines: [ { name: calls, components: [call], push: amount } ] }\n',
    );
    const r = await run([
      'billing',
      'sync',
      'stripe',
      '--config',
      config,
      '--data-dir',
      tg.dataDir,
      '--dry-run',
    ]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`is open in a running Tollgate: pid ${process.pid}`);
    expect(r.stderr).toContain('so `tollgate billing sync stripe` cannot read it now');
    expect(r.stderr).toContain(`Stop it (kill -TERM ${process.pid}) and run the sync again`);
    expect(r.stderr).toContain('settings.stripe.sync.enabled');
    expect(r.stderr).not.toContain('tollgate sql');
  }, 60_000);

  it('tollgate sql: still its own message, with the routes for the tables the query reads', async () => {
    const r = await run(['sql', '--data-dir', tg.dataDir, 'SELECT count() FROM mcp_session_summary']);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('so `tollgate sql` cannot read it now');
    expect(r.stderr).toContain(`GET ${tg.apiUrl}/analytics/mcp/sessions`);
    expect(r.stderr).toContain(`Or stop it (kill -TERM ${process.pid}) and run tollgate sql again.`);
  }, 60_000);
});
