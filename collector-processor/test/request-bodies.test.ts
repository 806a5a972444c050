import { createHash } from 'node:crypto';
import { cpSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { gzipSync } from 'node:zlib';
import type { FastifyRequest } from 'fastify';
import { describe, expect, it } from 'vitest';
import { BodyReader } from '../src/receiver/body-reader.js';
import { Spool } from '../src/spool/spool.js';
import { captureServer } from './support/capture.js';
import { DEV_INGEST_KEY, startTestTollgate, tempDir } from './support/harness.js';
import { exportOf, toolSpan } from './support/otlp-json.js';
import { seededRandom } from './support/seeded-random.js';

// Request bodies are read into reused memory (BodyReader): a body's bytes may be written over by a later
// request's once its route releases it. These tests hold the reader to fastify's own reader, which it
// replaces, and to the one rule that keeps money safe: a body is never written over while it is held.

const LIMIT = 4 << 20;

interface Read {
  err: (Error & { code?: string; statusCode?: number }) | null;
  body?: Buffer;
}

/** A request stream as fastify hands it to a content-type parser, with the given content-length header. */
function request(length: number | undefined): { req: FastifyRequest; payload: PassThrough } {
  const payload = new PassThrough();
  const headers = length === undefined ? {} : { 'content-length': String(length) };
  return { req: { headers } as unknown as FastifyRequest, payload };
}

/** Feeds `chunks` through the reader and resolves with what it handed to `done`. */
function read(
  reader: BodyReader,
  chunks: Buffer[],
  declared: number | undefined,
  error?: Error,
): Promise<Read> {
  const { req, payload } = request(declared);
  const out = new Promise<Read>((resolve) =>
    reader.parse(req, payload as unknown as IncomingMessage, (err, body) => resolve({ err, body })),
  );
  for (const c of chunks) payload.write(c);
  if (error) payload.destroy(error);
  else payload.end();
  return out;
}

/** Whether two buffers share any byte of memory. */
const overlap = (a: Buffer, b: Buffer): boolean =>
  a.buffer === b.buffer && a.byteOffset < b.byteOffset + b.length && b.byteOffset < a.byteOffset + a.length;

/** `count` bodies of `n` bytes read and held. */
async function readHeld(reader: BodyReader, n: number, count: number): Promise<Buffer[]> {
  const out: Buffer[] = [];
  for (let i = 0; i < count; i++) out.push((await read(reader, [Buffer.alloc(n, i)], n)).body as Buffer);
  return out;
}

/** `body` cut into 1–5 pieces at random places. */
function pieces(body: Buffer, next: () => number): Buffer[] {
  const cuts = [0, body.length];
  const n = Math.floor(next() * 5);
  for (let i = 0; i < n; i++) cuts.push(Math.floor(next() * body.length));
  cuts.sort((a, b) => a - b);
  return cuts.slice(1).map((end, i) => body.subarray(cuts[i], end));
}

describe('request bodies read into reused memory', () => {
  it('are handed over byte for byte, and a held body never changes while others come and go', async () => {
    const next = seededRandom(0xb0d1);
    const reader = new BodyReader(LIMIT);
    const held: { body: Buffer; sent: Buffer }[] = [];
    const memorySeen = new Set<ArrayBufferLike>();
    let reused = 0;
    try {
      for (let step = 0; step < 1200; step++) {
        if (next() < 0.5 || held.length === 0) {
          // mostly exports of 1–300 KB; now and then one larger than a chunk's quarter, or an empty one
          const r = next();
          const n =
            r < 0.05
              ? 0
              : r < 0.1
                ? 600_000 + Math.floor(next() * 300_000)
                : 1 + Math.floor(next() * 300_000);
          const sent = Buffer.alloc(n);
          for (let i = 0; i < n; i += 997) sent[i] = Math.floor(next() * 256);
          if (n > 0) sent[n - 1] = step % 256;
          // chunked (no content-length) one time in five: gathered, then copied into one block
          const { err, body } = await read(reader, pieces(sent, next), next() < 0.2 ? undefined : n);
          expect(err).toBeNull();
          expect(body?.equals(sent)).toBe(true);
          const memory = (body as Buffer).buffer;
          if (memorySeen.has(memory) && held.every((h) => h.body.buffer !== memory)) reused++;
          memorySeen.add(memory);
          held.push({ body: body as Buffer, sent });
        } else {
          const [h] = held.splice(Math.floor(next() * held.length), 1);
          reader.release(h?.body);
          if (next() < 0.1) reader.release(h?.body); // a second release does nothing
        }
        if (step % 5 === 0) expect(held.filter((h) => !h.body.equals(h.sent)).length).toBe(0);
      }
      expect(held.filter((h) => !h.body.equals(h.sent)).length).toBe(0);
      // the memory is reused, which is the point
      expect(reused).toBeGreaterThan(20);
    } finally {
      reader.close();
    }
  });

  it('refuse what fastify refuses, with its codes, and give the memory back', async () => {
    const reader = new BodyReader(100_000);
    try {
      // a declared length over the limit: refused before anything is read
      const tooLarge = await read(reader, [], 100_001);
      expect(tooLarge.err?.code).toBe('FST_ERR_CTP_BODY_TOO_LARGE');
      expect(tooLarge.err?.statusCode).toBe(413);
      // a chunked body that grows past the limit
      const grows = await read(reader, [Buffer.alloc(60_000), Buffer.alloc(60_000)], undefined);
      expect(grows.err?.code).toBe('FST_ERR_CTP_BODY_TOO_LARGE');
      // fewer bytes than declared, and more
      const short = await read(reader, [Buffer.alloc(900)], 1000);
      expect(short.err?.code).toBe('FST_ERR_CTP_INVALID_CONTENT_LENGTH');
      expect(short.err?.statusCode).toBe(400);
      const long = await read(reader, [Buffer.alloc(1100)], 1000);
      expect(long.err?.code).toBe('FST_ERR_CTP_INVALID_CONTENT_LENGTH');
      // the client gone mid-upload: the stream's error, answered 400
      const gone = await read(reader, [Buffer.alloc(500)], 1000, new Error('aborted'));
      expect(gone.err?.message).toBe('aborted');
      expect(gone.err?.statusCode).toBe(400);

      // each refused body gave its block back: its chunk, filled up, is taken again from its start
      const reader2 = new BodyReader(1 << 20);
      const n = 400_000; // five to a 2 MiB chunk
      const declaredWrong = [
        read(reader2, [Buffer.alloc(n - 1)], n),
        read(reader2, [Buffer.alloc(n + 1)], n),
        read(reader2, [Buffer.alloc(n / 2)], n, new Error('aborted')),
      ];
      for (const r of await Promise.all(declaredWrong)) expect(r.err).not.toBeNull();
      const good = [
        await read(reader2, [Buffer.alloc(n, 1)], n),
        await read(reader2, [Buffer.alloc(n, 2)], n),
      ];
      const chunk = good[0]?.body?.buffer;
      expect(good[1]?.body?.buffer === chunk).toBe(true);
      for (const g of good) reader2.release(g.body);
      const next = await read(reader2, [Buffer.alloc(n, 3)], n);
      reader2.close();
      expect(next.body?.buffer === chunk).toBe(true); // (identity: a diff of two 2 MiB buffers would take minutes)
      expect(next.body?.byteOffset).toBe(0);
      expect(next.body?.equals(Buffer.alloc(n, 3))).toBe(true);
    } finally {
      reader.close();
    }
  });

  it('are kept until the write that reads them settles (releaseAfter), resolved or rejected', async () => {
    const n = 400_000; // five to a chunk
    // each case on a reader of its own: a reader keeps at most 8 spare chunks, and leaves the rest to the collector
    for (const outcome of ['resolve', 'reject', 'none'] as const) {
      const reader = new BodyReader(LIMIT);
      try {
        let settle: () => void = () => {};
        const written =
          outcome === 'none'
            ? undefined
            : new Promise<void>((resolve, reject) => {
                settle = outcome === 'resolve' ? resolve : () => reject(new Error('write failed'));
              });
        const held = (await read(reader, [Buffer.alloc(n, 7)], n)).body as Buffer;
        reader.releaseAfter(held, written);
        // the rest of its chunk and the next ones, read and released at once
        const others: Buffer[] = [];
        for (let i = 0; i < 12; i++) {
          const { body } = await read(reader, [Buffer.alloc(n, i)], n);
          others.push(body as Buffer);
          reader.release(body);
        }
        if (!written) {
          // nothing to wait for: released at once, and its memory taken again by the next bodies
          expect(others.some((b) => overlap(b, held))).toBe(true);
          continue;
        }
        // the held body's memory is not taken again while the write is pending
        expect(others.some((b) => overlap(b, held))).toBe(false);
        expect(held.equals(Buffer.alloc(n, 7))).toBe(true);
        settle();
        await written.catch(() => {});
        await new Promise((r) => setImmediate(r));
        // once it settled, its memory is reused: bodies held until every spare chunk is taken
        const later = await readHeld(reader, n, 60);
        expect(later.some((b) => overlap(b, held))).toBe(true);
      } finally {
        reader.close();
      }
    }
  });

  it('keep spare memory while bodies come, and give all but one chunk back when none came for a while', async () => {
    const reader = new BodyReader(LIMIT);
    try {
      const bodies: Buffer[] = [];
      for (let i = 0; i < 60; i++) {
        const { body } = await read(reader, [Buffer.alloc(200_000, i)], 200_000);
        bodies.push(body as Buffer);
      }
      for (const b of bodies) reader.release(b);
      expect(reader.spareChunks).toBeGreaterThan(1);
      reader.trimIfIdle(); // bodies were read since the last call: kept
      expect(reader.spareChunks).toBeGreaterThan(1);
      reader.trimIfIdle(); // none since: trimmed
      expect(reader.spareChunks).toBe(1);
    } finally {
      reader.close();
    }
  });
});

/** `bufs` as a sorted list of their digests, to compare two collections of bodies whatever their order. */
const asSet = (bufs: readonly Buffer[]): string[] =>
  bufs.map((b) => createHash('sha256').update(b).digest('hex')).sort();

describe('a Tollgate reading bodies into reused memory', () => {
  it('writes every record and forwards every export with the bytes it received, under concurrent exports', async () => {
    // a slow downstream: the forwarder's queue holds exports while later requests' bodies are read
    const downstream = await captureServer(30);
    // nothing lands during the test (no flush for 10 minutes), so every accepted record stays in the spool
    const tg = await startTestTollgate({
      '--forward-endpoint': `${downstream.url}/v1/traces`,
      '--landing-flush-ms': '600000',
      '--landing-batch-rows': '1000000',
    });
    try {
      const next = seededRandom(0x5b0d);
      const json = (spans: unknown[]) => Buffer.from(JSON.stringify(exportOf(spans)));
      let token = 0;
      const billed = (n: number) =>
        json(Array.from({ length: n }, () => toolSpan({ attrs: { 'gen_ai.usage.input_tokens': ++token } })));
      // 400 calls ≈ 240 KB, eight to a chunk of reused memory: an early record (written while decoding); 5 calls: a
      // record written after decoding
      const large = Array.from({ length: 32 }, () => billed(400));
      const small = Array.from({ length: 8 }, () => billed(5));
      const inflated = Array.from({ length: 8 }, () => billed(400));
      // no billable span: nothing to stamp, so the forwarder is handed the body itself
      const unbilled = Array.from({ length: 32 }, (_, i) =>
        json(
          Array.from({ length: 400 }, () => ({
            ...toolSpan(),
            attributes: [{ key: 'http.route', value: { stringValue: `/health/${i}/${++token}` } }],
          })),
        ),
      );
      // ≥ 32 KB: an early record is written, then decoding fails and the record is abandoned
      const undecodable = Array.from({ length: 12 }, (_, i) =>
        Buffer.from(`{"resourceSpans": [${'7'.repeat(40_000 + i)}`),
      );
      const sends: { body: Buffer; gzip: boolean; status: number }[] = [
        ...[...large, ...small, ...unbilled].map((body) => ({ body, gzip: false, status: 200 })),
        ...inflated.map((body) => ({ body, gzip: true, status: 200 })),
        ...undecodable.map((body) => ({ body, gzip: false, status: 400 })),
      ];
      for (let i = sends.length - 1; i > 0; i--) {
        const j = Math.floor(next() * (i + 1));
        [sends[i], sends[j]] = [sends[j] as (typeof sends)[number], sends[i] as (typeof sends)[number]];
      }
      const statuses: number[] = [];
      let at = 0;
      const sender = async () => {
        while (at < sends.length) {
          const s = sends[at++] as (typeof sends)[number];
          const res = await fetch(`${tg.otlpUrl}/v1/traces`, {
            method: 'POST',
            headers: {
              'content-type': 'application/json',
              authorization: `Bearer ${DEV_INGEST_KEY}`,
              ...(s.gzip ? { 'content-encoding': 'gzip' } : {}),
            },
            body: s.gzip ? gzipSync(s.body) : s.body,
          });
          await res.arrayBuffer();
          statuses.push(res.status);
          expect(res.status).toBe(s.status);
        }
      };
      await Promise.all(Array.from({ length: 8 }, sender));
      expect(statuses).toHaveLength(sends.length);

      // the forwarder: every answered export, the unbilled ones byte for byte, the billed ones with their calls
      const answered = large.length + small.length + inflated.length + unbilled.length;
      const deadline = Date.now() + 15_000;
      while (downstream.bodies.length < answered && Date.now() < deadline)
        await new Promise((r) => setTimeout(r, 20));
      expect(downstream.bodies).toHaveLength(answered);
      const forwardedUnbilled = downstream.bodies
        .map((c) => c.body)
        .filter((b) => !b.includes('tollgate.price'));
      expect(asSet(forwardedUnbilled)).toEqual(asSet(unbilled));
      const spanIds = (body: Buffer) =>
        (JSON.parse(body.toString()) as ReturnType<typeof exportOf>).resourceSpans.flatMap((r) =>
          r.scopeSpans.flatMap((sc) => sc.spans.map((sp) => (sp as { spanId: string }).spanId)),
        );
      const forwardedBilled = downstream.bodies
        .map((c) => c.body)
        .filter((b) => b.includes('tollgate.price'));
      expect(forwardedBilled.map((b) => spanIds(b).sort().join()).sort()).toEqual(
        [...large, ...small, ...inflated].map((b) => spanIds(b).sort().join()).sort(),
      );

      // the spool: every billed export's record holds the (inflated) body it was written for, once; the
      // abandoned records are gone once their markers are written (a copy of the directory, read as a restart would)
      const valid = asSet([...large, ...small, ...inflated]);
      let payloads: string[] = [];
      while (Date.now() < deadline + 15_000) {
        const copy = tempDir('tollgate-spool-copy-');
        cpSync(join(tg.dataDir, 'spool'), copy, { recursive: true });
        const { spool, recovered } = await Spool.open({ dir: copy, fsync: false, segmentBytes: 64 << 20 });
        await spool.close();
        payloads = asSet(recovered.accepted.map((r) => r.payload));
        if (payloads.length === valid.length) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(payloads).toEqual(valid);
    } finally {
      await tg.cleanup();
      await downstream.close();
    }
  });
});
