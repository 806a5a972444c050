import type { Readable } from 'node:stream';
import type { ClickHouseSettings } from '@clickhouse/client';
import { type ClickHouseClient, createClient, TupleParam } from '@clickhouse/client';
import { type Connection, formatQueryParams, TupleParam as LiteralTuple } from '@clickhouse/client-common';

/**
 * Connections of their own on embedded chDB: the API's reads, so that they run side by side, and the
 * processor's long background statements (the session-interval snapshots), so that landing inserts do not
 * wait for them.
 *
 * Two things in chDB serialize reads. First, one connection runs one query at a time: two queries on the
 * lander's connection take the sum of their times, and an API read waits behind whatever insert is under
 * way. Second, chdb-node runs every query that has parameters through one process-wide queue, whatever its
 * connection (`runExclusiveParam` in chdb's index.js: libchdb's parameter state is not isolated per
 * connection, and two bound queries at once clobber each other or abort the engine). So these queries
 * run on connections of their own (same data directory: chDB lets several coexist, each with its own query
 * state), and their parameters are written into the SQL as typed literals instead of being bound by the
 * engine: `{name:Type}` becomes `CAST(<literal> AS Type)`, which is what ClickHouse's own substitution
 * builds (`_CAST(literal, 'Type')`, ReplaceQueryParameterVisitor). Literals are written by
 * `@clickhouse/client-common`'s `formatQueryParams`, the encoder clickhouse-js sends parameters to a server
 * with (quotes, backslashes and control characters escaped). With a ClickHouse server none of this applies:
 * the HTTP client binds parameters and runs queries in parallel already.
 */

/** ClickHouse's query parameter, `{name:Type}` (a type may hold parentheses and quotes, never braces). */
const PLACEHOLDER = /^\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*:\s*([^{}]+?)\s*\}/;

/** A query parameter that cannot be written as a literal (as the engine refuses it: no value, or a value where a name is expected). */
export class QueryParamError extends Error {
  override readonly name = 'QueryParamError';
  readonly code = 'query_param_not_inlined';
}

/** A parameter value as a ClickHouse literal, for `CAST(<literal> AS Type)`. */
function literal(value: unknown): string {
  return formatQueryParams({
    value: literalValue(value),
    wrapStringInQuotes: true,
    printNullAsKeyword: true,
  });
}

/**
 * Client tuples become the formatter's (a separate copy of the class). A bigint is written as a string: the
 * parser reads an integer literal beyond UInt64 as a Float64 (`[340282366920938463463374607431768211455]`
 * would reach an Array(UInt128) rounded), while CAST parses a string into the type exactly.
 */
function literalValue(value: unknown): unknown {
  if (typeof value === 'bigint') return String(value);
  if (value instanceof TupleParam) return new LiteralTuple(value.values.map(literalValue));
  if (Array.isArray(value)) return value.map(literalValue);
  return value;
}

/**
 * `query` with every `{name:Type}` outside string literals, quoted identifiers and comments replaced by
 * `CAST(<literal> AS Type)` from `params`. A placeholder with no value, or of type Identifier (a name, not a
 * value), is refused with {@link QueryParamError}, as the engine refuses a missing one. Heredoc literals
 * (`$tag$…$tag$`) and `#` comments are not recognized: Tollgate's queries use neither.
 */
export function inlineQueryParams(
  query: string,
  params: Readonly<Record<string, unknown>> | undefined,
): string {
  let out = '';
  let from = 0;
  let i = 0;
  const n = query.length;
  while (i < n) {
    const c = query[i];
    if (c === "'" || c === '"' || c === '`') {
      // a quoted string or identifier: backslash escapes the next character, a doubled quote is one quote
      i++;
      while (i < n && query[i] !== c) i += query[i] === '\\' ? 2 : 1;
      i++;
      if (query[i] === c) continue;
    } else if (c === '-' && query[i + 1] === '-') {
      while (i < n && query[i] !== '\n') i++;
    } else if (c === '/' && query[i + 1] === '*') {
      const end = query.indexOf('*/', i + 2);
      i = end < 0 ? n : end + 2;
    } else if (c === '{') {
      const m = PLACEHOLDER.exec(query.slice(i, i + 512));
      if (m) {
        const [whole, name, type] = m as unknown as [string, string, string];
        if (/^Identifier$/i.test(type)) throw new QueryParamError(`parameter ${name} is an Identifier`);
        if (!params || !Object.hasOwn(params, name) || params[name] === undefined)
          throw new QueryParamError(`no value for query parameter ${name}`);
        out += `${query.slice(from, i)}CAST(${literal(params[name])} AS ${type})`;
        i += whole.length;
        from = i;
      } else i++;
    } else i++;
  }
  return out + query.slice(from);
}

