import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ClickHouseClient } from '@clickhouse/client';
import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ClickHouseHandle, insertSettings, migrate, openClickHouse } from '../src/storage/clickhouse.js';
import {
  buildSessionIntervals,
  type SessionIntervalsBuild,
  startSessionIntervalsJob,
} from '../src/storage/session-intervals.js';

// The builder of the session-interval snapshots (migration 0016). That the API's answers from a snapshot equal
// the raw scan's is proved in billing-api/test/sessions-lifetime.test.ts; here: what a build writes, which
// partitions it keeps, and the background job.
const dir = mkdtempSync(join(tmpdir(), 'tollgate-session-intervals-'));
let ch: ClickHouseHandle;

async function rows<T>(query: string): Promise<T[]> {
  return (await ch.client.query({ query, format: 'JSONEachRow' })).json<T>();
}

const partitions = async () =>
  (
    await rows<{ partition: string }>(
      `SELECT DISTINCT partition FROM system.parts
        WHERE database = currentDatabase() AND table = 'mcp_session_intervals' AND active ORDER BY partition`,
    )
  ).map((p) => p.partition);

beforeAll(async () => {
  ch = openClickHouse({ url: '', dataDir: dir, database: 'default', username: 'default', password: '' });
  await migrate(ch.client);
  // two sessions of one customer over three inserts, one of another customer, calls without a session
  const calls: [string, string, string][] = [
    ['c1', 's1', '2026-05-01 10:00:00'],
    ['c1', 's1', '2026-05-03 10:00:00'],
    ['c1', 's2', '2026-05-02 00:00:00.000001'],
    ['c2', 's1', '2026-05-04 12:00:00'],
    ['c2', '', '2026-05-04 13:00:00'],
    ['c1', 's1', '2026-04-30 23:59:59.999999'],
  ];
  for (const [i, [customer, session, at]] of calls.entries()) {
    await ch.client.command({
      query: `INSERT INTO mcp_tool_calls (event_id, product, customer, session_id, status, started_at)
        VALUES ('e${i}', 'p', '${customer}', '${session}', 'ok', toDateTime64('${at}', 6, 'UTC'))`,
      clickhouse_settings: insertSettings(`intervals-${i}`),
    });
  }
});
afterAll(async () => {
  await ch?.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('session-interval snapshots', () => {
  it("holds each session's first and last call once, and marks the build started and finished", async () => {
    const built = await buildSessionIntervals(ch.client, { marginMs: 90_000 });
    expect(built.sessions).toBe(3);
    const got = await rows<Record<string, unknown>>(
      `SELECT customer, session_id, toString(first_seen) AS first_seen, toString(last_seen) AS last_seen,
          session_key = reinterpretAsUInt128(sipHash128(customer, session_id)) AS key_ok, toString(calls) AS calls
        FROM mcp_session_intervals WHERE snapshot = ${built.snapshot} ORDER BY customer, session_id`,
    );
    // one row per session over its three inserts, calls without a session left out
    expect(got).toEqual([
      {
        customer: 'c1',
        session_id: 's1',
        first_seen: '2026-04-30 23:59:59.999999',
        last_seen: '2026-05-03 10:00:00.000000',
        key_ok: 1,
        calls: '3',
      },
      {
        customer: 'c1',
        session_id: 's2',
        first_seen: '2026-05-02 00:00:00.000001',
        last_seen: '2026-05-02 00:00:00.000001',
        key_ok: 1,
        calls: '1',
      },
      {
        customer: 'c2',
        session_id: 's1',
        first_seen: '2026-05-04 12:00:00.000000',
        last_seen: '2026-05-04 12:00:00.000000',
        key_ok: 1,
        calls: '1',
      },
    ]);
    const marks = await rows<{ done: number; w: string; margin_ms: string; sessions: string }>(
      `SELECT done, toString(watermark) AS w, toString(dateDiff('millisecond', watermark, started_at)) AS margin_ms,
          toString(sessions) AS sessions
        FROM mcp_session_interval_snapshots WHERE snapshot = ${built.snapshot} ORDER BY done`,
    );
    expect(marks).toEqual([
      { done: 0, w: built.watermark, margin_ms: '90000', sessions: '0' },
      { done: 1, w: built.watermark, margin_ms: '90000', sessions: '3' },
    ]);
  });

  it('keeps the latest three finished snapshots and builds under way, and drops the rest', async () => {
    // another builder's snapshot under way (started now) and an abandoned one (two hours ago); a partition
    // no marker names (a build that died before its first mark cannot exist, but a marker's TTL can expire)
    const fill = (snapshot: string) =>
      ch.client.command({
        query: `INSERT INTO mcp_session_intervals (snapshot, product, customer, session_key, first_seen, last_seen)
          VALUES (${snapshot}, 'p', 'x', 1, now64(6), now64(6))`,
        clickhouse_settings: insertSettings(),
      });
    for (const [snapshot, startedAgo] of [
      ['111', '0'],
      ['222', '7200000'],
    ] as const) {
      await ch.client.command({
        query: `INSERT INTO mcp_session_interval_snapshots (snapshot, watermark, started_at, done, sessions)
          SELECT ${snapshot}, now64(3) - toIntervalMillisecond(${startedAgo}), now64(3) - toIntervalMillisecond(${startedAgo}), 0, 0`,
        clickhouse_settings: insertSettings(),
      });
      await fill(snapshot);
    }
    await fill('333');
    const builds: SessionIntervalsBuild[] = [];
    for (let i = 0; i < 4; i++) builds.push(await buildSessionIntervals(ch.client, { marginMs: 0 }));
    const latest = builds.slice(-3).map((b) => b.snapshot);
    expect(await partitions()).toEqual(['111', ...latest].sort());
    // what each build dropped: the first 222 and 333; the third the previous test's snapshot (the fourth
    // latest finished), the fourth this test's first
    expect(builds.map((b) => b.dropped)).toEqual([2, 0, 1, 1]);
    // every kept snapshot is whole
    for (const b of builds.slice(-3)) {
      const [n] = await rows<{ n: string }>(
        `SELECT toString(count()) AS n FROM mcp_session_intervals WHERE snapshot = ${b.snapshot}`,
      );
      expect(n?.n).toBe('3');
    }
  });

  it('refuses a margin that is not a whole number of milliseconds', async () => {
    await expect(buildSessionIntervals(ch.client, { marginMs: -1 })).rejects.toThrow(RangeError);
    await expect(buildSessionIntervals(ch.client, { marginMs: 0.5 })).rejects.toThrow(RangeError);
  });

  it('the job builds on its interval, reports failures, and stop() waits for a build under way', async () => {
    const log = pino({ level: 'silent' });
    const built: SessionIntervalsBuild[] = [];
    const job = startSessionIntervalsJob(
      ch.client,
      { everyMs: 100, marginMs: 0, onBuild: (b) => built.push(b) },
      log,
    );
    await expect.poll(() => built.length, { timeout: 20_000, interval: 50 }).toBeGreaterThanOrEqual(2);
    await job.stop();
    const after = built.length;
    await new Promise((r) => setTimeout(r, 300));
    expect(built.length).toBe(after);
    expect(await partitions()).toContain(built.at(-1)?.snapshot);

    const errors: Error[] = [];
    const failing = {
      query: () => Promise.reject(new Error('ClickHouse is away')),
    } as unknown as ClickHouseClient;
    const broken = startSessionIntervalsJob(
      failing,
      { everyMs: 50, marginMs: 0, onError: (e) => errors.push(e) },
      log,
    );
    await expect.poll(() => errors.length, { timeout: 5_000, interval: 20 }).toBeGreaterThanOrEqual(2);
    await broken.stop();
    expect(errors[0]?.message).toBe('ClickHouse is away');
  });
});
