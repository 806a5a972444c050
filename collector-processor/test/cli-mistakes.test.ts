import { existsSync, mkdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { tempDir } from './support/harness.js';
import { runCli, startServerProcess, stopServerProcess } from './support/process.js';

/**
 * A new user's mistakes with the CLI, each answered by one line that says what to do, with an exit code of
 * its own (2: a mistake in what was asked; 1: the command could not do it) — never a stack trace — and never
 * at the cost of data (found by walking the docs as written).
 */
describe('the CLI facing a new user’s mistakes', () => {
  it('--help on any command prints the usage', async () => {
    for (const args of [
      ['start', '--help'],
      ['demo', '--help'],
      ['config', '-h'],
      ['admin', 'states', '--help'],
    ]) {
      const r = await runCli(args);
      expect([args, r.code]).toEqual([args, 0]);
      expect(r.stdout).toContain('tollgate start');
    }
  });

  it('a plans file that is not there: one line, exit 2 for start and 1 for check-plans', async () => {
    const dir = tempDir();
    const missing = join(dir, 'nope.yaml');
    const start = await runCli([
      'start',
      '--plans',
      missing,
      '--data-dir',
      join(dir, 'data'),
      '--otlp-port',
      '0',
      '--otlp-grpc-port',
      '0',
      '--api-port',
      '0',
    ]);
    expect(start.code).toBe(2);
    expect(start.stderr).toContain(`${missing}: cannot read the plans file (ENOENT)`);
    expect(start.stderr).not.toMatch(/\n\s+at /);
    const check = await runCli(['check-plans', missing]);
    expect(check.code).toBe(1);
    expect(check.stderr.trim()).toBe(`tollgate: ${missing}: cannot read the plans file (ENOENT)`);
  });

  it('a mistyped demo flag leaves the last run’s data where it was', async () => {
    const dir = tempDir();
    const dataDir = join(dir, '.tollgate-demo');
    mkdirSync(dataDir);
    writeFileSync(join(dataDir, 'marker'), 'last run');
    const r = await runCli(['demo', '--data-dir', dataDir, '--otlp-port', 'abc']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain('--otlp-port');
    expect(existsSync(join(dataDir, 'marker'))).toBe(true);
  });

  it('admin: a mistyped flag is refused; an API that does not answer is named with the way to point at it', async () => {
    const env = { ...process.env, TOLLGATE_API_KEY: 'tg_dev_admin' };
    const typo = await runCli(['admin', 'states', '--custmer', 'acme'], env);
    expect(typo.code).toBe(2);
    expect(typo.stderr.trim()).toBe('tollgate: unknown option --custmer for tollgate admin');
    const down = await runCli(['admin', 'states', '--api-url', 'http://127.0.0.1:9'], env);
    expect(down.code).toBe(1);
    expect(down.stderr).toContain('cannot reach the Tollgate API at http://127.0.0.1:9');
    expect(down.stderr).toContain('--api-url or TOLLGATE_API_URL');
    expect(down.stderr).not.toMatch(/\n\s+at /);
  });

  it('a data directory tollgate start creates is its user’s only (mode 0700): the spool holds every export', async () => {
    const dataDir = join(tempDir(), 'new', 'data');
    const server = await startServerProcess(['--data-dir', dataDir]);
    try {
      expect((statSync(dataDir).mode & 0o777).toString(8)).toBe('700');
    } finally {
      await stopServerProcess(server, dataDir);
    }
  });
});
