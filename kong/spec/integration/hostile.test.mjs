// Integration: the plugin probed as a hostile client would, through real nginx + lua-nginx-module,
// a real redis-server and a real MCP SDK 1.x server upstream (mcp-server.mjs). Every probe asks the
// same question: can a tools/call reach the tool without being enforced, or without being billed?
// A killed customer (cus_killed) is the probe: any call of theirs that reaches the tool got past the
// kill (and, with leases, past a hard limit: the lease is taken for the same list of calls).
// Run: node --test kong/spec/integration/hostile.test.mjs (from the repo root, after npm ci)

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import {
  MCP_ACCEPT as ACCEPT,
  allSpans,
  attrsOf,
  rawMcp,
  rawRequest,
  redis,
  startNginx,
  startRedis,
  startUpstream,
  stop,
} from './harness.mjs';

const PRODUCT = 'acme';

let redisMain;
let upstream;
let nginx;
let base;
const { post, upstreamStats, spansOf, openSession } = rawMcp(
  () => base,
  () => upstream,
);
let seq = 0;

const consumers = {
  'key-alice': { id: 'c0000000-0000-4000-8000-000000000001', username: 'alice', custom_id: 'cus_alice' },
  'key-kill': { id: 'c0000000-0000-4000-8000-000000000002', username: 'bob', custom_id: 'cus_killed' },
  'key-tool': { id: 'c0000000-0000-4000-8000-000000000003', username: 'erin', custom_id: 'cus_tool_limited' },
};

before(async () => {
  redisMain = await startRedis();
  upstream = await startUpstream();
  const common = { product: PRODUCT, cache_ttl_ms: 200, redis_timeout_ms: 200 };
  nginx = await startNginx({
    upstreamPort: upstream.port,
    consumers,
    node: { id: '9d2a3b7c-5e4f-4a1b-8c2d-3e4f5a6b7c8d', version: '3.9.1' },
    plugins: {
      main: { ...common, redis_port: redisMain.port },
      small: { ...common, redis_port: redisMain.port, max_body_bytes: 4096 },
    },
  });
  base = `http://127.0.0.1:${nginx.port}`;
  await redis(
    redisMain.port,
    'HSET',
    `tg:{${PRODUCT}:cus_killed}:state`,
    'c',
    'kill|hard_limit:calls_per_day|0||',
  );
  // cus_tool_limited has used up its calls of echo (calls-per-tool limit): only echo is refused
  await redis(
    redisMain.port,
    'HSET',
    `tg:{${PRODUCT}:cus_tool_limited}:state`,
    't:echo',
    'kill|hard_limit:calls_per_tool|0||',
  );
});

after(async () => {
  const log = nginx?.errorLog() ?? '';
  await stop(nginx);
  await stop(upstream);
  await stop(redisMain);
  assert.doesNotMatch(log, /\[error\].*(runtime error|lua entry thread aborted)/, log);
});

const toolCall = (id, name, args) => ({
  jsonrpc: '2.0',
  id,
  method: 'tools/call',
  params: { name, arguments: args },
});

