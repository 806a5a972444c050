// Starts what the integration run needs, on free loopback ports, and stops it again:
// redis-server instances, the MCP upstream (mcp-server.mjs) and nginx with the plugin shim.

import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
export const KONG_DIR = resolve(HERE, '..', '..');

export function freePort() {
  return new Promise((res, rej) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', rej);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => res(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what, probe, timeoutMs = 10000) {
  const until = Date.now() + timeoutMs;
  let last;
  while (Date.now() < until) {
    try {
      if (await probe()) return;
    } catch (err) {
      last = err;
    }
    await sleep(50);
  }
  throw new Error(`${what} did not become ready${last ? `: ${last.message}` : ''}`);
}

function tcpOpen(port) {
  return new Promise((res) => {
    const s = createConnection({ port, host: '127.0.0.1' }, () => {
      s.destroy();
      res(true);
    });
    s.on('error', () => res(false));
  });
}

/** Sends one Redis command (RESP) and returns the parsed reply; errors reject. */
export function redis(port, ...args) {
  return new Promise((res, rej) => {
    const sock = createConnection({ port, host: '127.0.0.1' });
    let buf = Buffer.alloc(0);
    sock.setTimeout(3000, () => {
      sock.destroy();
      rej(new Error('redis timeout'));
    });
    sock.on('error', rej);
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      const text = buf.toString('utf8');
      const eol = text.indexOf('\r\n');
      if (eol < 0) return;
      const type = text[0];
      const line = text.slice(1, eol);
      if (type === '$') {
        const len = Number(line);
        if (len < 0) return done(null);
        if (buf.length < eol + 2 + len + 2) return;
        return done(buf.subarray(eol + 2, eol + 2 + len).toString('utf8'));
      }
      if (type === '-') return fail(new Error(line));
      if (type === ':') return done(Number(line));
      return done(line);
    });
    function done(v) {
      sock.destroy();
      res(v);
    }
    function fail(e) {
      sock.destroy();
      rej(e);
    }
    const parts = [`*${args.length}\r\n`];
    for (const a of args) {
      const s = String(a);
      parts.push(`$${Buffer.byteLength(s)}\r\n${s}\r\n`);
    }
    sock.write(parts.join(''));
  });
}

function startProcess(cmd, args, opts = {}) {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  child.output = '';
  child.stdout.on('data', (d) => {
    child.output += d;
  });
  child.stderr.on('data', (d) => {
    child.output += d;
  });
  return child;
}

export async function startRedis() {
  const port = await freePort();
  const child = startProcess('redis-server', [
    '--port',
    String(port),
    '--bind',
    '127.0.0.1',
    '--save',
    '',
    '--appendonly',
    'no',
  ]);
  await waitFor(`redis-server on ${port}`, async () => (await redis(port, 'PING')) === 'PONG');
  return { port, child };
}

/** A Redis Cluster of `n` masters (no replicas), slots split by `redis-cli --cluster create`. */
export async function startRedisCluster(n = 3) {
  const nodes = [];
  const dir = mkdtempSync(join(tmpdir(), 'tollgate-rc-'));
  for (let i = 0; i < n; i++) {
    const port = await freePort();
    const child = startProcess(
      'redis-server',
      [
        '--port',
        String(port),
        '--bind',
        '127.0.0.1',
        '--save',
        '',
        '--appendonly',
        'no',
        '--cluster-enabled',
        'yes',
        '--cluster-config-file',
        join(dir, `nodes-${port}.conf`),
      ],
      { cwd: dir },
    );
    nodes.push({ port, child });
  }
  for (const node of nodes) {
    await waitFor(`cluster node ${node.port}`, async () => (await redis(node.port, 'PING')) === 'PONG');
  }
  const create = startProcess('redis-cli', [
    '--cluster',
    'create',
    ...nodes.map((x) => `127.0.0.1:${x.port}`),
    '--cluster-replicas',
    '0',
    '--cluster-yes',
  ]);
  const code = await new Promise((r) => create.on('exit', r));
  if (code !== 0) throw new Error(`redis-cli --cluster create failed: ${create.output}`);
  await waitFor(
    'cluster state ok',
    async () => {
      for (const node of nodes) {
        const info = await redis(node.port, 'CLUSTER', 'INFO');
        if (!String(info).includes('cluster_state:ok')) return false;
      }
      return true;
    },
    20000,
  );
  return { nodes, dir };
}

