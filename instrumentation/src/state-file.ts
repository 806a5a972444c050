import { createHash } from 'node:crypto';
import { lstatSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { Directive } from '@tollgate/contracts';
import { validDirective } from './wire.js';

/**
 * What one process of a service leaves for the next one: the kills and throttles it knew of, and the
 * instance ids it (and its predecessors) exported calls under. A stdio MCP server is one process per
 * session, so without this a restarted server would not know its customer was killed until its first
 * call was billed. Tollgate remembers an instance's customers for an hour, so a heartbeat that names the
 * predecessors' ids is answered with those customers' current states (`resume` included).
 */
export interface RememberedState {
  instances: { id: string; seenAtMs: number }[];
  directives: Directive[];
}

/** Tollgate forgets an instance's customers an hour after its last call (INSTANCE_TTL_SECONDS). */
export const INSTANCE_MEMORY_MS = 3_600_000;
const MAX_INSTANCES = 32;

export function defaultStateFile(serviceName: string, endpoint: string): string {
  const h = createHash('sha256').update(`${serviceName}\n${endpoint}`).digest('hex').slice(0, 16);
  // per user: the temporary directory is shared, and what is in here decides kills and billing handoffs
  return join(tmpdir(), `tollgate-instrumentation-${process.getuid?.() ?? 'user'}`, `${h}.json`);
}

export function readState(file: string, nowMs: number): RememberedState {
  try {
    // a state file another user wrote (a shared temporary directory) could plant kills: not read
    const st = lstatSync(file);
    const uid = process.getuid?.();
    if (!st.isFile() || (uid !== undefined && st.uid !== uid) || (st.mode & 0o002) !== 0)
      return { instances: [], directives: [] };
    const doc = JSON.parse(readFileSync(file, 'utf8')) as Partial<RememberedState>;
    const instances = (Array.isArray(doc.instances) ? doc.instances : []).filter(
      (i) =>
        typeof i?.id === 'string' &&
        typeof i.seenAtMs === 'number' &&
        nowMs - i.seenAtMs < INSTANCE_MEMORY_MS,
    );
    const directives = (Array.isArray(doc.directives) ? doc.directives : [])
      .map((d) => validDirective(d))
      .filter((d): d is Directive => d !== undefined && (d.untilUnixMs === 0 || d.untilUnixMs > nowMs));
    return { instances, directives };
  } catch {
    return { instances: [], directives: [] };
  }
}

/**
 * Writes the state (merging the instances another live process of the same service wrote meanwhile).
 * Small, synchronous and atomic (write then rename); failures are the caller's to ignore.
 */
export function writeState(file: string, state: RememberedState, nowMs: number): void {
  const onDisk = readState(file, nowMs);
  const byId = new Map<string, number>();
  for (const i of [...onDisk.instances, ...state.instances]) {
    byId.set(i.id, Math.max(byId.get(i.id) ?? 0, i.seenAtMs));
  }
  const instances = [...byId]
    .map(([id, seenAtMs]) => ({ id, seenAtMs }))
    .sort((a, b) => b.seenAtMs - a.seenAtMs)
    .slice(0, MAX_INSTANCES);
  // private to the user: another local user must not plant or erase states
  mkdirSync(dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify({ instances, directives: state.directives }), { mode: 0o600 });
  renameSync(tmp, file);
}
