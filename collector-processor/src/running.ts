import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/**
 * `<dataDir>/tollgate-running.json`: which process serves a data directory, so a command that cannot open it
 * (embedded chDB lets one process open a directory) can name that process and its API.
 */
export const RUNNING_FILE = 'tollgate-running.json';

export interface RunningRecord {
  pid: number;
  instanceId: string;
  roles: string;
  startedAt: string;
  otlpUrl?: string | undefined;
  apiUrl?: string | undefined;
}

export function writeRunningRecord(dataDir: string, record: RunningRecord): void {
  writeFileSync(join(dataDir, RUNNING_FILE), `${JSON.stringify(record)}\n`);
}

/** Removes the record if it is this process's (a newer process may have written its own). */
export function removeRunningRecord(dataDir: string, pid = process.pid): void {
  if (readRunningRecord(dataDir)?.pid === pid) rmSync(join(dataDir, RUNNING_FILE), { force: true });
}

export function readRunningRecord(dataDir: string): RunningRecord | undefined {
  try {
    return JSON.parse(readFileSync(join(dataDir, RUNNING_FILE), 'utf8')) as RunningRecord;
  } catch {
    return undefined;
  }
}

/** The record when its process is alive (a `kill -9` leaves a stale one behind). */
export function runningProcess(dataDir: string): RunningRecord | undefined {
  const r = readRunningRecord(dataDir);
  if (!r) return undefined;
  try {
    process.kill(r.pid, 0);
    return r;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM' ? r : undefined;
  }
}
