import { closeSync, existsSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import type { Logger } from 'pino';

/** The file of owed calls in the data directory. */
export const OWED_CALLS_FILE = 'owed-calls.jsonl';

/**
 * The owed items of a process (calls billed while Redis failed, see owed.ts) written down as they are made:
 * one line of JSON each (bigints as `{"$n":"…"}`), appended without fsync — the file is in the page cache the
 * moment the write returns, so a process that is stopped or killed before Redis answers again leaves them to
 * the next start, which settles them. Settling an item twice counts it once (its claim's token and its
 * enforcement step's applied-marker), so the file is kept until nothing is owed and read whole at start.
 */
export class OwedLog {
  private fd: number | undefined;
  private failedLogged = false;

  constructor(
    private readonly path: string,
    private readonly log: Logger,
  ) {}

  append(entry: OwedEntry): void {
    try {
      this.fd ??= openSync(this.path, 'a', 0o600);
      writeSync(this.fd, `${JSON.stringify(entry, bigintOut)}\n`);
    } catch (err) {
      if (this.failedLogged) return;
      this.failedLogged = true;
      this.log.error(
        { path: this.path, err: (err as Error).message },
        'owed calls not written down: they are lost if the process stops before Redis answers',
      );
    }
  }

  /** The entries an earlier process left (a torn last line, from a crash in its write, is skipped). */
  read(): OwedEntry[] {
    if (!existsSync(this.path)) return [];
    const out: OwedEntry[] = [];
    for (const line of readFileSync(this.path, 'utf8').split('\n')) {
      if (!line) continue;
      try {
        out.push(JSON.parse(line, bigintIn) as OwedEntry);
      } catch {
        this.log.warn({ path: this.path }, 'a torn line of the owed-calls file skipped');
      }
    }
    return out;
  }

  /** Nothing is owed any more: the file goes (the next owed item starts a new one). */
  clear(): void {
    if (this.fd === undefined && !existsSync(this.path)) return;
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
    rmSync(this.path, { force: true });
  }
}

/** One owed item as written down: a customer's fail-open calls of one export, or a failed enforcement step. */
export type OwedEntry =
  | {
      k: 'claim';
      product: string;
      customer: string;
      rid: string;
      inputs: unknown[];
      rows: unknown[];
      nowMs: number;
    }
  | { k: 'step'; product: string; rid: string; marker: string; g: unknown; rows: unknown[]; now: number };

function bigintOut(_key: string, value: unknown): unknown {
  return typeof value === 'bigint' ? { $n: value.toString() } : value;
}

function bigintIn(_key: string, value: unknown): unknown {
  if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
    const n = (value as { $n?: unknown }).$n;
    if (typeof n === 'string' && Object.keys(value).length === 1) return BigInt(n);
  }
  return value;
}
