import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type AnalyticsDeps, periodOfMs } from '@tollgate/billing-api';
import type { Logger } from 'pino';
import type { Config } from '../config/settings.js';
import { startPeriodic } from '../periodic.js';
import { StripeSyncError } from './errors.js';
import { type StripeGateway, sdkGateway } from './gateway.js';
import { Ledger } from './ledger.js';
import type { StripeMapping } from './mapping.js';
import { reportCsv, reportJson, type SyncReport } from './report.js';
import { syncStripe } from './sync.js';

/** Where the sync keeps its ledger and its last report, under the data directory. */
export function stripeDir(dataDir: string): string {
  return join(dataDir, 'stripe');
}

/** The period before `nowMs`'s and `nowMs`'s own: what a run looks at by default. */
export function defaultPeriods(nowMs: number): string[] {
  const current = periodOfMs(nowMs);
  const [y, m] = current.split('-').map(Number) as [number, number];
  return [periodOfMs(Date.UTC(y, m - 2, 1)), current];
}

export interface RunOptions {
  periods?: readonly string[];
  customers?: readonly string[];
  nowMs?: number;
  dryRun?: boolean;
  /** Tests swap the SDK gateway for a wrapped one (to crash a run). */
  gateway?: StripeGateway;
  afterPush?: (key: string) => void;
  /** `--resolve KEY=sent|unsent`: meter events left unsure, settled by the operator (docs/stripe.md). */
  resolve?: Record<string, 'sent' | 'unsent'>;
}

/** The mapping, when a run can start: a mapping, and a secret key unless it is a dry run. */
export function checkRunnable(config: Config, dryRun: boolean): StripeMapping {
  if (!config.stripe)
    throw new StripeSyncError('STRIPE_NOT_CONFIGURED', `no stripe: mapping in ${config.configFile}`);
  if (!config.settings['stripe.secretKey'] && !dryRun)
    throw new StripeSyncError(
      'STRIPE_NOT_CONFIGURED',
      'no secret key (STRIPE_SECRET_KEY or --stripe-secret-key)',
    );
  return config.stripe;
}

/**
 * One run at a time per data directory (the command and the background job, or two commands): a lock file
 * holding the pid, taken over when that process is gone (a crash leaves it behind).
 */
function lockRun(dir: string): () => void {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'sync.lock');
  for (let attempt = 0; ; attempt++) {
    try {
      writeFileSync(file, String(process.pid), { flag: 'wx' });
      return () => rmSync(file, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || attempt > 0) throw err;
      const pid = Number(readFileSync(file, 'utf8'));
      let alive = false;
      try {
        process.kill(pid, 0);
        alive = true;
      } catch {
        // gone: the lock is stale
      }
      if (alive) throw new StripeSyncError('STRIPE_BUSY', `another sync (pid ${pid}) is running on ${dir}`);
      rmSync(file, { force: true });
    }
  }
}

/** One sync run as configured: the SDK gateway, the ledger of the data directory, the report written next to it. */
export async function runStripeSync(
  config: Config,
  dataDir: string,
  deps: AnalyticsDeps,
  log: Logger,
  o: RunOptions = {},
): Promise<SyncReport> {
  const s = config.settings;
  const dryRun = o.dryRun ?? false;
  const mapping = checkRunnable(config, dryRun);
  // the config loader has no plans to check the product against; a product no plan prices would be read as
  // no usage at all, and every run would "reconcile" nothing in silence
  if (!deps.pricing.planFor(mapping.product, '')) {
    throw new StripeSyncError(
      'STRIPE_MAPPING_INVALID',
      `stripe.product: ${mapping.product} is not a product of the rate-plan file`,
    );
  }
  const secretKey = String(s['stripe.secretKey']);
  const gateway =
    o.gateway ??
    (secretKey
      ? sdkGateway({
          secretKey,
          host: String(s['stripe.apiHost']),
          port: Number(s['stripe.apiPort']),
          protocol: s['stripe.apiProtocol'] as 'http' | 'https',
        })
      : undefined);
  const dir = stripeDir(dataDir);
  // A dry run reads the ledger but never writes it: its pushes are computed in memory.
  const ledger = dryRun
    ? Ledger.open(join(dir, 'ledger.jsonl')).forDryRun()
    : Ledger.open(join(dir, 'ledger.jsonl'));
  for (const key of Object.keys(o.resolve ?? {})) {
    const i = ledger.intent(key);
    if (i?.kind !== 'meter_event' || ledger.outcome(key))
      throw new StripeSyncError('STRIPE_RESOLVE_INVALID', key);
  }
  const nowMs = o.nowMs ?? Date.now();
  const release = dryRun ? () => {} : lockRun(dir);
  let report: SyncReport;
  try {
    report = await syncStripe({
      mapping,
      deps,
      gateway,
      ledger,
      periods: o.periods ?? defaultPeriods(nowMs),
      customers: o.customers,
      nowMs,
      dryRun,
      log: log.child({ component: 'stripe-sync' }),
      afterPush: o.afterPush,
      resolve: o.resolve,
    });
  } finally {
    release();
  }
  if (!dryRun) {
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'report-latest.json'), reportJson(report));
    writeFileSync(join(dir, 'report-latest.csv'), reportCsv(report));
  }
  return report;
}

/** The background job: a run every `stripe.sync.intervalSeconds`, never two at once. */
export function startStripeJob(
  config: Config,
  dataDir: string,
  deps: AnalyticsDeps,
  log: Logger,
): { stop(): Promise<void> } {
  const everyMs = Number(config.settings['stripe.sync.intervalSeconds']) * 1000;
  return startPeriodic(
    () =>
      runStripeSync(config, dataDir, deps, log)
        .then((r) =>
          log.info(
            {
              component: 'stripe-sync',
              pushes: r.pushes,
              errors: r.errors.length,
              mismatches: r.rows.filter((x) => x.status === 'mismatch').length,
            },
            'Stripe sync run finished',
          ),
        )
        .catch((err) =>
          log.error({ component: 'stripe-sync', err: (err as Error).message }, 'Stripe sync run failed'),
        ),
    { everyMs: Math.max(everyMs, 1000), firstMs: Math.min(5_000, everyMs) },
  );
}
