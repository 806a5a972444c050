import pino from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createMetrics } from '../src/metrics.js';
import { MAX_OWED_CALLS, type OwedItem, OwedQueue, SETTLE_ATTEMPTS } from '../src/redis/owed.js';

interface Item extends OwedItem {
  id: string;
}

/** ioredis's ReplyError: an error Redis answered (`name` is what the queue reads). */
function replyError(message: string): Error {
  const e = new Error(message);
  e.name = 'ReplyError';
  return e;
}

function queue(apply: (item: Item) => Promise<void>) {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'info' }, { write: (l: string) => lines.push(JSON.parse(l)) });
  const metrics = createMetrics();
  const q = new OwedQueue<Item>('claim', metrics, log, apply, (i) => ({ id: i.id }));
  const item = (id: string, calls = 1): Item => ({ id, calls, attempts: 0, lastAttemptMs: 0 });
  const dropped = async () =>
    (await metrics.callsSettled.get()).values.find((v) => v.labels.result === 'dropped')?.value ?? 0;
  return { q, item, lines, dropped };
}

afterEach(() => {
  vi.useRealTimers();
});

describe('calls owed to Redis', () => {
  it('are applied per customer, in order; one customer failing does not hold another', async () => {
    const applied: string[] = [];
    const { q, item } = queue(async (i) => {
      if (i.id.startsWith('a') && down) throw new Error('Connection is closed.');
      applied.push(i.id);
    });
    let down = true;
    q.push('p', 'a', item('a1'));
    q.push('p', 'b', item('b1'));
    q.push('p', 'a', item('a2'));
    q.push('p', 'b', item('b2'));
    await q.settleCustomer('p', 'b');
    expect(applied).toEqual(['b1', 'b2']);
    await expect(q.settleAll()).rejects.toThrow('Connection is closed.');
    expect(q.owes('p', 'a')).toBe(true);
    expect(q.calls).toBe(2);
    down = false;
    await q.settleAll();
    expect(applied).toEqual(['b1', 'b2', 'a1', 'a2']);
    expect(q.calls).toBe(0);
    expect(q.owes('p', 'a')).toBe(false);
  });

  it('one settling at a time per customer: callers share it, nothing is applied twice', async () => {
    const applied: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => {
      release = r;
    });
    const { q, item } = queue(async (i) => {
      await gate;
      applied.push(i.id);
    });
    q.push('p', 'a', item('a1'));
    q.push('p', 'a', item('a2'));
    const one = q.settleCustomer('p', 'a');
    const two = q.settleCustomer('p', 'a');
    const all = q.settleAll();
    release();
    await Promise.all([one, two, all]);
    expect(applied).toEqual(['a1', 'a2']);
  });

  it('Redis refusing writes for now (OOM, READONLY, MISCONF…) never uses up the tries', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    let error = replyError('OOM command not allowed when used memory > maxmemory');
    const { q, item, dropped } = queue(async () => {
      if (error) throw error;
    });
    q.push('p', 'a', item('a1', 3));
    for (const message of [
      'OOM command not allowed',
      'READONLY You cannot write',
      'MISCONF Redis is configured',
    ]) {
      error = replyError(message);
      for (let i = 0; i < SETTLE_ATTEMPTS * 2; i++) {
        vi.advanceTimersByTime(2000);
        await expect(q.settleAll()).rejects.toThrow();
      }
    }
    expect(q.calls).toBe(3);
    expect(await dropped()).toBe(0);
  });

  it('an item Redis refuses for its own sake is given up after SETTLE_ATTEMPTS tries a second apart, not sooner', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const { q, item, lines, dropped } = queue(async () => {
      throw replyError('ERR Error running script: enforce.lua: call 3 names a session not sent');
    });
    q.push('p', 'a', item('a1', 4));
    // a burst of exports retrying within one second: one try
    for (let i = 0; i < 20; i++) await expect(q.settleCustomer('p', 'a')).rejects.toThrow();
    for (let i = 1; i < SETTLE_ATTEMPTS - 1; i++) {
      vi.advanceTimersByTime(1000);
      await expect(q.settleCustomer('p', 'a')).rejects.toThrow();
    }
    expect(q.calls).toBe(4);
    vi.advanceTimersByTime(1000);
    await q.settleCustomer('p', 'a'); // the last try: given up
    expect(q.calls).toBe(0);
    expect(await dropped()).toBe(4);
    expect(lines.some((l) => l.msg === 'owed calls given up: they stay billed, not counted in Redis')).toBe(
      true,
    );
  });

  it(`keeps at most ${MAX_OWED_CALLS} calls; past it they are counted as dropped`, async () => {
    const { q, item, dropped } = queue(async () => {});
    q.push('p', 'a', item('big', MAX_OWED_CALLS - 1));
    q.push('p', 'b', item('b1', 2));
    q.push('p', 'c', item('c1', 1));
    expect(q.calls).toBe(MAX_OWED_CALLS);
    expect(q.owes('p', 'b')).toBe(false);
    expect(await dropped()).toBe(2);
  });
});
