import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { ExporterSettings } from './exporter.js';

/** Where the courier finds the exporter settings (they hold the ingest key: not on its command line). */
export const COURIER_SETTINGS_ENV = 'TOLLGATE_COURIER_SETTINGS';

/**
 * Starts the courier (courier.ts) on a handoff directory, detached, and returns at once: for a process that
 * is exiting (synchronous; the spawn happens before the process ends). False when it could not be started
 * (the package bundled without its courier file, a platform that refuses to spawn): the spans then wait in
 * the directory for the next process of the service, as before.
 */
export function startCourier(dir: string, settings: ExporterSettings): boolean {
  try {
    const script = fileURLToPath(new URL('./courier.js', import.meta.url));
    if (!existsSync(script)) return false;
    const env: NodeJS.ProcessEnv = { ...process.env, [COURIER_SETTINGS_ENV]: JSON.stringify(settings) };
    // the app's preloads (`--import @tollgate/instrumentation/register`, …) are not the courier's
    delete env.NODE_OPTIONS;
    const child = spawn(process.execPath, [script, dir], { detached: true, stdio: 'ignore', env });
    child.on('error', () => {});
    child.unref();
    return child.pid !== undefined;
  } catch {
    return false;
  }
}
