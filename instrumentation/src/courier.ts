import { randomUUID } from 'node:crypto';
import { COURIER_SETTINGS_ENV } from './courier-start.js';
import { type ExporterSettings, OutageLog, TollgateExporter } from './exporter.js';
import { claimHandoff, writeHandoff } from './handoff.js';

/**
 * The courier: a process of its own, started detached by a process that exits abruptly (`process.exit()`,
 * an uncaught exception) with billing spans not yet sent — at 'exit' no more I/O can happen in that process.
 * It claims what the process left in its handoff directory (`argv[2]`), sends it to Tollgate with the
 * process's exporter settings (from the environment, never the command line: they hold the ingest key), and
 * hands what it could not deliver back to the directory for the next process of the service. Tollgate
 * deduplicates by trace and span id, so a body that also reaches Tollgate another way is billed once.
 */

/** The courier tries this many times, waiting longer each time (about 30 s in all), then gives up. */
const ATTEMPTS = 5;
const FIRST_WAIT_MS = 1000;

async function main(): Promise<void> {
  const dir = process.argv[2];
  const raw = process.env[COURIER_SETTINGS_ENV];
  delete process.env[COURIER_SETTINGS_ENV];
  if (!dir || !raw) return;
  const settings = JSON.parse(raw) as ExporterSettings;
  const id = randomUUID();
  const exporter = new TollgateExporter(
    settings,
    () => [],
    () => {},
    new OutageLog(undefined, 60_000, settings.tracesUrl),
  );
  exporter.adopt(claimHandoff(dir, id));
  let wait = FIRST_WAIT_MS;
  for (let i = 0; i < ATTEMPTS; i++) {
    if (await exporter.drain(true)) break;
    await new Promise((r) => setTimeout(r, wait));
    wait *= 2;
  }
  // what Tollgate did not take goes back, for the next process of the service
  writeHandoff(dir, id, exporter.takeUnsent());
}

main().then(
  () => process.exit(0),
  () => process.exit(1),
);