describe('hostile client: a killed customer', () => {
  it('a tools/call whose id is longer than 256 bytes is refused, never reaches the tool', async () => {
    const headers = await openSession('/main/json/mcp', { apikey: 'key-kill' });
    const before = await upstreamStats();
    const res = await post('/main/json/mcp', toolCall('x'.repeat(300), 'echo', { text: 'free?' }), headers);
    const text = await res.text();
    assert.equal(res.status, 400, `the call went through: ${text}`);
    assert.equal(JSON.parse(text).error.code, -32600);
    assert.deepEqual(await upstreamStats(), before, 'the tool ran for a killed customer');
  });

  it('the same inside a batch, alone or next to a short-id call', async () => {
    const headers = await openSession('/main/json/mcp', { apikey: 'key-kill' });
    const before = await upstreamStats();
    for (const batch of [
      [toolCall('y'.repeat(257), 'echo', { text: 'a' })],
      [{ jsonrpc: '2.0', id: 5, method: 'tools/list' }, toolCall('z'.repeat(1000), 'echo', { text: 'b' })],
    ]) {
      const res = await post('/main/json/mcp', batch, headers);
      const text = await res.text();
      assert.equal(res.status, 400, text);
    }
    assert.deepEqual(await upstreamStats(), before);
  });

  it('odd id types (null, true, an object, 1.5) never run the tool', async () => {
    const headers = await openSession('/main/json/mcp', { apikey: 'key-kill' });
    const before = await upstreamStats();
    for (const id of [null, true, { a: 1 }, 1.5, [1]]) {
      const res = await post(
        '/main/json/mcp',
        { jsonrpc: '2.0', id, method: 'tools/call', params: { name: 'echo', arguments: { text: 'q' } } },
        headers,
      );
      await res.text();
    }
    assert.deepEqual(await upstreamStats(), before);
  });

  it('a forged x-customer-id header does not change the customer (customer_source = consumer)', async () => {
    const headers = await openSession('/main/json/mcp', { apikey: 'key-kill', 'x-customer-id': 'cus_alice' });
    const before = await upstreamStats();
    const res = await post('/main/json/mcp', toolCall(1, 'echo', { text: 'forged' }), headers);
    assert.equal(res.status, 403, await res.text());
    assert.deepEqual(await upstreamStats(), before);
  });

  it('params missing, an array, or a numeric name: refused by the kill all the same', async () => {
    const headers = await openSession('/main/json/mcp', { apikey: 'key-kill' });
    const before = await upstreamStats();
    for (const params of [undefined, ['echo'], { name: 7 }, { name: 'echo', arguments: 'text' }]) {
      const res = await post(
        '/main/json/mcp',
        { jsonrpc: '2.0', id: 9, method: 'tools/call', ...(params ? { params } : {}) },
        headers,
      );
      await res.text();
      assert.equal(res.status, 403);
    }
    assert.deepEqual(await upstreamStats(), before);
  });
});

describe('hostile client: a customer whose calls of one tool are exhausted', () => {
  it('a batch cannot hide that tool behind a call without a valid name', async () => {
    const headers = await openSession('/main/json/mcp', { apikey: 'key-tool' });
    const before = await upstreamStats();
    const single = await post('/main/json/mcp', toolCall(1, 'echo', { text: 'x' }), headers);
    assert.equal(single.status, 403, await single.text());
    for (const first of [
      { jsonrpc: '2.0', id: 2, method: 'tools/call' },
      { jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 7 } },
      { jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: '' } },
    ]) {
      const res = await post('/main/json/mcp', [first, toolCall(3, 'echo', { text: 'hidden' })], headers);
      const text = await res.text();
      assert.equal(res.status, 403, `the batch went through: ${text}`);
    }
    assert.deepEqual(await upstreamStats(), before, 'echo ran past its exhausted calls-per-tool limit');
  });
});

