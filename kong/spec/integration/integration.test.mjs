// Integration: real nginx + lua-nginx-module running the plugin's access/header_filter/
// body_filter/log code through the PDK shim, a real redis-server, and a real MCP server
// (@modelcontextprotocol/sdk) upstream, driven by the SDK's own client and by raw HTTP.
// Run: node --test kong/spec/integration/ (from the repo root, after npm ci)

import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client as Client2, StreamableHTTPClientTransport as Http2 } from '@modelcontextprotocol/client';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { SSEClientTransport } from '@modelcontextprotocol/sdk/client/sse.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { LATEST_PROTOCOL_VERSION } from '@modelcontextprotocol/sdk/types.js';
import {
  MCP_ACCEPT as ACCEPT,
  allSpans,
  attrsOf,
  freePort,
  KONG_DIR,
  messagesOf,
  rawMcp,
  redis,
  redisCluster,
  startNginx,
  startRedis,
  startRedisCluster,
  startUpstream,
  stop,
  stopRedisCluster,
} from './harness.mjs';

const FIXTURE = join(KONG_DIR, 'fixtures', 'kong-otel-span.json');
const FIXTURE_2026 = join(KONG_DIR, 'fixtures', 'kong-otel-span-2026.json');
const FIXTURE_USAGE = join(KONG_DIR, 'fixtures', 'kong-otel-span-usage.json');
const PRODUCT = 'acme';
const CLIENT_TRACEPARENT = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01';

let redisMain;
let redisFrozen;
let cluster;
let upstream;
let nginx;
let base;
const { post, upstreamStats, spansOf, openSession } = rawMcp(
  () => base,
  () => upstream,
);
let billing; // the billing_endpoint: records every OTLP/JSON export the plugin sends itself
let testSeq = 0;

const consumers = {
  'key-alice': { id: '8f2e1c4a-0000-4000-8000-000000000001', username: 'alice', custom_id: 'cus_alice' },
  'key-kill': { id: '8f2e1c4a-0000-4000-8000-000000000002', username: 'bob', custom_id: 'cus_killed' },
  'key-throttle': {
    id: '8f2e1c4a-0000-4000-8000-000000000003',
    username: 'carol',
    custom_id: 'cus_throttled',
  },
  'key-batch': { id: '8f2e1c4a-0000-4000-8000-000000000004', username: 'dave', custom_id: 'cus_batch' },
};
const CLUSTER_CUSTOMERS = ['cus_cl_1', 'cus_cl_2', 'cus_cl_3', 'cus_cl_4', 'cus_cl_5', 'cus_cl_6'];
for (const c of CLUSTER_CUSTOMERS) consumers[`key-${c}`] = { id: c, username: c, custom_id: c };
consumers['key-cl-ok'] = { id: 'cl-ok', username: 'cus_cl_ok', custom_id: 'cus_cl_ok' };

before(async () => {
  redisMain = await startRedis();
  redisFrozen = await startRedis();
  upstream = await startUpstream();
  cluster = await startRedisCluster(3);
  const deadPort = await freePort();
  billing = await startBillingReceiver();
  const common = { product: PRODUCT, cache_ttl_ms: 200, redis_timeout_ms: 200 };
  nginx = await startNginx({
    upstreamPort: upstream.port,
    consumers,
    node: { id: '9d2a3b7c-5e4f-4a1b-8c2d-3e4f5a6b7c8d', version: '3.9.1' },
    plugins: {
      main: { ...common, redis_port: redisMain.port },
      verify: { ...common, redis_port: redisMain.port, meter_from_headers: false },
      billing: {
        ...common,
        redis_port: redisMain.port,
        billing_endpoint: `http://127.0.0.1:${billing.port}/v1/traces`,
        billing_authorization: 'Bearer tg_ingest_kong',
      },
      down_open: { ...common, redis_port: deadPort, fault_tolerant: true },
      down_closed: { ...common, redis_port: deadPort, fault_tolerant: false },
      frozen: { ...common, redis_port: redisFrozen.port, fault_tolerant: true },
      cluster: {
        ...common,
        fault_tolerant: false,
        redis_cluster_nodes: [{ ip: '127.0.0.1', port: cluster.nodes[0].port }],
      },
    },
  });
  base = `http://127.0.0.1:${nginx.port}`;
});

after(async () => {
  if (redisFrozen?.child) redisFrozen.child.kill('SIGCONT');
  const log = nginx?.errorLog() ?? '';
  await stop(nginx);
  await stop(upstream);
  await new Promise((r) => billing?.server.close(r));
  await stop(redisMain);
  await stop(redisFrozen);
  await stopRedisCluster(cluster);
  // any Lua error in a phase handler is a failure even when the response looked fine
  assert.doesNotMatch(log, /\[error\].*(runtime error|lua entry thread aborted)/, log);
});

/** An OTLP/HTTP receiver standing in for Tollgate's collector-processor (which the collector-processor's
 * own kong-fixture test runs for real). */
async function startBillingReceiver() {
  const received = [];
  const server = createServer((req, res) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      received.push({
        path: req.url,
        headers: req.headers,
        doc: JSON.parse(Buffer.concat(chunks).toString('utf8')),
      });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
  });
  const port = await freePort();
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return { server, port, received };
}

/** The exports received by billing_endpoint that hold a span with this JSON-RPC id. */
async function billedBy(requestId, timeoutMs = 3000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = billing.received.filter((r) =>
      allSpans([r.doc]).some((s) => attrsOf(s)['jsonrpc.request.id'] === requestId),
    );
    if (found.length > 0 || Date.now() > deadline) return found;
    await new Promise((r) => setTimeout(r, 25));
  }
}

function nextId(prefix) {
  testSeq += 1;
  return `${prefix}-${testSeq}-${Date.now()}`;
}

