import { describe, expect, it } from 'vitest';
import { createLogger } from '../src/app.js';
import { Lander } from '../src/landing/lander.js';
import { createMetrics } from '../src/metrics.js';
import { Spool } from '../src/spool/spool.js';
import type { LandingInserter } from '../src/storage/clickhouse.js';
import { tempDir } from './support/harness.js';

/**
 * A full disk (ENOSPC) when the lander wrote a block's intent or done marker rejected the landing loop's
 * promise, and nothing caught it: the process died, and died again at every start while the disk stayed
 * full (the exports themselves got a clean 503). The lander now tries the write again with backoff, and the
 * block lands once the disk has room: its insert after its intent, its done marker after its insert.
 */
describe('the lander on a full disk', () => {
  it('tries the intent and the done marker again until they are written; the block lands once', async () => {
    const { spool } = await Spool.open({
      dir: tempDir('tollgate-lander-full-'),
      fsync: false,
      segmentBytes: 1 << 20,
    });
    const full = () => Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
    const failures = { intent: 3, done: 2 };
    const steps: string[] = [];
    const appendIntent = spool.appendIntent.bind(spool);
    const appendDone = spool.appendDone.bind(spool);
    spool.appendIntent = async (rec) => {
      if (failures.intent-- > 0) throw full();
      await appendIntent(rec);
      steps.push('intent');
    };
    spool.appendDone = async (bid, rids) => {
      if (failures.done-- > 0) throw full();
      await appendDone(bid, rids);
      steps.push('done');
    };
    const inserter: LandingInserter = {
      landingFormat: 'TabSeparated',
      async insertTsv() {
        steps.push('insert');
      },
    };
    const metrics = createMetrics();
    const lander = new Lander(
      inserter,
      spool,
      { batchRows: 1, flushIntervalMs: 20, blockPrefix: 'full' },
      createLogger('silent'),
      metrics,
    );
    lander.start();
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
    try {
      await lander.idle(10_000);
      expect(steps).toEqual(['intent', 'insert', 'done']);
      expect(spool.pendingRecords).toBe(0);
      expect((await metrics.landingErrors.get()).values[0]?.value).toBe(5);
    } finally {
      await lander.stop(1_000);
      await spool.close();
    }
  });
});