describe('hostile client: a paying customer', () => {
  it('a body over max_body_bytes is refused with 413 (Content-Length and chunked), never proxied', async () => {
    const headers = await openSession('/small/json/mcp', { apikey: 'key-alice' });
    const before = await upstreamStats();
    const big = JSON.stringify(toolCall(1, 'echo', { text: 'p'.repeat(6000) }));
    const res = await post('/small/json/mcp', big, headers);
    assert.equal(res.status, 413, await res.text());
    // chunked: no Content-Length, the body arrives as a stream
    const stream = new ReadableStream({
      start(c) {
        c.enqueue(new TextEncoder().encode(big));
        c.close();
      },
    });
    const res2 = await fetch(`${base}/small/json/mcp`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: ACCEPT, ...headers },
      body: stream,
      duplex: 'half',
    });
    assert.equal(res2.status, 413, await res2.text());
    assert.deepEqual(await upstreamStats(), before);
  });

  it('params with odd types: a call that does not run is not billed, a call that runs is', async () => {
    const testId = `odd-${++seq}-${Date.now()}`;
    const headers = await openSession('/main/json/mcp', { apikey: 'key-alice', 'x-test-id': testId });
    const before = await upstreamStats();
    const res = await post(
      '/main/json/mcp',
      [
        { jsonrpc: '2.0', id: 1, method: 'tools/call' },
        { jsonrpc: '2.0', id: 2, method: 'tools/call', params: { name: 7 } },
        toolCall(3, 'echo', { text: 'real' }),
      ],
      headers,
    );
    await res.text();
    const after = await upstreamStats();
    const ran = after.echo - before.echo;
    const spans = allSpans(await spansOf(testId)).filter(
      (s) => attrsOf(s)['mcp.method.name'] === 'tools/call',
    );
    const billedOk = spans.filter((s) => attrsOf(s)['error.type'] === undefined);
    assert.equal(billedOk.length, ran, `${ran} tool runs, ${billedOk.length} successful billed spans`);
  });

  it('a batch with a duplicated id cannot make a call that ran look failed', async () => {
    const testId = `dup-${++seq}-${Date.now()}`;
    const headers = await openSession('/main/sse/mcp', { apikey: 'key-alice', 'x-test-id': testId });
    const before = await upstreamStats();
    const res = await post(
      '/main/sse/mcp',
      [toolCall(1, 'echo', { text: 'side effect' }), { jsonrpc: '2.0', id: 1, method: 'no/such/method' }],
      headers,
    );
    // refused by Kong: which of two answers with one id is the tool's cannot be told
    assert.equal(res.status, 400);
    assert.equal((await res.json()).error.code, -32600);
    const ran = (await upstreamStats()).echo - before.echo;
    assert.equal(ran, 0);
    const spans = allSpans(await spansOf(testId)).filter(
      (s) => attrsOf(s)['mcp.method.name'] === 'tools/call',
    );
    const billedOk = spans.filter((s) => attrsOf(s)['error.type'] === undefined);
    assert.equal(billedOk.length, ran, `${ran} tool runs, ${billedOk.length} successful billed spans`);
  });
});

/** A 2026-07-28 tools/call of echo, its protocol version and client in the `_meta` envelope. */
const modernCall = (id, text) => ({
  jsonrpc: '2.0',
  id,
  method: 'tools/call',
  params: {
    name: 'echo',
    arguments: { text },
    _meta: {
      'io.modelcontextprotocol/protocolVersion': '2026-07-28',
      'io.modelcontextprotocol/clientInfo': { name: 'raw-2026', version: '1' },
      'io.modelcontextprotocol/clientCapabilities': {},
    },
  },
});

describe('hostile client: 2026-07-28 requests metered from their headers (a 2.x SDK server)', () => {
  const MODERN = '2026-07-28';
  const headers = {
    'mcp-protocol-version': MODERN,
    'mcp-method': 'tools/call',
    'mcp-name': 'echo',
    apikey: 'key-alice',
  };

  for (const [name, body] of [
    ["a batch of two calls under one call's headers", [modernCall(1, 'a'), modernCall(2, 'b')]],
    ['a batch of one call', [modernCall(3, 'c')]],
  ]) {
    it(`${name}: every tool run is billed`, async () => {
      const testId = `modern-${++seq}-${Date.now()}`;
      const before = await upstreamStats();
      const res = await post('/main/modern/mcp', body, { ...headers, 'x-test-id': testId });
      const text = await res.text();
      const ran = (await upstreamStats()).modern_echo - before.modern_echo;
      await new Promise((r) => setTimeout(r, 100));
      const spans = allSpans(await spansOf(testId)).filter(
        (s) => attrsOf(s)['mcp.method.name'] === 'tools/call',
      );
      const billedOk = spans.filter((s) => attrsOf(s)['error.type'] === undefined);
      assert.ok(
        billedOk.length >= ran,
        `${ran} tool runs, ${billedOk.length} successful billed spans (${res.status} ${text})`,
      );
    });
  }
});

