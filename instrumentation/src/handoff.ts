import {
  lstatSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  statSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';

/**
 * Billing spans a process could not deliver before it exited (Tollgate down or unreachable), handed to the
 * next process of the same service and endpoint through a directory next to its state file. A stdio MCP
 * server is one process per agent session: without this, every session that ends during an outage takes
 * its calls with it. Each file is one OTLP export request body, exactly as it would have been sent; the
 * successor sends it as is (Tollgate deduplicates by trace and span id, so a body sent twice — one whose
 * answer was lost — is billed once).
 */

export type BodyFormat = 'protobuf' | 'json';

export interface ExportBody {
  body: Uint8Array;
  format: BodyFormat;
}

/** The most a handoff directory holds: beyond it a process's unsent spans are dropped (and counted). */
export const MAX_HANDOFF_BYTES = 64 * 1024 * 1024;

const EXT: Record<BodyFormat, string> = { protobuf: '.pb', json: '.json' };
const NAME = /^\d+-[0-9a-f-]+-\d+\.(pb|json)$/;

let writes = 0;

export function handoffDir(stateFile: string): string {
  return `${stateFile}.pending`;
}

/**
 * Whether `path` is this user's own and nobody else can write into it: not a symbolic link, owned by this
 * process's user, not writable by group or others (as `mode` 0700 / 0600 made it). A handoff directory in a
 * shared temporary directory that fails this was made, or opened up, by someone else, who could plant
 * export bodies for this process to send with its ingest key — billing calls that never happened.
 */
export function ownedPrivately(path: string, kind: 'dir' | 'file'): boolean {
  const uid = process.getuid?.();
  if (uid === undefined) return true; // no POSIX owners (Windows): the per-user temp directory stands in
  try {
    const st = lstatSync(path);
    if (kind === 'dir' ? !st.isDirectory() : !st.isFile()) return false;
    return st.uid === uid && (st.mode & 0o022) === 0;
  } catch {
    return false;
  }
}

function sizeOf(dir: string): number {
  let total = 0;
  for (const f of readdirSync(dir)) {
    try {
      total += statSync(join(dir, f)).size;
    } catch {
      // claimed by another process meanwhile
    }
  }
  return total;
}

/**
 * Writes `bodies` for a successor (synchronously: this runs while the process exits). Returns how many were
 * not written because the directory is full; the paths written are added to `written`. Each file is written
 * then renamed, so a reader never sees half.
 */
export function writeHandoff(
  dir: string,
  instanceId: string,
  bodies: ExportBody[],
  written?: string[],
): number {
  if (bodies.length === 0) return 0;
  // private to the user, like the state file: another local user must not plant spans to bill
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (!ownedPrivately(dir, 'dir')) throw new Error(`${dir} is not private to this user`);
  let room = MAX_HANDOFF_BYTES - sizeOf(dir);
  const now = Date.now();
  // a name is made unique per write: an exit writes a copy early and the definitive handover later
  const seq = ++writes;
  let skipped = 0;
  bodies.forEach((b, i) => {
    if (b.body.length > room) {
      skipped++;
      return;
    }
    room -= b.body.length;
    const name = `${now}-${instanceId}-${seq * 100_000 + i}${EXT[b.format]}`;
    const tmp = join(dir, `.${name}.tmp`);
    writeFileSync(tmp, b.body, { mode: 0o600 });
    renameSync(tmp, join(dir, name));
    written?.push(join(dir, name));
  });
  return skipped;
}

/** The export bodies' file names in a handoff directory, oldest first; none when the directory is not private. */
function handoffNames(dir: string): string[] {
  try {
    // what another user could have written is never sent (see ownedPrivately)
    if (!ownedPrivately(dir, 'dir')) return [];
    const names = readdirSync(dir).filter((f) => NAME.test(f));
    return names.sort((a, b) => Number(a.split('-', 1)[0]) - Number(b.split('-', 1)[0]));
  } catch {
    return [];
  }
}

/**
 * Reads what a process left, oldest first, without claiming it: for the courier, which removes each file only
 * once Tollgate has taken it — a courier stopped half-way (SIGTERM, SIGKILL) leaves the rest where it was. A
 * successor may claim a file meanwhile and send it too: Tollgate bills it once.
 */
export function readHandoff(dir: string): (ExportBody & { path: string })[] {
  const out: (ExportBody & { path: string })[] = [];
  for (const name of handoffNames(dir)) {
    const path = join(dir, name);
    try {
      if (!ownedPrivately(path, 'file')) continue;
      out.push({ path, body: readFileSync(path), format: name.endsWith('.json') ? 'json' : 'protobuf' });
    } catch {
      // claimed by a successor meanwhile, or unreadable
    }
  }
  return out;
}

/**
 * Takes what predecessors left, oldest first (at most `maxBytes`): each file is claimed by renaming it (only
 * one process wins a rename), read and removed. What this process cannot deliver in turn it hands on again.
 */
export function claimHandoff(dir: string, instanceId: string, maxBytes = MAX_HANDOFF_BYTES): ExportBody[] {
  const out: ExportBody[] = [];
  let bytes = 0;
  for (const name of handoffNames(dir)) {
    const claimed = join(dir, `.${name}.claimed-${instanceId}`);
    try {
      renameSync(join(dir, name), claimed);
    } catch {
      continue; // another process claimed it first
    }
    try {
      if (!ownedPrivately(claimed, 'file')) continue; // left for inspection
      const body = readFileSync(claimed);
      unlinkSync(claimed);
      out.push({ body, format: name.endsWith('.json') ? 'json' : 'protobuf' });
      bytes += body.length;
    } catch {
      // unreadable: leave it for inspection
    }
    if (bytes >= maxBytes) break;
  }
  return out;
}
