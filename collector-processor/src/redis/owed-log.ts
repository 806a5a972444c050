import { closeSync, createReadStream, existsSync, fstatSync, openSync, rmSync, writeSync } from 'node:fs';
import { createInterface } from 'node:readline';
import type { Logger } from 'pino';

/** The file of owed calls in the data directory. */
export const OWED_CALLS_FILE = 'owed-calls.jsonl';

/**
 * What the file may hold: items past it are not written (they are still settled by this process; a stop or a
 * crash before Redis answers loses them), and `done` lines past 1.25 × it are not either.
 */
export const MAX_OWED_FILE_BYTES = 256 * 1024 * 1024;

/**
 * The owed items of a process (calls billed while Redis failed, see owed.ts) written down as they are made:
 * one line of JSON each (bigints as `{"$n":"…"}`), appended without fsync — the file is in the page cache the
 * moment the write returns, so a process that is stopped or killed before Redis answers again leaves them to
 * the next start. An item settled (or given up) gets a `done` line; the next start restores the others, which
 * it settles (settling an item twice would count it once anyway: its claim's token, its step's
 * applied-marker). The file goes once nothing is owed.
 */
export class OwedLog {
  private fd: number | undefined;
  private bytes = 0;
  private seq = 0;
  private readonly boot = Date.now().toString(36);
  private fullLogged = false;
  private failedLogged = false;

  constructor(
    private readonly path: string,
    private readonly log: Logger,
    private readonly maxBytes = MAX_OWED_FILE_BYTES,
  ) {}

  /** Writes an item down; returns its id for `done` (undefined: not written). */
  append(entry: OwedItemEntry): string | undefined {
    const id = `${this.boot}.${this.seq++}`;
    return this.write({ ...entry, id } as OwedEntry, this.maxBytes) ? id : undefined;
  }

  /** The item `id` was settled or given up: the next start does not restore it. */
  done(id: string): void {
    this.write({ k: 'done', id }, this.maxBytes * 1.25);
  }

  private write(entry: OwedEntry | { k: 'done'; id: string }, max: number): boolean {
    try {
      if (this.fd === undefined) {
        this.fd = openSync(this.path, 'a', 0o600);
        this.bytes = fstatSync(this.fd).size;
      }
      if (this.bytes > max) {
        if (!this.fullLogged) {
          this.fullLogged = true;
          this.log.error(
            { path: this.path, bytes: this.bytes },
            'owed-calls file full: further owed calls are settled by this process only, and lost if it stops before Redis answers',
          );
        }
        return false;
      }
      const line = Buffer.from(`${JSON.stringify(entry, bigintOut)}\n`);
      writeSync(this.fd, line);
      this.bytes += line.length;
      return true;
    } catch (err) {
      if (!this.failedLogged) {
        this.failedLogged = true;
        this.log.error(
          { path: this.path, err: (err as Error).message },
          'owed calls not written down: they are lost if the process stops before Redis answers',
        );
      }
      return false;
    }
  }

  /**
   * The items an earlier process left and did not settle, read line by line. A line that is torn (a crash in
   * its write) or not an item is skipped with a warning; a file that cannot be read is reported and left.
   */
  async read(): Promise<OwedEntry[]> {
    if (!existsSync(this.path)) return [];
    const open = new Map<string, OwedEntry>();
    let skipped = 0;
    try {
      const lines = createInterface({
        input: createReadStream(this.path),
        crlfDelay: Number.POSITIVE_INFINITY,
      });
      for await (const line of lines) {
        if (!line) continue;
        let e: unknown;
        try {
          e = JSON.parse(line, bigintIn);
        } catch {
          skipped++;
          continue;
        }
        if (isDone(e)) open.delete(e.id);
        else if (isEntry(e)) open.set(e.id, e);
        else skipped++;
      }
    } catch (err) {
      this.log.error(
        { path: this.path, err: (err as Error).message },
        'owed-calls file not readable: its calls are not restored (it is left as it is)',
      );
      return [];
    }
    if (skipped)
      this.log.warn({ path: this.path, lines: skipped }, 'owed-calls file: lines that are not items skipped');
    return [...open.values()];
  }

