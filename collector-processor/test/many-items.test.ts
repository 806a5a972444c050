import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  MAX_GROUPS_PER_EXPORT,
  MAX_JSON_CONTAINERS,
  MAX_JSON_ITEMS,
  MAX_SPANS_PER_EXPORT,
} from '../src/otlp/decoded.js';
import { MAX_EVENTS_PER_REQUEST, MAX_PROBLEM_LINES } from '../src/receiver/server.js';
import { DEV_INGEST_KEY, startTestTollgate, type TestTollgate } from './support/harness.js';

/**
 * Requests within the byte limits that hold too many items: a few kilobytes of gzip inflate to 64 MiB of
 * `{},{},…` — twenty million spans or events, whose objects alone exhausted V8's heap (an abort no handler
 * can catch; the export's spool record, written while its body was decoded, then crashed every restart's
 * replay too). Each is refused with 413 TG_TOO_MANY_ITEMS before it can take the memory, and the server
 * goes on serving.
 */

let tg: TestTollgate;
beforeAll(async () => {
  tg = await startTestTollgate();
}, 60_000);
afterAll(async () => {
  await tg?.cleanup();
});

async function post(
  path: string,
  body: Buffer,
  contentType: string,
  gzip: boolean,
): Promise<{ status: number; text: string }> {
  const res = await fetch(`${tg.otlpUrl}${path}`, {
    method: 'POST',
    headers: {
      authorization: `Bearer ${DEV_INGEST_KEY}`,
      'content-type': contentType,
      ...(gzip ? { 'content-encoding': 'gzip' } : {}),
    },
    body: gzip ? gzipSync(body) : body,
  });
  return { status: res.status, text: await res.text() };
}

/** An OTLP/JSON export whose one scope holds `n` empty spans. */
function emptySpansJson(n: number): Buffer {
  return Buffer.from(`{"resourceSpans":[{"scopeSpans":[{"spans":[${'{},'.repeat(n - 1)}{}]}]}]}`);
}

/** The protobuf of the same: ResourceSpans(1) › ScopeSpans(2) › n × Span(2) of no bytes. */
function emptySpansProtobuf(n: number): Buffer {
  return field(1, field(2, emptyFields(2, n)));
}

/** `n` times the two bytes of an empty length-delimited `field`. */
function emptyFields(no: number, n: number): Buffer {
  const items = Buffer.alloc(2 * n);
  for (let i = 0; i < n; i++) items[2 * i] = (no << 3) | 2;
  return items;
}

/** `bytes` as the length-delimited field `no`. */
function field(no: number, bytes: Buffer): Buffer {
  const len: number[] = [];
  let v = bytes.length;
  for (; v >= 0x80; v = Math.floor(v / 128)) len.push((v % 128) | 0x80);
  len.push(v);
  return Buffer.concat([Buffer.from([(no << 3) | 2, ...len]), bytes]);
}

async function stillServing(): Promise<void> {
  expect((await fetch(`${tg.apiUrl}/healthz`)).status).toBe(200);
  // and still bills: one real span is accepted
  const ok = await post(
    '/v1/traces',
    Buffer.from(JSON.stringify({ resourceSpans: [] })),
    'application/json',
    false,
  );
  expect(ok.status).toBe(200);
}

