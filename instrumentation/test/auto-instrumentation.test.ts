import { execFile, spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DEV_INGEST_KEY,
  query,
  startTestTollgate,
  type TestTollgate,
} from '../../collector-processor/test/support/harness.js';
import { connectStdio, FIXTURES, PACKAGE_DIR, waitFor } from './support/mcp.js';

/**
 * Zero-code instrumentation in child processes: servers that never import Tollgate, started with
 * `--import @tollgate/instrumentation/register` (ESM, through the OTel loader hook) or
 * `--require @tollgate/instrumentation/register` (CommonJS), configured from the environment only.
 */

let tg: TestTollgate;

beforeAll(async () => {
  tg = await startTestTollgate();
});

afterAll(async () => {
  await tg?.cleanup();
});

const cases = [
  { module: 'ESM (McpServer)', flag: '--import', file: 'auto-server.mjs', customer: 'esm-co' },
  { module: 'CommonJS (low-level Server)', flag: '--require', file: 'auto-server.cjs', customer: 'cjs-co' },
  // 2.x: the split server package's CommonJS build (the ESM build runs in matrix.test.ts)
  {
    module: 'CommonJS 2.x (serveStdio)',
    flag: '--require',
    file: 'auto-server-v2.cjs',
    customer: 'cjs-v2-co',
  },
];

describe('auto-instrumentation', () => {
  for (const c of cases) {
    it(`${c.module}: ${c.flag} @tollgate/instrumentation/register bills every call`, async () => {
      const s = await connectStdio(
        {
          TOLLGATE_OTLP_ENDPOINT: tg.otlpUrl as string,
          TOLLGATE_INGEST_KEY: DEV_INGEST_KEY,
          TOLLGATE_CUSTOMER_ID: c.customer,
          OTEL_SERVICE_NAME: `auto-${c.customer}`,
        },
        [c.flag, '@tollgate/instrumentation/register', `${FIXTURES}${c.file}`],
      );
      for (let i = 0; i < 3; i++) {
        const r = await s.client.callTool({ name: 'echo', arguments: { text: `hi ${i}` } });
        expect(r.content).toEqual([{ type: 'text', text: `hi ${i}` }]);
      }
      await s.client.close();
      expect(await s.exited).toBe(0);
      const rows = await waitFor('3 billed calls', async () => {
        await tg.lander?.idle();
        const r = await query<Record<string, string>>(
          tg,
          `SELECT tool, transport, source, agent, protocol_version FROM mcp_tool_calls
           WHERE customer = {c:String}`,
          { c: c.customer },
        );
        return r.length >= 3 ? r : undefined;
      });
      expect(rows).toHaveLength(3);
      for (const r of rows) {
        // agent: the default resolver falls back to clientInfo.name of the connecting client
        expect(r).toMatchObject({ tool: 'echo', transport: 'stdio', source: 'sdk', agent: 'test-agent' });
        expect(r.protocol_version).not.toBe('');
      }
      // the loader hook did not make anything noisy
      expect(s.stderr.join('')).not.toMatch(/warning|error/i);
    });
  }
});

