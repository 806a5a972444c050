import { type ChildProcess, spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { Redis } from 'ioredis';

export interface PrivateRedis {
  url: string;
  port: number;
  process: ChildProcess;
  stop(): Promise<void>;
}

export class RedisNotInstalledError extends Error {
  override readonly name = 'RedisNotInstalledError';
}

/** A free TCP port on loopback (the kernel picks it; the tiny race with another binder is retried). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      srv.close(() => (typeof addr === 'object' && addr ? resolve(addr.port) : reject(new Error('no port'))));
    });
  });
}

/**
 * Starts a private, non-persistent `redis-server` on a free loopback port and waits until it answers.
 * Used by `tollgate start` when no REDIS_URL is given, and by the test harness.
 */
export async function startPrivateRedis(
  opts: { binary?: string; extraArgs?: string[]; port?: number } = {},
): Promise<PrivateRedis> {
  const binary = opts.binary ?? 'redis-server';
  let lastError: Error | undefined;
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = opts.port ?? (await freePort());
    const child = spawn(
      binary,
      [
        '--port',
        String(port),
        '--bind',
        '127.0.0.1',
        '--save',
        '',
        '--appendonly',
        'no',
        '--protected-mode',
        'yes',
        ...(opts.extraArgs ?? []),
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let output = '';
    child.stdout?.on('data', (d: Buffer) => {
      output = (output + d.toString()).slice(-4000);
    });
    child.stderr?.on('data', (d: Buffer) => {
      output = (output + d.toString()).slice(-4000);
    });
    const exited = new Promise<Error>((resolve) => {
      child.once('error', (err: NodeJS.ErrnoException) =>
        resolve(
          err.code === 'ENOENT'
            ? new RedisNotInstalledError(
                `${binary} not found: install it (apt-get install redis-server) or set REDIS_URL`,
              )
            : err,
        ),
      );
      child.once('exit', (code) =>
        resolve(new Error(`${binary} exited with code ${code}: ${output.trim()}`)),
      );
    });
    const ready = waitForPing(port);
    const first = await Promise.race([ready.then(() => undefined), exited]);
    if (first === undefined) {
      const url = `redis://127.0.0.1:${port}`;
      return {
        url,
        port,
        process: child,
        stop: () =>
          new Promise<void>((resolve) => {
            if (child.exitCode !== null || child.signalCode !== null) return resolve();
            child.once('exit', () => resolve());
            child.kill('SIGTERM');
          }),
      };
    }
    child.kill('SIGKILL');
    lastError = first;
    if (first instanceof RedisNotInstalledError || opts.port) break;
  }
  throw lastError ?? new Error('could not start redis-server');
}

/** Whether a Redis on loopback `port` answers PING (one short-lived connection, no retries). */
export async function pingsOnLoopback(port: number): Promise<boolean> {
  const r = new Redis({
    port,
    host: '127.0.0.1',
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
  });
  r.on('error', () => {});
  try {
    await r.connect();
    return (await r.ping()) === 'PONG';
  } catch {
    return false;
  } finally {
    r.disconnect();
  }
}

async function waitForPing(port: number, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await pingsOnLoopback(port)) return;
    await new Promise((res) => setTimeout(res, 50));
  }
  throw new Error(`redis-server on port ${port} did not answer within ${timeoutMs} ms`);
}
