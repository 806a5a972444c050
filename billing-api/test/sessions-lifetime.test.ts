import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type ClickHouseHandle,
  insertSettings,
  migrate,
  openClickHouse,
  readMigrations,
} from '../../collector-processor/src/storage/clickhouse.js';
import { buildSessionIntervals } from '../../collector-processor/src/storage/session-intervals.js';
import { financeApi } from './support/finance-api.js';

/**
 * A past range (calls follow it) answers from the lifetime view in two steps: the keys that can be on the
 * page (grouped by session_key, with the sessions tied with the last of them), then their totals by key.
 * Proof on a workload made for the edges: three sessions whose last calls are at the same microsecond, a
 * session that spans the range without a call in it, sessions entirely before or after it, calls without a
 * session, every call landed by its own insert (so each session has one partial row per call in the views
 * until a merge), half of them before migration 0012 (its backfill, and its key in parts written before it).
 * Every page, at every offset, equals the answer of a full scan of the raw table.
 */

const KEY = 'tg_test_lifetime_key';
const P = 'ties-mcp';
const dir = mkdtempSync(join(tmpdir(), 'tollgate-sessions-lifetime-'));
let ch: ClickHouseHandle;

// [customer, session id, call time]
const CALLS: [string, string, string][] = [
  ['c1', 's-a', '2026-03-09 23:00:00'], // spans the range, no call in it
  ['c1', 's-a', '2026-03-12 10:00:00'],
  ['c2', 's-b', '2026-03-10 05:00:00'],
  ['c2', 's-b', '2026-03-12 10:00:00'], // tied with s-a and s-c
  ['c1', 's-c', '2026-03-10 06:00:00'],
  ['c1', 's-c', '2026-03-12 10:00:00'],
  ['c3', 's-d', '2026-03-10 07:00:00'],
  ['c2', 's-e', '2026-03-12 09:00:00'], // after the range: not active
  ['c1', 's-f', '2026-03-09 10:00:00'], // before the range: not active
  ['c3', '', '2026-03-10 08:00:00'], // no session: never listed
  ['c3', 's-h', '2026-03-10 23:59:59.999999'],
  ['c3', 's-h', '2026-03-11 00:00:00'],
];
const EXPECTED = ['c1/s-a', 'c1/s-c', 'c2/s-b', 'c3/s-h', 'c3/s-d'];

const appOf = (source: 'views' | 'raw') => financeApi(ch.readClient(), KEY, P, source);

beforeAll(async () => {
  ch = openClickHouse({ url: '', dataDir: dir, database: 'default', username: 'default', password: '' });
  // half the calls land before migration 0012 (its backfill and the key of parts written before it), half after
  await migrate(
    ch.client,
    readMigrations().filter((m) => m.version < 12),
  );
  for (const [i, [customer, session, at]] of CALLS.entries()) {
    if (i === CALLS.length / 2) await migrate(ch.client);
    await ch.client.command({
      query: `INSERT INTO mcp_tool_calls (event_id, product, customer, agent, session_id, tool, status, started_at,
          price_nano, cost_nano)
        VALUES ('e${i}', '${P}', '${customer}', 'agent-1', '${session}', 'search', 'ok',
          toDateTime64('${at}', 6, 'UTC'), ${1000 + i}, ${100 + i})`,
      clickhouse_settings: insertSettings(`lifetime-${i}`),
    });
  }
}, 120_000);
afterAll(async () => {
  await ch?.close();
  rmSync(dir, { recursive: true, force: true });
});

type Page = { readFrom: string[]; rows: { customer: string; sessionId: string }[]; page: unknown };

/** GET a sessions page (or the summary) of the range 2026-03-10 … 2026-03-11. */
async function get<T = Page>(app: ReturnType<typeof appOf>, q: string, path = 'sessions'): Promise<T> {
  const res = await app.inject({
    url: `/analytics/mcp/${path}?product=${P}&from=2026-03-10&to=2026-03-11&${q}`,
    headers: { authorization: `Bearer ${KEY}` },
  });
  expect(res.statusCode).toBe(200);
  return res.json<T>();
}

/**
 * Every page (limits 1–3, every offset) from the views equals the raw scan's and the expected order; the
 * summary counts the same sessions. Returns the tables the first page read.
 */
async function everyPage(expected: readonly string[]): Promise<string[]> {
  const views = appOf('views');
  const raw = appOf('raw');
  try {
    const all = await get(views, 'limit=100');
    expect(all.rows.map((r) => `${r.customer}/${r.sessionId}`)).toEqual(expected);
    for (const limit of [1, 2, 3]) {
      for (let offset = 0; offset <= expected.length; offset++) {
        const q = `limit=${limit}&offset=${offset}`;
        const [v, r] = await Promise.all([get(views, q), get(raw, q)]);
        expect({ ...v, readFrom: undefined }, q).toEqual({ ...r, readFrom: undefined });
        expect(v.rows.map((x) => `${x.customer}/${x.sessionId}`)).toEqual(
          expected.slice(offset, offset + limit),
        );
      }
    }
    const [vs, rs] = await Promise.all([
      get<{ sessions: number; readFrom: string[] }>(views, '', 'summary'),
      get<{ sessions: number }>(raw, '', 'summary'),
    ]);
    expect([vs.sessions, rs.sessions]).toEqual([expected.length, expected.length]);
    expect(vs.readFrom).toEqual(expect.arrayContaining(all.readFrom));
    return [...all.readFrom].sort();
  } finally {
    await views.close();
    await raw.close();
  }
}

