import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { getPriority } from 'node:os';
import { basename } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { tempDir } from './support/harness.js';
import { exportOf, toolSpan } from './support/otlp-json.js';
import {
  CLI,
  type ServerProcess,
  sendExport,
  startServerProcess,
  stopServerProcess,
} from './support/process.js';

/**
 * `clickhouse.chdbThreadNice`: a running `tollgate start` (a real child process, real chDB) has set its chDB
 * engine's threads to the nice value and left its own — the main thread that answers exports, V8's and
 * libuv's threads — at the process's; with 0 nothing changes. Read from /proc, as `ps -L -o nice` would.
 */

const NODE_NAME = basename(process.execPath).slice(0, 15);

interface ThreadInfo {
  tid: number;
  name: string;
  nice: number;
}

function threadsOf(pid: number): ThreadInfo[] {
  const out: ThreadInfo[] = [];
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      out.push({
        tid: Number(t),
        name: readFileSync(`/proc/${pid}/task/${t}/comm`, 'utf8').trimEnd(),
        nice: getPriority(Number(t)),
      });
    } catch {
      // exited while listed
    }
  }
  return out;
}

const isNodeThread = (t: ThreadInfo) => t.name === NODE_NAME || /^(libuv-worker|V8 )/.test(t.name);

let server: ServerProcess | undefined;
let dataDir = '';
afterEach(async () => {
  await stopServerProcess(server, dataDir);
  server = undefined;
});

/** Starts Tollgate, lands a few exports (so chDB's insert and view threads exist), waits one scan. */
async function busyServer(flags: string[]): Promise<number> {
  dataDir = tempDir('tollgate-nice-');
  server = await startServerProcess(['--data-dir', dataDir, ...flags]);
  for (let i = 0; i < 3; i++) {
    const body = JSON.stringify(exportOf(Array.from({ length: 50 }, () => toolSpan({ customer: `n-${i}` }))));
    expect(await sendExport(server.otlpUrl, body)).toBe(true);
  }
  const deadline = Date.now() + 30_000;
  for (;;) {
    const res = await fetch(`${server.apiUrl}/metrics`);
    const landed = /^tollgate_landed_rows_total(?:\{[^}]*\})? (\d+)/m.exec(await res.text());
    if (Number(landed?.[1] ?? 0) >= 150) break;
    if (Date.now() > deadline) throw new Error('the calls did not land');
    await new Promise((r) => setTimeout(r, 100));
  }
  await new Promise((r) => setTimeout(r, 1_500)); // one scan (every second) after the inserts
  return server.child.pid as number;
}

describe('clickhouse.chdbThreadNice', () => {
  it('by default (10) sets chDB’s threads to nice 10 and leaves the main thread and Node’s threads alone', async () => {
    const pid = await busyServer([]);
    // a thread chDB starts (a merge, a pool growing) is reniced by the next scan, within a second: a thread
    // that appeared just now may still be at 0, so the check is repeated until it holds (or 10 s pass)
    let threads = threadsOf(pid);
    for (let i = 0; i < 40; i++) {
      if (threads.every((t) => t.tid === pid || isNodeThread(t) || t.nice === 10)) break;
      await new Promise((r) => setTimeout(r, 250));
      threads = threadsOf(pid);
    }
    const main = threads.find((t) => t.tid === pid);
    expect(main?.nice).toBe(0);
    const chdb = threads.filter((t) => t.tid !== pid && !isNodeThread(t));
    // the engine's pools and the insert pipeline's threads, named by chDB
    expect(chdb.length).toBeGreaterThan(5);
    expect(chdb.map((t) => t.name)).toContain('BgSchPool');
    expect(chdb.filter((t) => t.nice !== 10)).toEqual([]);
    const node = threads.filter((t) => t.tid !== pid && isNodeThread(t));
    expect(node.length).toBeGreaterThan(0);
    expect(node.filter((t) => t.nice !== 0)).toEqual([]);
  }, 90_000);

  it('0 leaves every thread as it was', async () => {
    const pid = await busyServer(['--chdb-thread-nice', '0']);
    // chDB raises its MemoryWorker's priority itself where the process may (CAP_SYS_NICE): −20 then
    const changed = threadsOf(pid).filter(
      (t) => t.nice !== 0 && !(t.name === 'MemoryWorker' && t.nice === -20),
    );
    expect(changed).toEqual([]);
  }, 90_000);

  it('refuses a value that is not a nice value, with a clear error', () => {
    const r = spawnSync(process.execPath, [CLI, 'start', '--chdb-thread-nice', '20'], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain('clickhouse.chdbThreadNice: a nice value is 1..19 (0 = off), got 20');
  });
});