/** Runs redis-cli -c (follows MOVED) against a cluster node. */
export function redisCluster(port, ...args) {
  return new Promise((res, rej) => {
    const child = startProcess('redis-cli', ['-c', '-p', String(port), ...args.map(String)]);
    child.on('exit', (code) => (code === 0 ? res(child.output.trim()) : rej(new Error(child.output))));
  });
}

export async function stopRedisCluster(cluster) {
  if (!cluster) return;
  for (const node of cluster.nodes) await stop(node);
  rmSync(cluster.dir, { recursive: true, force: true });
}

export async function startUpstream() {
  const port = await freePort();
  const child = startProcess(process.execPath, [join(HERE, 'mcp-server.mjs'), String(port)], {
    cwd: KONG_DIR,
  });
  await waitFor(`MCP upstream on ${port}`, () => tcpOpen(port));
  return { port, child };
}

/**
 * Starts nginx with the shim. plugins: { <name>: tollgate config }; consumers: { <apikey>: consumer }.
 * opts.workers, opts.logLevel, opts.accessLog.
 */
export async function startNginx({
  upstreamPort,
  plugins,
  consumers,
  node,
  workers = 1,
  logLevel = 'info',
  accessLog,
  template = join(HERE, 'nginx.conf.tmpl'),
  vars = {},
}) {
  const prefix = mkdtempSync(join(tmpdir(), 'tollgate-nginx-'));
  for (const d of ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']) mkdirSync(join(prefix, d));
  const port = await freePort();
  // a port nothing listens on (the /<name>/refused/ location: connect refused)
  const deadPort = await freePort();
  const confFile = join(prefix, 'tollgate.json');
  writeFileSync(confFile, JSON.stringify({ plugins, consumers, node }));
  let tmpl = readFileSync(template, 'utf8');
  for (const [k, v] of Object.entries(vars)) tmpl = tmpl.replaceAll(`{{${k}}}`, String(v));
  const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  const conf = tmpl
    .replaceAll('{{USER_LINE}}', isRoot ? 'user root root;' : '')
    .replaceAll('{{PREFIX}}', prefix)
    .replaceAll('{{WORKERS}}', String(workers))
    .replaceAll('{{LOG_LEVEL}}', logLevel)
    .replaceAll('{{ACCESS_LOG}}', accessLog ?? join(prefix, 'access.log'))
    .replaceAll('{{KONG_DIR}}', KONG_DIR)
    .replaceAll('{{CONF_FILE}}', confFile)
    .replaceAll('{{UPSTREAM_PORT}}', String(upstreamPort))
    .replaceAll('{{NGINX_PORT}}', String(port))
    .replaceAll('{{DEAD_PORT}}', String(deadPort));
  writeFileSync(join(prefix, 'nginx.conf'), conf);
  const child = startProcess('nginx', ['-p', prefix, '-c', join(prefix, 'nginx.conf')]);
  let exited = false;
  child.on('exit', () => {
    exited = true;
  });
  try {
    await waitFor(`nginx on ${port}`, async () => {
      if (exited) throw new Error(`nginx exited: ${child.output}${errorLog(prefix)}`);
      return tcpOpen(port);
    });
  } catch (err) {
    await stop({ child, prefix });
    throw err;
  }
  return { port, child, prefix, errorLog: () => errorLog(prefix) };
}

function errorLog(prefix) {
  try {
    return readFileSync(join(prefix, 'error.log'), 'utf8');
  } catch {
    return '';
  }
}

export async function stop(proc, { keepDir = false } = {}) {
  if (!proc?.child) return;
  const { child } = proc;
  if (child.exitCode === null && child.signalCode === null) {
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(timer);
  }
  if (proc.prefix && !keepDir) rmSync(proc.prefix, { recursive: true, force: true });
}

// --- an MCP client over raw HTTP, for the specs that speak to nginx directly -----------------------------

export const MCP_ACCEPT = 'application/json, text/event-stream';
/** The protocol version the raw sessions open with (the SDK 1.x upstream speaks it). */
export const MCP_PROTOCOL = '2025-06-18';

/** A span's attributes as a plain object (int values as numbers). */
export function attrsOf(span) {
  const out = {};
  for (const { key, value } of span.attributes ?? []) {
    out[key] =
      value.stringValue ??
      value.doubleValue ??
      (value.intValue !== undefined ? Number(value.intValue) : value.boolValue);
  }
  return out;
}

/** Every span of a list of OTLP/JSON export requests. */
export function allSpans(exports) {
  return exports.flatMap((e) => e.resourceSpans.flatMap((rs) => rs.scopeSpans.flatMap((ss) => ss.spans)));
}

/** Reads a JSON or SSE response into its JSON-RPC messages. */
export async function messagesOf(res) {
  const text = await res.text();
  if ((res.headers.get('content-type') ?? '').startsWith('text/event-stream')) {
    return text
      .split(/\r?\n\r?\n/)
      .map((ev) =>
        ev
          .split(/\r?\n/)
          .filter((l) => l.startsWith('data:'))
          .map((l) => l.slice(5).trimStart())
          .join('\n'),
      )
      .filter((d) => d.length > 0)
      .map((d) => JSON.parse(d));
  }
  return text ? [JSON.parse(text)].flat() : [];
}

/**
 * Raw-HTTP helpers bound to the nginx under test and the upstream: `baseOf()` and `upstreamOf()` are read at
 * each call, since the servers start in the spec's `before`.
 */
export function rawMcp(baseOf, upstreamOf) {
  function post(path, body, headers) {
    return fetch(`${baseOf()}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', accept: MCP_ACCEPT, ...headers },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    });
  }
  return {
    post,
    /** The upstream's counters (tool runs by name). */
    async upstreamStats() {
      return (await fetch(`http://127.0.0.1:${upstreamOf().port}/_stats`)).json();
    },
    /** The export requests the shim captured for a test id (the log phase runs after the response). */
    async spansOf(testId) {
      for (let i = 0; i < 40; i++) {
        const res = await fetch(`${baseOf()}/_spans?id=${encodeURIComponent(testId)}`);
        const exports = await res.json();
        if (exports.length > 0) return exports;
        await new Promise((r) => setTimeout(r, 25));
      }
      return [];
    },
    /** initialize + notifications/initialized over raw HTTP; returns headers for the session. */
    async openSession(path, headers) {
      const init = await post(
        path,
        {
          jsonrpc: '2.0',
          id: 0,
          method: 'initialize',
          params: {
            protocolVersion: MCP_PROTOCOL,
            capabilities: {},
            clientInfo: { name: 'raw', version: '1' },
          },
        },
        headers,
      );
      if (init.status !== 200)
        throw new Error(`initialize: HTTP ${init.status}: ${await init.clone().text()}`);
      await messagesOf(init);
      const sid = init.headers.get('mcp-session-id');
      if (!sid) throw new Error('initialize: no session id');
      const sessionHeaders = { ...headers, 'mcp-session-id': sid, 'mcp-protocol-version': MCP_PROTOCOL };
      const ack = await post(path, { jsonrpc: '2.0', method: 'notifications/initialized' }, sessionHeaders);
      if (ack.status !== 202) throw new Error(`notifications/initialized: HTTP ${ack.status}`);
      return sessionHeaders;
    },
  };
}

/**
 * One HTTP/1.1 request over a plain socket, header names and values byte for byte as given (fetch trims and
 * checks them): `headers` is a list of [name, value] written as `name:value`. Resolves { status, headers, body }.
 */
export function rawRequest(port, { method = 'POST', path, headers = [], body = '' }) {
  return new Promise((resolve, reject) => {
    const sock = createConnection({ port, host: '127.0.0.1' });
    const chunks = [];
    sock.setTimeout(10_000, () => {
      sock.destroy();
      reject(new Error('timeout'));
    });
    sock.on('error', reject);
    sock.on('data', (d) => chunks.push(d));
    sock.on('end', () => {
      const text = Buffer.concat(chunks).toString('latin1');
      const end = text.indexOf('\r\n\r\n');
      const head = text.slice(0, end);
      let rest = text.slice(end + 4);
      const hdrs = {};
      for (const line of head.split('\r\n').slice(1)) {
        const c = line.indexOf(':');
        hdrs[line.slice(0, c).toLowerCase()] = line.slice(c + 1).trim();
      }
      if (/chunked/i.test(hdrs['transfer-encoding'] ?? '')) {
        let out = '';
        for (;;) {
          const e = rest.indexOf('\r\n');
          const n = Number.parseInt(rest.slice(0, e), 16);
          if (!n) break;
          out += rest.slice(e + 2, e + 2 + n);
          rest = rest.slice(e + 2 + n + 2);
        }
        rest = out;
      }
      resolve({
        status: Number(head.split(' ')[1]),
        headers: hdrs,
        body: Buffer.from(rest, 'latin1').toString('utf8'),
      });
    });
    const b = Buffer.from(body, 'utf8');
    let req = `${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n`;
    for (const [k, v] of headers) req += `${k}:${v}\r\n`;
    if (method === 'POST') req += `Content-Length: ${b.length}\r\n`;
    sock.write(Buffer.concat([Buffer.from(`${req}\r\n`, 'latin1'), b]));
  });
}
