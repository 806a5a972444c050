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
    .replaceAll('{{NGINX_PORT}}', String(port));
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