function toolCall(id, name, args, meta) {
  return {
    jsonrpc: '2.0',
    id,
    method: 'tools/call',
    params: { name, arguments: args, ...(meta ? { _meta: meta } : {}) },
  };
}

async function sdkClient(path, headers) {
  const transport = new StreamableHTTPClientTransport(new URL(`${base}${path}`), {
    requestInit: { headers },
  });
  const client = new Client({ name: 'tollgate-kong-it', version: '1.0.0' });
  await client.connect(transport);
  return client;
}

describe('allowed calls', () => {
  it("SDK client over JSON responses: the call is answered and Kong's root span carries the MCP attributes", async () => {
    const testId = nextId('sdk-json');
    const client = await sdkClient('/main/json/mcp', {
      apikey: 'key-alice',
      'x-agent-id': 'agent-7',
      'x-test-id': testId,
    });
    const result = await client.callTool({ name: 'echo', arguments: { text: 'hello' } });
    assert.deepEqual(result.content, [{ type: 'text', text: 'hello' }]);
    const sessionId = client.transport.sessionId;
    await client.close();

    const spans = allSpans(await spansOf(testId));
    const calls = spans.filter((s) => attrsOf(s)['mcp.method.name'] === 'tools/call');
    assert.equal(calls.length, 1, 'exactly one billable span (initialize and notifications are not metered)');
    const [root] = calls;
    assert.equal(root.name, 'kong');
    assert.equal(root.kind, 2);
    const a = attrsOf(root);
    assert.equal(a['gen_ai.tool.name'], 'echo');
    assert.equal(a['gen_ai.operation.name'], 'execute_tool');
    assert.equal(a['mcp.session.id'], sessionId);
    assert.equal(a['mcp.protocol.version'], LATEST_PROTOCOL_VERSION);
    assert.equal(a['tollgate.customer.id'], 'cus_alice');
    assert.equal(a['tollgate.agent.id'], 'agent-7');
    assert.equal(a['tollgate.mcp.transport'], 'streamable_http');
    assert.equal(a['tollgate.enforcement'], 'allow');
    assert.equal(a['network.transport'], 'tcp');
    assert.equal(a['http.response.status_code'], 200);
    assert.equal(a['error.type'], undefined);
  });

  it('SDK client over SSE responses: a tool error (isError) is seen in the stream', async () => {
    const testId = nextId('sdk-sse');
    const client = await sdkClient('/main/sse/mcp', { apikey: 'key-alice', 'x-test-id': testId });
    const result = await client.callTool({ name: 'echo', arguments: { text: 'fail' } });
    assert.equal(result.isError, true);
    await client.close();
    const root = allSpans(await spansOf(testId)).find((s) => attrsOf(s)['mcp.method.name'] === 'tools/call');
    assert.equal(attrsOf(root)['error.type'], 'tool_error');
  });

  it('unknown tool: the JSON-RPC error code becomes error.type', async () => {
    const testId = nextId('unknown-tool');
    const headers = await openSession('/main/json/mcp', { apikey: 'key-alice', 'x-test-id': testId });
    const res = await post('/main/json/mcp', toolCall(5, 'no_such_tool', {}), headers);
    const [msg] = await messagesOf(res);
    assert.equal(msg.id, 5);
    const root = allSpans(await spansOf(testId)).find((s) => attrsOf(s)['mcp.method.name'] === 'tools/call');
    const a = attrsOf(root);
    if (msg.error) {
      assert.equal(a['error.type'], String(msg.error.code));
      assert.equal(a['rpc.response.status_code'], String(msg.error.code));
    } else {
      // newer SDKs answer an unknown tool with a result flagged isError
      assert.equal(msg.result.isError, true);
      assert.equal(a['error.type'], 'tool_error');
    }
  });

  it('a 300 KB result with isError at the end is scanned across chunks', async () => {
    const testId = nextId('big');
    const headers = await openSession('/main/sse/mcp', { apikey: 'key-alice', 'x-test-id': testId });
    const res = await post('/main/sse/mcp', toolCall('big-1', 'big', { size: 300000, fail: true }), headers);
    const msgs = await messagesOf(res);
    const answer = msgs.find((m) => m.id === 'big-1');
    assert.equal(answer.result.content[0].text.length, 300000);
    const root = allSpans(await spansOf(testId)).find((s) => attrsOf(s)['mcp.method.name'] === 'tools/call');
    assert.equal(attrsOf(root)['error.type'], 'tool_error');
    assert.equal(attrsOf(root)['jsonrpc.request.id'], 'big-1');
  });

  it('a body larger than client_body_buffer_size (spilled to a file) is still metered', async () => {
    const testId = nextId('spill');
    const headers = await openSession('/main/json/mcp', { apikey: 'key-alice', 'x-test-id': testId });
    const res = await post('/main/json/mcp', toolCall(6, 'echo', { text: 'y'.repeat(20000) }), headers);
    assert.equal(res.status, 200);
    const [msg] = await messagesOf(res);
    assert.equal(msg.result.content[0].text.length, 20000);
    const root = allSpans(await spansOf(testId)).find((s) => attrsOf(s)['mcp.method.name'] === 'tools/call');
    assert.equal(attrsOf(root)['gen_ai.tool.name'], 'echo');
  });
});

