import { MAX_SAFE_BIGINT, RATED_CALL_COLUMNS, type RatedCall } from '@tollgate/contracts';
import { ByteWriter, TWO_32 } from '../byte-writer.js';
import type { BlockArena } from './block-arena.js';

/**
 * How a column's values are written, chosen once per column from its ClickHouse type in RATED_CALL_COLUMNS.
 * LowCardinality columns travel as String (the engine converts them on insert, as it does any other input).
 */
type Kind = 'string' | 'uint64' | 'int64Big' | 'uint16' | 'ticks' | 'strings' | 'uint64Bigs' | 'int64Bigs';

const KIND_OF: Record<string, [Kind, string]> = {
  String: ['string', 'String'],
  'LowCardinality(String)': ['string', 'String'],
  UInt64: ['uint64', 'UInt64'],
  Int64: ['int64Big', 'Int64'],
  UInt16: ['uint16', 'UInt16'],
  "DateTime64(6, 'UTC')": ['ticks', "DateTime64(6, 'UTC')"],
  "DateTime64(3, 'UTC')": ['ticks', "DateTime64(3, 'UTC')"],
  'Array(LowCardinality(String))': ['strings', 'Array(String)'],
  'Array(UInt64)': ['uint64Bigs', 'Array(UInt64)'],
  'Array(Int64)': ['int64Bigs', 'Array(Int64)'],
};

/**
 * One reader per field, each its own function: a loop over a column reads one property through a call site
 * V8 keeps monomorphic, where `row[field]` with a varying name would go megamorphic (≈ 20% slower encoding).
 */
const READ: { readonly [K in keyof RatedCall]-?: (r: RatedCall) => unknown } = {
  eventId: (r) => r.eventId,
  traceId: (r) => r.traceId,
  spanId: (r) => r.spanId,
  product: (r) => r.product,
  customer: (r) => r.customer,
  agent: (r) => r.agent,
  sessionId: (r) => r.sessionId,
  tool: (r) => r.tool,
  transport: (r) => r.transport,
  source: (r) => r.source,
  status: (r) => r.status,
  errorType: (r) => r.errorType,
  protocolVersion: (r) => r.protocolVersion,
  instanceId: (r) => r.instanceId,
  startUnixUs: (r) => r.startUnixUs,
  durationUs: (r) => r.durationUs,
  inputTokens: (r) => r.inputTokens,
  outputTokens: (r) => r.outputTokens,
  priceNano: (r) => r.priceNano,
  costNano: (r) => r.costNano,
  priceCallNano: (r) => r.priceCallNano,
  priceInputNano: (r) => r.priceInputNano,
  priceOutputNano: (r) => r.priceOutputNano,
  priceDurationNano: (r) => r.priceDurationNano,
  tier: (r) => r.tier,
  planId: (r) => r.planId,
  planVersion: (r) => r.planVersion,
  currency: (r) => r.currency,
  decision: (r) => r.decision,
  period: (r) => r.period,
  receivedAtMs: (r) => r.receivedAtMs,
  sessionRule: (r) => r.sessionRule,
  pricePerSecondNano: (r) => r.pricePerSecondNano,
  inputTokensPriced: (r) => r.inputTokensPriced,
  outputTokensPriced: (r) => r.outputTokensPriced,
  usageLines: (r) => r.usageLines,
  usageQuantityMicro: (r) => r.usageQuantityMicro,
  usageUnitNano: (r) => r.usageUnitNano,
  usagePriceNano: (r) => r.usagePriceNano,
  usageCostNano: (r) => r.usageCostNano,
  lease: (r) => r.lease,
};

interface Column {
  kind: Kind;
  field: keyof RatedCall;
  read: (r: RatedCall) => unknown;
  /** The column's name and type as Native writes them ahead of its values. */
  header: Buffer;
}

function lengthPrefixed(s: string): Buffer {
  const bytes = Buffer.from(s, 'utf8');
  if (bytes.length >= 128) throw new Error(`column name or type too long for this writer: ${s}`);
  return Buffer.concat([Buffer.from([bytes.length]), bytes]);
}

/** Every column of RATED_CALL_COLUMNS, in table order; a type this writer cannot write fails when it loads. */
const COLUMNS: readonly Column[] = RATED_CALL_COLUMNS.map(([name, type, field]) => {
  const k = KIND_OF[type];
  if (!k) throw new Error(`NativeWriter cannot write column ${name} of type ${type}`);
  return {
    kind: k[0],
    field,
    read: READ[field],
    header: Buffer.concat([lengthPrefixed(name), lengthPrefixed(k[1])]),
  };
});

