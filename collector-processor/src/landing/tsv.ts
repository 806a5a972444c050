import { RATED_CALL_COLUMNS, type RatedCall } from '@tollgate/contracts';
import { ByteWriter } from '../byte-writer.js';
import type { BlockArena } from './block-arena.js';

/**
 * Rated calls travel to ClickHouse as TabSeparated rows, in the column order of RATED_CALL_COLUMNS
 * (about twice as fast for the engine to parse as JSONEachRow, measured in bench/).
 */
export const TSV_COLUMNS = RATED_CALL_COLUMNS.map(([name]) => name);

const NEEDS_ESCAPE = /[\\\t\n\r\0]/;
const ESCAPES: Record<string, string> = { '\\': '\\\\', '\t': '\\t', '\n': '\\n', '\r': '\\r', '\0': '\\0' };

export function escapeTsv(s: string): string {
  return NEEDS_ESCAPE.test(s) ? s.replace(/[\\\t\n\r\0]/g, (c) => ESCAPES[c] as string) : s;
}

/** Unix microseconds as `seconds.micros`, the text form DateTime64(6) parses. */
function micros(us: number): string {
  const s = Math.floor(us / 1_000_000);
  return `${s}.${String(us - s * 1_000_000).padStart(6, '0')}`;
}

function millis(ms: number): string {
  const s = Math.floor(ms / 1000);
  return `${s}.${String(ms - s * 1000).padStart(3, '0')}`;
}

/** A TabSeparated array of numbers (`[1,2]`). */
function nums(a: readonly bigint[]): string {
  return a.length === 0 ? '[]' : `[${a.join(',')}]`;
}

/** A TabSeparated array of usage-line names (`['a','b']`; names are [a-z0-9_], nothing to escape). */
function names(a: readonly string[]): string {
  return a.length === 0 ? '[]' : `['${a.join("','")}']`;
}

/** One TSV line (with its newline) for a rated call (a single template: no intermediate array). */
export function encodeTsvRow(r: RatedCall): string {
  return `${r.eventId}\t${r.traceId}\t${r.spanId}\t${escapeTsv(r.product)}\t${escapeTsv(r.customer)}\t${escapeTsv(r.agent)}\t${escapeTsv(r.sessionId)}\t${escapeTsv(r.tool)}\t${r.transport}\t${r.source}\t${r.status}\t${escapeTsv(r.errorType)}\t${escapeTsv(r.protocolVersion)}\t${escapeTsv(r.instanceId)}\t${micros(r.startUnixUs)}\t${r.durationUs}\t${r.inputTokens}\t${r.outputTokens}\t${r.priceNano}\t${r.costNano}\t${r.priceCallNano}\t${r.priceInputNano}\t${r.priceOutputNano}\t${r.priceDurationNano}\t${r.tier}\t${escapeTsv(r.planId)}\t${r.planVersion}\t${r.currency}\t${r.decision}\t${r.period}\t${millis(r.receivedAtMs)}\t${r.sessionRule}\t${r.pricePerSecondNano}\t${r.inputTokensPriced}\t${r.outputTokensPriced}\t${names(r.usageLines)}\t${nums(r.usageQuantityMicro)}\t${nums(r.usageUnitNano)}\t${nums(r.usagePriceNano)}\t${nums(r.usageCostNano)}\n`;
}

const TAB = 9;
const NEWLINE = 10;
const DOT = 46;
const ZERO = 48;
/** Byte written after a backslash for each character TabSeparated escapes (0: written as is). */
const ESCAPE_BYTE = new Uint8Array(128);
ESCAPE_BYTE[92] = 92; // \ → \\
ESCAPE_BYTE[9] = 116; // tab → \t
ESCAPE_BYTE[10] = 110; // newline → \n
ESCAPE_BYTE[13] = 114; // carriage return → \r
ESCAPE_BYTE[0] = 48; // NUL → \0 (so every escaped character has a non-zero entry)
/** The bytes of `[]\t[]\t[]\t[]\t[]\n`: five empty usage-line arrays ending a row (most calls have none). */
const NO_USAGE_LINES = Buffer.from('[]\t[]\t[]\t[]\t[]\n', 'latin1');

/**
 * Writes rated calls as TabSeparated bytes straight into one reused buffer — the same bytes as
 * {@link encodeTsvRow}, without building a string per row (the strings, and flattening them into one block,
 * cost the main thread several times what writing the bytes does; bench/landing.mjs). ASCII is written byte
 * by byte in JavaScript; a string with other characters goes through Buffer#write (UTF-8).
 * Not reentrant: `add` the rows of one record, then `take` them, with no `await` in between.
 */
export class TsvWriter extends ByteWriter {
  /** `arena`: where `take` copies the bytes to (the lander's; it releases them), else a Buffer of their own. */
  constructor(private readonly arena?: BlockArena) {
    super();
  }

  /** The bytes written since the last take, copied out; the writer starts empty again. */
  take(): Buffer {
    return this.copyOut(this.arena);
  }

  /** Forgets anything written since the last take (a record abandoned half way). */
  clear(): void {
    this.pos = 0;
  }

  /** A string field, escaped, then `sep`. */
  private str(s: string, sep: number): void {
    const n = s.length;
    this.room(n * 2 + 1);
    const b = this.buf;
    let p = this.pos;
    for (let i = 0; i < n; i++) {
      const c = s.charCodeAt(i);
      if (c >= 0x80) {
        this.pos = p;
        this.escapedUtf8(s.slice(i), sep);
        return;
      }
      const e = ESCAPE_BYTE[c] as number;
      if (e !== 0) {
        b[p++] = 92;
        b[p++] = e;
      } else b[p++] = c;
    }
    b[p++] = sep;
    this.pos = p;
  }