describe('hostile client: lying 2026-07-28 headers to a 2.x SDK server', () => {
  const MODERN = '2026-07-28';
  const lie = { 'mcp-protocol-version': MODERN, 'mcp-method': 'tools/list', apikey: 'key-kill' };
  const meta = {
    'io.modelcontextprotocol/protocolVersion': MODERN,
    'io.modelcontextprotocol/clientInfo': { name: 'raw-2026', version: '1' },
    'io.modelcontextprotocol/clientCapabilities': {},
  };
  for (const [name, params] of [
    ['with the envelope _meta', { name: 'echo', arguments: { text: 'x' }, _meta: meta }],
    ['without any _meta', { name: 'echo', arguments: { text: 'x' } }],
    [
      'with an older protocol version in _meta',
      {
        name: 'echo',
        arguments: { text: 'x' },
        _meta: { ...meta, 'io.modelcontextprotocol/protocolVersion': '2025-06-18' },
      },
    ],
  ]) {
    it(`Mcp-Method: tools/list over a tools/call body ${name}: the tool never runs`, async () => {
      const before = await upstreamStats();
      const res = await post(
        '/main/modern/mcp',
        { jsonrpc: '2.0', id: 1, method: 'tools/call', params },
        lie,
      );
      const text = await res.text();
      assert.deepEqual(
        await upstreamStats(),
        before,
        `the tool ran for a killed customer (${res.status} ${text})`,
      );
    });
  }
});

describe('hostile client: hanging up', () => {
  // The tool runs on although the client went away; nginx ends the request with 499 and nobody sees
  // the answer. The request had been sent upstream ($upstream_bytes_sent > 0): the call is billed as a
  // call that ran with an unknown outcome (no error.type, tollgate.outcome = unknown), so hanging up
  // does not make a tool run free, nor give its lease reservation back.
  it('a client that hangs up while the tool runs: the call is billed, outcome unknown', async () => {
    const testId = `hangup-${++seq}-${Date.now()}`;
    const headers = await openSession('/main/json/mcp', { apikey: 'key-alice', 'x-test-id': testId });
    const before = await upstreamStats();
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 100);
    await fetch(`${base}/main/json/mcp`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: ACCEPT, ...headers },
      body: JSON.stringify(toolCall('gone', 'slow', { steps: 3, delayMs: 150 })),
      signal: ac.signal,
    }).catch(() => null);
    await new Promise((r) => setTimeout(r, 800));
    assert.equal((await upstreamStats()).slow - before.slow, 1, 'the tool ran');
    const spans = allSpans(await spansOf(testId)).filter(
      (s) => attrsOf(s)['mcp.method.name'] === 'tools/call',
    );
    assert.equal(spans.length, 1);
    const a = attrsOf(spans[0]);
    assert.equal(a['jsonrpc.request.id'], 'gone');
    assert.equal(a['error.type'], undefined, 'a tool that ran is not a failed call');
    // the processor reads http.response.status_code >= 400 as a failure: not set for this call
    assert.equal(a['http.response.status_code'], undefined);
    assert.equal(a['tollgate.outcome'], 'unknown');
    assert.equal(a['tollgate.outcome.reason'], 'client_closed');
  });
});