describe('legacy HTTP+SSE transport', () => {
  it('SDK SSEClientTransport: GET stream and POSTs pass, the call is billed with transport sse', async () => {
    const testId = nextId('legacy');
    const transport = new SSEClientTransport(new URL(`${base}/main/legacy/mcp`), {
      requestInit: { headers: { apikey: 'key-alice', 'x-test-id': testId } },
    });
    const client = new Client({ name: 'tollgate-kong-it-legacy', version: '1.0.0' });
    await client.connect(transport);
    const result = await client.callTool({ name: 'echo', arguments: { text: 'fail' } });
    assert.equal(result.isError, true);
    const sessionId = transport._endpoint?.searchParams.get('sessionId');
    assert.ok(sessionId, 'the endpoint event carried a session id');
    const root = allSpans(await spansOf(testId)).find((s) => attrsOf(s)['mcp.method.name'] === 'tools/call');
    await client.close();
    const a = attrsOf(root);
    assert.equal(a['tollgate.mcp.transport'], 'sse');
    assert.equal(a['mcp.session.id'], sessionId);
    assert.equal(a['gen_ai.tool.name'], 'echo');
    assert.equal(a['http.response.status_code'], 202);
    // the result travels on the GET stream: the POST's outcome stays unknown
    assert.equal(a['error.type'], undefined);
  });
});

describe('SSE streaming', () => {
  it('passes events through as they are produced (not buffered until the end)', async () => {
    const testId = nextId('stream');
    const headers = await openSession('/main/sse/mcp', { apikey: 'key-alice', 'x-test-id': testId });
    const started = Date.now();
    const res = await post('/main/sse/mcp', toolCall(7, 'slow', { steps: 3, delayMs: 400 }), headers);
    assert.equal(res.headers.get('content-type'), 'text/event-stream');
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let text = '';
    let firstStepAt;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      text += decoder.decode(value, { stream: true });
      if (firstStepAt === undefined && text.includes('step 1')) firstStepAt = Date.now() - started;
    }
    const total = Date.now() - started;
    assert.ok(total >= 1200, `the tool takes >= 1.2 s (took ${total} ms)`);
    assert.ok(
      firstStepAt !== undefined && firstStepAt < total - 700,
      `first event after ${firstStepAt} ms, stream ended after ${total} ms`,
    );
    assert.match(text, /done after 3 steps/);
    const root = allSpans(await spansOf(testId)).find((s) => attrsOf(s)['mcp.method.name'] === 'tools/call');
    assert.equal(attrsOf(root)['gen_ai.tool.name'], 'slow');
    assert.equal(attrsOf(root)['error.type'], undefined);
  });
});

describe('enforcement from Redis', () => {
  it('killed customer: 403 with a JSON-RPC error, the upstream never sees the call', async () => {
    await redis(
      redisMain.port,
      'HSET',
      `tg:{${PRODUCT}:cus_killed}:state`,
      'c',
      'kill|hard_limit:spend_per_period|0||',
    );
    const testId = nextId('kill');
    const headers = await openSession('/main/json/mcp', { apikey: 'key-kill', 'x-test-id': testId });
    const before = await upstreamStats();
    const res = await post('/main/json/mcp', toolCall('k-1', 'echo', { text: 'hi' }), headers);
    assert.equal(res.status, 403);
    assert.equal(res.headers.get('retry-after'), null);
    const body = await res.json();
    assert.deepEqual(body, {
      jsonrpc: '2.0',
      id: 'k-1',
      error: {
        code: -32050,
        message: 'Tool call refused: tool calls are suspended for this customer',
        data: { reason: 'hard_limit:spend_per_period', action: 'kill', scope: 'customer' },
      },
    });
    assert.deepEqual(await upstreamStats(), before);
    const spans = allSpans(await spansOf(testId));
    assert.equal(
      spans.filter((s) => attrsOf(s)['mcp.method.name'] === 'tools/call').length,
      0,
      'a refused call is not billable',
    );
    const refused = spans.find((s) => attrsOf(s)['tollgate.enforcement'] === 'kill');
    assert.equal(attrsOf(refused)['tollgate.enforcement.reason'], 'hard_limit:spend_per_period');
    assert.equal(attrsOf(refused)['http.status_code'], 403);
  });

  it('the SDK client sees the kill as an HTTP 403 error', async () => {
    const client = await sdkClient('/main/json/mcp', { apikey: 'key-kill' });
    await assert.rejects(client.callTool({ name: 'echo', arguments: { text: 'x' } }), (err) => {
      assert.equal(err.code, 403);
      assert.match(err.message, /hard_limit:spend_per_period/);
      return true;
    });
    await client.close();
  });

  it('a lifted kill lets calls through again after cache_ttl_ms', async () => {
    await redis(
      redisMain.port,
      'HSET',
      `tg:{${PRODUCT}:cus_killed}:state`,
      's:lifted-session',
      'kill|operator|0||',
    );
    await redis(redisMain.port, 'HDEL', `tg:{${PRODUCT}:cus_killed}:state`, 'c');
    await new Promise((r) => setTimeout(r, 250));
    const headers = await openSession('/main/json/mcp', {
      apikey: 'key-kill',
      'x-test-id': nextId('lifted'),
    });
    const res = await post('/main/json/mcp', toolCall(1, 'echo', { text: 'back' }), headers);
    assert.equal(res.status, 200);
  });

  it("throttled customer: paced at the state's rate, 429 with Retry-After beyond it", async () => {
    await redis(
      redisMain.port,
      'HSET',
      `tg:{${PRODUCT}:cus_throttled}:state`,
      'c',
      'throttle|margin_guard:throttle|0|1|700',
    );
    const testId = nextId('throttle');
    const headers = await openSession('/main/json/mcp', { apikey: 'key-throttle', 'x-test-id': testId });
    const first = await post('/main/json/mcp', toolCall(1, 'echo', { text: 'a' }), headers);
    assert.equal(first.status, 200);
    await first.text();
    const second = await post('/main/json/mcp', toolCall(2, 'echo', { text: 'b' }), headers);
    assert.equal(second.status, 429);
    assert.equal(second.headers.get('retry-after'), '1');
    const body = await second.json();
    assert.equal(body.id, 2);
    assert.deepEqual(body.error.data, {
      reason: 'margin_guard:throttle',
      action: 'throttle',
      scope: 'customer',
      retryAfterSeconds: 1,
    });
    await new Promise((r) => setTimeout(r, 1050));
    const third = await post('/main/json/mcp', toolCall(3, 'echo', { text: 'c' }), headers);
    assert.equal(third.status, 200);
    const enforcement = allSpans(await spansOf(testId))
      .map((s) => attrsOf(s)['tollgate.enforcement'])
      .filter(Boolean);
    assert.deepEqual(enforcement, ['paced', 'throttle', 'paced']);
  });
});

