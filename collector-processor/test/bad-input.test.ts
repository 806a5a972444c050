import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ProtoRequest, ProtoRpcStatus } from '../src/otlp/proto.js';
import { decodeExportResponse } from '../src/otlp/response.js';
import { sha256Hex } from '../src/receiver/ingest-keys.js';
import { DEV_INGEST_KEY, query, startTestTollgate, type TestTollgate, tempDir } from './support/harness.js';
import { exportOf, protoExportOf, toolSpan } from './support/otlp-json.js';

const STRICT_KEY = 'tg_test_strict_key';
const USAGE_KEY = 'tg_test_usage_key';
const PRICEY_KEY = 'tg_test_pricey_key';
let tg: TestTollgate;
let url: string;

beforeAll(async () => {
  const dir = tempDir();
  const configFile = join(dir, 'tollgate.yaml');
  writeFileSync(
    configFile,
    `ingestKeys:
  - { name: demo, sha256: ${sha256Hex(DEV_INGEST_KEY)}, product: demo-mcp }
  - { name: strict, sha256: ${sha256Hex(STRICT_KEY)}, product: strict }
  - { name: usage, sha256: ${sha256Hex(USAGE_KEY)}, product: usage-mcp }
  - { name: pricey, sha256: ${sha256Hex(PRICEY_KEY)}, product: pricey }
`,
  );
  tg = await startTestTollgate(
    {
      '--data-dir': dir,
      '--config': configFile,
      '--otlp-body-limit': String(1024 * 1024),
      '--otlp-max-decompressed': String(8 * 1024 * 1024),
    },
    `currency: USD
products:
  demo-mcp:
    defaultPlan: std
    plans: { std: { tools: { "*": { price: { perCall: "0.001" } } } } }
  strict:
    defaultPlan: std
    plans: { std: { tools: { search_docs: { price: { perCall: "0.01" } } } } }
  pricey:
    defaultPlan: std
    plans:
      std:
        usageLines: { rows: {} }
        tools: { "*": { price: { perCall: "0.001", perInputToken: "0.01", usage: { rows: "0.01" } } } }
  usage-mcp:
    defaultPlan: llm
    plans:
      llm:
        usageLines:
          cached_input_tokens: { attributes: gen_ai.usage.cache_read.input_tokens, subsetOf: input_tokens }
          reasoning_tokens:
            attributes: [gen_ai.usage.reasoning.output_tokens, gen_ai.usage.output_tokens_details.reasoning_tokens]
            subsetOf: output_tokens
          gb_seconds: { integral: false }
        tools:
          "*":
            price:
              perCall: "0.001"
              perInputToken: "0.000003"
              perOutputToken: "0.000015"
              usage: { cached_input_tokens: "0.0000003", reasoning_tokens: "0.00002", gb_seconds: "0.00002" }
`,
  );
  url = `${tg.otlpUrl}/v1/traces`;
});
afterAll(async () => {
  await tg?.cleanup();
});