  /** Text written as is (already escaped, or digits), then `sep`. */
  private text(s: string, sep: number): void {
    this.room(Buffer.byteLength(s) + 1);
    this.pos += this.buf.write(s, this.pos, 'utf8');
    this.buf[this.pos++] = sep;
  }

  /** The rest of a string that is not all ASCII: escaped as text, written as UTF-8. */
  private escapedUtf8(rest: string, sep: number): void {
    this.text(escapeTsv(rest), sep);
  }

  /** A non-negative integer below 2^53, then `sep` (anything else as JavaScript prints it, as encodeTsvRow). */
  private uint(v: number, sep: number): void {
    if (!(v >= 0 && Number.isSafeInteger(v))) {
      this.text(String(v), sep);
      return;
    }
    this.room(17);
    this.digits(v);
    this.buf[this.pos++] = sep;
  }

  /** A bigint, then `sep`. */
  private big(v: bigint, sep: number): void {
    this.bigint(v);
    this.buf[this.pos++] = sep;
  }

  /** `seconds.fraction` with `digits` fraction digits, of an instant in 10^-digits seconds. */
  private fixed(v: number, digits: number, unit: number, sep: number): void {
    if (!(v >= 0 && Number.isSafeInteger(v))) {
      this.text(digits === 6 ? micros(v) : millis(v), sep);
      return;
    }
    const s = Math.floor(v / unit);
    this.uint(s, DOT);
    let frac = v - s * unit;
    this.room(digits + 1);
    const b = this.buf;
    const p = this.pos;
    for (let k = digits - 1; k >= 0; k--) {
      const q = Math.floor(frac / 10);
      b[p + k] = ZERO + (frac - q * 10);
      frac = q;
    }
    b[p + digits] = sep;
    this.pos = p + digits + 1;
  }

  private bigs(a: readonly bigint[], sep: number): void {
    this.room(1);
    this.buf[this.pos++] = 91; // [
    if (a.length === 0) {
      this.room(2);
      this.buf[this.pos++] = 93; // ]
      this.buf[this.pos++] = sep;
      return;
    }
    for (let i = 0; i < a.length; i++) this.big(a[i] as bigint, i === a.length - 1 ? 93 : 44);
    this.room(1);
    this.buf[this.pos++] = sep;
  }

  private names(a: readonly string[], sep: number): void {
    // names are [a-z0-9_] (plans validate them): quoted, nothing to escape, as encodeTsvRow writes them
    this.room(1);
    this.buf[this.pos++] = 91; // [
    for (let i = 0; i < a.length; i++) {
      this.room(1);
      this.buf[this.pos++] = 39; // '
      this.str(a[i] as string, 39);
      if (i < a.length - 1) {
        this.room(1);
        this.buf[this.pos++] = 44; // ,
      }
    }
    this.room(2);
    this.buf[this.pos++] = 93; // ]
    this.buf[this.pos++] = sep;
  }

  /** Appends one row (with its newline), the bytes encodeTsvRow(r) would give. */
  add(r: RatedCall): void {
    this.str(r.eventId, TAB);
    this.str(r.traceId, TAB);
    this.str(r.spanId, TAB);
    this.str(r.product, TAB);
    this.str(r.customer, TAB);
    this.str(r.agent, TAB);
    this.str(r.sessionId, TAB);
    this.str(r.tool, TAB);
    this.str(r.transport, TAB);
    this.str(r.source, TAB);
    this.str(r.status, TAB);
    this.str(r.errorType, TAB);
    this.str(r.protocolVersion, TAB);
    this.str(r.instanceId, TAB);
    this.fixed(r.startUnixUs, 6, 1_000_000, TAB);
    this.uint(r.durationUs, TAB);
    this.uint(r.inputTokens, TAB);
    this.uint(r.outputTokens, TAB);
    this.big(r.priceNano, TAB);
    this.big(r.costNano, TAB);
    this.big(r.priceCallNano, TAB);
    this.big(r.priceInputNano, TAB);
    this.big(r.priceOutputNano, TAB);
    this.big(r.priceDurationNano, TAB);
    this.uint(r.tier, TAB);
    this.str(r.planId, TAB);
    this.str(r.planVersion, TAB);
    this.str(r.currency, TAB);
    this.str(r.decision, TAB);
    this.str(r.period, TAB);
    this.fixed(r.receivedAtMs, 3, 1000, TAB);
    this.str(r.sessionRule, TAB);
    this.big(r.pricePerSecondNano, TAB);
    this.uint(r.inputTokensPriced, TAB);
    this.uint(r.outputTokensPriced, TAB);
    if (
      r.usageLines.length === 0 &&
      r.usageQuantityMicro.length === 0 &&
      r.usageUnitNano.length === 0 &&
      r.usagePriceNano.length === 0 &&
      r.usageCostNano.length === 0
    ) {
      this.room(NO_USAGE_LINES.length);
      NO_USAGE_LINES.copy(this.buf, this.pos);
      this.pos += NO_USAGE_LINES.length;
      return;
    }
    this.names(r.usageLines, TAB);
    this.bigs(r.usageQuantityMicro, TAB);
    this.bigs(r.usageUnitNano, TAB);
    this.bigs(r.usagePriceNano, TAB);
    this.bigs(r.usageCostNano, NEWLINE);
  }
}