describe('batches', () => {
  it('every tools/call of a batch is billable: root span for the first, a child span for the next', async () => {
    const testId = nextId('batch');
    const headers = await openSession('/main/json/mcp', { apikey: 'key-batch', 'x-test-id': testId });
    const res = await post(
      '/main/json/mcp',
      [
        toolCall(1, 'echo', { text: 'one' }),
        { jsonrpc: '2.0', id: 2, method: 'tools/list' },
        toolCall('three', 'echo', { text: 'fail' }),
      ],
      headers,
    );
    assert.equal(res.status, 200);
    const msgs = await messagesOf(res);
    assert.equal(msgs.length, 3);
    const spans = allSpans(await spansOf(testId));
    const billable = spans.filter((s) => attrsOf(s)['mcp.method.name'] === 'tools/call');
    assert.equal(billable.length, 2);
    const root = billable.find((s) => s.name === 'kong');
    const child = billable.find((s) => s.name === 'tools/call echo');
    assert.equal(attrsOf(root)['jsonrpc.request.id'], '1');
    assert.equal(attrsOf(root)['error.type'], undefined);
    assert.equal(attrsOf(child)['jsonrpc.request.id'], 'three');
    assert.equal(attrsOf(child)['error.type'], 'tool_error');
    assert.equal(attrsOf(child)['tollgate.customer.id'], 'cus_batch');
    assert.equal(child.parentSpanId, root.spanId);
    assert.equal(child.traceId, root.traceId);
    assert.equal(child.kind, 2);
    assert.notEqual(child.spanId, root.spanId);
  });

  it('a batch of a killed customer is refused with one error per request', async () => {
    await redis(
      redisMain.port,
      'HSET',
      `tg:{${PRODUCT}:cus_batch}:state`,
      'a:bad-agent',
      'kill|margin_guard:kill|0||-120',
    );
    const headers = await openSession('/main/sse/mcp', { apikey: 'key-batch', 'x-agent-id': 'bad-agent' });
    const res = await post(
      '/main/sse/mcp',
      [toolCall(1, 'echo', { text: 'x' }), { jsonrpc: '2.0', id: 2, method: 'tools/list' }],
      headers,
    );
    assert.equal(res.status, 403);
    const body = await res.json();
    assert.deepEqual(
      body.map((m) => m.id),
      [1, 2],
    );
    assert.equal(body[0].error.data.scope, 'agent');
  });
});

describe('malformed requests', () => {
  for (const [name, body, code] of [
    ['truncated JSON', '{"jsonrpc":"2.0","id":1,"method":"tools/call"', -32700],
    ['not JSON at all', 'tools/call please', -32700],
    ['a JSON number', '42', -32600],
  ]) {
    it(`${name}: 400 with a JSON-RPC error, never proxied`, async () => {
      const before = await upstreamStats();
      const res = await post('/main/json/mcp', body, { apikey: 'key-alice' });
      assert.equal(res.status, 400);
      const msg = await res.json();
      assert.equal(msg.jsonrpc, '2.0');
      assert.equal(msg.id, null);
      assert.equal(msg.error.code, code);
      assert.deepEqual(await upstreamStats(), before);
    });
  }
});

describe('Redis down', () => {
  it('fault_tolerant = true: the call passes, marked unenforced', async () => {
    const testId = nextId('down-open');
    const headers = await openSession('/down_open/json/mcp', { apikey: 'key-alice', 'x-test-id': testId });
    const res = await post('/down_open/json/mcp', toolCall(1, 'echo', { text: 'still works' }), headers);
    assert.equal(res.status, 200);
    const [msg] = await messagesOf(res);
    assert.equal(msg.result.content[0].text, 'still works');
    const root = allSpans(await spansOf(testId)).find((s) => attrsOf(s)['mcp.method.name'] === 'tools/call');
    assert.equal(attrsOf(root)['tollgate.enforcement'], 'unenforced');
  });

  it('fault_tolerant = false: 503 with Retry-After and a JSON-RPC error', async () => {
    const headers = await openSession('/down_closed/json/mcp', { apikey: 'key-alice' });
    const res = await post('/down_closed/json/mcp', toolCall(9, 'echo', { text: 'x' }), headers);
    assert.equal(res.status, 503);
    assert.equal(res.headers.get('retry-after'), '1');
    const body = await res.json();
    assert.equal(body.id, 9);
    assert.equal(body.error.code, -32052);
    assert.equal(body.error.data.reason, 'enforcement_unavailable');
  });

  it('a Redis that accepts connections but never answers costs at most redis_timeout_ms', async () => {
    const headers = await openSession('/frozen/json/mcp', { apikey: 'key-alice' });
    redisFrozen.child.kill('SIGSTOP');
    try {
      const started = Date.now();
      const res = await post('/frozen/json/mcp', toolCall(1, 'echo', { text: 'x' }), headers);
      const took = Date.now() - started;
      assert.equal(res.status, 200);
      assert.ok(took < 1500, `took ${took} ms`);
    } finally {
      redisFrozen.child.kill('SIGCONT');
    }
  });
});