/** Where the decision column is among COLUMNS: the one enforcement changes after a block is written. */
const DECISION = COLUMNS.findIndex((c) => c.field === 'decision');
if (DECISION < 0) throw new Error('NativeWriter: RATED_CALL_COLUMNS has no decision column');

/** The column names, in the order the writer writes them (the insert's column list). */
export const NATIVE_COLUMNS = RATED_CALL_COLUMNS.map(([name]) => name);

const MAX_UINT64 = (1n << 64n) - 1n;

/** A rated call whose value does not fit its column: a bug upstream, refused before it reaches a block. */
export class LandingEncodeError extends Error {
  override readonly name = 'LandingEncodeError';
  readonly code = 'landing_value_out_of_range';
}

/** Where each column of a block NativeWriter wrote starts (and, last, where the block ends), by the block. */
const LAYOUT = new WeakMap<Buffer, { rows: number; starts: Uint32Array }>();

/** A UInt64 below 2^53 at `p`, little-endian. */
function readExact(b: Buffer, p: number): number {
  return b.readUInt32LE(p + 4) * TWO_32 + b.readUInt32LE(p);
}

/** An integer in [0, 2^53) as 8 bytes little-endian at `p`. */
function writeExact(b: Buffer, p: number, v: number): void {
  const lo = v % TWO_32;
  b.writeUInt32LE(lo, p);
  b.writeUInt32LE((v - lo) / TWO_32, p + 4);
}

/** `n` (a non-negative integer) as LEB128 at `p`, with room for it (at most 8 bytes below 2^53); returns the end. */
function writeVarint(b: Buffer, p: number, n: number): number {
  while (n >= 0x80) {
    b[p++] = (n & 0x7f) | 0x80;
    n = Math.floor(n / 128);
  }
  b[p++] = n;
  return p;
}

/**
 * The records of one landing block as ONE Native block, in pieces to be written one after the other (a file's
 * `writev`): per column its header once, then every record's values (an array column: every record's end
 * offsets, each moved by the elements of the records before it, then every record's elements). The pieces are
 * views of the records' own bytes, so the block is never copied whole in memory; only the offsets of an array
 * column after a record that had elements are written anew. No value is decoded but those offsets. Blocks that
 * NativeWriter did not write in this process (no layout known) come back as they are, one after the other: still
 * a valid Native stream. The engine spends less per row on one block than on many (0.41–0.47 µs/row into a
 * table that stores nothing against 1.0–1.3 for blocks of 512 rows; docs/benchmarks.md, "Landing in Native").
 */
export function nativeBlockPieces(parts: readonly Buffer[]): Buffer[] {
  const blocks = parts.filter((p) => p.length > 0);
  if (blocks.length <= 1) return blocks;
  const layouts = blocks.map((b) => LAYOUT.get(b));
  if (layouts.some((l) => l === undefined)) return blocks;
  const ls = layouts as { rows: number; starts: Uint32Array }[];
  let rows = 0;
  for (const l of ls) rows += l.rows;
  const counts = Buffer.allocUnsafe(16);
  const pieces: Buffer[] = [
    counts.subarray(0, writeVarint(counts, writeVarint(counts, 0, COLUMNS.length), rows)),
  ];
  for (let k = 0; k < COLUMNS.length; k++) {
    const c = COLUMNS[k] as Column;
    pieces.push(c.header);
    const array = c.kind === 'strings' || c.kind === 'uint64Bigs' || c.kind === 'int64Bigs';
    let base = 0;
    for (let i = 0; i < blocks.length; i++) {
      const b = blocks[i] as Buffer;
      const l = ls[i] as { rows: number; starts: Uint32Array };
      const from = (l.starts[k] as number) + c.header.length;
      if (!array) {
        pieces.push(b.subarray(from, l.starts[k + 1] as number));
        continue;
      }
      // no elements before this record (calls without usage lines, the common case): its offsets as they are
      if (base === 0) pieces.push(b.subarray(from, from + l.rows * 8));
      else {
        const moved = Buffer.allocUnsafe(l.rows * 8);
        for (let r = 0; r < l.rows; r++) writeExact(moved, r * 8, base + readExact(b, from + r * 8));
        pieces.push(moved);
      }
      base += l.rows ? readExact(b, from + (l.rows - 1) * 8) : 0;
    }
    if (!array || base === 0) continue;
    for (let i = 0; i < blocks.length; i++) {
      const b = blocks[i] as Buffer;
      const l = ls[i] as { rows: number; starts: Uint32Array };
      const from = (l.starts[k] as number) + c.header.length + l.rows * 8;
      if (from < (l.starts[k + 1] as number)) pieces.push(b.subarray(from, l.starts[k + 1] as number));
    }
  }
  return pieces;
}

