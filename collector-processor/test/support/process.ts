import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { freePort } from '../../src/redis/private-redis.js';
import { DEV_INGEST_KEY } from './harness.js';

export const CLI = new URL('../../dist/cli/main.js', import.meta.url).pathname;
const execFileAsync = promisify(execFile);

export interface ServerProcess {
  child: ChildProcess;
  otlpUrl: string;
  apiUrl: string;
  stderr: () => string;
}

/**
 * Runs `tollgate start` (the built CLI) as a child process on free ports (or the ones given), node flags first
 * (a `--require` preload, say), without waiting for it.
 */
export async function spawnServer(
  args: string[],
  o: { nodeArgs?: string[]; otlpPort?: number; apiPort?: number } = {},
): Promise<ServerProcess> {
  const otlpPort = o.otlpPort ?? (await freePort());
  const apiPort = o.apiPort ?? (await freePort());
  const child = spawn(
    process.execPath,
    [
      ...(o.nodeArgs ?? []),
      CLI,
      'start',
      '--otlp-port',
      String(otlpPort),
      '--otlp-grpc-port',
      '0',
      '--api-port',
      String(apiPort),
      '--log-level',
      'warn',
      ...args,
    ],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
    },
  );
  let err = '';
  child.stderr?.on('data', (d: Buffer) => {
    err = (err + d.toString()).slice(-20_000);
  });
  return {
    child,
    otlpUrl: `http://127.0.0.1:${otlpPort}`,
    apiUrl: `http://127.0.0.1:${apiPort}`,
    stderr: () => err,
  };
}

/** Runs `tollgate start` (the built CLI) as a child process and waits until /healthz answers. */
export async function startServerProcess(args: string[]): Promise<ServerProcess> {
  const server = await spawnServer(args);
  const { child, apiUrl } = server;
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null)
      throw new Error(`tollgate exited with ${child.exitCode}: ${server.stderr()}`);
    try {
      if ((await fetch(`${apiUrl}/healthz`)).ok) break;
    } catch {
      // not up yet
    }
    if (Date.now() > deadline) throw new Error(`tollgate did not become healthy: ${server.stderr()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return server;
}

export function waitExit(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve(child.exitCode);
    child.once('exit', (code) => resolve(code));
  });
}

/** The built CLI in a child process: its exit code and output, whether it succeeded or failed. */
export async function runCli(
  args: string[],
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await execFileAsync(process.execPath, [CLI, ...args], {
      env,
      maxBuffer: 64 * 1024 * 1024,
    });
    return { code: 0, stdout, stderr };
  } catch (err) {
    const e = err as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

/** `tollgate sql` against a stopped server's data directory. */
export async function sql<T = Record<string, string>>(args: string[], query: string): Promise<T[]> {
  const { stdout } = await execFileAsync(process.execPath, [CLI, 'sql', query, ...args], {
    maxBuffer: 64 * 1024 * 1024,
  });
  return JSON.parse(stdout) as T[];
}

/** Stops the private redis-server a `tollgate start` left in `dataDir` (it survives a kill -9 by design). */
export function killPrivateRedis(dataDir: string): void {
  const file = join(dataDir, 'private-redis.json');
  if (!existsSync(file)) return;
  try {
    process.kill((JSON.parse(readFileSync(file, 'utf8')) as { pid: number }).pid, 'SIGTERM');
  } catch {
    // already gone
  }
}

/** POSTs an OTLP/JSON export; true when it was acknowledged (200). A refused or reset connection is false: the exporter keeps the batch and retries. */
export async function sendExport(url: string, body: string): Promise<boolean> {
  try {
    const res = await fetch(`${url}/v1/traces`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
      body,
    });
    await res.arrayBuffer();
    return res.status === 200;
  } catch {
    return false;
  }
}

/** Leaves no process behind, whatever happened: the server if still running, and the private redis-server it adopted; then the data directory. */
export async function stopServerProcess(server: ServerProcess | undefined, dataDir: string): Promise<void> {
  if (server && server.child.exitCode === null && server.child.signalCode === null) {
    server.child.kill('SIGTERM');
    await waitExit(server.child);
  }
  killPrivateRedis(dataDir);
  rmSync(dataDir, { recursive: true, force: true });
}