describe('Redis Cluster', () => {
  it("one HMGET per call on the customer's slot, following MOVED from the seed node", async () => {
    const seed = cluster.nodes[0].port;
    let redirected = 0;
    for (const c of CLUSTER_CUSTOMERS) {
      const key = `tg:{${PRODUCT}:${c}}:state`;
      await redisCluster(seed, 'HSET', key, 'c', 'kill|hard_limit:calls_per_period|0||');
      try {
        await redis(seed, 'HGET', key, 'c');
      } catch (err) {
        if (/^MOVED /.test(err.message)) redirected++;
        else throw err;
      }
    }
    assert.ok(redirected > 0, 'some customers live on another node than the seed');
    for (const c of CLUSTER_CUSTOMERS) {
      const headers = await openSession('/cluster/json/mcp', { apikey: `key-${c}` });
      const res = await post('/cluster/json/mcp', toolCall(1, 'echo', { text: 'x' }), headers);
      assert.equal(res.status, 403, c);
      assert.equal((await res.json()).error.data.reason, 'hard_limit:calls_per_period');
    }
    const testId = nextId('cluster-ok');
    const headers = await openSession('/cluster/json/mcp', { apikey: 'key-cl-ok', 'x-test-id': testId });
    const res = await post('/cluster/json/mcp', toolCall(1, 'echo', { text: 'fine' }), headers);
    assert.equal(res.status, 200);
    const root = allSpans(await spansOf(testId)).find((s) => attrsOf(s)['mcp.method.name'] === 'tools/call');
    assert.equal(attrsOf(root)['tollgate.enforcement'], 'allow');
  });
});

const MODERN = '2026-07-28';
const UNSAMPLED = '00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00';

/** A 2026-07-28 tools/call as the 2.x client sends it: envelope in _meta, method and tool in headers. */
function modernCall(id, name, args, headerName = name, extraHeaders = {}) {
  return {
    body: toolCall(id, name, args, {
      'io.modelcontextprotocol/protocolVersion': MODERN,
      'io.modelcontextprotocol/clientInfo': { name: 'raw-2026', version: '1' },
      'io.modelcontextprotocol/clientCapabilities': {},
    }),
    headers: {
      'mcp-protocol-version': MODERN,
      'mcp-method': 'tools/call',
      'mcp-name': headerName,
      ...extraHeaders,
    },
  };
}

