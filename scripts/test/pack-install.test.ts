import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  realpathSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Client as Client2 } from '@modelcontextprotocol/client';
import { StdioClientTransport as Stdio2 } from '@modelcontextprotocol/client/stdio';
import { Client as Client1 } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport as Stdio1 } from '@modelcontextprotocol/sdk/client/stdio.js';
import semver from 'semver';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { packageOf, rewriteSpecifiers } from '../vendor-workspaces.mjs';

/**
 * Installable as a user installs it: `npm pack` of the two packages a user installs — @tollgate/instrumentation
 * and @tollgate/collector-processor (the `tollgate` command) — each installed into an empty folder outside the
 * repository with nothing but the public npm registry besides its tarball; then the instrumentation README's
 * first run, as written (its blocks are read from the README and run by bash; only the tarball paths and the
 * ports differ), and a 1.x and a 2.x MCP server instrumented the README's ways (instrumentMcpServer and the
 * zero-code `--import` / `--require` register), driven by real MCP clients, billed by the installed Tollgate.
 *
 * npm must be on the PATH and the registry reachable (the npm cache makes it fast): without them this fails.
 */

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const FIXTURES = fileURLToPath(new URL('./fixtures/', import.meta.url));
const README = readFileSync(join(ROOT, 'instrumentation', 'README.md'), 'utf8');
const PUBLISHED = ['instrumentation', 'collector-processor'] as const;
/** The price of a call of customer `acme` in Tollgate's embedded example plans (enterprise: 0.001 USD). */
const ACME_NANO_PER_CALL = 1_000_000n;

let work = '';
const tarballs: Record<string, string> = {};
let tollgate: ChildProcess | undefined;
let urls: { otlp: string; api: string } | undefined;
let tollgateStderr = '';
let tollgateClosed = false;

/** The child environment: the user's, without the variables an enclosing `npm test` sets for its scripts. */
function userEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined && !/^npm_/i.test(k) && k !== 'INIT_CWD') env[k] = v;
  }
  // quiet and cache-first, as a CI would configure npm; the commands themselves stay as written
  return {
    ...env,
    npm_config_prefer_offline: 'true',
    npm_config_audit: 'false',
    npm_config_fund: 'false',
    npm_config_update_notifier: 'false',
    ...extra,
  };
}

interface Ran {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a bash script (`set -euo pipefail`) to its end; fails on a non-zero exit unless `allowFail`. */
function bash(script: string, cwd: string, env = userEnv(), allowFail = false): Promise<Ran> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', ['-euo', 'pipefail', '-c', script], { cwd, env });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => {
      stdout += d.toString();
    });
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
    });
    child.once('error', reject);
    child.once('close', (code) => {
      if (code !== 0 && !allowFail) {
        reject(
          new Error(`in ${cwd}:\n${script}\nexited ${code}\n--- stdout\n${stdout}\n--- stderr\n${stderr}`),
        );
      } else resolve({ code, stdout, stderr });
    });
  });
}

/** The fenced block after `<!-- first-run:<name> -->` in the instrumentation README. */
function readmeBlock(name: string): string {
  const m = new RegExp(`<!-- first-run:${name} -->\\n\`\`\`\\w*\\n([\\s\\S]*?)\\n\`\`\``).exec(README);
  if (!m?.[1]) throw new Error(`instrumentation/README.md has no block <!-- first-run:${name} -->`);
  return m[1];
}

/** The README's commands with the packed tarball in place of the package name (the README says so). */
function withTarball(script: string, pkg: string, tarball: string): string {
  const out = script.replace(new RegExp(`(?<=\\s)${pkg.replace('/', '\\/')}(?=\\s|$)`, 'gm'), tarball);
  if (out === script) throw new Error(`the README block does not install ${pkg}`);
  return out;
}

/** The README's URLs of a default local Tollgate, pointed at the one this test started. */
function withUrls(script: string): string {
  const { otlp, api } = urls as { otlp: string; api: string };
  return script.replaceAll('http://127.0.0.1:4318', otlp).replaceAll('http://127.0.0.1:8080', api);
}

function versionOf(ws: string): string {
  return (JSON.parse(readFileSync(join(ROOT, ws, 'package.json'), 'utf8')) as { version: string }).version;
}