describe('a request that holds too many items gets 413 TG_TOO_MANY_ITEMS, and the server goes on', () => {
  it('20 million empty JSON spans in 58 KB of gzip: refused before they are parsed', async () => {
    const body = Buffer.from(
      `{"resourceSpans":[{"scopeSpans":[{"spans":[${'{},'.repeat(20_000_000 - 1)}{}]}]}]}`,
    );
    const r = await post('/v1/traces', body, 'application/json', true);
    expect(r.status).toBe(413);
    expect(JSON.parse(r.text)).toEqual({
      code: 8,
      message: `TG_TOO_MANY_ITEMS: the request holds more spans, events or JSON values than one request may: the export holds more than ${MAX_JSON_CONTAINERS} JSON objects and arrays: split it`,
    });
    await stillServing();
  }, 60_000);

  it('millions of plain values in a little gzip (no objects or arrays to count): refused before they are parsed', async () => {
    // 64 MiB of `1,1,…` held the main thread in JSON.parse for a second and took the process past 1.2 GB
    const ones = `${'1,'.repeat(MAX_JSON_ITEMS)}1`;
    for (const [path, body] of [
      ['/v1/traces', `{"resourceSpans":[],"pad":[${ones}]}`],
      ['/v1/ingest/batch', `[${ones}]`],
      ['/v1/leases', `{"instanceId":"i","requests":[${ones}]}`],
    ] as const) {
      const r = await post(path, Buffer.from(body), 'application/json', true);
      expect([path, r.status]).toEqual([path, 413]);
      expect(r.text).toContain(`more than ${MAX_JSON_ITEMS} JSON objects, arrays and values`);
    }
    await stillServing();
  }, 120_000);

  it('30 million empty scope spans in 58 KB of gzip, or a million and one empty resource spans: refused at the bound', async () => {
    // each empty group cost a loop's turn and objects: the 30 million held the main thread for 27 s
    for (const body of [field(1, emptyFields(2, 30_000_000)), emptyFields(1, MAX_GROUPS_PER_EXPORT + 1)]) {
      const r = await post('/v1/traces', body, 'application/x-protobuf', true);
      expect(r.status).toBe(413);
      // a protobuf Status: its message is text inside the bytes
      expect(r.text).toContain(
        `the export holds more than ${MAX_GROUPS_PER_EXPORT} resource spans and scope spans: split it`,
      );
    }
    // at the bound: read (nothing in it to bill)
    const at = await post(
      '/v1/traces',
      emptyFields(1, MAX_GROUPS_PER_EXPORT),
      'application/x-protobuf',
      true,
    );
    expect(at.status).toBe(200);
    await stillServing();
  }, 120_000);

  it('one span more than an export may hold, in JSON and in protobuf; one span fewer is read', async () => {
    const over = MAX_SPANS_PER_EXPORT + 1;
    for (const [body, type] of [
      [emptySpansJson(over), 'application/json'],
      [emptySpansProtobuf(over), 'application/x-protobuf'],
    ] as const) {
      const r = await post('/v1/traces', body, type, true);
      expect([type, r.status]).toEqual([type, 413]);
      expect(r.text).toContain(`the export holds more than ${MAX_SPANS_PER_EXPORT} spans`);
    }
    // at the bound: decoded (each empty span is malformed, counted in the partial success), not refused
    const at = await post(
      '/v1/traces',
      emptySpansProtobuf(MAX_SPANS_PER_EXPORT),
      'application/x-protobuf',
      true,
    );
    expect(at.status).toBe(200);
    await stillServing();
  }, 120_000);

  it('usage events: more than a request may carry, or millions of empty ones in a little gzip', async () => {
    const over = Buffer.from(`[${'{},'.repeat(MAX_EVENTS_PER_REQUEST)}{}]`);
    const r1 = await post('/v1/ingest/batch', over, 'application/json', true);
    expect(r1.status).toBe(413);
    expect(JSON.parse(r1.text).error).toMatchObject({
      code: 'TG_TOO_MANY_ITEMS',
      message: expect.stringContaining(`at most ${MAX_EVENTS_PER_REQUEST} per request`),
    });
    const bomb = Buffer.from(`[${'{},'.repeat(5_000_000)}{}]`);
    const r2 = await post('/v1/ingest/batch', bomb, 'application/json', true);
    expect(r2.status).toBe(413);
    expect(JSON.parse(r2.text).error.code).toBe('TG_TOO_MANY_ITEMS');
    // the answer is bounded: the first 1,000 refused events are listed, all are counted, and an id is
    // echoed only when it is a short string (one nested thousands of arrays deep used to fail the answer)
    const deep = `${'['.repeat(50_000)}"x"${']'.repeat(50_000)}`;
    const refused = Array.from({ length: 4_999 }, (_, i) => ({ id: `e-${i}`.repeat(100) }));
    const body5 = `[{"id":${deep}},${JSON.stringify(refused).slice(1)}`;
    const r5 = await post('/v1/ingest/batch', Buffer.from(body5), 'application/json', false);
    expect(r5.status).toBe(200);
    const answer5 = JSON.parse(r5.text) as {
      rejected: { index: number; id?: unknown }[];
      rejectedCount: number;
    };
    expect(answer5.rejectedCount).toBe(5_000);
    expect(answer5.rejected).toHaveLength(MAX_PROBLEM_LINES);
    expect(answer5.rejected[0]).not.toHaveProperty('id');
    expect(answer5.rejected.filter((p) => p.id !== undefined)).toEqual([]); // 500+ characters: not echoed
    expect(r5.text.length).toBeLessThan(1_000_000);
    // an event with a million metadata keys (the schema took seconds of the main thread over one) is refused
    // unread, and the valid event beside it is accepted
    const keys = Array.from({ length: 1_000_000 }, (_, i) => `"k${i}":1`).join(',');
    const good = {
      id: `good-${Date.now()}`,
      customerId: 'acme',
      timestamp: new Date().toISOString(),
      metricName: 'mcp.tool_call',
      toolName: 'search_docs',
      executionDurationMs: 5,
    };
    const body6 = `[{"id":"wide","metadata":{${keys}}},${JSON.stringify(good)}]`;
    const r6 = await post('/v1/ingest/batch', Buffer.from(body6), 'application/json', true);
    expect(r6.status).toBe(200);
    expect(JSON.parse(r6.text)).toMatchObject({
      accepted: 1,
      rejected: [
        { index: 0, id: 'wide', reason: 'invalid_event', message: '(event): metadata: more than 256 keys' },
      ],
    });
    // an empty event is malformed (invalid_event), not another metric
    const r3 = await post('/v1/ingest/events', Buffer.from('[{}]'), 'application/json', false);
    expect(r3.status).toBe(200);
    expect(JSON.parse(r3.text).rejected).toEqual([
      expect.objectContaining({ index: 0, reason: 'invalid_event' }),
    ]);
    // events sent as protobuf: the answer says what the route takes
    const r4 = await post('/v1/ingest/events', Buffer.from([0x0a, 0x00]), 'application/x-protobuf', false);
    expect(r4.status).toBe(415);
    expect(JSON.parse(r4.text).error.message).toBe(
      'unsupported content type: usage events are application/json only',
    );
    await stillServing();
  }, 60_000);
});
