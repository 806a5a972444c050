import { unlinkSync } from 'node:fs';
import { COURIER_SETTINGS_ENV } from './courier-start.js';
import { type ExporterSettings, OutageLog, TollgateExporter } from './exporter.js';
import { readHandoff } from './handoff.js';

/**
 * The courier: a process of its own, started detached by a process that exits abruptly (`process.exit()`,
 * an uncaught exception) with billing spans not yet sent — at 'exit' no more I/O can happen in that process.
 * It sends what the process left in its handoff directory (`argv[2]`) to Tollgate with the process's exporter
 * settings (from the environment, never the command line: they hold the ingest key), and removes each file
 * once Tollgate has taken it (or refused it for good). What it could not deliver stays in the directory, as
 * it would without a courier, for the next process of the service — also when the courier itself is stopped
 * or killed half-way. Tollgate deduplicates by trace and span id, so a body that also reaches Tollgate
 * another way (a successor that claimed it meanwhile) is billed once.
 */

/** The courier tries this many times, waiting longer each time (1 + 2 + 4 + 8 s, plus each try's timeout). */
const ATTEMPTS = 5;
const FIRST_WAIT_MS = 1000;

async function main(): Promise<void> {
  const dir = process.argv[2];
  const raw = process.env[COURIER_SETTINGS_ENV];
  delete process.env[COURIER_SETTINGS_ENV];
  if (!dir || !raw) return;
  const settings = JSON.parse(raw) as ExporterSettings;
  const exporter = new TollgateExporter(
    settings,
    () => [],
    () => {},
    new OutageLog(undefined, 60_000, settings.tracesUrl),
  );
  const files = readHandoff(dir);
  let wait = FIRST_WAIT_MS;
  let tries = 0;
  for (const f of files) {
    exporter.adopt([{ body: f.body, format: f.format }]);
    for (;;) {
      if (await exporter.drain(true)) break;
      if (++tries >= ATTEMPTS) return; // the rest stays in the directory
      await new Promise((r) => setTimeout(r, wait));
      wait *= 2;
    }
    try {
      unlinkSync(f.path);
    } catch {
      // claimed by a successor meanwhile: it sends it too, and Tollgate bills it once
    }
  }
}
main().then(
  () => process.exit(0),
  () => process.exit(1),
);
