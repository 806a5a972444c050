import { randomBytes } from 'node:crypto';
import type { ClickHouseClient } from '@clickhouse/client';
import type { Logger } from 'pino';
import { startPeriodic } from '../periodic.js';
import { insertSettings } from './clickhouse.js';

/**
 * Snapshots of every session's merged interval (first and last call), for the past-range session questions
 * of the API (migration 0016; the reader is billing-api/src/sql.ts `lifetimeActive`).
 *
 * A build: (1) the watermark W = the server's clock minus `marginMs`, and a row `done = 0` in
 * mcp_session_interval_snapshots; (2) one `INSERT … SELECT` grouping mcp_session_summary by session into the
 * snapshot's own partition of mcp_session_intervals; (3) a row `done = 1`; (4) the partitions no reader can
 * still use dropped. A reader takes the latest finished snapshot and groups, with the snapshot's rows of the
 * same sessions, the summary rows landed at or after W.
 *
 * Why that is exact: a summary row's landed_at is the view's clock when its block was inserted, and merges
 * keep the latest. A row landed before W was committed before the build read the summary — as long as no
 * insert takes longer than the margin from its view to its commit — so the snapshot holds it. A session with
 * a row landed at or after W always has a summary row with landed_at ≥ W (merges only raise it), so the reader
 * groups it again with its snapshot row; min and max do not change when the same calls are merged twice.
 * A snapshot's age never changes an answer, only how many sessions the reader groups.
 */

/** Finished snapshots kept besides the latest: a reader that picked one just before a build ended still finds it. */
const KEEP_FINISHED = 2;
/** A build that started this long ago and never finished (a crash, or a failed insert) is dropped. */
const ABANDONED_AFTER_MS = 60 * 60 * 1000;

/**
 * The build runs beside the ingest path (in the same process with embedded chDB): its memory, not its speed,
 * is what matters. One thread, small blocks, the grouping spilled to disk past 20 MB and the snapshot written
 * in 64k-row parts: at 500,000 sessions the build's peak RSS went from +310 MB to +90…155 MB over an idle
 * process, for 1.6 s of CPU instead of 0.65 s (docs/benchmarks.md, "Session analytics", step 5). In the
 * statement, not as query settings: chDB's connection would keep those for the next queries of the session.
 */
const BUILD_SETTINGS = [
  'max_threads = 1',
  'max_block_size = 8192',
  'min_insert_block_size_rows = 65536',
  'min_insert_block_size_bytes = 0',
  'max_bytes_before_external_group_by = 20000000',
  'max_bytes_ratio_before_external_group_by = 0',
].join(', ');

export interface SessionIntervalsBuild {
  /** The snapshot's id (decimal UInt64). */
  snapshot: string;
  /** Summary rows landed at or after this (server clock, `YYYY-MM-DD hh:mm:ss.sss` UTC) are not relied on. */
  watermark: string;
  /** Sessions in the snapshot (all tenants). */
  sessions: number;
  /** Partitions of older or abandoned snapshots dropped by this build. */
  dropped: number;
  ms: number;
}

async function rows<T>(client: ClickHouseClient, query: string, params = {}): Promise<T[]> {
  return (await client.query({ query, format: 'JSONEachRow', query_params: params })).json<T>();
}

/** A random snapshot id: two builders (several receivers on one server) never share a partition. */
function snapshotId(): string {
  return (randomBytes(8).readBigUInt64BE() >> 1n).toString();
}

