import { appendFileSync, existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { OwedLog } from '../src/redis/owed-log.js';
import { tempDir } from './support/harness.js';
import { BASE_RATED_CALL } from './support/rated-call.js';

const silent = pino({ level: 'silent' });

const claim = (customer: string, n = 2) => ({
  k: 'claim' as const,
  product: 'demo-mcp',
  customer,
  rid: `rid-${customer}`,
  inputs: Array.from({ length: n }, (_, i) => ({
    call: { eventId: `${customer}-${i}`, tool: 't', customer },
    period: '2026-12',
    day: '2026-12-07',
    counts: true,
  })),
  rows: Array.from({ length: n }, (_, i) => ({ ...BASE_RATED_CALL, eventId: `${customer}-${i}`, customer })),
  nowMs: 1_796_000_000_000,
});

describe('the owed-calls file', () => {
  it('restores the items not marked done, with their money as bigints', async () => {
    const path = join(tempDir(), 'owed-calls.jsonl');
    const log = new OwedLog(path, silent);
    const a = log.append(claim('a'));
    const b = log.append(claim('b', 3));
    log.append({
      k: 'step',
      product: 'demo-mcp',
      rid: 'r',
      marker: 'r|2026-12|2026-12-07',
      g: { customer: 'c', period: '2026-12', day: '2026-12-07' },
      rows: claim('c').rows,
      now: 1,
    });
    log.done(a as string);
    const back = await new OwedLog(path, silent).read();
    expect(back.map((e) => (e.k === 'claim' ? e.customer : 'step'))).toEqual(['b', 'step']);
    expect(back[0]?.id).toBe(b);
    const row = back[0]?.rows[0] as { priceNano: bigint };
    expect(row.priceNano).toBe(BASE_RATED_CALL.priceNano);
    log.clear();
    expect(existsSync(path)).toBe(false);
  });

  it('skips torn lines and lines that are not items; a file it cannot read restores nothing, and start goes on', async () => {
    const path = join(tempDir(), 'owed-calls.jsonl');
    const log = new OwedLog(path, silent);
    log.append(claim('kept'));
    // positions: with their bigints, kept; one fewer than the inputs, or not numbers, the line is skipped
    const at = { status: 1, toolOrdinal: 4, planOrdinal: 9, usageBefore: [null, 5n] };
    log.append({ ...claim('positioned'), positions: [at, at] });
    log.append({ ...claim('short'), positions: [at] });
    log.append({ ...claim('nan'), positions: [at, { ...at, planOrdinal: 'x' }] });
    appendFileSync(
      path,
      'null\n{"k":"claim","id":"x"}\n{"k":"claim","id":"y","product":"p","customer":"c","rid":"r","nowMs":1,"inputs":[{}],"rows":[]}\n{"k":"step","id":"z","product":"p","rid":"r","marker":"m","now":1,"g":{},"rows":[{}]}\n{"k":"cla',
    );
    const back = await new OwedLog(path, silent).read();
    expect(back.map((e) => (e.k === 'claim' ? e.customer : e.k))).toEqual(['kept', 'positioned']);
    expect(back[1]?.k === 'claim' && back[1].positions).toEqual([at, at]);
    const dir = join(tempDir(), 'owed-calls.jsonl');
    mkdirSync(dir);
    expect(await new OwedLog(dir, silent).read()).toEqual([]);
  });

  it('stops writing items past its size (they are settled by the process, not kept for the next start)', async () => {
    const path = join(tempDir(), 'owed-calls.jsonl');
    const log = new OwedLog(path, silent, 4096);
    const ids: (string | undefined)[] = [];
    for (let i = 0; i < 50; i++) ids.push(log.append(claim(`c${i}`)));
    expect(ids.filter(Boolean).length).toBeLessThan(50);
    expect(ids.at(-1)).toBeUndefined();
    expect(statSync(path).size).toBeLessThan(4096 + 4096);
    expect(readFileSync(path, 'utf8').split('\n').filter(Boolean).length).toBe(ids.filter(Boolean).length);
  });
});