describe('upstream that never answers in time, or cannot be reached', () => {
  // /main/timeout/mcp: proxy_read_timeout 300 ms in front of a tool that takes 450 ms; nginx answers 504
  // after the request was sent, and the tool runs to its end
  it('504 after the request was sent (read timeout): the tool ran, billed with an unknown outcome', async () => {
    const testId = `timeout-${++seq}-${Date.now()}`;
    const headers = await openSession('/main/json/mcp', { apikey: 'key-alice', 'x-test-id': testId });
    const before = await upstreamStats();
    const res = await post(
      '/main/timeout/mcp',
      toolCall('late', 'slow', { steps: 3, delayMs: 150 }),
      headers,
    );
    assert.equal(res.status, 504, await res.text());
    await new Promise((r) => setTimeout(r, 500));
    assert.equal((await upstreamStats()).slow - before.slow, 1, 'the tool ran');
    const spans = allSpans(await spansOf(testId)).filter(
      (s) => attrsOf(s)['mcp.method.name'] === 'tools/call',
    );
    assert.equal(spans.length, 1);
    const a = attrsOf(spans[0]);
    assert.equal(a['jsonrpc.request.id'], 'late');
    assert.equal(a['error.type'], undefined);
    assert.equal(a['http.response.status_code'], undefined);
    assert.equal(a['http.status_code'], 504); // Kong's own attribute keeps the status
    assert.equal(a['tollgate.outcome'], 'unknown');
    assert.equal(a['tollgate.outcome.reason'], 'upstream_timeout');
  });

  it('502 from a refused connect (nothing sent): the tool never ran, a failed call', async () => {
    const testId = `refused-${++seq}-${Date.now()}`;
    const before = await upstreamStats();
    const res = await post('/main/refused/mcp', toolCall('nowhere', 'echo', { text: 'x' }), {
      apikey: 'key-alice',
      'x-test-id': testId,
    });
    assert.equal(res.status, 502, await res.text());
    assert.deepEqual(await upstreamStats(), before);
    const spans = allSpans(await spansOf(testId)).filter(
      (s) => attrsOf(s)['mcp.method.name'] === 'tools/call',
    );
    assert.equal(spans.length, 1);
    const a = attrsOf(spans[0]);
    assert.equal(a['error.type'], '502');
    assert.equal(a['http.response.status_code'], 502);
    assert.equal(a['tollgate.outcome'], undefined);
  });
});

describe('hostile client: hanging up an SSE answer', () => {
  it('the SSE answer had begun (200): the call is billed as a success', async () => {
    const testId = `hangup-sse-${++seq}-${Date.now()}`;
    const headers = await openSession('/main/sse/mcp', { apikey: 'key-alice', 'x-test-id': testId });
    const before = await upstreamStats();
    const ac = new AbortController();
    const res = await fetch(`${base}/main/sse/mcp`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: ACCEPT, ...headers },
      body: JSON.stringify(toolCall('gone-sse', 'slow', { steps: 3, delayMs: 150 })),
      signal: ac.signal,
    });
    assert.equal(res.status, 200);
    const reader = res.body.getReader();
    await reader.read(); // the first notification
    ac.abort();
    await new Promise((r) => setTimeout(r, 800));
    assert.equal((await upstreamStats()).slow - before.slow, 1, 'the tool ran');
    const spans = allSpans(await spansOf(testId)).filter(
      (s) => attrsOf(s)['mcp.method.name'] === 'tools/call',
    );
    assert.equal(spans.length, 1);
    assert.equal(attrsOf(spans[0])['jsonrpc.request.id'], 'gone-sse');
    assert.equal(attrsOf(spans[0])['error.type'], undefined);
  });
});

/** Opens a legacy HTTP+SSE stream as the killed customer; answers its message endpoint's query (`sessionId=…`). */
async function openLegacy(ac) {
  const stream = await fetch(`${base}/main/legacy/mcp`, {
    headers: { accept: 'text/event-stream', apikey: 'key-kill' },
    signal: ac.signal,
  });
  const reader = stream.body.getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`no endpoint event: ${buf}`);
    buf += new TextDecoder().decode(value);
    const m = /event: endpoint\r?\ndata: (\S+)/.exec(buf);
    if (m) return new URL(m[1], base).search.slice(1);
  }
}

