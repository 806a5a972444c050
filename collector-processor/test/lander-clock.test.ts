import { afterEach, describe, expect, it, vi } from 'vitest';
import { createLogger } from '../src/app.js';
import { Lander } from '../src/landing/lander.js';
import type { TsvWriter } from '../src/landing/tsv.js';
import { createMetrics } from '../src/metrics.js';
import { Spool } from '../src/spool/spool.js';
import type { LandingInserter } from '../src/storage/clickhouse.js';
import { tempDir } from './support/harness.js';
import { BASE_RATED_CALL } from './support/rated-call.js';

/**
 * The lander flushed on the wall clock: after a step back (NTP, a VM resumed, an operator's `date`) the next
 * flush waited for the size of the step (an hour's step: rows unlanded for an hour), and a step of more than
 * 24.8 days made it retry every millisecond, since Node clamps such a timer to 1 ms. It now keeps time on
 * the monotonic clock. The inserter here records blocks instead of inserting them: what is under test is when
 * the lander sends them.
 */
afterEach(() => {
  vi.useRealTimers();
});

describe('the lander after the wall clock stepped back', () => {
  for (const stepMs of [3_600_000, 40 * 86_400_000]) {
    it(`flushes on time after a step of ${stepMs / 3_600_000} h`, async () => {
      const { spool } = await Spool.open({
        dir: tempDir('tollgate-lander-clock-'),
        fsync: false,
        segmentBytes: 1 << 20,
      });
      const inserted: number[] = [];
      const inserter: LandingInserter = {
        landingFormat: 'TabSeparated',
        async insertTsv() {
          inserted.push(Date.now());
        },
      };
      const lander = new Lander(
        inserter,
        spool,
        { batchRows: 1_000, flushIntervalMs: 50, blockPrefix: 'clock' },
        createLogger('silent'),
        createMetrics(),
      );
      lander.start();
      await new Promise((r) => setTimeout(r, 20));
      vi.useFakeTimers({ toFake: ['Date'], now: Date.now() - stepMs, shouldAdvanceTime: true });
      await spool.appendAccepted({
        t: 'a',
        rid: 'r1',
        product: 'p',
        planVersion: 'v',
        receivedAtMs: Date.now(),
        format: 'calls-json',
        payload: Buffer.from('[]'),
      });
      lander.enqueue('r1', Buffer.from('one row\n'), 1);
      const warnings: string[] = [];
      const onWarning = (w: Error) => warnings.push(w.name);
      process.on('warning', onWarning);
      try {
        await lander.idle(2_000); // one flush interval is 50 ms
        expect(inserted).toHaveLength(1);
        expect(warnings).not.toContain('TimeoutOverflowWarning');
      } finally {
        process.off('warning', onWarning);
        await lander.stop(1_000);
        await spool.close();
      }
    });
  }
});

describe("the lander's spare room", () => {
  it('keeps spare chunks while records come, and gives all but one back after 5 s with nothing queued', async () => {
    const { spool } = await Spool.open({
      dir: tempDir('tollgate-lander-spare-'),
      fsync: false,
      segmentBytes: 1 << 22,
    });
    // The inserts wait until every record is queued: a record's chunk is free once its block is inserted, and
    // with inserts that kept up (records made more slowly than 20 ms apart, as on a loaded CI machine) one
    // chunk was reused over and over, so there was no spare room to keep and the test failed on timing.
    let openInserts: () => void = () => {};
    const insertsOpen = new Promise<void>((resolve) => {
      openInserts = resolve;
    });
    const inserter: LandingInserter = {
      landingFormat: 'TabSeparated',
      async insertTsv() {
        await insertsOpen;
      },
    };
    const lander = new Lander(
      inserter,
      spool,
      { batchRows: 1_000_000, flushIntervalMs: 20, blockPrefix: 'spare' },
      createLogger('silent'),
      createMetrics(),
    );
    vi.useFakeTimers({ toFake: ['performance'], shouldAdvanceTime: true });
    lander.start();
    try {
      // 40 records of 300 KB: about six 2 MiB chunks, given back as their landing blocks are inserted
      const w = lander.createWriter() as TsvWriter;
      for (let r = 0; r < 40; r++) {
        const rid = `spare-${r}`;
        await spool.appendAccepted({
          t: 'a',
          rid,
          product: 'p',
          planVersion: 'v',
          receivedAtMs: 0,
          format: 'calls-json',
          payload: Buffer.from('[]'),
        });
        w.add({ ...BASE_RATED_CALL, instanceId: 'i'.repeat(300_000) });
        lander.enqueue(rid, w.take(), 1);
      }
      openInserts();
      await lander.idle(5_000);
      expect(lander.spareChunks).toBeGreaterThan(1);
      expect(lander.spareChunks).toBeLessThanOrEqual(8);
      // nothing more comes: a few loops later than 5 s, one spare chunk is left
      vi.advanceTimersByTime(5_100);
      await new Promise((r) => setTimeout(r, 100));
      expect(lander.spareChunks).toBe(1);
    } finally {
      vi.useRealTimers();
      await lander.stop(1_000);
      await spool.close();
    }
  });
});