function hashTree(dir: string): string {
  const h = createHash('sha256');
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true }).sort((a, b) => a.name.localeCompare(b.name))) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else h.update(relative(dir, p)).update(readFileSync(p));
    }
  };
  walk(dir);
  return h.digest('hex');
}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * Stops the Tollgate started from the README as Ctrl-C in its terminal would (SIGINT to its process group),
 * and waits until every process of it has let go of its stderr (npx may exit before the server it started).
 */
async function stopTollgate(): Promise<void> {
  const child = tollgate;
  if (!child?.pid || tollgateClosed) return;
  const closed = new Promise<void>((r) => child.once('close', () => r()));
  process.kill(-child.pid, 'SIGINT');
  const timer = setTimeout(() => child.pid && process.kill(-child.pid, 'SIGKILL'), 20_000);
  await closed;
  clearTimeout(timer);
}

const appDir = () => join(work, 'weather-mcp');
const v1Dir = () => join(work, 'weather-mcp-v1');
const serverDir = () => join(work, 'tollgate-local');

beforeAll(async () => {
  work = realpathSync(mkdtempSync(join(tmpdir(), 'tollgate-pack-')));
  expect(relative(ROOT, work).startsWith('..')).toBe(true);

  // 1. npm pack — in a copy of the repository's packages, built output included: prepack rewrites the build
  //    output in place for the pack's duration, and other test files read this repository's dist meanwhile.
  const repo = join(work, 'repo');
  const rootPkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { workspaces: string[] };
  cpSync(join(ROOT, 'package.json'), join(repo, 'package.json'));
  cpSync(join(ROOT, 'scripts', 'vendor-workspaces.mjs'), join(repo, 'scripts', 'vendor-workspaces.mjs'));
  for (const ws of rootPkg.workspaces) {
    cpSync(join(ROOT, ws), join(repo, ws), {
      recursive: true,
      filter: (src) =>
        !/(^|\/)(node_modules|test|vendor|\.pack-state)(\/|$)/.test(relative(join(ROOT, ws), src)),
    });
  }
  mkdirSync(join(work, 'tarballs'));
  const before = Object.fromEntries(PUBLISHED.map((ws) => [ws, hashTree(join(repo, ws))]));
  // the command of docs/packaging.md; the suite builds first (npm test): TOLLGATE_PACK_SKIP_BUILD only skips
  // prepack's own `tsc -b`, which would find everything up to date
  const packed = await bash(
    `npm pack ${PUBLISHED.map((ws) => `-w ${ws}`).join(' ')} --pack-destination ${join(work, 'tarballs')}`,
    repo,
    userEnv({ TOLLGATE_PACK_SKIP_BUILD: '1' }),
  );
  const names = packed.stdout
    .trim()
    .split('\n')
    .filter((l) => l.endsWith('.tgz'));
  for (const ws of PUBLISHED) {
    const name = names.find((n) => n === `tollgate-${ws}-${versionOf(ws)}.tgz`);
    expect(name, `npm pack printed ${names.join(', ')}`).toBeDefined();
    tarballs[ws] = join(work, 'tarballs', name as string);
    expect(existsSync(tarballs[ws])).toBe(true);
    // postpack put the build output back as it was
    expect(hashTree(join(repo, ws)), `${ws} after npm pack`).toBe(before[ws]);
  }

  // 2. each installed in an empty folder, as the README says, with the tarball in place of the package name
  const tollgateSetup = readmeBlock('tollgate')
    .split('\n')
    .filter((l) => !l.startsWith('npx tollgate start'))
    .join('\n');
  await Promise.all([
    bash(
      withTarball(tollgateSetup, '@tollgate/collector-processor', tarballs['collector-processor'] as string),
      work,
    ),
    bash(
      withTarball(readmeBlock('install'), '@tollgate/instrumentation', tarballs.instrumentation as string),
      work,
    ),
    // a 1.x project, with the install line of "Install" and its own SDK
    bash(
      `mkdir weather-mcp-v1 && cd weather-mcp-v1 && npm init -y && npm install ${tarballs.instrumentation} ` +
        '@opentelemetry/api @modelcontextprotocol/sdk@^1.12 zod',
      work,
    ),
  ]);
  for (const file of ['server.mjs', 'client.mjs'])
    writeFileSync(join(appDir(), file), readmeBlock(`file ${file}`));
}, 240_000);