describe('an MCP SDK the instrumentation cannot patch', () => {
  /** A project whose @modelcontextprotocol/server is a future major (3.0.0) the patch does not know. */
  function futureProject(): string {
    const dir = mkdtempSync(join(tmpdir(), 'tollgate-sdk3-'));
    const pkg = join(dir, 'node_modules', '@modelcontextprotocol', 'server');
    mkdirSync(pkg, { recursive: true });
    writeFileSync(
      join(pkg, 'package.json'),
      JSON.stringify({ name: '@modelcontextprotocol/server', version: '3.0.0', main: 'index.js' }),
    );
    writeFileSync(
      join(pkg, 'index.js'),
      'class Server { setRequestHandler() {} }\nclass McpServer {}\nmodule.exports = { Server, McpServer };\n',
    );
    writeFileSync(
      join(dir, 'server.cjs'),
      "require('@modelcontextprotocol/server');\nrequire('@modelcontextprotocol/server');\n",
    );
    return dir;
  }

  it('says so once, naming the package, its version and what to do — never bills nothing in silence', () => {
    const dir = futureProject();
    try {
      const register = join(PACKAGE_DIR, 'dist', 'register.js');
      const r = spawnSync(process.execPath, ['--require', register, 'server.cjs'], {
        cwd: dir,
        encoding: 'utf8',
        env: { ...process.env, TOLLGATE_OTLP_ENDPOINT: 'http://127.0.0.1:9/', TOLLGATE_CUSTOMER_ID: 'x' },
        timeout: 20_000,
      });
      const lines = r.stderr.split('\n').filter((l) => l.includes('@modelcontextprotocol/server@3.0.0'));
      expect(lines).toHaveLength(1);
      expect(lines[0]).toContain('NOT metered or enforced');
      expect(lines[0]).toContain('>=2.0.0 <3');
      expect(lines[0]).toContain('tollgate-instrumentation check');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the self-check reports it and fails', () => {
    const dir = futureProject();
    try {
      const cli = join(PACKAGE_DIR, 'dist', 'cli.js');
      const r = spawnSync(process.execPath, [cli, 'check'], {
        cwd: dir,
        encoding: 'utf8',
        env: { ...process.env, TOLLGATE_OTLP_ENDPOINT: '' },
        timeout: 30_000,
      });
      expect(r.status).toBe(1);
      expect(r.stdout).toMatch(/FAIL @modelcontextprotocol\/server@3\.0\.0: supported=false/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the self-check passes for the supported SDKs of this repository (hooks patch them, a call is billed)', () => {
    const cli = join(PACKAGE_DIR, 'dist', 'cli.js');
    const r = spawnSync(process.execPath, [cli, 'check'], {
      cwd: PACKAGE_DIR,
      encoding: 'utf8',
      env: { ...process.env, TOLLGATE_OTLP_ENDPOINT: '' },
      timeout: 30_000,
    });
    expect(r.stdout).toMatch(
      /ok {3}@modelcontextprotocol\/sdk@1\.\d+\.\d+: supported=true patched-by-hooks=true billed=true/,
    );
    expect(r.stdout).toMatch(
      /ok {3}@modelcontextprotocol\/server@2\.\d+\.\d+: supported=true patched-by-hooks=true billed=true/,
    );
    // no endpoint configured: that alone fails the check, and says why
    expect(r.stdout).toContain('TOLLGATE_OTLP_ENDPOINT is not set');
    expect(r.status).toBe(1);
  });

  it('the self-check passes with quota leases on (the setting for zero overage), and says they are on', async () => {
    const endpoint = createServer((req, res) => {
      req.resume();
      req.on('end', () => res.writeHead(200, { 'content-type': 'application/json' }).end('{}'));
    });
    await new Promise<void>((r) => endpoint.listen(0, '127.0.0.1', r));
    const port = (endpoint.address() as { port: number }).port;
    try {
      const run = (leases: string) =>
        new Promise<{ code: number; stdout: string }>((resolve) => {
          execFile(
            process.execPath,
            [join(PACKAGE_DIR, 'dist', 'cli.js'), 'check'],
            {
              cwd: PACKAGE_DIR,
              encoding: 'utf8',
              timeout: 30_000,
              env: {
                ...process.env,
                TOLLGATE_OTLP_ENDPOINT: `http://127.0.0.1:${port}`,
                TOLLGATE_LEASES: leases,
              },
            },
            (err, stdout) =>
              resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout }),
          );
        });
      const on = await run('1');
      expect(on.stdout).toMatch(
        /ok {3}@modelcontextprotocol\/server@2\.\d+\.\d+: supported=true patched-by-hooks=true billed=true/,
      );
      expect(on.stdout).toContain('quota leases: on (fail mode open');
      expect(on.code).toBe(0);
      const off = await run('0');
      expect(off.stdout).toContain('quota leases: off');
      expect(off.code).toBe(0);
      // a spelling the SDK does not know is a problem the check names, not leases silently off
      const typo = await run('sure');
      expect(typo.stdout).toContain('TOLLGATE_LEASES must be 1, true, yes or on');
      expect(typo.code).toBe(1);
    } finally {
      await new Promise((r) => endpoint.close(r));
    }
  });
});