describe('hostile client: 2026-07-28 headers that lie to an upstream that does not check them', () => {
  // the legacy HTTP+SSE transport (SDK 1.x SSEServerTransport) runs whatever the body says and
  // ignores Mcp-Method / Mcp-Name: headers naming another method must not let a tools/call pass
  it('legacy HTTP+SSE message endpoint: Mcp-Method: tools/list over a tools/call body is enforced', async () => {
    const ac = new AbortController();
    const messages = `/main/legacy/messages?${await openLegacy(ac)}`;
    const send = (body, headers = {}) =>
      fetch(`${base}${messages}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', apikey: 'key-kill', ...headers },
        body: JSON.stringify(body),
      });
    const init = await send({
      jsonrpc: '2.0',
      id: 0,
      method: 'initialize',
      params: { protocolVersion: '2024-11-05', capabilities: {}, clientInfo: { name: 'raw', version: '1' } },
    });
    assert.equal(init.status, 202);
    await send({ jsonrpc: '2.0', method: 'notifications/initialized' });
    const before = await upstreamStats();
    const lie = { 'mcp-protocol-version': '2026-07-28', 'mcp-method': 'tools/list' };
    const res = await send(toolCall(1, 'echo', { text: 'unmetered?' }), lie);
    const text = await res.text();
    // agreeing 2026 headers there are not trusted either: the body is read, and the kill applies
    const agree = { 'mcp-protocol-version': '2026-07-28', 'mcp-method': 'tools/call', 'mcp-name': 'echo' };
    const res2 = await send(toolCall(2, 'echo', { text: 'unmetered?' }), agree);
    const text2 = await res2.text();
    await new Promise((r) => setTimeout(r, 300));
    ac.abort();
    assert.deepEqual(
      await upstreamStats(),
      before,
      `the tool ran for a killed customer (${res.status} ${text})`,
    );
    assert.equal(res.status, 400, text); // the headers disagree with the body: -32020, as the SDK would
    assert.equal(JSON.parse(text).error.code, -32020);
    assert.equal(res2.status, 403, text2);
    assert.equal(JSON.parse(text2).error.code, -32050);
  });

  it("legacy HTTP+SSE message endpoint with sessionId after 100 query arguments (all that Kong's get_query_arg reads): still read, still enforced", async () => {
    const ac = new AbortController();
    const session = await openLegacy(ac);
    const send = (search, body, headers = {}) =>
      fetch(`${base}/main/legacy/messages?${search}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', apikey: 'key-kill', ...headers },
        body: JSON.stringify(body),
      });
    const init = await send(session, {
      jsonrpc: '2.0',
      id: 0,
      method: 'initialize',
      params: { protocolVersion: '2024-11-05', capabilities: {}, clientInfo: { name: 'raw', version: '1' } },
    });
    assert.equal(init.status, 202);
    await send(session, { jsonrpc: '2.0', method: 'notifications/initialized' });
    const pad = Array.from({ length: 100 }, (_, i) => `p${i}=x`).join('&');
    const before = await upstreamStats();
    const lie = { 'mcp-protocol-version': '2026-07-28', 'mcp-method': 'tools/list' };
    const res = await send(`${pad}&${session}`, toolCall(1, 'echo', { text: 'unmetered?' }), lie);
    const text = await res.text();
    await new Promise((r) => setTimeout(r, 300));
    ac.abort();
    assert.deepEqual(
      await upstreamStats(),
      before,
      `the tool ran for a killed customer (${res.status} ${text})`,
    );
    assert.equal(res.status, 400, text); // the body is read: it disagrees with the headers (-32020)
  });
});