afterAll(async () => {
  await stopTollgate().catch(() => {});
  if (work && !process.env.TOLLGATE_KEEP_PACK_TEST) rmSync(work, { recursive: true, force: true });
});

describe('the packed packages', () => {
  const installs = () =>
    [
      { dir: appDir(), pkg: '@tollgate/instrumentation' },
      { dir: v1Dir(), pkg: '@tollgate/instrumentation' },
      { dir: serverDir(), pkg: '@tollgate/collector-processor' },
    ] as const;

  it('install from the public registry alone: only the package itself is Tollgate, nothing is missing', async () => {
    for (const { dir, pkg } of installs()) {
      expect(readdirSync(join(dir, 'node_modules', '@tollgate')), dir).toEqual([pkg.split('/')[1]]);
      const manifest = JSON.parse(readFileSync(join(dir, 'node_modules', pkg, 'package.json'), 'utf8'));
      expect(Object.keys(manifest.dependencies).filter((d) => d.startsWith('@tollgate/'))).toEqual([]);
      expect(manifest.engines.node).toBe('>=20.19.0 <21 || >=22.12.0');
      // every dependency resolved, no invalid or missing one
      await bash('npm ls --all', dir);
    }
  });

  it('install nothing that does not support this Node: every installed package’s engines.node holds', () => {
    // npm only warns (EBADENGINE) about a dependency that declares another Node: fastify 5.12.8 takes
    // light-my-request ^6, whose 6.8 takes cookie 2, which declares node >= 22. We pin light-my-request ~6.6.0
    // (docs/packaging.md); this keeps the next such dependency from reaching users unnoticed.
    for (const { dir } of installs()) {
      const unsupported: string[] = [];
      const walk = (modules: string) => {
        if (!existsSync(modules)) return;
        for (const e of readdirSync(modules, { withFileTypes: true })) {
          if (!e.isDirectory()) continue;
          const p = join(modules, e.name);
          if (e.name.startsWith('@')) {
            walk(p);
            continue;
          }
          const manifestFile = join(p, 'package.json');
          if (existsSync(manifestFile)) {
            const m = JSON.parse(readFileSync(manifestFile, 'utf8'));
            const range = m.engines?.node;
            if (typeof range === 'string' && !semver.satisfies(process.versions.node, range))
              unsupported.push(`${m.name}@${m.version} (node ${range}) in ${relative(dir, p)}`);
          }
          walk(join(p, 'node_modules'));
        }
      };
      walk(join(dir, 'node_modules'));
      expect(unsupported, dir).toEqual([]);
    }
  });

  it('import no unpublished package: every @tollgate/* import points into the package (vendor/)', () => {
    for (const { dir, pkg } of installs()) {
      const base = join(dir, 'node_modules', pkg);
      const found: string[] = [];
      const walk = (d: string) => {
        for (const e of readdirSync(d, { withFileTypes: true })) {
          const p = join(d, e.name);
          if (e.isDirectory()) walk(p);
          else if (/\.(m|c)?js$|\.d\.ts$/.test(e.name)) {
            rewriteSpecifiers(readFileSync(p, 'utf8'), (spec) => {
              if (packageOf(spec)?.startsWith('@tollgate/')) found.push(`${relative(base, p)}: ${spec}`);
              return undefined;
            });
          }
        }
      };
      walk(base);
      expect(found, pkg).toEqual([]);
      expect(existsSync(join(base, 'vendor', '@tollgate', 'contracts', 'dist', 'index.js')), pkg).toBe(true);
    }
  });

  it("types resolve in a TypeScript project, the vendored contracts' included", async () => {
    // a Directive's action is a union from @tollgate/contracts: were the vendored types lost, `d` would be
    // `any` and the @ts-expect-error below unused (an error)
    writeFileSync(
      join(appDir(), 'types-check.mts'),
      [
        "import { type DirectiveHook, instrumentMcpServer } from '@tollgate/instrumentation';",
        'export const hook: DirectiveHook = (d) => {',
        "  const action: 'warn' | 'throttle' | 'kill' | 'resume' = d.action;",
        '  // @ts-expect-error not an action',
        "  const bogus: 'bogus' = d.action;",
        '  return void [action, bogus];',
        '};',
        'export const instrument: typeof instrumentMcpServer = instrumentMcpServer;',
        '',
      ].join('\n'),
    );
    const tsconfig = {
      compilerOptions: {
        module: 'nodenext',
        moduleResolution: 'nodenext',
        target: 'es2022',
        strict: true,
        noEmit: true,
        skipLibCheck: true,
        types: [],
      },
      files: ['types-check.mts'],
    };
    writeFileSync(join(appDir(), 'tsconfig.json'), JSON.stringify(tsconfig));
    await bash(`node ${join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc')} -p tsconfig.json`, appDir());
  });

  it('would publish as packed: public access, npm corrects nothing in the manifests', async () => {
    for (const ws of PUBLISHED) {
      const r = await bash(
        'npm publish --dry-run',
        join(work, 'repo', ws),
        userEnv({ TOLLGATE_PACK_SKIP_BUILD: '1' }),
      );
      expect(r.stderr).toMatch(
        /Publishing to https:\/\/registry\.npmjs\.org\/ with tag latest and public access \(dry-run\)/,
      );
      const warnings = r.stderr.split('\n').filter((l) => /warn/i.test(l) && !/logged in/.test(l));
      expect(warnings, ws).toEqual([]);
    }
  });

  it('`npx tollgate` works from the project that installed it', async () => {
    const r = await bash('npx tollgate --help', serverDir());
    expect(r.stdout).toContain('tollgate start [options]');
    const plans = await bash(
      'npx tollgate check-plans node_modules/@tollgate/collector-processor/defaults/plans.yaml',
      serverDir(),
    );
    expect(plans.stdout).toMatch(/: valid \(version \w+, products: demo-mcp\)/);
  });
});

