// Bench driver: nginx proxying to a static JSON-RPC upstream, measured with wrk, without and
// with the tollgate plugin code path (state cached, and Redis read on every call), for an older
// client (the JSON-RPC body is read and decoded) and a 2026-07-28 client whose Mcp-Method /
// Mcp-Name headers are metered without reading the body; and with quota leases (a real Tollgate grants
// them; in steady state each call takes from the node's lease in its shared dict, renewals run in the
// background); and with an answer whose result reports usage in _meta (the plugin reads it into the span).
// Usage: node kong/bench/bench.mjs [durationSeconds] [connections]

import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEV_INGEST_KEY, startTollgate } from '../../bench/lib.mjs';
import { freePort, KONG_DIR, startNginx, startRedis, stop } from '../spec/integration/harness.mjs';

// the development ingest key's product; limits far away, so the bench measures steady state
const LEASE_PLANS = `currency: USD
products:
  demo-mcp:
    defaultPlan: roomy
    plans:
      roomy:
        tools: { "*": { price: { perCall: "0.000001" } } }
        limits: { callsPerDay: 1000000000, spendPerPeriod: "1000000" }
        marginGuard: { enabled: false }
`;

const duration = Number(process.argv[2] ?? 5);
const connections = Number(process.argv[3] ?? 32);

const BODY = JSON.stringify({
  jsonrpc: '2.0',
  id: 1,
  method: 'tools/call',
  params: { name: 'search', arguments: { q: 'kong' } },
});
// what an SDK 2.x client sends on 2026-07-28: the envelope in _meta, the method and tool in headers
const BODY_2026 = JSON.stringify({
  jsonrpc: '2.0',
  id: 1,
  method: 'tools/call',
  params: {
    name: 'search',
    arguments: { q: 'kong' },
    _meta: {
      'io.modelcontextprotocol/protocolVersion': '2026-07-28',
      'io.modelcontextprotocol/clientInfo': { name: 'bench', version: '1.0.0' },
      'io.modelcontextprotocol/clientCapabilities': {},
    },
  },
});

function wrk(url, scriptFile) {
  const out = execFileSync(
    'wrk',
    ['-t1', `-c${connections}`, `-d${duration}s`, '--latency', '-s', scriptFile, url],
    {
      encoding: 'utf8',
    },
  );
  const rps = Number(/Requests\/sec:\s+([\d.]+)/.exec(out)?.[1]);
  const lat = (p) => {
    const m = new RegExp(`\\s${p}%\\s+([\\d.]+)(us|ms|s)`).exec(out);
    if (!m) return Number.NaN;
    const v = Number(m[1]);
    return m[2] === 'us' ? v / 1000 : m[2] === 's' ? v * 1000 : v;
  };
  const non2xx = Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(out)?.[1] ?? 0);
  return { rps, p50: lat(50), p99: lat(99), non2xx };
}