describe('MCP 2026-07-28 (a 2.x SDK server upstream)', () => {
  it('the 2.x SDK client pinned to 2026-07-28: metered from the headers, billed with an activity session', async () => {
    const testId = nextId('sdk2');
    const client = new Client2(
      { name: 'kong-it-2026', version: '1.0.0' },
      { versionNegotiation: { mode: { pin: MODERN } } },
    );
    await client.connect(
      new Http2(new URL(`${base}/main/modern/mcp`), {
        requestInit: { headers: { apikey: 'key-alice', 'x-agent-id': 'agent-2026', 'x-test-id': testId } },
      }),
    );
    const first = await client.callTool({ name: 'echo', arguments: { text: 'one' } });
    assert.deepEqual(first.content, [{ type: 'text', text: 'one' }]);
    await client.callTool({ name: 'echo', arguments: { text: 'two' } });
    await client.close();
    const calls = allSpans(await spansOf(testId)).filter(
      (s) => attrsOf(s)['mcp.method.name'] === 'tools/call',
    );
    await new Promise((r) => setTimeout(r, 100));
    calls.push(
      ...allSpans(await spansOf(testId)).filter((s) => attrsOf(s)['mcp.method.name'] === 'tools/call'),
    );
    assert.equal(calls.length, 2);
    const [a, b] = calls.map(attrsOf);
    assert.equal(a['gen_ai.tool.name'], 'echo');
    assert.equal(a['mcp.protocol.version'], MODERN);
    assert.equal(a['tollgate.customer.id'], 'cus_alice');
    assert.equal(a['tollgate.session.rule'], 'activity');
    assert.match(a['mcp.session.id'], /^act-[0-9a-f]{16}$/);
    assert.equal(b['mcp.session.id'], a['mcp.session.id'], 'one caller, one session');
    assert.match(a['jsonrpc.request.id'], /^\d+$/, 'the id, learnt from the answer');
    assert.equal(a['error.type'], undefined);
  });

  it('headers that disagree with the body: the 2.x server refuses (400, -32020), the tool never runs, nothing is billed', async () => {
    const testId = nextId('mismatch');
    const before = await upstreamStats();
    const { body, headers } = modernCall(9, 'delete_everything', {}, 'echo');
    const res = await post('/main/modern/mcp', body, {
      ...headers,
      apikey: 'key-alice',
      'x-test-id': testId,
    });
    assert.equal(res.status, 400);
    const msg = await res.json();
    assert.equal(msg.id, 9);
    assert.equal(msg.error.code, -32020);
    const after = await upstreamStats();
    assert.equal(after.modern_delete, before.modern_delete);
    assert.equal(after.modern_echo, before.modern_echo);
    const spans = allSpans(await spansOf(testId));
    assert.ok(spans.length > 0);
    for (const s of spans) assert.equal(attrsOf(s)['mcp.method.name'], undefined);
    assert.equal(attrsOf(spans[0])['tollgate.enforcement'], 'header_mismatch');
  });

  it('meter_from_headers = false: Kong reads the body and refuses the mismatch itself, before the upstream, as the SDK would', async () => {
    const testId = nextId('verify');
    const before = await upstreamStats();
    const { body, headers } = modernCall(9, 'delete_everything', {}, 'echo');
    const res = await post('/verify/modern/mcp', body, {
      ...headers,
      apikey: 'key-alice',
      'x-test-id': testId,
    });
    assert.equal(res.status, 400);
    const kongAnswer = await res.json();
    assert.deepEqual(await upstreamStats(), before, 'the upstream never saw it');
    // the same answer the 2.x server gives (previous test), byte for byte in its JSON-RPC error
    const direct = await fetch(`http://127.0.0.1:${upstream.port}/modern/mcp`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: ACCEPT, ...headers },
      body: JSON.stringify(body),
    });
    assert.equal(direct.status, 400);
    assert.deepEqual(kongAnswer, await direct.json());
    // agreeing headers pass
    const ok = modernCall(10, 'echo', { text: 'fine' });
    const okRes = await post('/verify/modern/mcp', ok.body, { ...ok.headers, apikey: 'key-alice' });
    assert.equal(okRes.status, 200);
  });

  it("traceparent -00 (tracing on, sampling_rate 1): the call is exported and billed in the caller's trace session; the rest of the trace is not", async () => {
    const testId = nextId('unsampled');
    const { body, headers } = modernCall(11, 'echo', { text: 'unsampled' });
    const res = await post('/main/modern/mcp', body, {
      ...headers,
      apikey: 'key-alice',
      traceparent: UNSAMPLED,
      'x-test-id': testId,
      'x-test-otel-sampling-rate': '1',
    });
    assert.equal(res.status, 200);
    const spans = allSpans(await spansOf(testId));
    assert.equal(spans.length, 1);
    const a = attrsOf(spans[0]);
    assert.equal(spans[0].traceId, '4bf92f3577b34da6a3ce929d0e0e4736');
    assert.equal(a['mcp.method.name'], 'tools/call');
    assert.equal(a['tollgate.trace.sampled'], false);
    assert.equal(a['mcp.session.id'], 'trace-4bf92f3577b34da6a3ce929d0e0e4736');
    assert.equal(a['tollgate.session.rule'], 'trace');

    // what Kong alone does with the same flags: a request that is not metered exports nothing
    const quiet = nextId('unsampled-list');
    const list = await post(
      '/main/modern/mcp',
      { jsonrpc: '2.0', id: 12, method: 'tools/list', params: { _meta: body.params._meta } },
      {
        ...headers,
        'mcp-method': 'tools/list',
        'mcp-name': '',
        apikey: 'key-alice',
        traceparent: UNSAMPLED,
        'x-test-id': quiet,
      },
    );
    await list.text();
    assert.deepEqual(await spansOf(quiet), []);
  });

  it('Kong tracing off: Kong exports nothing, the billing exporter sends the call to billing_endpoint', async () => {
    const testId = nextId('tracing-off');
    const { body, headers } = modernCall(13, 'echo', { text: testId });
    const res = await post('/billing/modern/mcp', body, {
      ...headers,
      apikey: 'key-alice',
      traceparent: UNSAMPLED,
      'x-test-id': testId,
      'x-test-tracing': 'off',
    });
    assert.equal(res.status, 200);
    assert.deepEqual(await spansOf(testId), [], "Kong's opentelemetry plugin exports nothing");
    const [mine] = await billedBy('13');
    assert.ok(mine, 'exported by the plugin');
    assert.equal(mine.path, '/v1/traces');
    assert.equal(mine.headers.authorization, 'Bearer tg_ingest_kong');
    const span = allSpans([mine.doc]).find((s) => attrsOf(s)['jsonrpc.request.id'] === '13');
    assert.equal(span.name, 'kong');
    assert.equal(span.kind, 2);
    assert.equal(span.traceId, '4bf92f3577b34da6a3ce929d0e0e4736');
    assert.equal(span.parentSpanId, '00f067aa0ba902b7');
    const a = attrsOf(span);
    assert.equal(a['mcp.method.name'], 'tools/call');
    assert.equal(a['tollgate.customer.id'], 'cus_alice');
    assert.equal(a['mcp.session.id'], 'trace-4bf92f3577b34da6a3ce929d0e0e4736');
    assert.equal(a['tollgate.trace.sampled'], false);
    const resource = Object.fromEntries(
      mine.doc.resourceSpans[0].resource.attributes.map((kv) => [kv.key, kv.value.stringValue]),
    );
    assert.equal(resource['service.name'], 'kong');
    assert.equal(resource['service.instance.id'], '9d2a3b7c-5e4f-4a1b-8c2d-3e4f5a6b7c8d');
  });

  it('Kong tracing off, older client (body decoded): billed through the exporter too', async () => {
    const testId = nextId('tracing-off-legacy');
    const headers = await openSession('/billing/json/mcp', { apikey: 'key-alice', 'x-test-tracing': 'off' });
    const res = await post('/billing/json/mcp', toolCall(77, 'echo', { text: testId }), {
      ...headers,
      'x-test-tracing': 'off',
      'x-test-id': testId,
    });
    assert.equal(res.status, 200);
    await res.text();
    const got = await billedBy('77');
    const span = got.flatMap((r) => allSpans([r.doc])).find((s) => attrsOf(s)['jsonrpc.request.id'] === '77');
    assert.ok(span);
    assert.equal(attrsOf(span)['mcp.session.id'], headers['mcp-session-id']);
    assert.equal(attrsOf(span)['tollgate.session.rule'], 'protocol');
  });

  it('Kong tracing on but no opentelemetry plugin on the route: the billing exporter sends the call, once', async () => {
    const testId = nextId('no-otel');
    const { body, headers } = modernCall(14, 'echo', { text: testId });
    const res = await post('/billing/modern/mcp', body, {
      ...headers,
      apikey: 'key-alice',
      'x-test-id': testId,
      'x-test-otel': 'off',
    });
    assert.equal(res.status, 200);
    await res.text();
    assert.deepEqual(await spansOf(testId), [], 'no opentelemetry plugin: Kong exports nothing');
    const got = await billedBy('14');
    assert.equal(got.length, 1, 'exported by the plugin, once');
    const spans = allSpans([got[0].doc]).filter((s) => attrsOf(s)['jsonrpc.request.id'] === '14');
    assert.equal(spans.length, 1);
    assert.equal(spans[0].name, 'kong');
    assert.match(spans[0].traceId, /^[0-9a-f]{32}$/);
    assert.match(spans[0].spanId, /^[0-9a-f]{16}$/);
    const a = attrsOf(spans[0]);
    assert.equal(a['mcp.method.name'], 'tools/call');
    assert.equal(a['gen_ai.tool.name'], 'echo');
    assert.equal(a['tollgate.customer.id'], 'cus_alice');
    assert.equal(a['tollgate.trace.sampled'], false);
  });

  it('Kong tracing on with the opentelemetry plugin: only Kong exports the call, the billing exporter stays quiet', async () => {
    const testId = nextId('with-otel');
    const { body, headers } = modernCall(15, 'echo', { text: testId });
    const res = await post('/billing/modern/mcp', body, {
      ...headers,
      apikey: 'key-alice',
      'x-test-id': testId,
    });
    assert.equal(res.status, 200);
    await res.text();
    const kong = allSpans(await spansOf(testId)).filter((s) => attrsOf(s)['jsonrpc.request.id'] === '15');
    assert.equal(kong.length, 1, "exported by Kong's opentelemetry plugin");
    assert.deepEqual(await billedBy('15', 500), [], 'not also by the billing exporter');
  });
});

