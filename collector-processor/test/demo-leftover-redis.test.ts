import { spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, expect, it } from 'vitest';
import { freePort } from '../src/redis/private-redis.js';
import { tempDir } from './support/harness.js';
import { CLI } from './support/process.js';

// `tollgate demo` starts from a clean slate: it empties its data directory. A demo killed hard (kill -9, a
// closed pipe) leaves its private redis-server running, by design (`tollgate start` adopts it after a crash);
// the next demo must stop it before emptying the directory, or it runs on with no one to stop it.
const dir = tempDir('tollgate-demo-leftover-');
const pids: number[] = [];

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function demo(extra: string[]) {
  const child = spawn(
    process.execPath,
    [
      CLI,
      'demo',
      '--synthetic',
      '--calls',
      '20',
      '--data-dir',
      dir,
      '--otlp-port',
      String(await freePort()),
      '--otlp-grpc-port',
      '0',
      '--api-port',
      String(await freePort()),
      ...extra,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  child.stdout?.on('data', (d: Buffer) => {
    out += d.toString();
  });
  child.stderr?.on('data', (d: Buffer) => {
    out += d.toString();
  });
  const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
  return { child, exited, output: () => out };
}

afterAll(() => {
  for (const pid of pids) if (alive(pid)) process.kill(pid, 'SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

it("stops the private redis-server a hard-killed demo left behind before emptying the demo's directory, and refuses a running demo's", async () => {
  const first = await demo([]);
  for (let i = 0; i < 600 && !first.output().includes('keeps running'); i++)
    await new Promise((r) => setTimeout(r, 100));
  expect(first.output()).toContain('keeps running');
  const file = join(dir, 'private-redis.json');
  expect(existsSync(file)).toBe(true);
  const { pid } = JSON.parse(readFileSync(file, 'utf8')) as { pid: number };
  pids.push(pid);
  // a second demo on the directory of a running one is refused, and leaves it alone
  const refused = await demo(['--exit', 'true']);
  expect(await refused.exited).toBe(1);
  expect(refused.output()).toContain(`is in use by a running Tollgate (pid ${first.child.pid})`);
  expect(alive(pid)).toBe(true);
  expect(existsSync(file)).toBe(true);

  first.child.kill('SIGKILL');
  await first.exited;
  expect(alive(pid)).toBe(true); // left behind, as after any crash

  const second = await demo(['--exit', 'true']);
  expect(await second.exited).toBe(0);
  expect(second.output()).toContain('Exported and landed');
  for (let i = 0; i < 50 && alive(pid); i++) await new Promise((r) => setTimeout(r, 100));
  expect(alive(pid)).toBe(false);
}, 120_000);