async function post(body: Buffer | string, headers: Record<string, string> = {}, key = DEV_INGEST_KEY) {
  const res = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}`, ...headers },
    body,
  });
  return { status: res.status, headers: res.headers, body: Buffer.from(await res.arrayBuffer()) };
}

async function healthy() {
  expect((await fetch(`${tg.apiUrl}/healthz`)).status).toBe(200);
}

async function billedSpanIds(customer: string): Promise<string[]> {
  await tg.lander!.idle();
  const rows = await query<{ span_id: string }>(
    tg,
    'SELECT span_id FROM mcp_tool_calls WHERE customer = {c:String} ORDER BY span_id',
    { c: customer },
  );
  return rows.map((r) => r.span_id);
}

/** The OTLP/JSON export of `spans` as a protobufjs object (ids as bytes; fromObject reads bytes as base64). */
function rpcStatus(body: Buffer) {
  return ProtoRpcStatus.toObject(ProtoRpcStatus.decode(body)) as { code: number; message: string };
}

describe('bad input: clear 4xx, the server stays up', () => {
  const protoHeaders = { 'content-type': 'application/x-protobuf' };
  const validProto = () =>
    Buffer.from(ProtoRequest.encode(ProtoRequest.fromObject({ resourceSpans: [] })).finish());

  it.each([
    ['truncated protobuf', () => Buffer.from([0x0a, 0x10, 0x0a, 0x05]), 400, 'TG_UNDECODABLE'],
    ['wrong wire type for resource_spans', () => Buffer.from([0x08, 0x01]), 400, 'TG_UNDECODABLE'],
    [
      'huge length prefix',
      () => Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x00]),
      400,
      'TG_UNDECODABLE',
    ],
    ['random bytes', () => Buffer.from('deadbeefcafebabe00ff11', 'hex'), 400, 'TG_UNDECODABLE'],
  ])('%s → %i with a google.rpc.Status body', async (_name, body, status, code) => {
    const r = await post(body(), protoHeaders);
    expect(r.status).toBe(status);
    expect(r.headers.get('content-type')).toContain('application/x-protobuf');
    expect(rpcStatus(r.body).message).toContain(code);
    await healthy();
  });

  it('a gzip bomb is refused with 413 before it is inflated past the limit', async () => {
    const bomb = gzipSync(Buffer.alloc(64 * 1024 * 1024));
    expect(bomb.length).toBeLessThan(1024 * 1024);
    const r = await post(bomb, { ...protoHeaders, 'content-encoding': 'gzip' });
    expect(r.status).toBe(413);
    expect(rpcStatus(r.body).message).toContain('TG_BODY_TOO_LARGE');
    await healthy();
  });

  it('a gzip bomb under the limit (zeros) is refused as undecodable at its first byte, not skipped through', async () => {
    // 7 MiB of zeros inflate under the 8 MiB limit; a zero tag is not protobuf (field numbers start at 1).
    // Read as unknown fields two bytes at a time, 63 MiB of them took about a second of the main thread.
    const bomb = gzipSync(Buffer.alloc(7 * 1024 * 1024));
    const statuses = await Promise.all(
      Array.from({ length: 12 }, () =>
        post(bomb, { ...protoHeaders, 'content-encoding': 'gzip' }).then((r) => [
          r.status,
          rpcStatus(r.body).message,
        ]),
      ),
    );
    for (const [status, message] of statuses) {
      expect(status).toBe(400);
      expect(message).toContain('TG_UNDECODABLE');
      expect(message).toContain('field number 0');
    }
    await healthy();
  });

  it('corrupt gzip → 400; unknown encoding → 415; an empty Content-Encoding is identity, " GZIP " is gzip', async () => {
    expect((await post(Buffer.from('not gzip'), { 'content-encoding': 'gzip' })).status).toBe(400);
    expect((await post('{}', { 'content-encoding': 'br' })).status).toBe(415);
    expect((await post('{}', { 'content-encoding': '' })).status).toBe(200);
    expect((await post(gzipSync('{}'), { 'content-encoding': ' GZIP ' })).status).toBe(200);
  });

  it('a body over the limit → 413', async () => {
    const r = await post(Buffer.alloc(2 * 1024 * 1024, 0x20));
    expect(r.status).toBe(413);
    expect(JSON.parse(r.body.toString()).message).toContain('TG_BODY_TOO_LARGE');
  });

  it('invalid JSON → 400 with a JSON status', async () => {
    const r = await post('{"resourceSpans": [');
    expect(r.status).toBe(400);
    expect(JSON.parse(r.body.toString())).toMatchObject({
      code: 3,
      message: expect.stringContaining('TG_UNDECODABLE'),
    });
  });

  it('unsupported content type → 415, wrong method → 405 with Allow, no or unknown key → 401', async () => {
    expect((await post('x', { 'content-type': 'text/plain' })).status).toBe(415);
    const get = await fetch(url);
    expect(get.status).toBe(405);
    expect(get.headers.get('allow')).toBe('POST');
    expect((await post('{}', {}, 'wrong-key')).status).toBe(401);
    expect(
      (await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' }))
        .status,
    ).toBe(401);
    await healthy();
  });

  it('a malformed percent-escape in the path → 400 TG_BAD_HTTP in the catalogue shape', async () => {
    const res = await fetch(`${tg.otlpUrl}/v1/traces%FF`, { method: 'POST', body: '{}' });
    expect(res.status).toBe(400);
    expect(await res.json()).toEqual({ error: { code: 'TG_BAD_HTTP', message: expect.any(String) } });
    await healthy();
  });

  it('an empty export is a plain success', async () => {
    const r = await post(validProto(), protoHeaders);
    expect(r.status).toBe(200);
    expect(decodeExportResponse(r.body)).toEqual({ directives: [] });
  });
});

describe('bad spans next to good ones: partial success, the good ones are billed', () => {
  it('rejects each bad span with a reason and keeps every valid sibling', async () => {
    const customer = 'mixed-batch';
    const good = [
      toolSpan({ customer }),
      toolSpan({ customer, attrs: { 'gen_ai.usage.input_tokens': { doubleValue: 5 } } }),
    ];
    const bad = [
      toolSpan({ customer, attrs: { 'gen_ai.usage.input_tokens': { doubleValue: 'NaN' } } }),
      toolSpan({ customer, attrs: { 'gen_ai.usage.output_tokens': { intValue: '-5' } } }),
      toolSpan({ customer, attrs: { 'gen_ai.usage.output_tokens': 1.5 } }),
      toolSpan({ customer, attrs: { 'gen_ai.tool.name': undefined } }),
      toolSpan({ customer, attrs: { 'tollgate.customer.id': undefined } }),
      toolSpan({ customer, traceId: '00'.repeat(16) }),
      toolSpan({ customer, startMs: Date.now() - 30 * 24 * 3_600_000 }),
      { ...toolSpan({ customer }), kind: 'SERVER' }, // wrong JSON type
      { ...toolSpan({ customer }), attributes: [{ key: 'mcp.method.name', value: { intValue: 'abc' } }] },
    ];
    const ignored = toolSpan({ customer, attrs: { 'mcp.method.name': 'tools/list' } });
    const r = await post(
      JSON.stringify(exportOf([...bad.slice(0, 4), good[0], ignored, ...bad.slice(4), good[1]])),
    );
    expect(r.status).toBe(200);
    const body = JSON.parse(r.body.toString());
    expect(body.partialSuccess.rejectedSpans).toBe(String(bad.length));
    for (const reason of [
      'invalid_number ×3',
      'missing_tool_name ×1',
      'missing_customer ×1',
      'invalid_trace_id ×1',
      'invalid_timestamp ×1',
      'malformed_span ×2',
    ]) {
      expect(body.partialSuccess.errorMessage).toContain(reason);
    }
    expect(await billedSpanIds(customer)).toEqual(good.map((g) => g.spanId).sort());
    await healthy();
  });

  it('a span that ends in the future (past the clock skew allowed) is rejected; its siblings are billed', async () => {
    // Before: the end time was not bounded, so `end − start` could pass 2^53 µs; the landing encoder
    // refused the row after the export was spooled and claimed, the export got a retryable 503 (its valid
    // siblings were claimed in Redis and never landed, so a retry found them duplicates), and the spool
    // replay retried the record forever at every start.
    const customer = 'ends-in-future';
    const good = toolSpan({ customer });
    const maxEnd = { ...toolSpan({ customer }), endTimeUnixNano: '18446744073709551615' };
    const dayLate = toolSpan({ customer });
    dayLate.endTimeUnixNano = String(BigInt(Date.now() + 24 * 3_600_000) * 1_000_000n);
    const json = await post(JSON.stringify(exportOf([maxEnd, good, dayLate])));
    expect(json.status).toBe(200);
    expect(JSON.parse(json.body.toString()).partialSuccess).toEqual({
      rejectedSpans: '2',
      errorMessage: expect.stringContaining('invalid_timestamp ×2'),
    });

    const protoGood = toolSpan({ customer });
    const protoMaxEnd = { ...toolSpan({ customer }), endTimeUnixNano: '18446744073709551615' };
    const proto = await post(
      Buffer.from(
        ProtoRequest.encode(ProtoRequest.fromObject(protoExportOf([protoMaxEnd, protoGood]))).finish(),
      ),
      { 'content-type': 'application/x-protobuf' },
    );
    expect(proto.status).toBe(200);
    expect(decodeExportResponse(proto.body).partialSuccess).toEqual({
      rejectedSpans: 1,
      errorMessage: expect.stringContaining('invalid_timestamp ×1'),
    });
    expect(await billedSpanIds(customer)).toEqual([good.spanId, protoGood.spanId].sort());
    await healthy();
  });

  it('a call whose price would not fit 64 bits of nano-units is rejected; its siblings are billed, once', async () => {
    // Before: rated after its claim, the call's price (10¹² tokens or rows at 0.01) overflowed Int64 in the
    // landing encoder: a retryable 503 whose siblings were claimed but never landed (a retry found them
    // duplicates), and a spool replay that retried the record forever.
    const customer = 'pricey-customer';
    const good = toolSpan({ customer, attrs: { 'gen_ai.usage.input_tokens': 1000 } });
    const tokens = toolSpan({ customer, attrs: { 'gen_ai.usage.input_tokens': 1e12 } });
    const rows = toolSpan({
      customer,
      attrs: { 'gen_ai.usage.input_tokens': 0, 'tollgate.usage.rows': 1e12 },
    });
    const body = JSON.stringify(exportOf([tokens, good, rows]));
    for (let attempt = 0; attempt < 2; attempt++) {
      const r = await post(body, {}, PRICEY_KEY);
      expect(r.status).toBe(200);
      expect(JSON.parse(r.body.toString()).partialSuccess).toEqual({
        rejectedSpans: '2',
        errorMessage: expect.stringContaining('amount_out_of_range ×2'),
      });
    }
    expect(await billedSpanIds(customer)).toEqual([good.spanId]);
    // the dearest call that fits is billed (a customer of its own: sums past 2^63 are another matter)
    const edge = toolSpan({
      customer: 'pricey-edge',
      attrs: { 'gen_ai.usage.input_tokens': 922_337_203_685 },
    });
    expect((await post(JSON.stringify(exportOf([edge])), {}, PRICEY_KEY)).status).toBe(200);
    expect(await billedSpanIds('pricey-edge')).toEqual([edge.spanId]);
    const [row] = await query(tg, 'SELECT price_nano FROM mcp_tool_calls WHERE customer = {c:String}', {
      c: 'pricey-edge',
    });
    expect(row).toEqual({ price_nano: '9223372036851000000' });
    await healthy();
  });

  it('an unknown tool under a plan without a default is rejected; the known tool is billed', async () => {
    const customer = 'strict-customer';
    const known = toolSpan({ customer, tool: 'search_docs' });
    const unknown = toolSpan({ customer, tool: 'launch_rockets' });
    const r = await post(JSON.stringify(exportOf([unknown, known])), {}, STRICT_KEY);
    expect(r.status).toBe(200);
    const body = JSON.parse(r.body.toString());
    expect(body.partialSuccess).toEqual({
      rejectedSpans: '1',
      errorMessage: expect.stringContaining('unknown_tool ×1'),
    });
    expect(await billedSpanIds(customer)).toEqual([known.spanId]);
    const [row] = await query(
      tg,
      'SELECT product, price_nano FROM mcp_tool_calls WHERE customer = {c:String}',
      { c: customer },
    );
    expect(row).toEqual({ product: 'strict', price_nano: '10000000' });
  });

  it('the product comes from the key, never from span attributes', async () => {
    const customer = 'spoofer';
    const span = toolSpan({ customer, attrs: { 'tollgate.product': 'strict' } });
    await post(JSON.stringify(exportOf([span], { 'service.name': 'x', 'tollgate.product': 'strict' })));
    await tg.lander!.idle();
    expect(
      (
        await query(tg, 'SELECT product FROM mcp_tool_calls WHERE customer = {c:String}', { c: customer })
      ).map((r) => r.product),
    ).toEqual(['demo-mcp']);
  });
});

describe('usage lines: a bad quantity rejects its span, the rest of the export is billed', () => {
  it('prices cached and reasoning tokens apart from their parents and rejects bad quantities', async () => {
    const customer = 'usage-lines';
    const usage = (attrs: Record<string, unknown>) =>
      toolSpan({
        customer,
        attrs: { 'gen_ai.usage.input_tokens': 1000, 'gen_ai.usage.output_tokens': 100, ...attrs },
      });
    const good = [
      usage({ 'gen_ai.usage.cache_read.input_tokens': 800 }),
      usage({ 'gen_ai.usage.output_tokens_details.reasoning_tokens': { doubleValue: 60 } }),
      usage({ 'tollgate.usage.gb_seconds': { doubleValue: 0.25 } }),
    ];
    const bad = [
      usage({ 'gen_ai.usage.cache_read.input_tokens': { intValue: '-1' } }),
      usage({ 'gen_ai.usage.cache_read.input_tokens': { doubleValue: 1.5 } }),
      usage({ 'gen_ai.usage.reasoning.output_tokens': { doubleValue: 'NaN' } }),
      usage({ 'tollgate.usage.gb_seconds': { doubleValue: 1e20 } }),
      usage({ 'gen_ai.usage.cache_read.input_tokens': 1001 }),
    ];
    const r = await post(
      JSON.stringify(exportOf([bad[0], good[0], ...bad.slice(1), good[1], good[2]])),
      {},
      USAGE_KEY,
    );
    expect(r.status).toBe(200);
    const body = JSON.parse(r.body.toString());
    expect(body.partialSuccess.rejectedSpans).toBe(String(bad.length));
    expect(body.partialSuccess.errorMessage).toContain('invalid_usage ×5');
    expect(body.partialSuccess.errorMessage).toContain(
      `cached_input_tokens of span ${bad[0]?.spanId} is negative`,
    );
    expect(await billedSpanIds(customer)).toEqual(good.map((g) => g.spanId).sort());
    const rows = await query<{ span_id: string; price_nano: string }>(
      tg,
      'SELECT span_id, price_nano FROM mcp_tool_calls WHERE customer = {c:String}',
      { c: customer },
    );
    const price = Object.fromEntries(rows.map((x) => [x.span_id, x.price_nano]));
    // call 1_000_000; 200 input × 3_000 + 800 cached × 300; 100 output × 15_000
    expect(price[good[0]!.spanId]).toBe(String(1_000_000 + 600_000 + 240_000 + 1_500_000));
    // 1000 input × 3_000; 40 output × 15_000 + 60 reasoning × 20_000
    expect(price[good[1]!.spanId]).toBe(String(1_000_000 + 3_000_000 + 600_000 + 1_200_000));
    // 0.25 GB-s × 20_000
    expect(price[good[2]!.spanId]).toBe(String(1_000_000 + 3_000_000 + 1_500_000 + 5_000));
    // landed per line; the total is the built-in components plus the lines, to the nano-unit
    const landed = await query(
      tg,
      `SELECT span_id, input_tokens, input_tokens_priced, output_tokens_priced, usage_lines, usage_quantity_micro,
              usage_unit_nano, usage_price_nano,
              price_nano = price_call_nano + price_input_nano + price_output_nano + price_duration_nano
                + arraySum(usage_price_nano) AS adds_up
       FROM mcp_tool_calls WHERE customer = {c:String} ORDER BY span_id`,
      { c: customer },
    );
    const bySpan = Object.fromEntries(landed.map((x) => [x.span_id, x]));
    expect(bySpan[good[0]!.spanId]).toMatchObject({
      input_tokens: '1000',
      input_tokens_priced: '200',
      output_tokens_priced: '100',
      usage_lines: ['cached_input_tokens'],
      usage_quantity_micro: ['800000000'],
      usage_unit_nano: ['300'],
      usage_price_nano: ['240000'],
      adds_up: 1,
    });
    expect(bySpan[good[1]!.spanId]).toMatchObject({
      input_tokens_priced: '1000',
      output_tokens_priced: '40',
      usage_lines: ['reasoning_tokens'],
      usage_price_nano: ['1200000'],
      adds_up: 1,
    });
    expect(bySpan[good[2]!.spanId]).toMatchObject({
      usage_lines: ['gb_seconds'],
      usage_quantity_micro: ['250000'],
      usage_price_nano: ['5000'],
      adds_up: 1,
    });
  });

  it('usage events carry lines in metadata; a bad quantity rejects that event only', async () => {
    const ev = (metadata: Record<string, unknown>) => ({
      id: `evt-${Math.random().toString(36).slice(2)}`,
      customerId: 'usage-events',
      timestamp: new Date(Date.now() - 1000).toISOString(),
      metricName: 'mcp.tool_call',
      productType: 'mcp',
      toolName: 't',
      executionDurationMs: 0,
      metadata: { inputTokens: 100, outputTokens: 0, ...metadata },
    });
    const res = await fetch(`${tg.otlpUrl}/v1/ingest/batch`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${USAGE_KEY}` },
      body: JSON.stringify({
        events: [
          ev({ cached_input_tokens: 40 }),
          ev({ cached_input_tokens: -3 }),
          ev({ cached_input_tokens: '2.5' }),
          // an array, an object or null is malformed, not absent (each billed as if nothing was reported)
          ev({ cached_input_tokens: [40] }),
          ev({ cached_input_tokens: { n: 40 } }),
          ev({ cached_input_tokens: null }),
        ],
      }),
    });
    const body = (await res.json()) as { accepted: number; rejected: { index: number; reason: string }[] };
    expect(body.accepted).toBe(1);
    expect(body.rejected.map((x) => [x.index, x.reason])).toEqual([
      [1, 'invalid_usage'],
      [2, 'invalid_usage'],
      [3, 'invalid_usage'],
      [4, 'invalid_usage'],
      [5, 'invalid_usage'],
    ]);
    await tg.lander!.idle();
    const rows = await query(tg, "SELECT price_nano FROM mcp_tool_calls WHERE customer = 'usage-events'");
    // 60 input × 3_000 + 40 cached × 300
    expect(rows).toEqual([{ price_nano: String(1_000_000 + 180_000 + 12_000) }]);
  });
});

