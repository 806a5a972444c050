import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { freePort } from '../src/redis/private-redis.js';
import { REPLAY_CRASHES_TO_SET_ASIDE, ReplayGuard, Spool } from '../src/spool/spool.js';
import { readMetrics, tempDir } from './support/harness.js';
import { exportOf, toolSpan } from './support/otlp-json.js';
import { spawnServer } from './support/process.js';

/**
 * A spool record whose reading kills the process (an abort no handler catches: V8 out of memory, a crash in
 * native code) was replayed first at every start, so the process died at every start and nothing after it,
 * not even new exports, ever landed. Its reading is now guarded: after REPLAY_CRASHES_TO_SET_ASIDE starts
 * that died in it, it is set aside (kept in the spool, reported) and the rest lands.
 *
 * The death is real: a preload makes the process SIGKILL itself when JSON.parse meets the record's marker,
 * as the decoding of a poisonous export would die.
 */

const MARKER = 'replay-crash-marker';
const children: import('node:child_process').ChildProcess[] = [];
afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
});

async function start(dataDir: string, preload: string, otlpPort: number, apiPort: number) {
  const server = await spawnServer(['--data-dir', dataDir], {
    nodeArgs: ['--require', preload],
    otlpPort,
    apiPort,
  });
  children.push(server.child);
  const exited = new Promise<NodeJS.Signals | number | null>((r) =>
    server.child.once('exit', (code, signal) => r(signal ?? code)),
  );
  return { ...server, exited };
}

/** Acknowledged records left unlanded in `dataDir`'s spool by a previous run, in order: [rid, payload as JSON]. */
async function spoolUnlanded(
  dataDir: string,
  format: 'otlp-json' | 'calls-json',
  records: readonly (readonly [string, unknown])[],
): Promise<void> {
  const { spool } = await Spool.open({ dir: join(dataDir, 'spool'), fsync: true, segmentBytes: 64 << 20 });
  for (const [rid, payload] of records) {
    await spool.appendAccepted({
      t: 'a',
      rid,
      product: 'demo-mcp',
      planVersion: 'unknown',
      receivedAtMs: Date.now(),
      format,
      payload: Buffer.from(JSON.stringify(payload)),
    });
  }
  await spool.close();
}

/**
 * Starts Tollgate on `dataDir` until the poisonous record is set aside: each of the first
 * REPLAY_CRASHES_TO_SET_ASIDE starts must die in it, the next must stay up and land the 3 calls after it.
 */
async function expectSetAside(dataDir: string, preload: string): Promise<void> {
  const otlpPort = await freePort();
  const apiPort = await freePort();
  // each start dies in the poisonous record
  for (let i = 0; i < REPLAY_CRASHES_TO_SET_ASIDE; i++) {
    const run = await start(dataDir, preload, otlpPort, apiPort);
    expect(await run.exited).toBe('SIGKILL');
  }
  // the next start sets it aside, stays up, and lands the record after it
  const run = await start(dataDir, preload, otlpPort, apiPort);
  const apiUrl = `http://127.0.0.1:${apiPort}`;
  const deadline = Date.now() + 60_000;
  let landed = 0;
  while (landed < 3 && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 200));
    expect(run.child.exitCode === null && run.child.signalCode === null, run.stderr()).toBe(true);
    try {
      landed = (await readMetrics(apiUrl)).get('tollgate_landed_rows_total') ?? 0;
    } catch {
      // not listening yet
    }
  }
  expect(landed).toBe(3);
  expect((await readMetrics(apiUrl)).get('tollgate_spool_replay_failures_total')).toBe(1);
  expect(run.stderr()).toContain('spool record set aside');
  // kept: the guard still names it, and a stop does not forget it
  run.child.kill('SIGTERM');
  await run.exited;
  const guard = JSON.parse(readFileSync(join(dataDir, 'spool', 'replay-guard.json'), 'utf8'));
  expect(guard).toEqual({ crashes: { 'poison-1': REPLAY_CRASHES_TO_SET_ASIDE }, inProgress: [] });
  expect(new ReplayGuard(join(dataDir, 'spool', 'replay-guard.json')).setAside()).toEqual(['poison-1']);
}

describe('a spool record whose replay kills the process', () => {
  it(`is set aside after ${REPLAY_CRASHES_TO_SET_ASIDE} starts died in it; the records after it land`, async () => {
    const dataDir = tempDir('tollgate-replay-crash-');
    const preload = join(dataDir, 'die-on-marker.cjs');
    writeFileSync(
      preload,
      `const parse = JSON.parse;
JSON.parse = function (text, reviver) {
  if (typeof text === 'string' && text.includes(${JSON.stringify(MARKER)})) process.kill(process.pid, 'SIGKILL');
  return parse.call(this, text, reviver);
};
`,
    );
    // two acknowledged records left unlanded by a previous run: the poisonous one first
    const good = Array.from({ length: 3 }, () => toolSpan({ customer: 'after-crash', tool: 'lookup' }));
    const poison = [toolSpan({ customer: 'after-crash', tool: 'lookup', attrs: { note: MARKER } })];
    await spoolUnlanded(dataDir, 'otlp-json', [
      ['poison-1', exportOf(poison)],
      ['good-1', exportOf(good)],
    ]);
    await expectSetAside(dataDir, preload);
  }, 180_000);

  it('also when it dies after decoding, while its calls are prepared (holding them for the dedup read it once more, and cleared its count: it died at every start)', async () => {
    const dataDir = tempDir('tollgate-replay-crash-prepare-');
    const preload = join(dataDir, 'die-on-marker-lookup.cjs');
    // dies when a Map is looked up by exactly the marker: preparing the calls looks each event id up; decoding a
    // record of calls (JSON.parse) and holding its calls (composite keys) do not
    writeFileSync(
      preload,
      `const get = Map.prototype.get;
Map.prototype.get = function (k) {
  if (k === ${JSON.stringify(MARKER)}) process.kill(process.pid, 'SIGKILL');
  return get.call(this, k);
};
`,
    );
    const call = (eventId: string) => ({
      eventId,
      traceId: 'a'.repeat(32),
      spanId: 'b'.repeat(16),
      customer: 'after-crash',
      agent: 'ag',
      sessionId: '',
      sessionRule: '',
      tool: 'lookup',
      transport: 'stdio',
      ok: true,
      errorType: '',
      startUnixUs: Date.now() * 1000,
      durationUs: 1000,
      inputTokens: 0,
      outputTokens: 0,
      protocolVersion: '',
      source: 'event',
      instanceId: 'i1',
    });
    await spoolUnlanded(dataDir, 'calls-json', [
      ['poison-1', [call(MARKER)]],
      ['good-1', [call('good-a'), call('good-b'), call('good-c')]],
    ]);
    await expectSetAside(dataDir, preload);
  }, 180_000);
});
