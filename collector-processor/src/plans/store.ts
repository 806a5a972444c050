import { existsSync, mkdirSync, unwatchFile, watchFile, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Metrics } from '../metrics.js';
import { type PlanBook, PlanFileError, readPlanBook } from './load.js';

/**
 * The rate plans in force, hot-reloaded from their file. A bad edit keeps the previous plans and says
 * why (log + metric + `lastError`). Every version ever used is snapshotted in `<dataDir>/plans/` so that
 * a spool record replayed after a restart is rated under the plans it was accepted with.
 */
export class PlanStore {
  private book: PlanBook;
  private readonly versions = new Map<string, PlanBook>();
  lastError: string | undefined;

  private constructor(
    private readonly file: string,
    private readonly snapshotDir: string,
    private readonly log: Logger,
    private readonly metrics: Metrics,
  ) {
    mkdirSync(snapshotDir, { recursive: true });
    // a plans file that is not there is a problem of the file, reported as one (exit 2), not a stack trace
    this.book = this.adopt(readPlanBook(file));
  }

  /** Loads the plan file; throws PlanFileError (with every problem) when it is invalid. */
  static open(file: string, dataDir: string, log: Logger, metrics: Metrics): PlanStore {
    return new PlanStore(file, join(dataDir, 'plans'), log, metrics);
  }

  private adopt(book: PlanBook): PlanBook {
    this.versions.set(book.version, book);
    const snap = join(this.snapshotDir, `${book.version}.yaml`);
    if (!existsSync(snap)) writeFileSync(snap, book.source);
    return book;
  }

  get current(): PlanBook {
    return this.book;
  }

  /** The plans of an earlier version (from memory or its snapshot). */
  byVersion(version: string): PlanBook | undefined {
    const known = this.versions.get(version);
    if (known) return known;
    const snap = join(this.snapshotDir, `${version}.yaml`);
    if (!existsSync(snap)) return undefined;
    const book = readPlanBook(snap);
    this.versions.set(version, book);
    return book;
  }

  /** Re-reads the file now; returns true when a new version took effect. */
  reload(): boolean {
    try {
      const book = readPlanBook(this.file);
      this.lastError = undefined;
      if (book.version === this.book.version) return false;
      this.book = this.adopt(book);
      this.metrics.planReloads.inc({ result: 'ok' });
      this.log.info({ version: book.version, file: this.file }, 'rate plans reloaded');
      return true;
    } catch (err) {
      this.fail(err instanceof PlanFileError ? err.message : String(err));
      return false;
    }
  }

  private fail(message: string): void {
    this.lastError = message;
    this.metrics.planReloads.inc({ result: 'error' });
    this.log.error(
      { file: this.file, keptVersion: this.book.version, problems: message },
      'rate-plan reload rejected; keeping the previous plans',
    );
  }

  /** Polls the file (robust to editors that replace it by rename). */
  watch(intervalMs = 500): void {
    watchFile(this.file, { interval: intervalMs, persistent: false }, (cur, prev) => {
      if (cur.mtimeMs !== prev.mtimeMs || cur.size !== prev.size) this.reload();
    });
  }

  close(): void {
    unwatchFile(this.file);
  }
}
