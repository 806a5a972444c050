import { constants, readdirSync, readFileSync, readlinkSync, statSync, truncateSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitFor } from '../../instrumentation/test/support/mcp.js';
import { type AcceptedRecord, inspectSpool, Spool, writeAll } from '../src/spool/spool.js';
import {
  DEV_INGEST_KEY,
  query,
  readMetrics,
  startTestTollgate,
  type TestTollgate,
  tempDir,
} from './support/harness.js';
import { exportOf, toolSpan } from './support/otlp-json.js';

/**
 * A large export's spool record is written while its body is decoded (Pipeline.beginRecord), and spool
 * segments are opened with O_DSYNC so that one write on libuv's pool makes a record durable. These tests
 * hold the mechanism to what the spool promised before it: an acknowledged export is durable and lands once;
 * an export refused after its record was written leaves nothing to replay; and what a stopped process left
 * of such records is dropped at start, not reported as a record that cannot be replayed.
 */

/** The open flags of this process's descriptors on `path` (/proc/self/fdinfo). */
function openFlags(path: string): number[] {
  const out: number[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    let target: string;
    try {
      target = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue;
    }
    if (target !== path) continue;
    const flags = /^flags:\s+([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
    if (flags) out.push(Number.parseInt(flags[1] as string, 8));
  }
  return out;
}

const spoolText = (dataDir: string): string =>
  readdirSync(join(dataDir, 'spool'))
    .map((f) => readFileSync(join(dataDir, 'spool', f), 'latin1'))
    .join('');

const post = (tg: TestTollgate, body: Buffer | string, contentType: string) =>
  fetch(`${tg.otlpUrl}/v1/traces`, {
    method: 'POST',
    headers: { 'content-type': contentType, authorization: `Bearer ${DEV_INGEST_KEY}` },
    body,
  });

/** How long the tests wait for the spool and the lander to catch up. */
const WAIT_MS = 10_000;

/** A protobuf body whose first field's length runs past its end, padded to `size` bytes. */
const undecodable = (size: number): Buffer => {
  const b = Buffer.alloc(size, 0x41);
  b[0] = 0x0a;
  b[1] = 0xff;
  b[2] = 0xff;
  b[3] = 0xff;
  b[4] = 0x7f;
  return b;
};

describe('spool segments', () => {
  it.skipIf(process.platform !== 'linux')(
    'are opened with O_DSYNC when fsync is on, and without it when off',
    async () => {
      for (const fsync of [true, false]) {
        const dir = tempDir('tollgate-spool-dsync-');
        const { spool } = await Spool.open({ dir, fsync, segmentBytes: 1 << 20 });
        try {
          const seg = join(dir, readdirSync(dir)[0] as string);
          const flags = openFlags(seg);
          expect(flags).toHaveLength(1);
          expect(((flags[0] as number) & constants.O_DSYNC) !== 0).toBe(fsync);
          await spool.appendAccepted({
            t: 'a',
            rid: 'r1',
            product: 'p',
            planVersion: 'v',
            receivedAtMs: 0,
            format: 'calls-json',
            payload: Buffer.from('[]'),
          });
          expect(inspectSpool(dir).pendingRecords).toBe(1);
        } finally {
          await spool.close();
        }
      }
    },
  );
});

describe('spool records written in parts', () => {
  it('a write that takes fewer bytes than asked goes on where it stopped', async () => {
    const written: Buffer[] = [];
    const handle = {
      // at most 7 bytes per call, as a file system may
      writev: async (bufs: Buffer[]) => {
        let room = 7;
        for (const b of bufs) {
          const n = Math.min(room, b.length);
          written.push(Buffer.from(b.subarray(0, n)));
          room -= n;
          if (!room) break;
        }
        return { bytesWritten: 7 - room, buffers: bufs };
      },
    } as unknown as FileHandle;
    const parts = [
      Buffer.from('header-part'),
      Buffer.alloc(0),
      Buffer.from('a payload of some length'),
      Buffer.from('x'),
    ];
    expect(await writeAll(handle, parts)).toBe(36);
    expect(Buffer.concat(written).toString()).toBe(Buffer.concat(parts).toString());
  });

  it('read back whole after a restart, and a torn last record is cut off', async () => {
    const dir = tempDir('tollgate-spool-parts-');
    const payloads = [Buffer.alloc(0), Buffer.from('{"a":1}'), Buffer.alloc(300_000, 7), Buffer.from('last')];
    const recs: AcceptedRecord[] = payloads.map((payload, i) => ({
      t: 'a',
      rid: `r${i}`,
      product: 'p',
      planVersion: 'v',
      receivedAtMs: i,
      format: 'calls-json',
      payload,
    }));
    const first = await Spool.open({ dir, fsync: true, segmentBytes: 1 << 30 });
    // the first two queued together (one group write), the others one by one
    await Promise.all([first.spool.appendAccepted(recs[0]!), first.spool.appendAccepted(recs[1]!)]);
    for (const r of recs.slice(2)) await first.spool.appendAccepted(r);
    await first.spool.close();
    const again = await Spool.open({ dir, fsync: true, segmentBytes: 1 << 30 });
    await again.spool.close();
    expect(again.recovered.accepted.map((r) => [r.rid, r.payload.toString('hex')])).toEqual(
      recs.map((r) => [r.rid, r.payload.toString('hex')]),
    );
    // a crash in the middle of the last write: the record is cut off, the others stay
    const seg = join(dir, readdirSync(dir).sort()[0] as string);
    truncateSync(seg, statSync(seg).size - 2);
    const torn = await Spool.open({ dir, fsync: true, segmentBytes: 1 << 30 });
    await torn.spool.close();
    expect(torn.recovered.accepted.map((r) => r.rid)).toEqual(['r0', 'r1', 'r2']);
  });
});

describe('a large export, written while it is decoded', () => {
  let tg: TestTollgate;
  beforeAll(async () => {
    tg = await startTestTollgate();
  });
  afterAll(async () => {
    await tg?.cleanup();
  });

  it('is acknowledged once durable and lands once; a small one is written after decoding', async () => {
    const customer = 'early-large';
    const spans = Array.from({ length: 150 }, () => toolSpan({ customer, tool: 'lookup' }));
    const body = JSON.stringify(exportOf(spans));
    expect(body.length).toBeGreaterThan(32 * 1024);
    expect((await post(tg, body, 'application/json')).status).toBe(200);
    // the record was written before decoding: the segment holds it marked as such
    expect(spoolText(tg.dataDir).split('"early":true').length - 1).toBe(1);
    const small = JSON.stringify(exportOf([toolSpan({ customer, tool: 'lookup' })]));
    expect((await post(tg, small, 'application/json')).status).toBe(200);
    expect(spoolText(tg.dataDir).split('"early":true').length - 1).toBe(1);
    // a retry of the large export is a duplicate of it
    expect((await post(tg, body, 'application/json')).status).toBe(200);
    await tg.lander!.idle();
    const rows = await query(tg, 'SELECT count() n FROM mcp_tool_calls WHERE customer = {c:String}', {
      c: customer,
    });
    expect(rows[0]?.n).toBe('151');
    await waitFor(
      'every record landed or given up',
      () => inspectSpool(join(tg.dataDir, 'spool')).pendingRecords === 0,
      WAIT_MS,
    );
  });

  it('refused as undecodable, leaves nothing in the spool to replay', async () => {
    const res = await post(tg, undecodable(64 * 1024), 'application/x-protobuf');
    expect(res.status).toBe(400);
    // a protobuf request gets a google.rpc.Status, whose message names the code
    expect(Buffer.from(await res.arrayBuffer()).toString('latin1')).toContain('TG_UNDECODABLE');
    await waitFor(
      'the refused record given up',
      () => inspectSpool(join(tg.dataDir, 'spool')).pendingRecords === 0,
      WAIT_MS,
    );
  });

  it('with no billable call, leaves nothing in the spool to replay', async () => {
    const spans = Array.from({ length: 150 }, () =>
      toolSpan({ customer: 'early-none', attrs: { 'mcp.method.name': 'tools/list' } }),
    );
    const body = JSON.stringify(exportOf(spans));
    expect(body.length).toBeGreaterThan(32 * 1024);
    expect((await post(tg, body, 'application/json')).status).toBe(200);
    await waitFor(
      'the empty record given up',
      () => inspectSpool(join(tg.dataDir, 'spool')).pendingRecords === 0,
      WAIT_MS,
    );
  });
});

describe('early records left by a process that stopped before their abandon marker', () => {
  it('are dropped at start when refused or empty; a billable one lands once; others are still reported', async () => {
    const dataDir = tempDir('tollgate-early-replay-');
    const customer = 'early-replay';
    const billable = Array.from({ length: 3 }, () => toolSpan({ customer, tool: 'lookup' }));
    const rec = (rid: string, format: AcceptedRecord['format'], payload: Buffer, early: boolean) => ({
      t: 'a' as const,
      rid,
      product: 'demo-mcp',
      planVersion: 'gone',
      receivedAtMs: Date.now(),
      format,
      payload,
      ...(early ? { early: true as const } : {}),
    });
    const { spool } = await Spool.open({ dir: join(dataDir, 'spool'), fsync: true, segmentBytes: 1 << 20 });
    await spool.appendAccepted(rec('early-refused', 'otlp-protobuf', undecodable(40_000), true));
    const none = exportOf([toolSpan({ customer, attrs: { 'mcp.method.name': 'tools/list' } })]);
    await spool.appendAccepted(rec('early-empty', 'otlp-json', Buffer.from(JSON.stringify(none)), true));
    await spool.appendAccepted(
      rec('early-billable', 'otlp-json', Buffer.from(JSON.stringify(exportOf(billable))), true),
    );
    await spool.appendAccepted(rec('late-poison', 'otlp-protobuf', undecodable(100), false));
    await spool.close();

    const tg = await startTestTollgate({ '--data-dir': dataDir });
    try {
      const landed = async () =>
        (
          await query(tg, 'SELECT count() n FROM mcp_tool_calls WHERE customer = {c:String}', { c: customer })
        )[0]?.n;
      await waitFor(
        'the billable record landed',
        async () => {
          await tg.lander!.idle();
          return (await landed()) === '3';
        },
        WAIT_MS,
      );
      // only the record written after decoding, whose body no longer decodes, is a replay failure
      await waitFor(
        'the replay done',
        async () => inspectSpool(join(dataDir, 'spool')).pendingRecords === 1,
        WAIT_MS,
      );
      expect((await readMetrics(tg.apiUrl!)).get('tollgate_spool_replay_failures_total')).toBe(1);
      expect(await landed()).toBe('3');
    } finally {
      await tg.cleanup();
    }
  });
});