/**
 * A `Connection` over several chDB connections, opened on the first query: each query goes to a connection
 * with nothing under way, its parameters inlined (see above); when every connection is busy it waits here, in
 * order of arrival. Not in chDB: chdb-node runs each query on a thread of libuv's pool (4 threads unless
 * UV_THREADPOOL_SIZE says otherwise), which a query queued inside the engine behind another on the same
 * connection holds while it waits — and the spool's fsyncs need a thread of that pool to acknowledge exports.
 */
class ChdbPool implements Connection<Readable> {
  private conns: Connection<Readable>[] = [];
  private busy: boolean[] = [];
  /** Queries waiting for a connection, oldest first: each is handed the connection the last one frees. */
  private readonly waiting: ((k: number) => void)[] = [];

  constructor(
    private readonly open: () => Connection<Readable>,
    private readonly count: number,
  ) {}

  private async on<T>(run: (c: Connection<Readable>) => Promise<T>): Promise<T> {
    if (this.conns.length === 0) {
      for (let k = 0; k < this.count; k++) this.conns.push(this.open());
      this.busy = this.conns.map(() => false);
    }
    let k = this.busy.indexOf(false);
    if (k >= 0) this.busy[k] = true;
    else k = await new Promise<number>((resolve) => this.waiting.push(resolve));
    try {
      return await run(this.conns[k] as Connection<Readable>);
    } finally {
      const next = this.waiting.shift();
      if (next) next(k);
      else this.busy[k] = false;
    }
  }

  query(params: Parameters<Connection<Readable>['query']>[0]) {
    const query = inlineQueryParams(params.query, params.query_params);
    return this.on((c) => c.query({ ...params, query, query_params: undefined }));
  }

  command(params: Parameters<Connection<Readable>['command']>[0]) {
    const query = inlineQueryParams(params.query, params.query_params);
    return this.on((c) => c.command({ ...params, query, query_params: undefined }));
  }

  exec(params: Parameters<Connection<Readable>['exec']>[0]) {
    const query = inlineQueryParams(params.query, params.query_params);
    return this.on((c) => c.exec({ ...params, query, query_params: undefined }));
  }

  insert(params: Parameters<Connection<Readable>['insert']>[0]) {
    return this.on((c) => c.insert(params));
  }

  ping(params: Parameters<Connection<Readable>['ping']>[0]) {
    return this.on((c) => c.ping(params));
  }

  async close(): Promise<void> {
    const conns = this.conns;
    this.conns = [];
    await Promise.all(conns.map((c) => c.close()));
  }
}

/**
 * A client over `count` chDB connections made by `open` when the first query comes (chdb's
 * `createChdbConnection` on the lander's data directory; chdb types its connection against its own copy of
 * client-common, the contract is the same), with `settings` on every query. Inlined literals count towards
 * max_query_size (the largest page, 10,000 session keys, is ≈ 0.5 MB of SQL with short ids and ≈ 5 MB with
 * 256-character ones, the longest accepted), so the limit is raised to 64 MiB for these connections.
 */
export function openChdbPool(
  open: () => unknown,
  count: number,
  settings: ClickHouseSettings,
): ClickHouseClient {
  return createClient({
    connection: new ChdbPool(open as () => Connection<Readable>, count) as unknown as NonNullable<
      NonNullable<Parameters<typeof createClient>[0]>['connection']
    >,
    clickhouse_settings: { ...settings, max_query_size: String(64 * 1024 * 1024) },
  });
}
