import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI } from './support/process.js';

/**
 * `clickhouse.chdbMallocConf` reaches chDB's jemalloc, which reads `JE_MALLOC_CONF` once, when libchdb is
 * loaded: the option only works because chDB is loaded on the first embedded open, after the setting is
 * known. Proven with jemalloc's `abort_conf:true`, which aborts the process on an option it does not know,
 * through `tollgate sql` (one embedded open, then exit).
 */

const dirs: string[] = [];
afterAll(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function runSql(flags: string[], env: Record<string, string | undefined> = {}) {
  const dataDir = mkdtempSync(join(tmpdir(), 'tollgate-malloc-conf-'));
  dirs.push(dataDir);
  const childEnv: Record<string, string | undefined> = { ...process.env, JE_MALLOC_CONF: undefined, ...env };
  for (const k of Object.keys(childEnv)) if (childEnv[k] === undefined) delete childEnv[k];
  return spawnSync(process.execPath, [CLI, 'sql', 'SELECT 40 + 2', '--data-dir', dataDir, ...flags], {
    env: childEnv as NodeJS.ProcessEnv,
    encoding: 'utf8',
    timeout: 60_000,
  });
}

describe('clickhouse.chdbMallocConf', () => {
  it('a valid option loads and the engine works', () => {
    const r = runSql(['--chdb-malloc-conf', 'abort_conf:true,dirty_decay_ms:1000']);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('42');
  }, 60_000);

  it('reaches jemalloc: an option it does not know aborts the process under abort_conf', () => {
    const r = runSql(['--chdb-malloc-conf', 'abort_conf:true,no_such_option:1']);
    expect(r.signal).toBe('SIGABRT');
    expect(r.stdout).not.toContain('42');
  }, 60_000);

  it('gives way to a JE_MALLOC_CONF already in the environment', () => {
    const r = runSql(['--chdb-malloc-conf', 'abort_conf:true,no_such_option:1'], {
      JE_MALLOC_CONF: 'dirty_decay_ms:2000',
    });
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('42');
  }, 60_000);

  it('empty (the default) leaves jemalloc at its defaults', () => {
    const r = runSql([]);
    expect(r.status).toBe(0);
    expect(r.stdout).toContain('42');
  }, 60_000);
});