describe('hostile client: MCP headers spelled with underscores (Kong runs nginx with underscores_in_headers on)', () => {
  // Kong's get_header reads ngx.var.http_<name>, which nginx matches against MCP_Protocol_Version as well as
  // MCP-Protocol-Version; the 2.x SDK server (default options: legacy traffic served) sees no version header,
  // serves the body as a legacy request and never compares it with Mcp-Method / Mcp-Name
  const legacyCall = (name) => ({
    jsonrpc: '2.0',
    id: 1,
    method: 'tools/call',
    params: { name, arguments: {} },
  });
  for (const [name, key, headers] of [
    [
      "MCP_Protocol_Version + Mcp-Method: tools/list, a killed customer's call",
      'key-kill',
      { MCP_Protocol_Version: '2026-07-28', 'Mcp-Method': 'tools/list' },
    ],
    [
      'MCP_Protocol_Version + Mcp-Name naming echo over delete_everything',
      'key-alice',
      { MCP_Protocol_Version: '2026-07-28', 'Mcp-Method': 'tools/call', 'Mcp-Name': 'echo' },
    ],
    [
      'Mcp_Method: tools/list beside a real version header',
      'key-kill',
      { 'MCP-Protocol-Version': '2026-07-28', Mcp_Method: 'tools/list' },
    ],
  ]) {
    it(`${name}: refused (400), the tool never runs, nothing billed`, async () => {
      const testId = `underscore-${++seq}-${Date.now()}`;
      const before = await upstreamStats();
      const res = await post('/main/modern/mcp', legacyCall('delete_everything'), {
        ...headers,
        apikey: key,
        'x-test-id': testId,
      });
      const text = await res.text();
      assert.deepEqual(await upstreamStats(), before, `the tool ran (${res.status} ${text})`);
      assert.equal(res.status, 400, text);
      assert.equal(JSON.parse(text).error.code, -32600);
      await new Promise((r) => setTimeout(r, 100));
      const billed = allSpans(await spansOf(testId)).filter(
        (s) => attrsOf(s)['mcp.method.name'] === 'tools/call',
      );
      assert.equal(billed.length, 0);
    });
  }

  for (const [label, value] of [
    ['a tab before', '\ttools/call'],
    ['a tab after', 'tools/call\t'],
  ]) {
    it(`Mcp-Method with ${label} (nginx keeps it, the server strips it): a killed customer is refused, a paying one billed`, async () => {
      const call = JSON.stringify(modernCall(7, 'free?'));
      const headers = (key, testId) => [
        ['Content-Type', ' application/json'],
        ['Accept', ` ${ACCEPT}`],
        ['apikey', ` ${key}`],
        ['x-test-id', ` ${testId}`],
        ['MCP-Protocol-Version', ' 2026-07-28'],
        ['Mcp-Method', value],
        ['Mcp-Name', ' echo'],
      ];
      const before = await upstreamStats();
      const killed = await rawRequest(nginx.port, {
        path: '/main/modern/mcp',
        headers: headers('key-kill', `tab-k-${++seq}`),
        body: call,
      });
      assert.equal(
        (await upstreamStats()).modern_echo,
        before.modern_echo,
        `ran: ${killed.status} ${killed.body}`,
      );
      assert.equal(killed.status, 403, killed.body);
      const testId = `tab-a-${++seq}-${Date.now()}`;
      const paid = await rawRequest(nginx.port, {
        path: '/main/modern/mcp',
        headers: headers('key-alice', testId),
        body: call,
      });
      assert.equal(paid.status, 200, paid.body);
      assert.equal((await upstreamStats()).modern_echo, before.modern_echo + 1);
      await new Promise((r) => setTimeout(r, 100));
      const billed = allSpans(await spansOf(testId)).filter(
        (s) => attrsOf(s)['mcp.method.name'] === 'tools/call',
      );
      assert.equal(billed.length, 1);
    });
  }

  it('the same legacy body with the dashed headers: metered from the body, billed as the tool that runs', async () => {
    const testId = `underscore-${++seq}-${Date.now()}`;
    const before = await upstreamStats();
    const res = await post('/main/modern/mcp', legacyCall('delete_everything'), {
      apikey: 'key-alice',
      'x-test-id': testId,
    });
    const text = await res.text();
    assert.equal(res.status, 200, text);
    assert.equal((await upstreamStats()).modern_delete, before.modern_delete + 1);
    await new Promise((r) => setTimeout(r, 100));
    const billed = allSpans(await spansOf(testId)).filter(
      (s) => attrsOf(s)['mcp.method.name'] === 'tools/call',
    );
    assert.deepEqual(
      billed.map((s) => attrsOf(s)['gen_ai.tool.name']),
      ['delete_everything'],
    );
  });
});