  /** Nothing is owed any more: the file goes (the next owed item starts a new one). */
  clear(): void {
    if (this.fd === undefined && !existsSync(this.path)) return;
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
    this.bytes = 0;
    this.fullLogged = false;
    rmSync(this.path, { force: true });
  }
}

/** One owed item as written down: a customer's fail-open calls of one export, or a failed enforcement step. */
export type OwedEntry =
  | {
      k: 'claim';
      id: string;
      product: string;
      customer: string;
      rid: string;
      inputs: unknown[];
      rows: unknown[];
      nowMs: number;
      /** Per input, the positions it was given (`ClaimResult`); absent in files of earlier versions. */
      positions?: unknown[];
    }
  | {
      k: 'step';
      id: string;
      product: string;
      rid: string;
      marker: string;
      g: unknown;
      rows: unknown[];
      now: number;
    };

type OwedItemEntry = OwedEntry extends infer E ? (E extends OwedEntry ? Omit<E, 'id'> : never) : never;

const str = (v: unknown): v is string => typeof v === 'string';
const count = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 0;
/** A usage quantity priced in graduated tiers (`TieredQuantity`). */
const isTiered = (q: unknown): boolean =>
  obj(q) && count(q.index) && str(q.line) && typeof q.micro === 'bigint' && typeof q.integral === 'boolean';
/** The positions a call was given (`ClaimResult`). */
const isPosition = (r: unknown): boolean =>
  obj(r) &&
  count(r.toolOrdinal) &&
  count(r.planOrdinal) &&
  (r.usageBefore === undefined ||
    (Array.isArray(r.usageBefore) && r.usageBefore.every((b) => b === null || typeof b === 'bigint')));
const obj = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

function isDone(e: unknown): e is { k: 'done'; id: string } {
  return obj(e) && e.k === 'done' && str(e.id);
}

/** A row as the enforcer reads it: the fields it needs, of their types. */
function isRow(r: unknown): boolean {
  return (
    obj(r) &&
    str(r.eventId) &&
    str(r.customer) &&
    str(r.tool) &&
    str(r.agent) &&
    str(r.sessionId) &&
    str(r.period) &&
    str(r.planVersion) &&
    typeof r.priceNano === 'bigint' &&
    typeof r.costNano === 'bigint' &&
    typeof r.startUnixUs === 'number' &&
    typeof r.receivedAtMs === 'number'
  );
}

function isEntry(e: unknown): e is OwedEntry {
  if (
    !obj(e) ||
    !str(e.id) ||
    !str(e.product) ||
    !str(e.rid) ||
    !Array.isArray(e.rows) ||
    !e.rows.every(isRow)
  )
    return false;
  if (e.k === 'claim')
    return (
      str(e.customer) &&
      typeof e.nowMs === 'number' &&
      Array.isArray(e.inputs) &&
      e.inputs.every(
        (i) =>
          obj(i) &&
          obj(i.call) &&
          str(i.call.eventId) &&
          str(i.call.tool) &&
          str(i.period) &&
          str(i.day) &&
          typeof i.counts === 'boolean' &&
          (i.tiered === undefined || (Array.isArray(i.tiered) && i.tiered.every(isTiered))),
      ) &&
      (e.positions === undefined ||
        (Array.isArray(e.positions) &&
          e.positions.length === e.inputs.length &&
          e.positions.every(isPosition)))
    );
  if (e.k === 'step')
    return (
      str(e.marker) &&
      typeof e.now === 'number' &&
      obj(e.g) &&
      str(e.g.customer) &&
      str(e.g.period) &&
      str(e.g.day) &&
      e.rows.length > 0
    );
  return false;
}

function bigintOut(_key: string, value: unknown): unknown {
  return typeof value === 'bigint' ? { $n: value.toString() } : value;
}

function bigintIn(_key: string, value: unknown): unknown {
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    const n = (value as { $n?: unknown }).$n;
    if (typeof n === 'string' && Object.keys(value).length === 1 && /^-?\d+$/.test(n)) return BigInt(n);
  }
  return value;
}
