import {
  chmodSync,
  chownSync,
  existsSync,
  mkdtempSync,
  readdirSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { claimHandoff, writeHandoff } from '../src/handoff.js';
import { readState, writeState } from '../src/state-file.js';

/**
 * The billing handoff and the state file live under the OS temporary directory, shared by every local user:
 * what another user could have written there (a planted export body would be sent with this process's
 * ingest key and billed; a planted state could refuse a customer) is never used.
 */
const body = (text: string) => ({ body: Buffer.from(text), format: 'json' as const });
const fresh = () => mkdtempSync(join(tmpdir(), 'tg-handoff-'));

describe('the billing handoff directory', () => {
  it('is private (0700): what one process writes, the next one takes, once', () => {
    const dir = join(fresh(), 'svc.json.pending');
    expect(writeHandoff(dir, '0a1b-2c3d', [body('{"a":1}'), body('{"b":2}')])).toBe(0);
    expect(claimHandoff(dir, '4e5f-6a7b').map((b) => b.body.toString())).toEqual(['{"a":1}', '{"b":2}']);
    expect(claimHandoff(dir, '8c9d-0e1f')).toEqual([]);
  });

  it('writable by others, or a symbolic link: nothing is taken from it, nothing written to it', () => {
    const dir = join(fresh(), 'svc.json.pending');
    writeHandoff(dir, '0a1b-2c3d', [body('{"planted":1}')]);
    chmodSync(dir, 0o777);
    expect(claimHandoff(dir, '4e5f-6a7b')).toEqual([]);
    expect(readdirSync(dir)).toHaveLength(1); // left for inspection
    expect(() => writeHandoff(dir, '0a1b-2c3d', [body('{}')])).toThrow(/not private/);

    chmodSync(dir, 0o700);
    const link = join(fresh(), 'link.pending');
    symlinkSync(dir, link);
    expect(claimHandoff(link, '4e5f-6a7b')).toEqual([]);
    expect(claimHandoff(dir, '4e5f-6a7b')).toHaveLength(1);
  });

  it('a body file of another user is not sent (checked when this process runs as root, which can make one)', () => {
    const dir = join(fresh(), 'svc.json.pending');
    writeHandoff(dir, '0a1b-2c3d', [body('{"x":1}')]);
    const [name] = readdirSync(dir);
    if (process.getuid?.() === 0) {
      chownSync(join(dir, name as string), 65534, 65534);
      expect(claimHandoff(dir, '4e5f-6a7b')).toEqual([]);
      expect(readdirSync(dir).some((f) => f.includes('.claimed-4e5f-6a7b'))).toBe(true);
    } else {
      expect(claimHandoff(dir, '4e5f-6a7b')).toHaveLength(1);
    }
  });
});

describe('the state file', () => {
  const kill = {
    action: 'kill' as const,
    scope: 'customer' as const,
    id: 'acme',
    customer: 'acme',
    reason: 'operator:ops',
    untilUnixMs: 0,
  };

  it("is read when it is this user's own, ignored when others could have written it", () => {
    const file = join(fresh(), 'svc.json');
    writeState(file, { instances: [], directives: [kill] }, Date.now());
    expect(readState(file, Date.now()).directives).toHaveLength(1);
    chmodSync(file, 0o666);
    expect(readState(file, Date.now()).directives).toEqual([]);
    const planted = join(fresh(), 'planted.json');
    writeFileSync(planted, JSON.stringify({ instances: [], directives: [kill] }), { mode: 0o644 });
    expect(readState(planted, Date.now()).directives).toHaveLength(1); // own file, not writable by others
    expect(existsSync(planted)).toBe(true);
  });
});