/** {@link nativeBlockPieces} in one Buffer (tests, benchmarks, and an insert that takes one body). */
export function joinNativeBlocks(parts: readonly Buffer[]): Buffer {
  const pieces = nativeBlockPieces(parts);
  return pieces.length === 1 ? (pieces[0] as Buffer) : Buffer.concat(pieces);
}

/**
 * Writes the rated calls of one record as one block of ClickHouse's Native format: the column and row counts,
 * then column after column its name, its type and its values — a string as its UTF-8 length (LEB128) and bytes,
 * integers little-endian in their width, DateTime64 as its Int64 ticks (µs for started_at, ms for
 * received_at), an array column as its rows' end offsets (UInt64) followed by all their elements. Blocks
 * written one after the other are one valid Native stream; the lander joins a landing block's records into one
 * Native block ({@link joinNativeBlocks}), which the engine takes for less than the same rows in many small
 * blocks. The engine copies columns instead of parsing text: a quarter or less of the CPU per row of
 * TabSeparated into a table that stores nothing (docs/benchmarks.md, "Landing in Native").
 *
 * Money goes from bigint to Int64/UInt64 exactly; a value outside its column's range, a count that is not a
 * non-negative integer or an instant that is not an integer throws {@link LandingEncodeError} (as text the
 * engine would have refused the whole block on every retry, or wrapped it silently).
 *
 * Same use as TsvWriter: `add` the rows of one record, then `take` its bytes, with no `await` in between. The
 * rows are kept (by reference) until `take` or `clear`, which writes or drops them.
 */
export class NativeWriter extends ByteWriter {
  private rows: RatedCall[] = [];

  /** `arena`: where `take` copies the block to (the lander's; it releases it), else a Buffer of its own. */
  constructor(private readonly arena?: BlockArena) {
    super();
  }

  add(r: RatedCall): void {
    this.rows.push(r);
  }

  /** Forgets the rows added since the last take (a record abandoned half way). */
  clear(): void {
    this.rows.length = 0;
  }

  /** One Native block of the rows added since the last take (empty for none); the writer starts empty again. */
  take(): Buffer {
    const rows = this.rows;
    if (rows.length === 0) return Buffer.alloc(0);
    this.pos = 0;
    const starts = new Uint32Array(COLUMNS.length + 1);
    try {
      this.varint(COLUMNS.length);
      this.varint(rows.length);
      for (let k = 0; k < COLUMNS.length; k++) {
        starts[k] = this.pos;
        this.headedColumn(COLUMNS[k] as Column, rows);
      }
    } finally {
      this.rows = [];
    }
    starts[COLUMNS.length] = this.pos;
    const out = this.copyOut(this.arena);
    LAYOUT.set(out, { rows: rows.length, starts });
    return out;
  }

  /**
   * `block`, which `take` wrote for `rows`, with their decision column written again: enforcement marks calls
   * over_limit once Redis has answered, after the block was encoded. The other columns are copied as they are,
   * so a record of a customer past its limit costs a copy of its block instead of a second encoding; the bytes
   * are those `add` of every row then `take` would write. A block with no layout known (not written by a
   * NativeWriter of this process) or of another row count is encoded again whole. `block` stays the caller's
   * (to release in the arena it came from).
   */
  retake(block: Buffer, rows: readonly RatedCall[]): Buffer {
    const l = LAYOUT.get(block);
    if (l === undefined || l.rows !== rows.length || rows.length === 0) {
      for (const r of rows) this.add(r);
      return this.take();
    }
    this.pos = 0;
    this.headedColumn(COLUMNS[DECISION] as Column, rows);
    const from = l.starts[DECISION] as number;
    const to = l.starts[DECISION + 1] as number;
    const end = l.starts[COLUMNS.length] as number;
    const column = this.pos;
    const grown = column - (to - from);
    const out = this.arena ? this.arena.alloc(end + grown) : Buffer.allocUnsafe(end + grown);
    block.copy(out, 0, 0, from);
    this.buf.copy(out, from, 0, column);
    block.copy(out, from + column, to, end);
    this.pos = 0;
    const starts = l.starts.slice();
    for (let k = DECISION + 1; k <= COLUMNS.length; k++) starts[k] = (starts[k] as number) + grown;
    LAYOUT.set(out, { rows: rows.length, starts });
    return out;
  }