const redisSrv = await startRedis();
const plansDir = mkdtempSync(join(tmpdir(), 'tollgate-kong-bench-'));
writeFileSync(join(plansDir, 'plans.yaml'), LEASE_PLANS);
const tollgate = await startTollgate([
  '--plans',
  join(plansDir, 'plans.yaml'),
  '--redis-url',
  `redis://127.0.0.1:${redisSrv.port}`,
]);
const rows = [];
let nginx;
let leaseStats;
let leaseMicro;
try {
  const staticPort = await freePort();
  nginx = await startNginx({
    template: join(KONG_DIR, 'bench', 'nginx.conf.tmpl'),
    vars: { STATIC_PORT: staticPort },
    upstreamPort: staticPort,
    logLevel: 'warn',
    consumers: { 'key-bench': { id: 'b', username: 'bench', custom_id: 'cus_bench' } },
    node: { id: 'bench-node', version: '3.9.1' },
    plugins: {
      cached: { product: 'acme', redis_port: redisSrv.port },
      uncached: { product: 'acme', redis_port: redisSrv.port, cache_ttl_ms: 0 },
      leased: {
        product: 'demo-mcp',
        redis_port: redisSrv.port,
        leases: true,
        billing_endpoint: `${tollgate.otlpUrl}/v1/traces`,
        billing_authorization: `Bearer ${DEV_INGEST_KEY}`,
      },
    },
  });

  const scriptFile = join(nginx.prefix, 'post.lua');
  writeFileSync(
    scriptFile,
    `wrk.method = "POST"
wrk.body = ${JSON.stringify(BODY)}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["apikey"] = "key-bench"
wrk.headers["X-Agent-Id"] = "agent-1"
wrk.headers["Mcp-Session-Id"] = "bench-session"
`,
  );
  const script2026 = join(nginx.prefix, 'post-2026.lua');
  writeFileSync(
    script2026,
    `wrk.method = "POST"
wrk.body = ${JSON.stringify(BODY_2026)}
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
wrk.headers["apikey"] = "key-bench"
wrk.headers["X-Agent-Id"] = "agent-1"
wrk.headers["Mcp-Protocol-Version"] = "2026-07-28"
wrk.headers["Mcp-Method"] = "tools/call"
wrk.headers["Mcp-Name"] = "search"
`,
  );

  const base = `http://127.0.0.1:${nginx.port}`;
  wrk(`${base}/bare/mcp`, scriptFile); // warm-up
  for (const [name, path, script, baselineOf] of [
    ['nginx proxy, no Lua', '/bare/mcp', scriptFile],
    ['+ Kong-like Lua runloop', '/runloop_only/mcp', scriptFile, 'body'],
    ['+ tollgate, state cached', '/cached/mcp', scriptFile],
    ['+ tollgate, HMGET every call', '/uncached/mcp', scriptFile],
    ['2026 headers: Kong-like runloop', '/runloop_only/mcp', script2026, 'headers'],
    ['2026 headers: + tollgate cached', '/cached/mcp', script2026],
    ['2026 headers: + tollgate HMGET', '/uncached/mcp', script2026],
    ['2026 headers: + tollgate cached, leases', '/leased/mcp', script2026],
    // the tool reports 4 usage entries in its result's _meta: what reading them costs
    ['usage in _meta: Kong-like runloop', '/runloop_only/mcp?usage=1', script2026, 'usage'],
    ['usage in _meta: + tollgate cached', '/cached/mcp?usage=1', script2026],
  ]) {
    rows.push({ name, baselineOf, ...wrk(`${base}${path}`, script) });
  }
  leaseStats = await (await fetch(`${base}/_lease_stats`)).json();
  // the lease's own cost per call, alone: leases.take() in a loop on the worker, real shared dict
  leaseMicro = await (await fetch(`${base}/_lease_micro?n=1000000`)).json();
} finally {
  const log = nginx ? nginx.errorLog() : '';
  await stop(nginx);
  await tollgate.stop();
  await stop(redisSrv);
  rmSync(plansDir, { recursive: true, force: true });
  if (/\[error\]/.test(log)) console.error(log);
}

const pad = (s, n) => String(s).padEnd(n);
const num = (v, d = 0) => (Number.isFinite(v) ? v.toFixed(d) : 'n/a');
console.log(
  `wrk -t1 -c${connections} -d${duration}s, 1 nginx worker, loopback, ${BODY.length}-byte tools/call (older client), ${BODY_2026.length}-byte with 2026-07-28 headers`,
);
console.log(
  `${pad('path', 42)}${pad('req/s', 10)}${pad('p50 ms', 9)}${pad('p99 ms', 9)}${pad('non-2xx', 9)}${pad('req/s ratio', 13)}${pad('CPU us/req', 12)}added CPU vs runloop`,
);
let baseline = rows[1];
for (const r of rows) {
  if (r.baselineOf) baseline = r; // each block is compared with the runloop on the same requests
  // one nginx worker saturated: 1/rps is the worker's time per request
  const added = (1 / r.rps - 1 / baseline.rps) * 1e6;
  const pct = (baseline.rps / r.rps - 1) * 100;
  console.log(
    `${pad(r.name, 42)}${pad(num(r.rps), 10)}${pad(num(r.p50, 3), 9)}${pad(num(r.p99, 3), 9)}${pad(r.non2xx, 9)}${pad(`${num(r.rps / baseline.rps, 2)}x`, 13)}${pad(num(added, 0), 12)}${num(pct, 1)} %`,
  );
}
console.log('wrk, nginx, redis-server and the upstream share the machine: treat the numbers as relative.');
const stats = leaseStats;
if (stats) console.log(`leases on the node during the leased run: ${JSON.stringify(stats)}`);
if (leaseMicro)
  console.log(
    `leases.take() alone (steady state, real lua_shared_dict, ${leaseMicro.n} calls): ${num(leaseMicro.ns_per_take, 0)} ns per call`,
  );
if (rows.some((r) => r.non2xx > 0 || !Number.isFinite(r.rps))) process.exitCode = 1;
