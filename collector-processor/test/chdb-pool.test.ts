import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type ClickHouseClient, TupleParam } from '@clickhouse/client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/config/settings.js';
import { inlineQueryParams, QueryParamError } from '../src/storage/chdb-pool.js';
import { type ClickHouseHandle, openClickHouse } from '../src/storage/clickhouse.js';
import { seededRandom } from './support/seeded-random.js';

// The API's reads on embedded chDB go through read connections of their own with their parameters written
// into the SQL (chdb-pool.ts). What the engine answers must be what it answers with the same parameters
// bound by itself, whatever the values hold; the reads must run side by side and never wait behind the
// lander's connection.
const dir = mkdtempSync(join(tmpdir(), 'tollgate-chdb-pool-'));
let ch: ClickHouseHandle;
let readers: ClickHouseClient;
beforeAll(() => {
  ch = openClickHouse({ url: '', dataDir: dir, database: 'default', username: 'default', password: '' });
  readers = ch.readClient();
});
afterAll(async () => {
  await ch?.close();
});

async function rows(client: ClickHouseClient, query: string, params: Record<string, unknown>) {
  const rs = await client.query({ query, query_params: params, format: 'JSONEachRow' });
  return rs.json<Record<string, unknown>>();
}

/** A read through `client` that sleeps 50 ms `sleeps` times, tagged so that system.processes finds it. */
function slowRead(client: ClickHouseClient, tag: string, sleeps = 16) {
  return rows(
    client,
    `SELECT {tag:String} AS tag, sum(sleepEachRow(0.05)) AS s FROM numbers(${sleeps}) SETTINGS max_block_size = 1`,
    { tag },
  );
}

/** How many queries holding `marker` the engine is running now, asked on the lander's connection. */
async function underWay(marker: string): Promise<number> {
  const [row] = await rows(
    ch.client,
    `SELECT count() AS n FROM system.processes WHERE query LIKE '%${marker}%' AND query NOT LIKE '%system.processes%'`,
    {},
  );
  return Number(row?.n);
}

/** underWay, asked again every 20 ms (50 times at most) until `n` are under way. */
async function untilUnderWay(marker: string, n: number): Promise<number> {
  let seen = await underWay(marker);
  for (let tries = 1; tries < 50 && seen < n; tries++) {
    await new Promise((r) => setTimeout(r, 20));
    seen = await underWay(marker);
  }
  return seen;
}

/** The same query bound by the engine (the lander's connection) and inlined (the read connections). */
async function bothWays(query: string, params: Record<string, unknown>) {
  return { bound: await rows(ch.client, query, params), inlined: await rows(readers, query, params) };
}

describe('inlineQueryParams', () => {
  it('writes each placeholder as a typed literal, and leaves strings, quoted names and comments alone', () => {
    const sql = `SELECT {a:String} AS x, '{a:String}' AS lit, 'it''s {a:String}' AS q, "{a:String}" AS "n",
  \`{a:String}\` AS b, 'back\\'slash {a:String}' AS c -- {a:String}
  /* {a:String} */ FROM t WHERE d = {d : DateTime64(3, 'UTC')} AND k IN {keys:Array(Tuple(String, String))}`;
    const out = inlineQueryParams(sql, {
      a: "o'k\\",
      d: '2026-03-01 00:00:00.000',
      keys: [new TupleParam(['c1', 's1']), new TupleParam(["c'2", 's\n2'])],
    });
    expect(
      out,
    ).toBe(`SELECT CAST('o\\'k\\\\' AS String) AS x, '{a:String}' AS lit, 'it''s {a:String}' AS q, "{a:String}" AS "n",
  \`{a:String}\` AS b, 'back\\'slash {a:String}' AS c -- {a:String}
  /* {a:String} */ FROM t WHERE d = CAST('2026-03-01 00:00:00.000' AS DateTime64(3, 'UTC')) AND k IN CAST([('c1','s1'),('c\\'2','s\\n2')] AS Array(Tuple(String, String)))`);
  });

  it('does not substitute inside a value', () => {
    expect(inlineQueryParams('SELECT {a:String}, {b:String}', { a: '{b:String}', b: 'x' })).toBe(
      "SELECT CAST('{b:String}' AS String), CAST('x' AS String)",
    );
  });

  it('refuses a placeholder without a value, and Identifier parameters, with a stable code', () => {
    const missing = (() => {
      try {
        inlineQueryParams('SELECT {a:String}, {b:UInt32}', { a: 'x' });
      } catch (e) {
        return e;
      }
    })();
    expect(missing).toBeInstanceOf(QueryParamError);
    expect(missing).toMatchObject({
      code: 'query_param_not_inlined',
      message: 'no value for query parameter b',
    });
    expect(() => inlineQueryParams('SELECT * FROM {t:Identifier}', { t: 'x' })).toThrow(QueryParamError);
    expect(() => inlineQueryParams('SELECT {a:String}', undefined)).toThrow(QueryParamError);
  });
});

