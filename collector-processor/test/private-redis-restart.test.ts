import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readMetrics, sendExport, startTestTollgate, type TestTollgate } from './support/harness.js';
import { exportOf, toolSpan } from './support/otlp-json.js';

/**
 * The private redis-server that died while Tollgate ran (a crash probe's kill -9) stayed down until Tollgate
 * was restarted: every call was rated fail-open (`unenforced`: no limits, no dedup), so an export sent again
 * after Tollgate's restart was billed twice. It is now started again on the same port and data directory; its
 * append-only file (each write on disk before Redis answers it) brings the claims back.
 */
let tg: TestTollgate;
beforeAll(async () => {
  tg = await startTestTollgate();
});
afterAll(async () => {
  await tg?.cleanup();
});

const privateRedis = () =>
  JSON.parse(readFileSync(join(tg.dataDir, 'private-redis.json'), 'utf8')) as { pid: number; port: number };

describe('the private redis-server killed while Tollgate runs', () => {
  it('is started again on its port with its data: a retry is a duplicate, new calls are enforced', async () => {
    const body = JSON.stringify(
      exportOf([toolSpan({ customer: 'restart-co' }), toolSpan({ customer: 'restart-co' })]),
    );
    expect((await sendExport(tg, body)).partialSuccess).toBeUndefined();
    const first = privateRedis();
    process.kill(first.pid, 'SIGKILL');
    // a new process on the same port, answering
    let again = first;
    for (
      let i = 0;
      i < 100 && (again.pid === first.pid || (await tg.redis!.ping().catch(() => '')) !== 'PONG');
      i++
    ) {
      await new Promise((r) => setTimeout(r, 100));
      again = privateRedis();
    }
    expect(again.port).toBe(first.port);
    expect(again.pid).not.toBe(first.pid);
    const before = await readMetrics(tg.apiUrl!);
    // the same export again: its claims came back with the append-only file
    await sendExport(tg, body);
    // and a new one is claimed and enforced in Redis, not rated fail-open
    await sendExport(tg, JSON.stringify(exportOf([toolSpan({ customer: 'restart-co' })])));
    const after = await readMetrics(tg.apiUrl!);
    const delta = (name: string) => (after.get(name) ?? 0) - (before.get(name) ?? 0);
    expect(delta('tollgate_calls_duplicate_total')).toBe(2);
    expect(delta('tollgate_calls_unenforced_total')).toBe(0);
    expect(delta('tollgate_calls_accepted_total{product="demo-mcp"}')).toBe(3);
  });
});
