import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { type PrivateRedis, startPrivateRedis } from '../src/redis/private-redis.js';
import { inspectSpool } from '../src/spool/spool.js';
import { readMetrics, TEST_PLANS, tempDir } from './support/harness.js';
import { exportOf, toolSpan } from './support/otlp-json.js';
import {
  type ServerProcess,
  sendExport,
  sql,
  startServerProcess,
  stopServerProcess,
  waitExit,
} from './support/process.js';

/**
 * A crash between an export's claim in Redis and its landing leaves its spool record to the next start's
 * replay, which waits for Redis when Redis is down. The sender, never answered, sends the export again; that
 * retry arrives fail-open. It used to be billed there (the calls landed before the restart are read back, but
 * these had not landed), and the replay billed the same calls again once Redis answered: twice.
 */

let server: ServerProcess | undefined;
let redis: PrivateRedis | undefined;
let dataDir: string | undefined;
let redisDir: string | undefined;
afterEach(async () => {
  await redis?.stop();
  redis = undefined;
  if (dataDir) await stopServerProcess(server, dataDir);
  if (redisDir) rmSync(redisDir, { recursive: true, force: true });
  server = undefined;
  dataDir = undefined;
  redisDir = undefined;
});

async function until(what: string, ok: () => Promise<boolean>, ms = 30_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('a retry of an export whose record waits for Redis in the replay', () => {
  it('is a duplicate of the replayed record: each call billed once, by the replay', async () => {
    dataDir = tempDir('tollgate-replay-retry-');
    redisDir = tempDir('tollgate-replay-retry-redis-');
    const redisData = redisDir;
    const plans = join(dataDir, 'plans.yaml');
    writeFileSync(plans, TEST_PLANS);
    // Redis of its own that keeps its claims across a stop (AOF, fsync'd per write)
    const durable = (port?: number) =>
      startPrivateRedis({
        ...(port ? { port } : {}),
        extraArgs: ['--appendonly', 'yes', '--appendfsync', 'always', '--dir', redisData],
      });
    redis = await durable();
    // landing held back a minute: the acknowledged export stays in the spool, claimed in Redis, not landed
    const args = [
      '--data-dir',
      dataDir,
      '--plans',
      plans,
      '--redis-url',
      redis.url,
      '--landing-flush-ms',
      '60000',
    ];
    const customer = 'replay-retry-co';
    const body = JSON.stringify(exportOf(Array.from({ length: 8 }, () => toolSpan({ customer }))));

    server = await startServerProcess(args);
    expect(await sendExport(server.otlpUrl, body)).toBe(true);
    server.child.kill('SIGKILL');
    await waitExit(server.child);
    expect(inspectSpool(join(dataDir, 'spool')).pendingRecords).toBe(1);

    // restart with Redis down: the record's replay waits for it; the sender sends the export again
    const port = redis.port;
    await redis.stop();
    redis = undefined;
    server = await startServerProcess(args);
    expect(await sendExport(server.otlpUrl, body)).toBe(true);
    const metrics = await readMetrics(server.apiUrl);
    expect(metrics.get('tollgate_calls_duplicate_total')).toBe(8);

    // Redis back: the replay counts the calls and queues them for landing; a stop waits for the replay
    redis = await durable(port);
    const running = server;
    await until('the replay to queue the record', async () => {
      const m = await readMetrics(running.apiUrl);
      return (m.get('tollgate_landing_backlog_rows') ?? 0) >= 8;
    });
    running.child.kill('SIGTERM'); // drains the landing
    expect(await waitExit(running.child)).toBe(0);
    server = undefined;
    const rows = await sql<{ n: string; ids: string }>(
      ['--data-dir', dataDir],
      `SELECT count() AS n, uniqExact(event_id) AS ids FROM mcp_tool_calls WHERE customer = '${customer}'`,
    );
    expect(rows).toEqual([{ n: '8', ids: '8' }]);
  });
});