describe('chDB read connections', () => {
  it('answer exactly what the engine answers with the parameters bound, for hostile and random strings', async () => {
    const hostile = [
      '',
      "'",
      "''",
      '\\',
      "\\'",
      "x') UNION ALL SELECT name FROM system.tables --",
      "'; DROP TABLE t; --",
      '{a:String}',
      '\t\n\r\0\x1b\x7f',
      'é ü 🔧 中文',
      '*/ /* -- `"',
      '\\N',
      'NULL',
    ];
    const next = seededRandom(20261206);
    const alphabet = [
      "'",
      '\\',
      '"',
      '`',
      '{',
      '}',
      ':',
      '\n',
      '\t',
      '\0',
      'a',
      'é',
      '🔧',
      ' ',
      '-',
      '/',
      '*',
      'N',
    ];
    const random = Array.from({ length: 200 }, () =>
      Array.from(
        { length: Math.floor(next() * 12) },
        () => alphabet[Math.floor(next() * alphabet.length)],
      ).join(''),
    );
    const values = [...hostile, ...random];
    for (let i = 0; i < values.length; i += 25) {
      const chunk = values.slice(i, i + 25);
      const params = Object.fromEntries(chunk.map((v, k) => [`s${k}`, v]));
      const sql = `SELECT ${chunk.map((_, k) => `{s${k}:String} AS c${k}, length({s${k}:String}) AS l${k}`).join(', ')}`;
      const { bound, inlined } = await bothWays(sql, params);
      expect(inlined).toEqual(bound);
      // and the strings came back as they went in
      expect(chunk.map((_, k) => inlined[0]?.[`c${k}`])).toEqual(chunk);
    }
    const arrays = await bothWays(
      'SELECT {xs:Array(String)} AS xs, {keys:Array(Tuple(String, String))} AS keys, length({keys:Array(Tuple(String, String))}) AS n',
      { xs: values.slice(0, 40), keys: values.slice(0, 40).map((v, k) => new TupleParam([v, `s${k}${v}`])) },
    );
    expect(arrays.inlined).toEqual(arrays.bound);
    expect(arrays.inlined[0]?.xs).toEqual(values.slice(0, 40));
  });

  it('answer exactly what the engine answers for the other types the API binds', async () => {
    const { bound, inlined } = await bothWays(
      `SELECT {n:UInt32} AS n, {big:UInt64} AS big, {neg:Int64} AS neg, {day:Date} AS day,
        {at:DateTime64(3, 'UTC')} AS at, {us:DateTime64(6, 'UTC')} AS us,
        {keys:Array(UInt128)} AS keys, toUInt128('340282366920938463463374607431768211455') IN {keys:Array(UInt128)} AS hit`,
      {
        n: 4_294_967_295,
        big: '18446744073709551615',
        neg: -9_223_372_036_854_775_808n,
        day: '2026-03-01',
        at: '2026-03-31 23:59:59.999',
        us: '2026-03-31 23:59:59.999999',
        keys: [0n, 340282366920938463463374607431768211455n, 12345678901234567890123456789n],
      },
    );
    expect(inlined).toEqual(bound);
    expect(inlined[0]).toMatchObject({ big: '18446744073709551615', neg: '-9223372036854775808', hit: 1 });
  });

  it('inline the largest page of keys: 10,000 pairs of 256-character identifiers', async () => {
    const id = (k: number, who: string) => `${who}-${k}-`.padEnd(256, "x'\\é");
    const keys = Array.from({ length: 10_000 }, (_, k) => new TupleParam([id(k, 'c'), id(k, 's')]));
    const [row] = await rows(
      readers,
      'SELECT length({keys:Array(Tuple(String, String))}) AS n, ({last:String}, {last2:String}) IN {keys:Array(Tuple(String, String))} AS hit',
      { keys, last: id(9_999, 'c'), last2: id(9_999, 's') },
    );
    expect(row).toEqual({ n: '10000', hit: 1 });
  });

  it('run reads side by side, and the lander connection answers while they run', async () => {
    const both = Promise.all([slowRead(readers, 'first-of-two'), slowRead(readers, 'second-of-two')]);
    // from the lander's connection: both reads under way at once (a connection runs one query at a time, and
    // chdb-node queues every bound query behind the others)
    expect(await untilUnderWay('-of-two', 2)).toBe(2);
    expect((await both).map((r) => r[0]?.tag)).toEqual(['first-of-two', 'second-of-two']);
  });

  it('hand the engine no more queries than they have connections: the rest wait their turn outside it', async () => {
    // chdb-node runs a query on a thread of libuv's pool, which a query queued inside the engine would hold
    // while it waits (and the spool's fsyncs need that pool)
    const all = Promise.all(['turn-a', 'turn-b', 'turn-c', 'turn-d'].map((tag) => slowRead(readers, tag, 8)));
    let most = 0;
    let settled = false;
    void all.finally(() => {
      settled = true;
    });
    while (!settled) {
      most = Math.max(most, await underWay('turn-'));
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(most).toBe(2);
    expect((await all).map((r) => r[0]?.tag)).toEqual(['turn-a', 'turn-b', 'turn-c', 'turn-d']);
  });

  it("the job client is a connection of its own: the lander's connection inserts while a job's statement runs", async () => {
    const jobs = ch.jobClient();
    expect(jobs).not.toBe(ch.client);
    expect(jobs).not.toBe(readers);
    await ch.client.command({ query: 'CREATE TABLE probe_inserts (x UInt64) ENGINE = MergeTree ORDER BY x' });
    const job = slowRead(jobs, 'long-job-statement');
    expect(await untilUnderWay('long-job-statement', 1)).toBe(1);
    // an insert on the lander's connection, and the job's statement still under way when it has landed
    await ch.client.command({ query: 'INSERT INTO probe_inserts VALUES (1)' });
    expect(await underWay('long-job-statement')).toBe(1);
    expect((await job)[0]?.tag).toBe('long-job-statement');
  });

  it('0 read connections: the API reads on the lander connection; more than 16 is refused', async () => {
    const lander = openClickHouse({
      url: '',
      dataDir: dir,
      database: 'default',
      username: 'default',
      password: '',
      chdbReadConnections: 0,
    });
    try {
      expect(lander.readClient()).toBe(lander.client);
    } finally {
      await lander.close();
    }
    expect(() => loadConfig({ '--chdb-read-connections': '17' }, {})).toThrow(
      'clickhouse.chdbReadConnections: 0..16 connections, got 17',
    );
  });
});