// Volatile values (random ids, times, ports, per-run ids) replaced so the export compares
// byte for byte with the committed fixture.
/** The normalized export equals the recorded fixture (TOLLGATE_WRITE_FIXTURE=1 records it first). */
function assertFixture(file, normalized) {
  if (process.env.TOLLGATE_WRITE_FIXTURE === '1')
    writeFileSync(file, `${JSON.stringify(normalized, null, 2)}\n`);
  assert.deepEqual(normalized, JSON.parse(readFileSync(file, 'utf8')));
}

function normalizeExport(doc, { keepSession = false } = {}) {
  const copy = structuredClone(doc);
  const spans = allSpans([copy]);
  const times = { start: '1747728000000000000', end: '1747728000042000000' };
  for (const span of spans) {
    span.spanId = span.name === 'kong' ? 'b7ad6b7169203331' : span.spanId;
    span.startTimeUnixNano = times.start;
    span.endTimeUnixNano = times.end;
    for (const attr of span.attributes) {
      const fixed = {
        'kong.request.id': 'c3f5a0e2b1d94e7f8a6b5c4d3e2f1a0b',
        'mcp.session.id': keepSession ? undefined : '6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b',
        // Kong reports the route's first path; the shim's location carries the plugin config name
        'http.route': '/mcp',
        'http.url': 'http://kong.example:8000/mcp',
        'http.host': 'kong.example',
      }[attr.key];
      if (fixed) attr.value = { stringValue: fixed };
    }
  }
  return copy;
}

describe('fixture', () => {
  it('kong/fixtures/kong-otel-span.json is what this code path exports for one billed tools/call', async () => {
    const testId = nextId('fixture');
    const headers = await openSession('/main/json/mcp', {
      apikey: 'key-alice',
      'x-agent-id': 'agent-7',
      'x-test-id': testId,
    });
    await fetch(`${base}/_spans?id=${testId}`); // drop the session set-up exports
    const res = await post(
      '/main/json/mcp',
      toolCall(42, 'echo', { text: 'bill me' }, { traceparent: CLIENT_TRACEPARENT }),
      headers,
    );
    assert.equal(res.status, 200);
    await res.text();
    const exports = await spansOf(testId);
    assert.equal(exports.length, 1);
    const [root] = allSpans(exports);
    // the client's _meta.traceparent became the trace of Kong's root span
    assert.equal(root.traceId, '4bf92f3577b34da6a3ce929d0e0e4736');
    assert.equal(root.parentSpanId, '00f067aa0ba902b7');
    const normalized = normalizeExport(exports[0]);
    assertFixture(FIXTURE, normalized);
  });

  it('kong/fixtures/kong-otel-span-2026.json: a 2026-07-28 call metered from its headers, traceparent -00, billed anyway', async () => {
    const testId = nextId('fixture-2026');
    const { body, headers } = modernCall(43, 'echo', { text: 'bill me' });
    const res = await post('/main/modern/mcp', body, {
      ...headers,
      apikey: 'key-alice',
      'x-agent-id': 'agent-7',
      traceparent: UNSAMPLED,
      'x-test-id': testId,
    });
    assert.equal(res.status, 200);
    await res.text();
    const exports = await spansOf(testId);
    assert.equal(exports.length, 1);
    const normalized = normalizeExport(exports[0], { keepSession: true });
    assertFixture(FIXTURE_2026, normalized);
  });

  it('kong/fixtures/kong-otel-span-usage.json: a call whose tool reported usage in its result _meta', async () => {
    const testId = nextId('fixture-usage');
    const { body, headers } = modernCall(44, 'metered', {
      usage: {
        'gen_ai.usage.input_tokens': 1200,
        'gen_ai.usage.output_tokens': 300,
        'gen_ai.usage.cache_read.input_tokens': 1000,
        'tollgate.usage.rows_scanned': 42,
        'tollgate.usage.gb_seconds': 0.25,
      },
    });
    const res = await post('/main/modern/mcp', body, {
      ...headers,
      apikey: 'key-alice',
      'x-agent-id': 'agent-7',
      traceparent: CLIENT_TRACEPARENT,
      'x-test-id': testId,
    });
    assert.equal(res.status, 200);
    await res.text();
    const exports = await spansOf(testId);
    assert.equal(exports.length, 1);
    const normalized = normalizeExport(exports[0], { keepSession: true });
    assertFixture(FIXTURE_USAGE, normalized);
  });
});

