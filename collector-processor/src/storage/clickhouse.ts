import { createHash, randomUUID } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { open, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { type ClickHouseClient, type ClickHouseSettings, createClient } from '@clickhouse/client';
import type { createChdbConnection } from 'chdb/connection';
import { openChdbPool } from './chdb-pool.js';
import { startThreadNice } from './thread-nice.js';

export type ClickHouseMode = 'chdb' | 'server';

export interface ClickHouseHandle {
  /** The client the lander, the migrations and the processor's short statements (enforcement events, credits) use. */
  client: ClickHouseClient;
  /**
   * The client the API's reads (the analytics, the credit routes' check for a known customer, and the Stripe
   * job's, which reads as the API does) go through. On a server, the
   * same client: the server binds parameters and runs requests in parallel. On chDB, read connections of
   * their own, opened on first use, with parameters written into the SQL, so that a request's queries run side
   * by side and never wait behind a landing insert (chdb-pool.ts; ClickHouseOptions.chdbReadConnections).
   */
  readClient(): ClickHouseClient;
  /**
   * The client of the processor's long background statements (the session-interval snapshots: seconds of
   * grouping at 500,000 sessions). On chDB a connection of its own, parameters written in as for readClient,
   * opened on first use: on the lander's connection every landing insert waited for the whole build. On a
   * server, the same client.
   */
  jobClient(): ClickHouseClient;
  mode: ClickHouseMode;
  close(): Promise<void>;
  /**
   * Inserts TabSeparated rows (the bytes as they are) into `table`'s `columns`, with `settings` for this insert
   * only (in the statement's SETTINGS clause, never left in the session). On chDB the bytes go to the engine
   * as a Buffer (chDB's raw insert) — or, with `chdbInsert: 'file'`, they are written to a file of their own
   * and inserted with `INSERT … SELECT * FROM file(…, TabSeparated)`, the column types taken from the table.
   * On a server it is `client.insert` over HTTP.
   */
  insertTsv(
    table: string,
    columns: readonly string[],
    body: Buffer,
    settings: ClickHouseSettings,
  ): Promise<void>;
  /**
   * chDB only: inserts blocks of ClickHouse's Native format (NativeWriter's bytes), always through a file of
   * their own (`INSERT … SELECT * FROM file(…, Native)`): chDB's raw insert appends the bytes to the statement's
   * text, and the engine ends inline data at an empty line — a `\n\n` inside a binary value (any 0x0A0A in an
   * integer) would cut the block. `body` is the bytes, or pieces written one after the other (the lander's
   * block as views of its records, nativeBlockPieces). The file is removed when the insert ends; the spool, not
   * the file, is what survives a crash.
   */
  insertNative?(
    table: string,
    columns: readonly string[],
    body: Buffer | readonly Buffer[],
    settings: ClickHouseSettings,
  ): Promise<void>;
  /**
   * The format the lander writes rated calls in for this handle: `Native` on chDB with `chdbInsert: 'file'`
   * (the engine copies columns instead of parsing text: less CPU per landed row, docs/benchmarks.md, "Landing
   * in Native"), `TabSeparated` inline on chDB and on a server (@clickhouse/client inserts text formats only).
   */
  readonly landingFormat: LandingFormat;
  /** chDB only: how rows are handed over now (see ClickHouseOptions.chdbInsert; benchmarks switch it). */
  chdbInsert?: 'file' | 'raw';
}

/** How the lander's rows are encoded: TsvWriter's text or NativeWriter's blocks. */
export type LandingFormat = 'TabSeparated' | 'Native';

/** The part of a handle the lander needs. */
export type LandingInserter = Pick<ClickHouseHandle, 'insertTsv'> &
  Partial<Pick<ClickHouseHandle, 'insertNative' | 'landingFormat'>>;

export interface ClickHouseOptions {
  /** ClickHouse server URL; empty → embedded chDB in `<dataDir>/chdb`. */
  url: string;
  dataDir: string;
  database: string;
  username: string;
  password: string;
  /**
   * jemalloc options for the embedded engine (`JE_MALLOC_CONF` syntax). jemalloc reads them once, when
   * libchdb is loaded: chDB is therefore loaded on the first embedded open, not at import. A
   * `JE_MALLOC_CONF` already in the environment wins. Empty: jemalloc's defaults.
   */
  chdbMallocConf?: string;
  /**
   * How landed rows reach chDB (setting `clickhouse.chdbInsert`, whose default is `file`): `raw` (TabSeparated,
   * chDB's raw insert, the bytes inline; what a handle opened without this option does) or `file` (the lander
   * writes Native blocks, inserted through a file: see insertNative; `insertTsv` goes through a file too). A
   * data directory whose path holds a character `file()` would read as a glob always uses `raw`.
   */
  chdbInsert?: 'file' | 'raw';
  /**
   * Embedded chDB only: the Linux nice value its threads run at (setting `clickhouse.chdbThreadNice`; 0 or
   * absent leaves them at the process's). See thread-nice.ts.
   */
  chdbThreadNice?: number;
  /**
   * Embedded chDB only: how many connections of their own the API's reads get (setting
   * `clickhouse.chdbReadConnections`; absent: 2). 0: the API reads on the lander's connection with parameters
   * bound by the engine, one query at a time (what Tollgate did before; kept for comparison).
   */
  chdbReadConnections?: number;
}

const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** `file()` expands `*`, `?`, `{a,b}`, `{1..9}` and `[…]` in its path: a path with one is not ours alone. */
const GLOB = /[*?{}[\]]/;

/** A ClickHouse string literal. */
function sqlString(s: string): string {
  return `'${s.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
}

/**
 * A new file of `pieces`, one after the other, in one `writev` (libuv writes past IOV_MAX pieces and partial
 * writes in a loop); a short write is an error, never a truncated block.
 */
async function writePieces(path: string, pieces: readonly Buffer[]): Promise<void> {
  let total = 0;
  for (const p of pieces) total += p.length;
  const fh = await open(path, 'w');
  try {
    const { bytesWritten } = await fh.writev(pieces as Buffer[]);
    if (bytesWritten !== total) throw new Error(`wrote ${bytesWritten} of ${total} bytes to ${path}`);
  } finally {
    await fh.close();
  }
}

/** `k = v, …` for a statement's SETTINGS clause. */
function settingsClause(settings: ClickHouseSettings): string {
  return Object.entries(settings)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => {
      if (!IDENTIFIER.test(k)) throw new Error(`not a setting name: ${k}`);
      const value =
        typeof v === 'number' ? String(v) : typeof v === 'boolean' ? (v ? '1' : '0') : sqlString(String(v));
      return `${k} = ${value}`;
    })
    .join(', ');
}

/** Loads chDB (and with it libchdb and its jemalloc) on first use, after JE_MALLOC_CONF is settled. */
function loadChdb(mallocConf: string): typeof createChdbConnection {
  if (mallocConf && process.env.JE_MALLOC_CONF === undefined) process.env.JE_MALLOC_CONF = mallocConf;
  const require = createRequire(import.meta.url);
  return (require('chdb/connection') as { createChdbConnection: typeof createChdbConnection })
    .createChdbConnection;
}

/** Settings every query of ours runs with: 64-bit integers as JSON strings (money stays exact). */
const SETTINGS: ClickHouseSettings = {
  output_format_json_quote_64bit_integers: 1,
  output_format_json_quote_decimals: 1,
};

/** One client, one dialect: `@clickhouse/client` over HTTP to a server, or over chDB in process. */
export function openClickHouse(opts: ClickHouseOptions): ClickHouseHandle {
  if (opts.url) {
    const client = createClient({
      url: opts.url,
      username: opts.username,
      password: opts.password,
      database: opts.database,
      clickhouse_settings: SETTINGS,
      request_timeout: 60_000,
    });
    return {
      client,
      readClient: () => client,
      jobClient: () => client,
      mode: 'server',
      landingFormat: 'TabSeparated',
      close: () => client.close(),
      async insertTsv(table, columns, body, settings) {
        await client.insert({
          table,
          columns: columns as [string, ...string[]],
          format: 'TabSeparated',
          values: Readable.from([body], { objectMode: false }),
          clickhouse_settings: settings,
        });
      },
    };
  }
  const path = join(opts.dataDir, 'chdb');
  mkdirSync(path, { recursive: true });
  const connect = loadChdb(opts.chdbMallocConf ?? '');
  const chdb = connect({ path });
  const nice = opts.chdbThreadNice ? startThreadNice(opts.chdbThreadNice) : undefined;
  // chdb types its Connection against its own copy of @clickhouse/client-common; the runtime contract is the same.
  const connection = chdb as unknown as NonNullable<
    NonNullable<Parameters<typeof createClient>[0]>['connection']
  >;
  const client = createClient({ connection, clickhouse_settings: SETTINGS });
  // the files of inserts under way; what a crash left there is removed before this process's first insert
  // (the spool lands those rows again) — not at open, which `tollgate sql` also does while a server runs
  const insertDir = join(opts.dataDir, 'chdb-inserts');
  let leftoversRemoved = false;
  /**
   * Writes `body` to a file of its own (pieces in one `writev`), inserts it with `INSERT … SELECT * FROM
   * file(path, format)`, removes it.
   */
  const viaFile = async (
    format: 'TabSeparated' | 'Native',
    table: string,
    columns: readonly string[],
    body: Buffer | readonly Buffer[],
    settings: ClickHouseSettings,
  ) => {
    for (const id of [table, ...columns])
      if (!IDENTIFIER.test(id)) throw new Error(`not an identifier: ${id}`);
    if (!leftoversRemoved) {
      mkdirSync(insertDir, { recursive: true });
      for (const f of readdirSync(insertDir))
        if (f.endsWith('.tsv') || f.endsWith('.native')) rmSync(join(insertDir, f), { force: true });
      leftoversRemoved = true;
    }
    const file = join(insertDir, `${randomUUID()}.${format === 'Native' ? 'native' : 'tsv'}`);
    try {
      await writePieces(file, Buffer.isBuffer(body) ? [body] : body);
      const clause = settingsClause(settings);
      await client.command({
        query: `INSERT INTO ${table} (${columns.join(', ')}) SELECT * FROM file(${sqlString(file)}, ${format})${clause ? ` SETTINGS ${clause}` : ''}`,
      });
    } finally {
      await rm(file, { force: true });
    }
  };
  const readConnections = opts.chdbReadConnections ?? 2;
  let readers: ClickHouseClient | undefined;
  let jobs: ClickHouseClient | undefined;
  const handle: ClickHouseHandle = {
    client,
    readClient() {
      if (readConnections === 0) return client;
      readers ??= openChdbPool(() => connect({ path }), readConnections, SETTINGS);
      return readers;
    },
    jobClient() {
      jobs ??= openChdbPool(() => connect({ path }), 1, SETTINGS);
      return jobs;
    },
    mode: 'chdb',
    chdbInsert: GLOB.test(insertDir) ? 'raw' : (opts.chdbInsert ?? 'raw'),
    get landingFormat(): LandingFormat {
      return handle.chdbInsert === 'file' ? 'Native' : 'TabSeparated';
    },
    close: async () => {
      nice?.stop();
      await readers?.close();
      await jobs?.close();
      await client.close();
    },
    async insertTsv(table, columns, body, settings) {
      if (handle.chdbInsert === 'file') return viaFile('TabSeparated', table, columns, body, settings);
      await chdb.chdb.rawInsert({
        table,
        columns: [...columns],
        format: 'TabSeparated',
        values: body,
        settings: settings as Record<string, string | number | boolean>,
      });
    },
    insertNative(table, columns, body, settings) {
      if (GLOB.test(insertDir))
        throw new Error(`Native inserts need a file, and ${insertDir} holds a glob character`);
      return viaFile('Native', table, columns, body, settings);
    },
  };
  return handle;
}

/**
 * Settings every insert must carry. chDB's connection applies per-query settings as session-level `SET`
 * statements, so a setting given to one query stays in force for the next ones; an
 * insert_deduplication_token left over from the lander would make the next insert into another table
 * look like a retry and be dropped. Every insert therefore states its token (empty = none).
 */
export function insertSettings(token = ''): ClickHouseSettings {
  return { insert_deduplication_token: token, deduplicate_blocks_in_dependent_materialized_views: 1 };
}

export const MIGRATIONS_DIR = new URL('../../migrations/', import.meta.url);

export interface Migration {
  version: number;
  name: string;
  checksum: string;
  statements: string[];
}

/** Reads `NNNN_name.sql` files in order; statements are separated by `;` at the end of a line. */
export function readMigrations(dir: URL = MIGRATIONS_DIR): Migration[] {
  return readdirSync(dir)
    .filter((f) => /^\d{4}_[a-z0-9_]+\.sql$/.test(f))
    .sort()
    .map((file) => {
      const sql = readFileSync(new URL(file, dir), 'utf8');
      const statements = sql
        .split(/;\s*$/m)
        .map((s) => s.replace(/^\s*--.*$/gm, '').trim())
        .filter(Boolean);
      return {
        version: Number(file.slice(0, 4)),
        name: file.replace(/\.sql$/, ''),
        checksum: createHash('sha256').update(sql).digest('hex'),
        statements,
      };
    });
}

export class MigrationError extends Error {
  override readonly name = 'MigrationError';
}

/**
 * Applies the migrations not yet applied, in order, and refuses to start when an applied migration's
 * file has changed (migrations are append-only).
 */
export async function migrate(client: ClickHouseClient, migrations = readMigrations()): Promise<string[]> {
  await client.command({
    query: `CREATE TABLE IF NOT EXISTS tollgate_schema_migrations
      (version UInt32, name String, checksum String, applied_at DateTime64(3, 'UTC') DEFAULT now64(3))
      ENGINE = MergeTree ORDER BY version`,
  });
  const rows = await (
    await client.query({
      query: 'SELECT version, name, checksum FROM tollgate_schema_migrations',
      format: 'JSONEachRow',
    })
  ).json<{ version: number; name: string; checksum: string }>();
  const applied = new Map(rows.map((r) => [Number(r.version), r]));
  const done: string[] = [];
  for (const m of migrations) {
    const prev = applied.get(m.version);
    if (prev) {
      if (prev.checksum !== m.checksum) {
        throw new MigrationError(
          `migration ${m.name} was changed after it was applied; add a new migration instead`,
        );
      }
      continue;
    }
    for (const statement of m.statements) await client.command({ query: statement });
    await client.insert({
      table: 'tollgate_schema_migrations',
      values: [{ version: m.version, name: m.name, checksum: m.checksum }],
      format: 'JSONEachRow',
      clickhouse_settings: insertSettings(),
    });
    done.push(m.name);
  }
  return done;
}