describe('plain usage events', () => {
  const ev = (over: Record<string, unknown> = {}) => ({
    id: `evt-${Math.random().toString(36).slice(2)}`,
    customerId: 'events-customer',
    timestamp: new Date(Date.now() - 1000).toISOString(),
    metricName: 'mcp.tool_call',
    productType: 'mcp',
    toolName: 'search_docs',
    sessionId: 'ev-session',
    agentId: 'ev-agent',
    executionDurationMs: 120,
    metadata: { inputTokens: 3, outputTokens: 4 },
    ...over,
  });

  it('accepts valid events, rejects invalid ones individually, and dedups by id', async () => {
    const a = ev();
    const res = await fetch(`${tg.otlpUrl}/v1/ingest/batch`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
      body: JSON.stringify({
        events: [
          a,
          ev({ executionDurationMs: -1 }),
          ev({ metricName: 'cpu' }),
          ev({ metadata: { inputTokens: 'many' } }),
          a,
        ],
      }),
    });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { accepted: number; rejected: { index: number; reason: string }[] };
    expect(body.accepted).toBe(1);
    expect(body.rejected.map((r: { index: number; reason: string }) => [r.index, r.reason])).toEqual([
      [1, 'invalid_event'],
      [2, 'unsupported_metric'],
      [3, 'invalid_event'],
    ]);
    const again = await fetch(`${tg.otlpUrl}/v1/ingest/events`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
      body: JSON.stringify(a),
    });
    expect(await again.json()).toMatchObject({ accepted: 0, duplicates: 1 });
    await tg.lander!.idle();
    const rows = await query(
      tg,
      "SELECT tool, agent, session_id, duration_us, input_tokens, source FROM mcp_tool_calls WHERE customer = 'events-customer'",
    );
    expect(rows).toEqual([
      {
        tool: 'search_docs',
        agent: 'ev-agent',
        session_id: 'ev-session',
        duration_us: '120000',
        input_tokens: '3',
        source: 'event',
      },
    ]);
  });

  it('events the plan refuses are listed with their reason; an id twice in one request is one call and one duplicate', async () => {
    const known = { ...ev(), customerId: 'strict-events' };
    const unknown = { ...ev(), customerId: 'strict-events', toolName: 'launch_rockets' };
    const res = await fetch(`${tg.otlpUrl}/v1/ingest/batch`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${STRICT_KEY}` },
      body: JSON.stringify({ events: [unknown, known, known] }),
    });
    expect(res.status).toBe(200);
    expect(await res.json()).toMatchObject({
      accepted: 1,
      duplicates: 1,
      rejected: [{ index: 0, id: unknown.id, reason: 'unknown_tool' }],
      rejectedCount: 1,
    });
  });

  it('a body that is not JSON → 400 with a stable code', async () => {
    const res = await fetch(`${tg.otlpUrl}/v1/ingest/events`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
      body: '{"id":',
    });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe('TG_INVALID_EVENT');
  });
});
