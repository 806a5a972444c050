import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type PrivateRedis, startPrivateRedis } from '../src/redis/private-redis.js';
import { stallAwareCommandTimeout } from '../src/redis/stall-aware.js';

/**
 * Redis's command timeout must measure Redis, not this process. A hostile export that takes the main thread
 * for 1.5 s (decoding millions of tiny attributes) made every Redis command in flight fail as timed out,
 * although Redis had answered in time: the calls of every tenant in flight were then rated fail-open
 * (unenforced: kills and hard limits skipped). With the timeout made stall-aware, a reply that arrived during
 * the stall is read first; a Redis that really does not answer still times out.
 */

let redis: PrivateRedis;
beforeAll(async () => {
  redis = await startPrivateRedis();
});
afterAll(async () => {
  await redis?.stop();
});

function client(stallAware: boolean): Redis {
  const r = new Redis(redis.url, { commandTimeout: 300, maxRetriesPerRequest: 1 });
  r.on('error', () => {});
  return stallAware ? stallAwareCommandTimeout(r) : r;
}

/** Sends a command, then blocks the event loop for `ms` (as a long synchronous decode does). */
async function callAcrossAStall(r: Redis, ms: number): Promise<string> {
  const p = r.eval('return redis.call("PING")', 0) as Promise<string>;
  const until = Date.now() + ms;
  while (Date.now() < until) {
    // busy: the reply arrives in the socket meanwhile, unread
  }
  return p.then(
    (v) => `ok ${v}`,
    (e: Error) => `failed ${e.message}`,
  );
}

describe('a Redis command in flight while this process is blocked', () => {
  it('plain ioredis: times out although Redis answered (what made calls fail-open)', async () => {
    const r = client(false);
    await r.ping();
    expect(await callAcrossAStall(r, 800)).toBe('failed Command timed out');
    r.disconnect();
  });

  it('stall-aware: the answer that came during the stall is read, the command succeeds', async () => {
    const r = client(true);
    await r.ping();
    for (let i = 0; i < 5; i++) expect(await callAcrossAStall(r, 800)).toBe('ok PONG');
    // pipelines and scripts go the same way
    const results = await r.pipeline().ping().eval('return 1', 0).exec();
    expect(results).toEqual([
      [null, 'PONG'],
      [null, 1],
    ]);
    r.disconnect();
  });

  it('stall-aware: a Redis that does not answer still times out, after about the timeout', async () => {
    const r = client(true);
    await r.ping();
    process.kill(redis.process.pid as number, 'SIGSTOP');
    try {
      const started = Date.now();
      await expect(r.ping()).rejects.toThrow('Command timed out');
      expect(Date.now() - started).toBeGreaterThanOrEqual(290);
      expect(Date.now() - started).toBeLessThan(2_000);
    } finally {
      process.kill(redis.process.pid as number, 'SIGCONT');
    }
    expect(await r.ping()).toBe('PONG');
    r.disconnect();
  });
});
