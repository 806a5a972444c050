import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import {
  type ClickHouseHandle,
  insertSettings,
  migrate,
  openClickHouse,
} from '../../collector-processor/src/storage/clickhouse.js';
import { buildSessionIntervals } from '../../collector-processor/src/storage/session-intervals.js';
import { financeApi } from './support/finance-api.js';

/**
 * Random workloads against the session-interval snapshots (migration 0016): rounds of calls landed in small
 * inserts (sessions that grow on both sides, calls landed out of time order, calls without a session), a
 * snapshot built after some rounds (with no margin, or with a margin that puts every landed row after its
 * watermark), merges of the session view stopped in half the rounds, and after every round random ranges asked through the views and through the raw table: the
 * session count and every session of the list, with its totals, must be the same. A fixed seed makes a
 * failure reproducible.
 */

const KEY = 'tg_test_snapshot_random_key';
const P = 'random-mcp';
const dir = mkdtempSync(join(tmpdir(), 'tollgate-sessions-random-'));
let ch: ClickHouseHandle;

/** mulberry32: a small deterministic PRNG. */
function prng(seed: number) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const appOf = (source: 'views' | 'raw') => financeApi(ch.readClient(), KEY, P, source);

beforeAll(async () => {
  ch = openClickHouse({ url: '', dataDir: dir, database: 'default', username: 'default', password: '' });
  await migrate(ch.client);
});
afterAll(async () => {
  await ch?.close();
  rmSync(dir, { recursive: true, force: true });
});

it('random rounds of calls and snapshots: the views answer like the raw table', async () => {
  const rand = prng(20261206);
  const pick = (n: number) => Math.floor(rand() * n);
  const views = appOf('views');
  const raw = appOf('raw');
  const day = (d: number) => `2026-03-${String(d).padStart(2, '0')}`;
  let event = 0;
  let lifetimeAnswers = 0;
  let snapshots = 0;
  try {
    for (let round = 0; round < 8; round++) {
      // half the rounds with the session view's merges stopped: a session's rows from different inserts stay
      // apart (as when merges lag), so a touched session's snapshot row is what holds its older calls
      await ch.client.command({
        query: `SYSTEM ${round % 2 ? 'START' : 'STOP'} MERGES mcp_session_summary`,
      });
      const inserts = 2 + pick(3);
      for (let i = 0; i < inserts; i++) {
        const values: string[] = [];
        for (let c = 0, n = 5 + pick(20); c < n; c++) {
          const customer = `c${pick(3)}`;
          const s = pick(40);
          const session = pick(8) === 0 ? '' : `s${s}`;
          // a session's calls fall within a few days of its own (out of time order across inserts)
          const at = `${day(1 + ((s * 7) % 16) + pick(5))} ${String(pick(24)).padStart(2, '0')}:${String(pick(60)).padStart(2, '0')}:00.${String(pick(1_000_000)).padStart(6, '0')}`;
          values.push(
            `('r${event++}', '${P}', '${customer}', 'agent-${pick(2)}', '${session}', 'search', '${pick(5) ? 'ok' : 'error'}', toDateTime64('${at}', 6, 'UTC'), ${pick(10_000)}, ${pick(1_000)})`,
          );
        }
        await ch.client.command({
          query: `INSERT INTO mcp_tool_calls (event_id, product, customer, agent, session_id, tool, status, started_at,
              price_nano, cost_nano) VALUES ${values.join(', ')}`,
          clickhouse_settings: insertSettings(`random-${round}-${i}`),
        });
      }
      if (round % 3 !== 1) {
        await buildSessionIntervals(ch.client, { marginMs: pick(2) ? 0 : 86_400_000 });
        snapshots++;
      }
      for (let q = 0; q < 4; q++) {
        const from = 1 + pick(18);
        const to = from + 1 + pick(4);
        const customer = pick(3) === 0 ? `&customer=c${pick(3)}` : '';
        const url = (path: string, extra = '') =>
          `/analytics/mcp/${path}?product=${P}&from=${day(from)}&to=${day(to)}${customer}${extra}`;
        const get = async (app: ReturnType<typeof appOf>, u: string) => {
          const res = await app.inject({ url: u, headers: { authorization: `Bearer ${KEY}` } });
          expect(res.statusCode, u).toBe(200);
          return res.json<{ readFrom: string[]; sessions?: number; rows?: unknown[] }>();
        };
        const [vl, rl, vs, rs] = await Promise.all([
          get(views, url('sessions', '&limit=1000')),
          get(raw, url('sessions', '&limit=1000')),
          get(views, url('summary')),
          get(raw, url('summary')),
        ]);
        expect({ ...vl, readFrom: undefined }, url('sessions')).toEqual({ ...rl, readFrom: undefined });
        expect(vs.sessions, url('summary')).toBe(rs.sessions);
        if (vl.readFrom.includes('mcp_session_intervals')) lifetimeAnswers++;
      }
    }
  } finally {
    await views.close();
    await raw.close();
  }
  // the snapshot path was taken, not only the daily and the no-snapshot ones
  expect(snapshots).toBeGreaterThan(3);
  expect(lifetimeAnswers).toBeGreaterThan(10);
}, 120_000);