describe('usage the upstream reports (result._meta["tollgate/usage"], Tollgate-Usage header)', () => {
  const USAGE = {
    'gen_ai.usage.input_tokens': 1200,
    'gen_ai.usage.output_tokens': 300,
    'gen_ai.usage.cache_read.input_tokens': 1000,
    'tollgate.usage.rows_scanned': 42,
  };

  /** The tools/call span of an export, and its attributes with their OTLP value types. */
  async function usageSpanOf(testId) {
    const spans = allSpans(await spansOf(testId)).filter(
      (s) => attrsOf(s)['mcp.method.name'] === 'tools/call',
    );
    assert.equal(spans.length, 1);
    return Object.fromEntries(spans[0].attributes.map(({ key, value }) => [key, value]));
  }

  it('a 2.x SDK server tool reports usage in _meta: on the billed span as doubles; the client still gets it', async () => {
    const testId = nextId('usage-sdk2');
    const client = new Client2(
      { name: 'kong-it-usage', version: '1.0.0' },
      { versionNegotiation: { mode: { pin: MODERN } } },
    );
    await client.connect(
      new Http2(new URL(`${base}/main/modern/mcp`), {
        requestInit: { headers: { apikey: 'key-alice', 'x-test-id': testId } },
      }),
    );
    const result = await client.callTool({ name: 'metered', arguments: { usage: USAGE } });
    await client.close();
    assert.deepEqual(result._meta?.['tollgate/usage'], USAGE, 'the answer reaches the client unchanged');
    const a = await usageSpanOf(testId);
    assert.deepEqual(a['gen_ai.usage.input_tokens'], { doubleValue: 1200 });
    assert.deepEqual(a['gen_ai.usage.output_tokens'], { doubleValue: 300 });
    assert.deepEqual(a['gen_ai.usage.cache_read.input_tokens'], { doubleValue: 1000 });
    assert.deepEqual(a['tollgate.usage.rows_scanned'], { doubleValue: 42 });
    assert.deepEqual(a['gen_ai.tool.name'], { stringValue: 'metered' });
    assert.equal(a['tollgate.kong.usage_dropped'], undefined);
  });

  it('a 1.x SSE answer after log notifications and 200 kB of text, through nginx chunk by chunk', async () => {
    const testId = nextId('usage-sse');
    const headers = await openSession('/main/sse/mcp', { apikey: 'key-alice', 'x-test-id': testId });
    await fetch(`${base}/_spans?id=${testId}`); // drop the session set-up exports
    const res = await post(
      '/main/sse/mcp',
      toolCall(61, 'metered', { usage: USAGE, pad: 200000, steps: 3 }),
      headers,
    );
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type'), /^text\/event-stream/);
    const answer = (await messagesOf(res)).find((m) => m.id === 61);
    assert.deepEqual(answer.result._meta['tollgate/usage'], USAGE);
    const a = await usageSpanOf(testId);
    assert.deepEqual(a['gen_ai.usage.input_tokens'], { doubleValue: 1200 });
    assert.deepEqual(a['tollgate.usage.rows_scanned'], { doubleValue: 42 });
  });

  it('bad values reach the span as they came, for Tollgate to reject; other attributes cannot be set', async () => {
    const testId = nextId('usage-bad');
    const { body, headers } = modernCall(62, 'metered', {
      usage: {
        'tollgate.usage.rows_scanned': -5,
        'gen_ai.usage.input_tokens': 'lots',
        'tollgate.customer.id': 'cus_someone_else',
        'error.type': 'none',
      },
    });
    const res = await post('/main/modern/mcp', body, {
      ...headers,
      apikey: 'key-alice',
      'x-test-id': testId,
    });
    assert.equal(res.status, 200);
    await res.text();
    const a = await usageSpanOf(testId);
    assert.deepEqual(a['tollgate.usage.rows_scanned'], { doubleValue: -5 });
    assert.deepEqual(a['gen_ai.usage.input_tokens'], { stringValue: 'lots' });
    assert.deepEqual(a['tollgate.customer.id'], { stringValue: 'cus_alice' });
    assert.equal(a['error.type'], undefined);
    assert.deepEqual(a['tollgate.kong.usage_dropped'], { doubleValue: 2 });
  });

  it('Tollgate-Usage header: read, and removed from what the client gets', async () => {
    const testId = nextId('usage-header');
    const { body, headers } = modernCall(63, 'echo', { text: 'hi' });
    const direct = await fetch(`http://127.0.0.1:${upstream.port}/modern/mcp`, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: ACCEPT,
        ...headers,
        'x-test-usage-header': 'tollgate.usage.pages=3',
      },
      body: JSON.stringify(body),
    });
    assert.equal(direct.headers.get('tollgate-usage'), 'tollgate.usage.pages=3', 'the upstream sets it');
    await direct.text();
    const res = await post('/main/modern/mcp', body, {
      ...headers,
      apikey: 'key-alice',
      'x-test-id': testId,
      'x-test-usage-header': 'gen_ai.usage.output_tokens=77, tollgate.usage.pages=3',
    });
    assert.equal(res.status, 200);
    assert.equal(res.headers.get('tollgate-usage'), null);
    await res.text();
    const a = await usageSpanOf(testId);
    assert.deepEqual(a['gen_ai.usage.output_tokens'], { doubleValue: 77 });
    assert.deepEqual(a['tollgate.usage.pages'], { doubleValue: 3 });
  });
});