describe('the instrumentation README, as written, from the tarballs', () => {
  it('starts Tollgate with `npx tollgate start`', async () => {
    const start = readmeBlock('tollgate')
      .split('\n')
      .find((l) => l.startsWith('npx tollgate start')) as string;
    // ports 0: free ones (the README's 4318/8080 may be taken by a parallel test); the data dir is the default
    tollgate = spawn('bash', ['-c', start], {
      cwd: serverDir(),
      env: userEnv({ TOLLGATE_OTLP_PORT: '0', TOLLGATE_OTLP_GRPC_PORT: '0', TOLLGATE_API_PORT: '0' }),
      detached: true, // its own process group, like a terminal's, so Ctrl-C (SIGINT) reaches it
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    tollgate.once('close', () => {
      tollgateClosed = true;
    });
    urls = await new Promise((resolve, reject) => {
      tollgate?.stderr?.on('data', (d: Buffer) => {
        tollgateStderr += d.toString();
        const m = /ready — OTLP (http:\/\/[^/\s]+)\/v1\/traces, (?:OTLP\/gRPC \S+, )?API (http:\/\/\S+)/.exec(
          tollgateStderr,
        );
        if (m) resolve({ otlp: m[1] as string, api: m[2] as string });
      });
      tollgate?.once('exit', (code) =>
        reject(new Error(`npx tollgate start exited ${code}:\n${tollgateStderr}`)),
      );
    });
  }, 60_000);

  it('first run: the self-check passes, the client gets its answers, the calls are billed', async () => {
    const run = await bash(withUrls(readmeBlock('run')), appDir());
    expect(run.stdout).toMatch(
      /^ok {3}@modelcontextprotocol\/server@2\.\d+\.\d+: supported=true patched-by-hooks=true billed=true/m,
    );
    expect(run.stdout).toMatch(/^ok {3}endpoint: http:\/\/127\.0\.0\.1:\d+\/v1\/traces answers 200$/m);
    expect(run.stdout).toContain('Sunny in Paris\nSunny in Lima\nSunny in Oslo\n');
    const summary = await waitFor('3 billed calls of acme', async () => {
      const r = await bash(withUrls(readmeBlock('billed')), appDir());
      const s = JSON.parse(r.stdout) as { calls: number; billedCalls: number; revenueNano: string };
      return s.calls >= 3 ? s : undefined;
    });
    expect(summary).toMatchObject({ calls: 3, billedCalls: 3, revenueNano: String(3n * ACME_NANO_PER_CALL) });
  }, 60_000);

  /** One stdio session of a real MCP client of the server's SDK line; three calls of `forecast`. */
  async function threeCalls(line: '1.x' | '2.x', agent: string, cwd: string, args: string[]): Promise<void> {
    const env = {
      ...userEnv(),
      TOLLGATE_OTLP_ENDPOINT: (urls as { otlp: string }).otlp,
      TOLLGATE_INGEST_KEY: 'tg_dev_ingest_demo',
      TOLLGATE_CUSTOMER_ID: 'acme',
    };
    const stderr: string[] = [];
    const params = { command: process.execPath, args, cwd, env, stderr: 'pipe' as const };
    const client =
      line === '2.x'
        ? new Client2(
            { name: agent, version: '1.0.0' },
            { versionNegotiation: { mode: { pin: '2026-07-28' } } },
          )
        : new Client1({ name: agent, version: '1.0.0' });
    const transport = line === '2.x' ? new Stdio2(params) : new Stdio1(params);
    transport.stderr?.on('data', (d: Buffer) => stderr.push(d.toString()));
    await (client as Client1).connect(transport as Stdio1);
    try {
      for (const city of ['Paris', 'Lima', 'Oslo']) {
        const r = await (client as Client1).callTool({ name: 'forecast', arguments: { city } });
        expect(r.content, stderr.join('')).toEqual([{ type: 'text', text: `Sunny in ${city}` }]);
      }
    } finally {
      await client.close();
    }
    expect(stderr.join('')).not.toMatch(/warn|error/i);
  }

  it('a 2.x server, zero code (`node --import @tollgate/instrumentation/register`), on the 2026-07-28 protocol', async () => {
    // the README's server.mjs without its instrumentMcpServer line, as the README says
    const plain = readmeBlock('file server.mjs')
      .split('\n')
      .filter((l) => !l.includes('instrumentMcpServer'))
      .join('\n');
    writeFileSync(join(appDir(), 'server-zero-code.mjs'), plain);
    await threeCalls('2.x', 'agent-v2-zero-code', appDir(), [
      '--import',
      '@tollgate/instrumentation/register',
      'server-zero-code.mjs',
    ]);
  }, 30_000);

  it('a 1.x server with instrumentMcpServer (ESM)', async () => {
    cpSync(join(FIXTURES, 'weather-v1.mjs'), join(v1Dir(), 'server.mjs'));
    await threeCalls('1.x', 'agent-v1-explicit', v1Dir(), ['server.mjs']);
  }, 30_000);

  it('a 1.x server, zero code (`node --require @tollgate/instrumentation/register`, CommonJS)', async () => {
    cpSync(join(FIXTURES, 'weather-v1.cjs'), join(v1Dir(), 'server.cjs'));
    await threeCalls('1.x', 'agent-v1-zero-code', v1Dir(), [
      '--require',
      '@tollgate/instrumentation/register',
      'server.cjs',
    ]);
  }, 30_000);

  it('every call is billed: per agent in ClickHouse (`npx tollgate sql` once Tollgate is stopped)', async () => {
    const api = (urls as { api: string }).api;
    await waitFor('12 billed calls of acme', async () => {
      const res = await fetch(`${api}/analytics/mcp/summary?customer=acme`, {
        headers: { authorization: 'Bearer tg_dev_admin' },
      });
      const s = (await res.json()) as { calls: number };
      return s.calls >= 12 ? s : undefined;
    });
    await stopTollgate();
    expect(tollgateStderr).toContain('"msg":"stopped"'); // a clean shutdown: everything landed
    const sql =
      'SELECT agent, count() AS calls, groupUniqArray(transport) AS transports, groupUniqArray(source) AS sources, ' +
      "groupUniqArray(tool) AS tools, uniqExact(session_id) AS sessions, toString(sum(price_nano)) AS price FROM mcp_tool_calls WHERE customer = 'acme' GROUP BY agent ORDER BY agent";
    const r = await bash(`npx tollgate sql "${sql}"`, serverDir());
    const rows = JSON.parse(r.stdout) as Array<Record<string, unknown>>;
    const perAgent = (agent: string) => ({
      agent,
      calls: '3',
      transports: ['stdio'],
      sources: ['sdk'],
      tools: ['forecast'],
      sessions: '1',
      price: String(3n * ACME_NANO_PER_CALL),
    });
    expect(rows).toEqual(
      ['agent-v1-explicit', 'agent-v1-zero-code', 'agent-v2-zero-code', 'first-agent'].map(perAgent),
    );
  }, 60_000);
});