  /** One column of the block at `pos`: its name and type, then its values. */
  private headedColumn(c: Column, rows: readonly RatedCall[]): void {
    this.room(c.header.length);
    c.header.copy(this.buf, this.pos);
    this.pos += c.header.length;
    this.column(c, rows);
  }

  private column(c: Column, rows: readonly RatedCall[]): void {
    const f = c.field;
    const read = c.read;
    const n = rows.length;
    switch (c.kind) {
      case 'string':
        for (let i = 0; i < n; i++) this.str(read(rows[i] as RatedCall) as string);
        return;
      case 'uint64':
        this.room(8 * n);
        for (let i = 0; i < n; i++) {
          const v = read(rows[i] as RatedCall) as number;
          if (!(v >= 0 && Number.isSafeInteger(v)))
            throw new LandingEncodeError(`${f} = ${v} is not a non-negative integer below 2^53`);
          this.exact(v);
        }
        return;
      case 'ticks':
        this.room(8 * n);
        for (let i = 0; i < n; i++) {
          const v = read(rows[i] as RatedCall) as number;
          if (!Number.isSafeInteger(v)) throw new LandingEncodeError(`${f} = ${v} is not an integer instant`);
          this.exact(v);
        }
        return;
      case 'uint16':
        this.room(2 * n);
        for (let i = 0; i < n; i++) {
          const v = read(rows[i] as RatedCall) as number;
          if (!(v >= 0 && v <= 0xffff && Number.isInteger(v)))
            throw new LandingEncodeError(`${f} = ${v} does not fit UInt16`);
          this.buf[this.pos++] = v & 0xff;
          this.buf[this.pos++] = v >>> 8;
        }
        return;
      case 'int64Big':
        this.room(8 * n);
        for (let i = 0; i < n; i++) this.int64Of(read(rows[i] as RatedCall) as bigint, f);
        return;
      case 'strings':
      case 'uint64Bigs':
      case 'int64Bigs': {
        this.room(8 * n);
        let end = 0;
        for (let i = 0; i < n; i++) {
          end += (read(rows[i] as RatedCall) as readonly unknown[]).length;
          this.exact(end);
        }
        if (end === 0) return;
        for (let i = 0; i < n; i++) {
          const a = read(rows[i] as RatedCall) as readonly unknown[];
          for (let k = 0; k < a.length; k++) {
            if (c.kind === 'strings') this.str(a[k] as string);
            else {
              this.room(8);
              if (c.kind === 'int64Bigs') this.int64Of(a[k] as bigint, f);
              else this.uint64(a[k] as bigint, f);
            }
          }
        }
        return;
      }
    }
  }

  private varint(n: number): void {
    this.room(10);
    this.pos = writeVarint(this.buf, this.pos, n);
  }

  /** A String: length and UTF-8 bytes. Short ASCII strings are copied byte by byte with a one-byte length. */
  private str(s: string): void {
    const n = s.length;
    if (n < 128) {
      this.room(n + 1);
      const b = this.buf;
      const start = this.pos + 1;
      let i = 0;
      for (; i < n; i++) {
        const c = s.charCodeAt(i);
        if (c >= 0x80) break;
        b[start + i] = c;
      }
      if (i === n) {
        b[this.pos] = n;
        this.pos = start + n;
        return;
      }
    }
    const bytes = Buffer.byteLength(s, 'utf8');
    this.varint(bytes);
    this.room(bytes);
    this.pos += this.buf.write(s, this.pos, 'utf8');
  }

  /** Int64 from a bigint, exactly; room already made. */
  private int64Of(v: bigint, field: string): void {
    if (!this.int64(v)) throw new LandingEncodeError(`${field} = ${v} does not fit Int64`);
  }

  /** UInt64 from a bigint, exactly; room already made. */
  private uint64(v: bigint, field: string): void {
    if (v >= 0n && v <= MAX_SAFE_BIGINT) this.exact(Number(v));
    else if (v < 0n || v > MAX_UINT64) throw new LandingEncodeError(`${field} = ${v} does not fit UInt64`);
    else this.pos = this.buf.writeBigUInt64LE(v, this.pos);
  }
}