async function land(calls: readonly [string, string, string][], prefix: string) {
  for (const [i, [customer, session, at]] of calls.entries()) {
    await ch.client.command({
      query: `INSERT INTO mcp_tool_calls (event_id, product, customer, agent, session_id, tool, status, started_at,
          price_nano, cost_nano)
        VALUES ('${prefix}${i}', '${P}', '${customer}', 'agent-1', '${session}', 'search', 'ok',
          toDateTime64('${at}', 6, 'UTC'), ${2000 + i}, ${200 + i})`,
      clickhouse_settings: insertSettings(`${prefix}-${i}`),
    });
  }
}

describe('sessions of a past range from the lifetime view', () => {
  it('every page equals the raw scan, ties and the spanning session included', async () => {
    expect(await everyPage(EXPECTED)).toEqual([
      'mcp_session_daily',
      'mcp_session_interval_snapshots',
      'mcp_session_summary',
    ]);
    // the month: its sessions counted from the monthly sets, backfilled and then fed by the view
    const views = appOf('views');
    const raw = appOf('raw');
    try {
      const month = async (app: ReturnType<typeof appOf>) =>
        (
          await app.inject({
            url: `/analytics/mcp/summary?product=${P}&period=2026-03`,
            headers: { authorization: `Bearer ${KEY}` },
          })
        ).json<{ sessions: number; readFrom: string[] }>();
      const [vm, rm] = await Promise.all([month(views), month(raw)]);
      expect(vm.readFrom).toContain('mcp_customer_monthly_sessions');
      expect(vm.sessions).toBe(7);
      expect(rm.sessions).toBe(7);
    } finally {
      await views.close();
      await raw.close();
    }
  });

  it('reads the merged intervals of a snapshot, and the same pages come back', async () => {
    const built = await buildSessionIntervals(ch.client, { marginMs: 0 });
    // c1/s-a, c1/s-c, c1/s-f, c2/s-b, c2/s-e, c3/s-d, c3/s-h: calls without a session are not intervals
    expect(built.sessions).toBe(7);
    expect(await everyPage(EXPECTED)).toEqual([
      'mcp_session_daily',
      'mcp_session_interval_snapshots',
      'mcp_session_intervals',
      'mcp_session_summary',
    ]);
  });

  it('groups the sessions touched since the snapshot with their snapshot rows', async () => {
    await land(
      [
        ['c1', 's-f', '2026-03-12 08:00:00'], // was entirely before the range: now spans it
        ['c2', 's-e', '2026-03-09 12:00:00'], // was entirely after the range: now spans it
        ['c3', 's-n', '2026-03-10 12:00:00'], // a new session in the range
        ['c1', 's-a', '2026-03-13 00:00:00'], // still active, its last call later: first on the page now
        ['c1', 's-z', '2026-03-14 00:00:00'], // a new session after the range: not active
        ['c3', '', '2026-03-10 09:00:00'], // no session
      ],
      'after-',
    );
    const touched = ['c1/s-a', 'c1/s-c', 'c2/s-b', 'c2/s-e', 'c1/s-f', 'c3/s-h', 'c3/s-n', 'c3/s-d'];
    expect(await everyPage(touched)).toContain('mcp_session_intervals');
    // a snapshot whose watermark is before every landed row (a margin of a day): every session is touched
    await buildSessionIntervals(ch.client, { marginMs: 86_400_000 });
    expect(await everyPage(touched)).toContain('mcp_session_intervals');
    // and one with all of them in it
    await buildSessionIntervals(ch.client, { marginMs: 0 });
    expect(await everyPage(touched)).toContain('mcp_session_intervals');
  });

  it('does not read a snapshot started more than a day ago (the job stopped): it groups every session', async () => {
    // every build's marks, 25 hours earlier (started_at is the table's key: rewritten, not updated)
    for (const query of [
      'CREATE TABLE marks_moved ENGINE = Memory AS SELECT * FROM mcp_session_interval_snapshots',
      'TRUNCATE TABLE mcp_session_interval_snapshots',
      `INSERT INTO mcp_session_interval_snapshots SELECT snapshot, watermark, started_at - INTERVAL 25 HOUR, done,
        sessions FROM marks_moved`,
      'DROP TABLE marks_moved',
    ])
      await ch.client.command({ query, clickhouse_settings: insertSettings() });
    const touched = ['c1/s-a', 'c1/s-c', 'c2/s-b', 'c2/s-e', 'c1/s-f', 'c3/s-h', 'c3/s-n', 'c3/s-d'];
    expect(await everyPage(touched)).toEqual([
      'mcp_session_daily',
      'mcp_session_interval_snapshots',
      'mcp_session_summary',
    ]);
  });
});
