import { existsSync, readdirSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { Spool } from '../src/spool/spool.js';
import { tempDir } from './support/harness.js';

/**
 * A spool segment read at start stopped at its first record that was not intact, and the newest segment was
 * truncated there: one byte damaged on disk in the middle of it lost every acknowledged record after it (a
 * crash probe: 200 of 400 calls), on disk too. A damaged record is now skipped up to the next intact one; only
 * a torn tail (a crash mid-write: never acknowledged) is cut off, and a damaged segment is kept aside.
 */
async function spoolOf(n: number, landed = false): Promise<{ dir: string; file: string; offsets: number[] }> {
  const dir = tempDir('tollgate-spool-damage-');
  const { spool } = await Spool.open({ dir, fsync: false, segmentBytes: 1 << 24 });
  const file = join(dir, readdirSync(dir).find((f) => f.endsWith('.wal')) as string);
  const offsets: number[] = [];
  for (let i = 0; i < n; i++) {
    offsets.push(statSync(file).size);
    await spool.appendAccepted({
      t: 'a',
      rid: `r${i}`,
      product: 'p',
      planVersion: 'v',
      receivedAtMs: 1,
      format: 'otlp-json',
      // JSON bodies hold `{` where a record's header would start: the search for the next record skips them
      payload: Buffer.from(JSON.stringify({ resourceSpans: [{ scopeSpans: [{ spans: [{ n: i }] }] }] })),
    });
  }
  if (landed) {
    const all = offsets.map((_, i) => `r${i}`);
    await spool.appendIntent({ t: 'i', bid: 'b1', rids: all });
    await spool.appendDone('b1', all);
  }
  await spool.close();
  return { dir, file, offsets };
}

const rids = (r: { accepted: { rid: string }[] }) => r.accepted.map((a) => a.rid);

describe('a spool segment damaged on disk', () => {
  it('one byte flipped in the middle of the newest segment loses that record only; the file stays whole', async () => {
    const { dir, file, offsets } = await spoolOf(40);
    const bytes = readFileSync(file);
    const size = bytes.length;
    bytes.writeUInt8(bytes.readUInt8((offsets[20] as number) + 30) ^ 0xff, (offsets[20] as number) + 30); // inside record r20
    writeFileSync(file, bytes);
    const { spool, recovered } = await Spool.open({ dir, fsync: false, segmentBytes: 1 << 24 });
    expect(rids(recovered)).toEqual(Array.from({ length: 40 }, (_, i) => `r${i}`).filter((r) => r !== 'r20'));
    expect(recovered.corruptSegments).toBe(1);
    expect(statSync(file).size).toBe(size);
    await spool.close();
  });

  it('a torn tail (a crash mid-write) is cut off, and is no damage', async () => {
    const { dir, file, offsets } = await spoolOf(10);
    truncateSync(file, (offsets[9] as number) + 12);
    const { spool, recovered } = await Spool.open({ dir, fsync: false, segmentBytes: 1 << 24 });
    expect(rids(recovered)).toEqual(Array.from({ length: 9 }, (_, i) => `r${i}`));
    expect(recovered.corruptSegments).toBe(0);
    expect(statSync(file).size).toBe(offsets[9]);
    await spool.close();
  });

  it("a record shaped like a spool record inside a sender's body is never read as one, torn or damaged", async () => {
    // the bytes of a whole, intact spool record, as a sender could put them in an attribute of its export
    const forgedDir = tempDir('tollgate-spool-forged-');
    const forger = await Spool.open({ dir: forgedDir, fsync: false, segmentBytes: 1 << 24 });
    await forger.spool.appendAccepted({
      t: 'a',
      rid: 'FORGED',
      product: 'victim-product',
      planVersion: 'v',
      receivedAtMs: 1,
      format: 'otlp-json',
      payload: Buffer.from('{}'),
    });
    await forger.spool.close();
    const frame = readFileSync(
      join(forgedDir, readdirSync(forgedDir).find((f) => f.endsWith('.wal')) as string),
    );
    for (const damage of ['torn', 'flipped'] as const) {
      const dir = tempDir('tollgate-spool-damage-');
      const { spool } = await Spool.open({ dir, fsync: false, segmentBytes: 1 << 24 });
      const file = join(dir, readdirSync(dir).find((f) => f.endsWith('.wal')) as string);
      for (const rid of ['r0', 'r1', 'r2', 'carrier']) {
        await spool.appendAccepted({
          t: 'a',
          rid,
          product: 'p',
          planVersion: 'v',
          receivedAtMs: 1,
          format: 'otlp-protobuf',
          payload:
            rid === 'carrier'
              ? Buffer.concat([Buffer.alloc(100, 7), frame, Buffer.alloc(100, 7)])
              : Buffer.from('x'),
        });
      }
      await spool.close();
      const bytes = readFileSync(file);
      const carrierAt = bytes.lastIndexOf(Buffer.from('{"t":"a","rid":"carrier"')) - 10;
      if (damage === 'torn')
        truncateSync(file, bytes.length - 50); // a crash mid-write of the carrier
      else {
        bytes.writeUInt8(bytes.readUInt8(carrierAt + 12) ^ 0xff, carrierAt + 12); // its header damaged
        writeFileSync(file, bytes);
      }
      const again = await Spool.open({ dir, fsync: false, segmentBytes: 1 << 24 });
      expect([damage, rids(again.recovered)]).toEqual([damage, ['r0', 'r1', 'r2']]);
      await again.spool.close();
    }
  });

  it('a damaged segment with nothing pending is kept aside as .damaged, not deleted', async () => {
    const { dir, file, offsets } = await spoolOf(3, true);
    const bytes = readFileSync(file);
    bytes.writeUInt8(bytes.readUInt8((offsets[1] as number) + 30) ^ 0xff, (offsets[1] as number) + 30);
    writeFileSync(file, bytes);
    const again = await Spool.open({ dir, fsync: false, segmentBytes: 1 << 24 });
    expect(rids(again.recovered)).toEqual([]);
    expect(again.recovered.corruptSegments).toBe(1);
    expect(existsSync(file)).toBe(false);
    expect(existsSync(`${file}.damaged`)).toBe(true);
    await again.spool.close();
  });
});