/** Builds one snapshot and drops the ones no reader needs any more (see the module's comment). */
export async function buildSessionIntervals(
  client: ClickHouseClient,
  opts: { marginMs: number },
): Promise<SessionIntervalsBuild> {
  if (!Number.isSafeInteger(opts.marginMs) || opts.marginMs < 0)
    throw new RangeError(`marginMs must be a non-negative integer, got ${opts.marginMs}`);
  const t0 = performance.now();
  const snapshot = snapshotId();
  const [clock] = await rows<{ watermark: string; started: string }>(
    client,
    `SELECT toString(now64(3, 'UTC') - toIntervalMillisecond({margin:UInt64})) AS watermark,
      toString(now64(3, 'UTC')) AS started`,
    { margin: opts.marginMs },
  );
  const { watermark, started } = clock as { watermark: string; started: string };
  const mark = (done: 0 | 1, sessions: number) =>
    client.command({
      query: `INSERT INTO mcp_session_interval_snapshots (snapshot, watermark, started_at, done, sessions)
        VALUES ({snapshot:UInt64}, {watermark:DateTime64(3, 'UTC')}, {started:DateTime64(3, 'UTC')}, ${done}, {sessions:UInt64})`,
      query_params: { snapshot, watermark, started, sessions },
      clickhouse_settings: insertSettings(),
    });
  await mark(0, 0);
  // every session with calls, grouped by session_key (a hash of customer and session id: the sessions the API
  // tells apart), with its interval and totals as the API shows them (billing-api/src/sql.ts SESSION_TOTALS)
  await client.command({
    query: `INSERT INTO mcp_session_intervals (snapshot, product, customer, session_id, session_key, first_seen,
        last_seen, agent, transport, session_rule, calls, errors, revenue_nano, cost_nano)
      SELECT {snapshot:UInt64}, product, any(customer), any(session_id), session_key, min(first_seen),
        max(last_seen), max(agent), max(transport), max(session_rule), sum(calls), sum(errors), sum(revenue_nano),
        sum(cost_nano)
      FROM mcp_session_summary
      WHERE session_key != 0
      GROUP BY product, session_key
      SETTINGS ${BUILD_SETTINGS}`,
    query_params: { snapshot },
    clickhouse_settings: insertSettings(),
  });
  const [counted] = await rows<{ n: string }>(
    client,
    'SELECT count() AS n FROM mcp_session_intervals WHERE snapshot = {snapshot:UInt64}',
    { snapshot },
  );
  const sessions = Number(counted?.n ?? 0);
  await mark(1, sessions);
  const dropped = await dropUnused(client);
  return { snapshot, watermark, sessions, dropped, ms: Math.round(performance.now() - t0) };
}

/**
 * Drops the partitions of mcp_session_intervals that are neither among the latest finished snapshots nor a
 * build started within the last hour (maybe another builder's, still running).
 */
async function dropUnused(client: ClickHouseClient): Promise<number> {
  const keep = await rows<{ snapshot: string }>(
    client,
    `SELECT toString(snapshot) AS snapshot FROM (
        SELECT snapshot FROM mcp_session_interval_snapshots WHERE done = 1
        ORDER BY started_at DESC, snapshot DESC LIMIT {finished:UInt32}
      )
      UNION ALL
      SELECT toString(snapshot) FROM mcp_session_interval_snapshots
      GROUP BY snapshot
      HAVING max(done) = 0 AND min(started_at) >= now64(3, 'UTC') - toIntervalMillisecond({abandoned:UInt64})`,
    { finished: 1 + KEEP_FINISHED, abandoned: ABANDONED_AFTER_MS },
  );
  const kept = new Set(keep.map((k) => k.snapshot));
  const partitions = await rows<{ partition: string }>(
    client,
    `SELECT DISTINCT partition FROM system.parts
      WHERE database = currentDatabase() AND table = 'mcp_session_intervals' AND active`,
  );
  let dropped = 0;
  for (const { partition } of partitions) {
    if (kept.has(partition) || !/^\d+$/.test(partition)) continue;
    await client.command({ query: `ALTER TABLE mcp_session_intervals DROP PARTITION ${partition}` });
    dropped++;
  }
  return dropped;
}

/** The background job: a build every `everyMs` (never two at once), the first soon after start. */
export function startSessionIntervalsJob(
  client: ClickHouseClient,
  opts: {
    everyMs: number;
    marginMs: number;
    onBuild?: (b: SessionIntervalsBuild) => void;
    onError?: (err: Error) => void;
  },
  log: Logger,
): { stop(): Promise<void> } {
  return startPeriodic(
    () =>
      buildSessionIntervals(client, { marginMs: opts.marginMs })
        .then((b) => {
          opts.onBuild?.(b);
          log.debug({ ...b }, 'session intervals snapshot built');
        })
        .catch((err) => {
          opts.onError?.(err as Error);
          log.warn(
            { err: (err as Error).message },
            'session intervals snapshot failed; readers use the previous one',
          );
        }),
    { everyMs: opts.everyMs, firstMs: Math.min(5_000, opts.everyMs) },
  );
}
