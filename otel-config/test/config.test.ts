import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, posix } from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseDocument } from 'yaml';
import { loadConfig, SETTINGS, splitArgs } from '../../collector-processor/src/config/settings.js';
import { loadPlanBook } from '../../collector-processor/src/plans/load.js';
import { freePort } from '../../collector-processor/src/redis/private-redis.js';
import {
  ATTR_GEN_AI_TOOL_NAME,
  ATTR_MCP_METHOD_NAME,
  ATTR_TOLLGATE_CUSTOMER,
  type Attributes,
  extractToolCall,
  KONG_ROOT_SPAN_NAME,
  MCP_METHOD_TOOLS_CALL,
  SPAN_KIND_SERVER,
} from '../../contracts/src/index.js';

/**
 * The deployment configs (otel-config/, docker-compose.yml, Dockerfile, .dockerignore) checked against
 * the code they wire together: attribute keys of contracts/, the server settings table, the Kong plugin
 * schema, the build layout. Docker, Kong and the Collector binary do not run here, so their files are
 * checked as text; the processes that do run here (the tollgate CLI in each compose role, the example MCP
 * server) are started with the compose service's command and environment and probed with the service's
 * own health check.
 */

const REPO = new URL('../../', import.meta.url).pathname;
const OTEL_CONFIG = join(REPO, 'otel-config');
const repoPath = (p: string) => join(REPO, p);
const read = (p: string) => readFileSync(repoPath(p), 'utf8');

// ---------------------------------------------------------------------------------------------------
// Small helpers: YAML, compose interpolation, volumes, ports, URLs

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
function obj(v: unknown, what: string): Obj {
  if (!isObj(v)) throw new Error(`${what} is not a mapping`);
  return v;
}
function arr(v: unknown, what: string): unknown[] {
  if (!Array.isArray(v)) throw new Error(`${what} is not a list`);
  return v;
}

/** Strict YAML: duplicate keys and syntax errors fail; merge keys (`<<:`) as Docker Compose reads them. */
function parseYamlFile(path: string): Obj {
  const doc = parseDocument(read(path), { uniqueKeys: true, merge: true, prettyErrors: true });
  if (doc.errors.length) throw new Error(`${path}: ${doc.errors.map((e) => e.message).join('; ')}`);
  return obj(doc.toJS(), path);
}

/** Docker Compose interpolation: `${VAR}`, `${VAR:-default}`, `$$` → `$`, against `env` (empty: defaults). */
function interpolate(value: string, env: Record<string, string> = {}): string {
  return value.replace(/\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g, (m, name, def) => {
    if (m === '$$') return '$';
    const v = env[name];
    if (v !== undefined && v !== '') return v;
    if (def === undefined) throw new Error(`compose variable \${${name}} has no default`);
    return def;
  });
}

/** The Collector's `${env:VAR}` / `${env:VAR:-default}` expansion against an environment. */
function expandCollectorEnv(value: string, env: Record<string, string>): string {
  return value.replace(/\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}/g, (_m, name, def) => {
    const v = env[name];
    if (v !== undefined && v !== '') return v;
    if (def === undefined) throw new Error(`collector variable \${env:${name}} is not set`);
    return def;
  });
}

interface Service {
  name: string;
  raw: Obj;
  env: Record<string, string>;
  command: string[];
  entrypoint: string[];
  image: string | undefined;
  /** Bind mounts: container path → host path (repo-relative, no leading ./). */
  binds: Map<string, string>;
  /** Named volumes: container path → volume name. */
  named: Map<string, string>;
  ports: { hostIp: string; published: string; target: number }[];
  healthcheck: Obj | undefined;
}

function strList(v: unknown, what: string): string[] {
  if (v === undefined) return [];
  if (typeof v === 'string') return v.split(/\s+/).filter(Boolean);
  return arr(v, what).map((x) => String(x));
}

function service(compose: Obj, name: string): Service {
  const raw = obj(obj(compose.services, 'services')[name], `service ${name}`);
  const env: Record<string, string> = {};
  const envRaw = raw.environment;
  if (Array.isArray(envRaw)) {
    for (const e of envRaw) {
      const [k, ...rest] = String(e).split('=');
      env[k as string] = interpolate(rest.join('='));
    }
  } else if (envRaw !== undefined) {
    for (const [k, v] of Object.entries(obj(envRaw, `${name}.environment`))) env[k] = interpolate(String(v));
  }
  const binds = new Map<string, string>();
  const named = new Map<string, string>();
  for (const v of strList(raw.volumes, `${name}.volumes`)) {
    const [src, target] = v.split(':') as [string, string];
    if (src.startsWith('./') || src.startsWith('/')) binds.set(target, posix.normalize(src));
    else named.set(target, src);
  }
  const ports: Service['ports'] = [];
  for (const p of arr(raw.ports ?? [], `${name}.ports`)) {
    if (isObj(p)) {
      ports.push({
        hostIp: String(p.host_ip ?? ''),
        published: String(p.published ?? ''),
        target: Number(p.target),
      });
      continue;
    }
    const parts = String(p).split(':');
    const target = Number(parts.pop());
    const published = parts.pop() ?? '';
    ports.push({ hostIp: parts.join(':'), published, target });
  }
  return {
    name,
    raw,
    env,
    command: strList(raw.command, `${name}.command`).map((c) => interpolate(c)),
    entrypoint: strList(raw.entrypoint, `${name}.entrypoint`),
    image: typeof raw.image === 'string' ? raw.image : undefined,
    binds,
    named,
    ports,
    healthcheck: raw.healthcheck === undefined ? undefined : obj(raw.healthcheck, `${name}.healthcheck`),
  };
}

/** Host path of a file a service sees at `containerPath` through a bind mount. */
function hostPathOf(svc: Service, containerPath: string): string {
  for (const [target, src] of svc.binds) {
    if (containerPath === target) return src;
    if (containerPath.startsWith(`${target}/`))
      return posix.join(src, containerPath.slice(target.length + 1));
  }
  throw new Error(`${svc.name}: ${containerPath} is not inside a bind mount`);
}

function healthTest(svc: Service): string[] {
  const t = svc.healthcheck?.test;
  return typeof t === 'string' ? ['CMD-SHELL', t] : strList(t, `${svc.name}.healthcheck.test`);
}

/** The JavaScript of a `["CMD", "node", "-e", script]` health check. */
function nodeHealthScript(svc: Service): string {
  const t = healthTest(svc);
  expect(t.slice(0, 3), `${svc.name} health check runs node -e`).toEqual(['CMD', 'node', '-e']);
  return t[3] as string;
}

/** The URL a node health check fetches. */
function healthUrl(svc: Service): string {
  const urls = nodeHealthScript(svc).match(/https?:\/\/[^'"\s)]+/g) ?? [];
  expect(urls, `${svc.name} health check fetches one URL`).toHaveLength(1);
  return urls[0] as string;
}

function runNode(script: string): Promise<number> {
  return new Promise((resolve) => {
    execFile(process.execPath, ['-e', script], { timeout: 10_000 }, (err) => {
      const code = (err as { code?: unknown } | null)?.code;
      resolve(err ? (typeof code === 'number' && code !== 0 ? code : 1) : 0);
    });
  });
}

function urlParts(u: string): { host: string; port: number; path: string } {
  const url = new URL(u);
  return {
    host: url.hostname,
    port: Number(url.port || (url.protocol === 'https:' ? 443 : 80)),
    path: url.pathname,
  };
}

const settingDefault = (key: string) => SETTINGS.find((s) => s.key === key)?.default;
const SETTING_ENVS = new Set<string>([...SETTINGS.map((s) => s.env), 'TOLLGATE_CONFIG']);
const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

// ---------------------------------------------------------------------------------------------------
// The Kong plugin schema (kong/kong/plugins/tollgate/schema.lua), read as text

interface LuaField {
  name: string;
  required: boolean;
  hasDefault: boolean;
}

/** Top-level fields of the `config` record of a Kong plugin schema (brace depth aware, strings skipped). */
function kongConfigFields(lua: string): LuaField[] {
  const start = lua.indexOf('config = {');
  const fieldsAt = lua.indexOf('fields = {', start);
  if (start < 0 || fieldsAt < 0) throw new Error('schema.lua: no config record');
  const fields: LuaField[] = [];
  let depth = 1;
  let i = fieldsAt + 'fields = {'.length;
  // `{ name = <spec> }` entries sit at depth 2, their own spec at depth 3; deeper tables (elements,
  // nested records) belong to other schemas and are left out of the field's text.
  let current: { name: string; text: string } | undefined;
  while (i < lua.length && depth > 0) {
    const ch = lua[i] as string;
    if (ch === '"' || ch === "'") {
      i = lua.indexOf(ch, i + 1) + 1;
      continue;
    }
    if (ch === '-' && lua[i + 1] === '-') {
      i = lua.indexOf('\n', i);
      continue;
    }
    if (ch === '{') {
      depth++;
      if (depth === 2) {
        const m = /^\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*=/.exec(lua.slice(i));
        if (m) current = { name: m[1] as string, text: '' };
      }
    } else if (ch === '}') {
      depth--;
      if (depth === 1 && current) {
        fields.push({
          name: current.name,
          required: /required\s*=\s*true/.test(current.text),
          hasDefault: /default\s*=/.test(current.text),
        });
        current = undefined;
      }
    } else if (current && depth <= 3) current.text += ch;
    i++;
  }
  return fields;
}

/**
 * Fields of Kong's bundled opentelemetry plugin (Kong/kong `kong/plugins/opentelemetry/schema.lua`, 3.8+:
 * traces_endpoint/logs_endpoint, sampling_rate, queue, propagation), `typedefs.queue` and
 * `typedefs.propagation`. Read from Kong's source; Kong does not run here.
 */
const KONG_OTEL_FIELDS = new Set([
  'traces_endpoint',
  'logs_endpoint',
  'endpoint',
  'headers',
  'resource_attributes',
  'queue',
  'batch_span_count',
  'batch_flush_delay',
  'connect_timeout',
  'send_timeout',
  'read_timeout',
  'http_response_header_for_traceid',
  'header_type',
  'sampling_rate',
  'propagation',
]);
const KONG_QUEUE_FIELDS = new Set([
  'max_batch_size',
  'max_coalescing_delay',
  'max_entries',
  'max_bytes',
  'max_retry_time',
  'initial_retry_delay',
  'max_retry_delay',
  'concurrency_limit',
]);
const KONG_PROPAGATION_FIELDS = new Set(['extract', 'inject', 'default_format', 'clear']);

// ---------------------------------------------------------------------------------------------------
// OTTL: the subset the filter condition uses, evaluated for real against span attributes

type Ottl =
  | { t: 'not'; e: Ottl }
  | { t: 'and' | 'or'; l: Ottl; r: Ottl }
  | { t: 'cmp'; op: '==' | '!='; l: Operand; r: Operand };
type Operand = { t: 'attr'; key: string } | { t: 'str'; v: string } | { t: 'nil' };

/**
 * Parses `not`, `and`, `or`, parentheses, `==`/`!=` between `span.attributes["k"]`, string literals and
 * `nil`. Anything else throws: if the condition grows beyond this subset, extend the parser, do not
 * weaken the test.
 */
function parseOttl(src: string): Ottl {
  const tokens =
    src.match(/"(?:[^"\\]|\\.)*"|==|!=|\(|\)|(?:span\.)?attributes\["[^"]*"\]|[A-Za-z_]+|\S/g) ?? [];
  let pos = 0;
  const peek = () => tokens[pos];
  const next = () => {
    const t = tokens[pos++];
    if (t === undefined) throw new Error(`OTTL: unexpected end of "${src}"`);
    return t;
  };
  const operand = (): Operand => {
    const t = next();
    const attr = /^(?:span\.)?attributes\["([^"]*)"\]$/.exec(t);
    if (attr) return { t: 'attr', key: attr[1] as string };
    if (t.startsWith('"')) return { t: 'str', v: JSON.parse(t) as string };
    if (t === 'nil') return { t: 'nil' };
    throw new Error(`OTTL: unsupported operand ${t} in "${src}"`);
  };
  const unary = (): Ottl => {
    if (peek() === 'not') {
      next();
      return { t: 'not', e: unary() };
    }
    if (peek() === '(') {
      next();
      const e = or();
      if (next() !== ')') throw new Error(`OTTL: missing ) in "${src}"`);
      return e;
    }
    const l = operand();
    const op = next();
    if (op !== '==' && op !== '!=') throw new Error(`OTTL: unsupported operator ${op} in "${src}"`);
    return { t: 'cmp', op, l, r: operand() };
  };
  const and = (): Ottl => {
    let l = unary();
    while (peek() === 'and') {
      next();
      l = { t: 'and', l, r: unary() };
    }
    return l;
  };
  const or = (): Ottl => {
    let l = and();
    while (peek() === 'or') {
      next();
      l = { t: 'or', l, r: and() };
    }
    return l;
  };
  const e = or();
  if (pos !== tokens.length) throw new Error(`OTTL: trailing tokens in "${src}"`);
  return e;
}

function evalOttl(e: Ottl, attrs: Attributes): boolean {
  const val = (o: Operand) => (o.t === 'attr' ? (attrs[o.key] ?? null) : o.t === 'str' ? o.v : null);
  switch (e.t) {
    case 'not':
      return !evalOttl(e.e, attrs);
    case 'and':
      return evalOttl(e.l, attrs) && evalOttl(e.r, attrs);
    case 'or':
      return evalOttl(e.l, attrs) || evalOttl(e.r, attrs);
    case 'cmp':
      return e.op === '==' ? val(e.l) === val(e.r) : val(e.l) !== val(e.r);
  }
}

function ottlAttrKeys(e: Ottl, into = new Set<string>()): Set<string> {
  if (e.t === 'not') ottlAttrKeys(e.e, into);
  else if (e.t === 'and' || e.t === 'or') {
    ottlAttrKeys(e.l, into);
    ottlAttrKeys(e.r, into);
  } else for (const o of [e.l, e.r]) if (o.t === 'attr') into.add(o.key);
  return into;
}

function ottlStrings(e: Ottl, into = new Set<string>()): Set<string> {
  if (e.t === 'not') ottlStrings(e.e, into);
  else if (e.t === 'and' || e.t === 'or') {
    ottlStrings(e.l, into);
    ottlStrings(e.r, into);
  } else for (const o of [e.l, e.r]) if (o.t === 'str') into.add(o.v);
  return into;
}

// ---------------------------------------------------------------------------------------------------
// .dockerignore, as Docker matches it (enough of it for the patterns used here)

function dockerIgnored(patterns: string[], path: string): boolean {
  let ignored = false;
  for (const raw of patterns) {
    const neg = raw.startsWith('!');
    const p = posix.normalize(neg ? raw.slice(1) : raw).replace(/^\/+/, '');
    const re = new RegExp(
      `^${p
        .split('')
        .map((c, i, all) => {
          if (c === '*' && all[i + 1] === '*') return '';
          if (c === '*' && all[i - 1] === '*') return all[i + 1] === '/' ? '(?:.*/)?' : '.*';
          if (c === '*') return '[^/]*';
          if (c === '/' && all[i - 1] === '*' && all[i - 2] === '*') return '';
          if (c === '?') return '[^/]';
          return c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
        })
        .join('')}(?:/.*)?$`,
    );
    if (re.test(path)) ignored = !neg;
  }
  return ignored;
}

// ---------------------------------------------------------------------------------------------------

const compose = parseYamlFile('docker-compose.yml');
const services = Object.keys(obj(compose.services, 'services'));
const svc = Object.fromEntries(services.map((n) => [n, service(compose, n)])) as Record<string, Service>;
const collector = parseYamlFile('otel-config/collector.yaml');
const kong = parseYamlFile('otel-config/kong.yaml');
const tollgateYaml = parseYamlFile('otel-config/tollgate.yaml');

/** The tollgate CLI services: the image's entrypoint runs `tollgate <command>`. */
const tollgateServices = services.filter((n) => svc[n]?.command[0] === 'start');

function effectiveConfig(s: Service, envOverrides: Record<string, string> = {}) {
  const { flags } = splitArgs(s.command.slice(1));
  if (flags['--config']) flags['--config'] = repoPath(hostPathOf(s, flags['--config']));
  return loadConfig(flags, { ...s.env, ...envOverrides });
}
const roleOf = (s: Service) => String(effectiveConfig(s).settings.roles);
const processorSvc = () =>
  svc[tollgateServices.find((n) => roleOf(svc[n] as Service) === 'processor') ?? '']!;
const apiSvc = () => svc[tollgateServices.find((n) => roleOf(svc[n] as Service) === 'api') ?? '']!;

function otlpTarget(): { host: string; port: number } {
  const p = processorSvc();
  return { host: p.name, port: Number(effectiveConfig(p).settings['otlp.port']) };
}

/** The ingest token the compose stack sends, and the ingest key it matches in otel-config/tollgate.yaml. */
function composeIngestToken(): string {
  const token = svc['otel-collector']?.env.TOLLGATE_INGEST_KEY;
  if (!token) throw new Error('otel-collector has no TOLLGATE_INGEST_KEY');
  return token;
}

describe('otel-config/ holds only files this test checks', () => {
  it('lists every file, and every YAML file parses strictly', () => {
    const files = readdirSync(OTEL_CONFIG).filter((f) => statSync(join(OTEL_CONFIG, f)).isFile());
    expect(files.sort()).toEqual([
      'README.md',
      'collector.yaml',
      'example-mcp-server.mjs',
      'kong.yaml',
      'tollgate.yaml',
    ]);
    for (const f of files.filter((f) => f.endsWith('.yaml')))
      expect(() => parseYamlFile(`otel-config/${f}`)).not.toThrow();
    const readme = read('otel-config/README.md');
    for (const f of files.filter((f) => f !== 'README.md'))
      expect(readme, `README mentions ${f}`).toContain(f);
    expect(readme).toMatch(/must not sample/i);
  });
});

describe('docker-compose.yml', () => {
  it('has the production-shaped services', () => {
    for (const name of ['clickhouse', 'redis', 'kong', 'otel-collector', 'mcp-example'])
      expect(services).toContain(name);
    expect(svc.clickhouse?.image).toMatch(/^clickhouse\/clickhouse-server:\d+\.\d+/);
    expect(svc.redis?.image).toMatch(/^redis:7(\.|$)/);
    expect(svc.kong?.image).toMatch(/^kong:3\.\d+/);
    const col = /^otel\/opentelemetry-collector-contrib:0\.(\d+)\.\d+$/.exec(
      svc['otel-collector']?.image ?? '',
    );
    expect(col, 'collector-contrib image pinned to a version').not.toBeNull();
    // filter processor trace_conditions exist from contrib 0.146.0 on
    expect(Number(col?.[1])).toBeGreaterThanOrEqual(146);
    for (const s of Object.values(svc)) {
      if (s.raw.build === undefined) expect(s.image, `${s.name} pins its image`).toMatch(/:[^:]*\d[^:]*$/);
      expect(s.image ?? '', `${s.name} image`).not.toMatch(/:latest$/);
    }
  });

  it('gives every service a health check', () => {
    for (const s of Object.values(svc)) {
      expect(s.healthcheck, `${s.name} has a healthcheck`).toBeDefined();
      expect(s.healthcheck?.disable, `${s.name} healthcheck not disabled`).not.toBe(true);
      const t = healthTest(s);
      expect(['CMD', 'CMD-SHELL'], `${s.name} healthcheck test`).toContain(t[0]);
      expect(t.length, `${s.name} healthcheck has a command`).toBeGreaterThan(1);
    }
  });

  it('shell health checks only read variables the service defines', () => {
    for (const s of Object.values(svc)) {
      const t = healthTest(s);
      if (t[0] !== 'CMD-SHELL') continue;
      for (const m of (t[1] as string).matchAll(/\$\{?([A-Za-z_][A-Za-z0-9_]*)/g)) {
        expect(s.env, `${s.name} healthcheck reads $${m[1]}`).toHaveProperty(m[1] as string);
      }
    }
  });

  it('binds every published port to 127.0.0.1 only', () => {
    for (const s of Object.values(svc)) {
      expect(s.raw.network_mode, `${s.name} network_mode`).toBeUndefined();
      for (const p of s.ports) {
        expect(p.hostIp, `${s.name} publishes ${p.target} on loopback`).toBe('127.0.0.1');
        expect(p.published, `${s.name} names its host port`).toMatch(/^\d+$/);
      }
    }
    const hostPorts = Object.values(svc).flatMap((s) => s.ports.map((p) => p.published));
    expect(new Set(hostPorts).size, 'no host port is published twice').toBe(hostPorts.length);
  });

  it('mounts only files that exist in the repository', () => {
    for (const s of Object.values(svc)) {
      for (const src of s.binds.values())
        expect(existsSync(repoPath(src)), `${s.name} mounts ${src}`).toBe(true);
      for (const vol of s.named.values())
        expect(Object.keys(obj(compose.volumes, 'volumes')), `${s.name} volume ${vol} is declared`).toContain(
          vol,
        );
    }
  });

  it('runs the Tollgate processor and API as separate services of one image, with the right roles', () => {
    expect(tollgateServices.length).toBe(2);
    const roles = tollgateServices.map((n) => roleOf(svc[n] as Service)).sort();
    expect(roles).toEqual(['api', 'processor']);
    const [a, b] = tollgateServices.map((n) => svc[n] as Service) as [Service, Service];
    expect(a.image).toBe(b.image);
    expect(a.raw.build).toEqual(b.raw.build);
    expect(obj(a.raw.build, 'build').context).toBe('.');
  });

  it('configures Tollgate only through settings that exist, with values loadConfig accepts', () => {
    for (const n of tollgateServices) {
      const s = svc[n] as Service;
      for (const k of Object.keys(s.env))
        expect(SETTING_ENVS, `${n}: ${k} is a Tollgate setting`).toContain(k);
      const { flags, positional } = splitArgs(s.command);
      expect(positional).toEqual(['start']);
      expect(() => effectiveConfig(s), n).not.toThrow();
      expect(flags['--config'], `${n} mounts its config file`).toBeDefined();
    }
    // Every key under `settings:` of the mounted file is a setting (loadConfig ignores unknown keys).
    const flat = (o: Obj, prefix = ''): string[] =>
      Object.entries(o).flatMap(([k, v]) => (isObj(v) ? flat(v, `${prefix}${k}.`) : [`${prefix}${k}`]));
    for (const key of flat(obj(tollgateYaml.settings, 'settings')))
      expect(SETTINGS.map((s) => s.key)).toContain(key);
  });

  it('points the processor at the ClickHouse server and Redis of the stack', () => {
    const p = processorSvc();
    const settings = effectiveConfig(p).settings;
    const ch = urlParts(String(settings['clickhouse.url']));
    expect(services).toContain(ch.host);
    expect(ch.port).toBe(8123);
    const chEnv = (svc[ch.host] as Service).env;
    expect(settings['clickhouse.database']).toBe(chEnv.CLICKHOUSE_DB);
    expect(settings['clickhouse.username']).toBe(chEnv.CLICKHOUSE_USER);
    expect(settings['clickhouse.password']).toBe(chEnv.CLICKHOUSE_PASSWORD);
    expect(String(effectiveConfig(apiSvc()).settings['clickhouse.url'])).toBe(
      String(settings['clickhouse.url']),
    );

    const redis = new URL(String(settings['redis.url']));
    expect(redis.protocol).toBe('redis:');
    expect(services).toContain(redis.hostname);
    expect(Number(redis.port)).toBe(6379);
    const redisCmd = (svc[redis.hostname] as Service).command;
    expect(decodeURIComponent(redis.password)).toBe(redisCmd[redisCmd.indexOf('--requirepass') + 1]);
    expect(redisCmd).toContain('--appendonly');
    expect(settings['redis.clusterNodes']).toBe('');
    // The API role uses Redis too (enforcement admin): the same one, never a private redis-server.
    expect(effectiveConfig(apiSvc()).settings['redis.url']).toBe(settings['redis.url']);
  });

  it('listens on the default ports inside the network and health-checks its readiness', () => {
    const p = processorSvc();
    const ps = effectiveConfig(p).settings;
    expect(ps['otlp.port']).toBe(settingDefault('otlp.port'));
    expect(ps['otlp.port']).toBe(4318);
    expect(ps['otlp.host']).toBe('0.0.0.0');
    expect(p.named.has(String(ps.dataDir)), 'processor spool on a named volume').toBe(true);
    const a = apiSvc();
    const as = effectiveConfig(a).settings;
    for (const [s, settings] of [
      [p, ps],
      [a, as],
    ] as const) {
      // Every role runs the HTTP listener (health, readiness, metrics); the processor adds the receiver.
      expect(settings['api.port'], s.name).toBe(settingDefault('api.port'));
      expect(settings['api.port'], s.name).toBe(8080);
      expect(settings['api.host'], s.name).toBe('0.0.0.0');
      expect(s.ports.map((x) => x.target).sort(), s.name).toEqual(
        (s === p ? [ps['otlp.port'], ps['api.port']] : [as['api.port']]).sort(),
      );
      expect(healthUrl(s), s.name).toBe(`http://127.0.0.1:${settings['api.port']}/readyz`);
    }
  });

  it('wires Kong: DB-less with otel-config/kong.yaml, both plugins, unsampled tracing', () => {
    const k = svc.kong as Service;
    expect(k.env.KONG_DATABASE).toBe('off');
    expect(hostPathOf(k, k.env.KONG_DECLARATIVE_CONFIG as string)).toBe('otel-config/kong.yaml');
    expect((k.env.KONG_PLUGINS as string).split(',')).toEqual(
      expect.arrayContaining(['bundled', 'tollgate']),
    );
    expect(['request', 'all']).toEqual(
      expect.arrayContaining((k.env.KONG_TRACING_INSTRUMENTATIONS as string).split(',')),
    );
    expect(Number(k.env.KONG_TRACING_SAMPLING_RATE)).toBe(1);
    // The plugin directory is mounted where Kong's Lua path finds `kong.plugins.tollgate.*`.
    const roots = (k.env.KONG_LUA_PACKAGE_PATH as string)
      .split(';')
      .filter((p) => p.endsWith('/?.lua'))
      .map((p) => p.slice(0, -'/?.lua'.length));
    const pluginMount = [...k.binds].find(([, src]) => src === 'kong/kong/plugins/tollgate');
    expect(pluginMount, 'kong/kong/plugins/tollgate is mounted').toBeDefined();
    expect(roots.map((r) => `${r}/kong/plugins/tollgate`)).toContain(pluginMount?.[0]);
    for (const f of ['handler.lua', 'schema.lua'])
      expect(existsSync(repoPath(`kong/kong/plugins/tollgate/${f}`))).toBe(true);
  });

  it('runs the example MCP server from the image with an entrypoint that exists', () => {
    const m = svc['mcp-example'] as Service;
    expect(m.raw.build).toEqual(svc[tollgateServices[0] as string]?.raw.build);
    expect(m.entrypoint[0]).toBe('node');
    expect(existsSync(repoPath(m.entrypoint[1] as string))).toBe(true);
    expect(m.ports, 'the upstream is reachable through Kong only').toEqual([]);
  });
});

describe('otel-config/collector.yaml', () => {
  const exporters = obj(collector.exporters, 'exporters');
  const processors = obj(collector.processors, 'processors');
  const pipelines = obj(obj(collector.service, 'service').pipelines, 'pipelines');
  const typeOf = (id: string) => id.split('/')[0] as string;
  const tollgateExporterIds = Object.keys(exporters).filter((id) => typeOf(id) === 'otlphttp');
  const collectorEnv = () => (svc['otel-collector'] as Service).env;

  it('receives OTLP over gRPC and HTTP', () => {
    const protocols = obj(obj(obj(collector.receivers, 'receivers').otlp, 'otlp').protocols, 'protocols');
    expect(Object.keys(protocols).sort()).toEqual(['grpc', 'http']);
  });

  it("exports to Tollgate's receiver with the ingest key, retry and a persistent queue", () => {
    expect(tollgateExporterIds).toHaveLength(1);
    const ex = obj(exporters[tollgateExporterIds[0] as string], 'tollgate exporter');
    const raw = String(ex.traces_endpoint);
    // With the compose environment, and with the defaults written in the file.
    for (const env of [collectorEnv(), {}]) {
      const u = urlParts(expandCollectorEnv(raw, env));
      expect(u).toEqual({ ...otlpTarget(), path: '/v1/traces' });
    }
    const headers = obj(ex.headers, 'headers');
    expect(headers.Authorization).toBe(`Bearer \${env:TOLLGATE_INGEST_KEY}`);
    expect(collectorEnv().TOLLGATE_INGEST_KEY).toBeTruthy();
    expect(obj(ex.retry_on_failure, 'retry_on_failure').enabled).toBe(true);
    const queue = obj(ex.sending_queue, 'sending_queue');
    expect(queue.enabled).toBe(true);
    const storage = String(queue.storage);
    expect(typeOf(storage)).toBe('file_storage');
    expect(Object.keys(obj(collector.extensions, 'extensions'))).toContain(storage);
    expect(arr(obj(collector.service, 'service').extensions, 'service.extensions')).toContain(storage);
    // The queue directory lives on a volume of the compose service.
    const dir = String(obj(obj(collector.extensions, 'extensions')[storage], storage).directory);
    const c = svc['otel-collector'] as Service;
    expect(
      [...c.named.keys()].some((t) => dir === t || dir.startsWith(`${t}/`)),
      `${dir} on a volume`,
    ).toBe(true);
    expect(
      hostPathOf(c, String(c.command.find((a) => a.startsWith('--config='))?.slice('--config='.length))),
    ).toBe('otel-config/collector.yaml');
  });

  const tollgatePipelines = () =>
    Object.entries(pipelines).filter(([, p]) =>
      arr(obj(p, 'pipeline').exporters, 'exporters').some((e) => tollgateExporterIds.includes(String(e))),
    );

  it('has no sampling in the Tollgate pipeline: only memory_limiter and the tool-call filter', () => {
    expect(tollgatePipelines()).toHaveLength(1);
    for (const [name, p] of tollgatePipelines()) {
      const procs = arr(obj(p, name).processors ?? [], `${name}.processors`).map(String);
      for (const id of procs) {
        expect(typeOf(id), `${name}: ${id}`).not.toMatch(/sampl/);
        expect(['memory_limiter', 'filter'], `${name}: ${id} is allowed on the billing path`).toContain(
          typeOf(id),
        );
      }
      expect(procs.filter((id) => typeOf(id) === 'filter')).toHaveLength(1);
    }
    for (const id of Object.keys(processors)) expect(typeOf(id), id).not.toMatch(/sampl/);
  });

  it('still sends ALL spans to the usual backend', () => {
    const [, tp] = tollgatePipelines()[0] as [string, unknown];
    const receivers = arr(obj(tp, 'tollgate pipeline').receivers, 'receivers');
    const backend = Object.entries(pipelines).filter(([, p]) => {
      const pl = obj(p, 'pipeline');
      return (
        arr(pl.exporters, 'exporters').some((e) => typeOf(String(e)) === 'otlp') &&
        arr(pl.receivers, 'receivers').every((r) => receivers.includes(r))
      );
    });
    expect(backend).toHaveLength(1);
    const procs = arr(obj(backend[0]?.[1], 'backend').processors ?? [], 'processors').map(String);
    expect(
      procs.filter((id) => typeOf(id) === 'filter'),
      'backend pipeline filters nothing',
    ).toEqual([]);
  });

  it('selects spans with exactly the attribute keys and value of contracts/', () => {
    const [, tp] = tollgatePipelines()[0] as [string, unknown];
    const filterId = arr(obj(tp, 'p').processors, 'processors')
      .map(String)
      .find((id) => typeOf(id) === 'filter');
    const filter = obj(processors[filterId as string], 'filter');
    expect(filter.error_mode, 'errors keep the span (never lose a billable call)').toBe('ignore');
    const conditions = arr(filter.trace_conditions, 'trace_conditions').map(String);
    expect(conditions.length).toBeGreaterThan(0);
    const parsed = conditions.map(parseOttl);
    const keys = new Set(parsed.flatMap((c) => [...ottlAttrKeys(c)]));
    expect([...keys].sort()).toEqual([ATTR_GEN_AI_TOOL_NAME, ATTR_MCP_METHOD_NAME].sort());
    expect([...new Set(parsed.flatMap((c) => [...ottlStrings(c)]))]).toEqual([MCP_METHOD_TOOLS_CALL]);

    // Evaluated: the filter keeps every span the contract bills and drops every span it ignores.
    const drops = (attrs: Attributes) => parsed.some((c) => evalOttl(c, attrs));
    const now = Date.now() * 1000;
    const cases: Attributes[] = [
      { [ATTR_MCP_METHOD_NAME]: MCP_METHOD_TOOLS_CALL, [ATTR_GEN_AI_TOOL_NAME]: 'get_forecast' },
      {
        [ATTR_MCP_METHOD_NAME]: MCP_METHOD_TOOLS_CALL,
        [ATTR_GEN_AI_TOOL_NAME]: 'search_docs',
        'error.type': 'tool_error',
      },
      { [ATTR_MCP_METHOD_NAME]: 'tools/list' },
      { [ATTR_MCP_METHOD_NAME]: 'initialize', [ATTR_GEN_AI_TOOL_NAME]: 'x' },
      { [ATTR_GEN_AI_TOOL_NAME]: 'get_forecast' },
      { 'http.method': 'GET' },
      {},
      { [ATTR_MCP_METHOD_NAME]: MCP_METHOD_TOOLS_CALL },
    ];
    let billed = 0;
    let ignored = 0;
    for (const attrs of cases) {
      for (const name of [`tools/call ${String(attrs[ATTR_GEN_AI_TOOL_NAME])}`, KONG_ROOT_SPAN_NAME]) {
        const r = extractToolCall(
          {
            traceId: '0af7651916cd43dd8448eb211c80319c',
            spanId: 'b7ad6b7169203331',
            name,
            kind: SPAN_KIND_SERVER,
            startUnixUs: now - 2_000_000,
            endUnixUs: now - 1_000_000,
            statusCode: 0,
            attributes: { ...attrs, [ATTR_TOLLGATE_CUSTOMER]: 'acme' },
            resource: {},
            scopeName: 'test',
          },
          { sdkScopeName: 'sdk', nowUnixUs: now, maxAgeUs: 3600e6, maxFutureUs: 600e6 },
        );
        if (r.kind === 'call') {
          billed++;
          expect(drops(attrs), `billable span kept: ${JSON.stringify(attrs)}`).toBe(false);
        }
        if (r.kind === 'ignored') {
          ignored++;
          expect(drops(attrs), `non-tool-call span dropped: ${JSON.stringify(attrs)}`).toBe(true);
        }
      }
    }
    expect(billed).toBeGreaterThan(0);
    expect(ignored).toBeGreaterThan(0);
  });
});

describe('otel-config/kong.yaml', () => {
  const plugins = arr(kong.plugins, 'plugins').map((p) => obj(p, 'plugin'));
  const plugin = (name: string) => {
    const found = plugins.filter((p) => p.name === name);
    expect(found, `one ${name} plugin`).toHaveLength(1);
    return found[0] as Obj;
  };
  const kongServices = arr(kong.services, 'services').map((s) => obj(s, 'service'));
  const routes = kongServices.flatMap((s) => arr(s.routes ?? [], 'routes').map((r) => obj(r, 'route')));
  const mcpRoute = () => routes.find((r) => arr(r.paths, 'paths').includes('/mcp')) as Obj;
  const vaultEnv = (v: unknown): string => {
    const m = /^\{vault:\/\/env\/([a-z0-9-]+)\}$/.exec(String(v));
    if (!m) throw new Error(`${String(v)} is not an env vault reference`);
    return (m[1] as string).toUpperCase().replaceAll('-', '_');
  };

  it('is DB-less declarative config format 3.0', () => {
    expect(kong._format_version).toBe('3.0');
  });

  it('routes /mcp to the example MCP server of the stack', () => {
    expect(mcpRoute()).toBeDefined();
    const serviceOfRoute = kongServices.find((s) =>
      arr(s.routes ?? [], 'routes').includes(mcpRoute()),
    ) as Obj;
    const u = urlParts(String(serviceOfRoute.url));
    const m = svc[u.host] as Service;
    expect(m, `${u.host} is a compose service`).toBeDefined();
    expect(Number(m.env.MCP_PORT)).toBe(u.port);
    const serverSource = read(m.entrypoint[1] as string);
    const path = /const MCP_PATH = '([^']+)'/.exec(serverSource)?.[1];
    expect(mcpRoute().strip_path).toBe(false);
    expect(arr(mcpRoute().paths, 'paths')).toEqual([path]);
  });

  it('authenticates consumers (the paying customers) on the billed route', () => {
    const consumers = arr(kong.consumers, 'consumers').map((c) => obj(c, 'consumer'));
    expect(consumers.length).toBeGreaterThan(0);
    for (const c of consumers) {
      expect(c.custom_id ?? c.username).toBeTruthy();
      expect(arr(c.keyauth_credentials, 'keyauth_credentials').length).toBeGreaterThan(0);
    }
    expect(plugin('key-auth').route).toBe(mcpRoute().name);
  });

  it('configures the tollgate plugin only with fields of its schema.lua', () => {
    const fields = kongConfigFields(read('kong/kong/plugins/tollgate/schema.lua'));
    expect(fields.map((f) => f.name)).toContain('product');
    expect(fields.map((f) => f.name)).not.toContain('ip'); // nested record fields are not config fields
    const tg = plugin('tollgate');
    expect(tg.route).toBe(mcpRoute().name);
    const config = obj(tg.config, 'tollgate config');
    for (const key of Object.keys(config))
      expect(
        fields.map((f) => f.name),
        `tollgate.${key}`,
      ).toContain(key);
    for (const f of fields.filter((f) => f.required && !f.hasDefault))
      expect(config, `required ${f.name}`).toHaveProperty(f.name);
    // Same Redis as the processor, same product as the ingest key, a product with rate plans.
    expect(services).toContain(config.redis_host);
    expect(new URL(String(effectiveConfig(processorSvc()).settings['redis.url'])).hostname).toBe(
      config.redis_host,
    );
    expect(config.redis_port).toBe(6379);
    const k = svc.kong as Service;
    const redisPw = new URL(String(effectiveConfig(processorSvc()).settings['redis.url'])).password;
    expect(k.env[vaultEnv(config.redis_password)]).toBe(decodeURIComponent(redisPw));
    const ingest = arr(tollgateYaml.ingestKeys, 'ingestKeys').map((i) => obj(i, 'ingest key'));
    expect(ingest.map((i) => i.product)).toContain(config.product);
    const plansFile =
      effectiveConfig(processorSvc()).settings.plansFile || 'collector-processor/defaults/plans.yaml';
    expect(loadPlanBook(read(String(plansFile))).products()).toContain(config.product);
  });

  it("exports Kong's spans unsampled to Tollgate's /v1/traces with the ingest key", () => {
    const otel = plugin('opentelemetry');
    expect(otel.route).toBe(mcpRoute().name);
    const config = obj(otel.config, 'opentelemetry config');
    for (const key of Object.keys(config)) expect(KONG_OTEL_FIELDS, `opentelemetry.${key}`).toContain(key);
    for (const key of Object.keys(obj(config.queue ?? {}, 'queue'))) expect(KONG_QUEUE_FIELDS).toContain(key);
    for (const key of Object.keys(obj(config.propagation ?? {}, 'propagation')))
      expect(KONG_PROPAGATION_FIELDS).toContain(key);
    expect(config.sampling_rate).toBe(1);
    expect(urlParts(String(config.traces_endpoint))).toEqual({ ...otlpTarget(), path: '/v1/traces' });

    const authorization = (svc.kong as Service).env[vaultEnv(obj(config.headers, 'headers').Authorization)];
    const token = composeIngestToken();
    expect(authorization).toBe(`Bearer ${token}`);
    const ingest = arr(tollgateYaml.ingestKeys, 'ingestKeys').map((i) => obj(i, 'ingest key'));
    const key = ingest.find((i) => i.sha256 === sha256(token));
    expect(key, 'the compose ingest token matches an ingest key hash').toBeDefined();
    expect(key?.product).toBe(obj(plugin('tollgate').config, 'c').product);
  });
});

describe('Dockerfile and .dockerignore', () => {
  const dockerfile = read('Dockerfile');
  const instr = (name: string) =>
    dockerfile
      .split('\n')
      .filter((l) => l.startsWith(`${name} `))
      .map((l) => l.slice(name.length + 1).trim());
  const ignore = read('.dockerignore')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));

  it('builds on node:20-bookworm-slim with npm ci and the repo build', () => {
    expect(instr('FROM')).toEqual(['node:20-bookworm-slim']);
    expect(instr('RUN').some((r) => r.startsWith('npm ci'))).toBe(true);
    expect(instr('RUN').some((r) => r.startsWith('npm run build'))).toBe(true);
    expect(JSON.parse(read('package.json')).scripts.build).toBe('tsc -b');
  });

  it('has an ENTRYPOINT that the build output layout provides', () => {
    const entry = JSON.parse(instr('ENTRYPOINT')[0] as string) as string[];
    // the image runs the package's `tollgate` bin ...
    const bin = posix.join(
      'collector-processor',
      JSON.parse(read('collector-processor/package.json')).bin.tollgate,
    );
    expect(entry).toEqual(['node', bin]);
    const workdir = instr('WORKDIR')[0] as string;
    expect(posix.relative(workdir, posix.resolve(workdir, entry[1] as string))).toBe(bin);
    // ... which imports the compiled CLI: tsc -b maps collector-processor/<rootDir>/cli/main.ts to
    // <outDir>/cli/main.js, and it exists once built (run `npx tsc -b` first).
    const imported = /import '([^']+)'/.exec(read(bin))?.[1] as string;
    const compiled = posix.normalize(posix.join(posix.dirname(bin), imported));
    const tsconfig = JSON.parse(read('collector-processor/tsconfig.json')) as {
      compilerOptions: { rootDir: string; outDir: string };
    };
    const { rootDir, outDir } = tsconfig.compilerOptions;
    expect(compiled).toBe(posix.join('collector-processor', outDir, 'cli', 'main.js'));
    expect(existsSync(repoPath(posix.join('collector-processor', rootDir, 'cli', 'main.ts')))).toBe(true);
    expect(existsSync(repoPath(compiled)), `${compiled} (run npx tsc -b)`).toBe(true);
    // The CLI finds its defaults, SQL migrations and Lua scripts next to dist/ in the image.
    for (const dir of ['defaults', 'migrations', 'lua', 'proto'])
      expect(existsSync(repoPath(`collector-processor/${dir}`)), dir).toBe(true);
  });

  it('keeps build outputs out of the context and everything the image needs in it', () => {
    for (const p of [
      'node_modules',
      'collector-processor/node_modules',
      'collector-processor/dist',
      'contracts/dist/index.js',
      'collector-processor/tsconfig.tsbuildinfo',
      '.git',
    ])
      expect(dockerIgnored(ignore, p), `${p} ignored`).toBe(true);
    const needed = [
      'package.json',
      'package-lock.json',
      'tsconfig.json',
      'tsconfig.base.json',
      'contracts/src/index.ts',
      'collector-processor/src/cli/main.ts',
      'collector-processor/defaults/plans.yaml',
      'collector-processor/migrations',
      'collector-processor/lua',
      'collector-processor/proto',
      'billing-api/src/index.ts',
      (svc['mcp-example'] as Service).entrypoint[1] as string,
    ];
    for (const p of needed) {
      expect(existsSync(repoPath(p)), `${p} exists`).toBe(true);
      expect(dockerIgnored(ignore, p), `${p} is in the build context`).toBe(false);
    }
    for (const n of tollgateServices)
      expect(obj(svc[n]?.raw.build, 'build').dockerfile ?? 'Dockerfile').toBe('Dockerfile');
  });
});

// ---------------------------------------------------------------------------------------------------
// The processes that can run here, started as the compose services start them

interface Started {
  child: ChildProcess;
  output: () => string;
}

function startChild(args: string[], env: Record<string, string>): Started {
  const child = spawn(process.execPath, args, {
    cwd: REPO, // the image's WORKDIR holds the repository layout
    env: { PATH: process.env.PATH ?? '/usr/bin:/bin', HOME: process.env.HOME ?? '/tmp', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  const keep = (d: Buffer) => {
    out = (out + d.toString()).slice(-20_000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  return { child, output: () => out };
}

async function stopChild(s: Started | undefined): Promise<void> {
  if (!s || s.child.exitCode !== null || s.child.signalCode !== null) return;
  const exited = new Promise((r) => s.child.once('exit', r));
  s.child.kill('SIGTERM');
  const timer = setTimeout(() => s.child.kill('SIGKILL'), 20_000);
  await exited;
  clearTimeout(timer);
}

/** Runs `script` (a health check) until it exits 0, as Docker would, or fails with the process output. */
async function waitHealthy(s: Started, script: string, timeoutMs = 90_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (s.child.exitCode !== null) throw new Error(`exited with ${s.child.exitCode}: ${s.output()}`);
    if ((await runNode(script)) === 0) return;
    if (Date.now() > deadline) throw new Error(`not healthy after ${timeoutMs} ms: ${s.output()}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** The compose service's tollgate command as it runs here: embedded chDB and a private Redis stand in
 * for the ClickHouse and Redis servers, loopback and free ports for the container's 0.0.0.0 and defaults. */
function localTollgate(s: Service, dataDir: string, ports: { otlp: number; api: number }): Started {
  const { flags } = splitArgs(s.command.slice(1));
  const args = ['start'];
  for (const [f, v] of Object.entries(flags)) args.push(f, f === '--config' ? repoPath(hostPathOf(s, v)) : v);
  return startChild([repoPath('collector-processor/dist/cli/main.js'), ...args], {
    ...s.env,
    CLICKHOUSE_URL: '',
    CLICKHOUSE_DATABASE: 'default',
    CLICKHOUSE_USER: 'default',
    CLICKHOUSE_PASSWORD: '',
    REDIS_URL: '',
    TOLLGATE_DATA_DIR: dataDir,
    TOLLGATE_OTLP_HOST: '127.0.0.1',
    TOLLGATE_OTLP_PORT: String(ports.otlp),
    TOLLGATE_OTLP_GRPC_PORT: '0',
    TOLLGATE_API_HOST: '127.0.0.1',
    TOLLGATE_API_PORT: String(ports.api),
    TOLLGATE_LOG_LEVEL: 'warn',
  });
}

/** The compose admin token (otel-config/tollgate.yaml names it in the comment of its API key). */
const COMPOSE_ADMIN_TOKEN = 'tg_compose_admin_example';

function adminStates(port: number, token = COMPOSE_ADMIN_TOKEN): Promise<Response> {
  return fetch(`http://127.0.0.1:${port}/admin/enforcement/states?product=demo-mcp`, {
    headers: { authorization: `Bearer ${token}` },
  });
}

const withPort = (script: string, from: number, to: number) => {
  expect(script).toContain(`127.0.0.1:${from}/`);
  return script.replaceAll(`127.0.0.1:${from}/`, `127.0.0.1:${to}/`);
};

describe('the compose services that run here, probed with their own health checks', () => {
  const dirs: string[] = [];
  let processor: Started | undefined;
  let api: Started | undefined;
  let mcp: Started | undefined;
  const ports = { pOtlp: 0, pApi: 0, aOtlp: 0, aApi: 0 };

  beforeAll(async () => {
    for (const k of Object.keys(ports) as (keyof typeof ports)[]) ports[k] = await freePort();
    for (let i = 0; i < 2; i++) dirs.push(mkdtempSync(join(tmpdir(), 'tollgate-compose-')));
    processor = localTollgate(processorSvc(), dirs[0] as string, { otlp: ports.pOtlp, api: ports.pApi });
    api = localTollgate(apiSvc(), dirs[1] as string, { otlp: ports.aOtlp, api: ports.aApi });
    const m = svc['mcp-example'] as Service;
    mcp = startChild(m.entrypoint.slice(1), { ...m.env, MCP_HOST: '127.0.0.1', MCP_PORT: '0' });
  });

  afterAll(async () => {
    await Promise.all([stopChild(processor), stopChild(api), stopChild(mcp)]);
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('tollgate-processor: ready by its health check, bills a Kong export sent with the compose key, serves no admin routes', async () => {
    const p = processorSvc();
    const script = withPort(nodeHealthScript(p), 8080, ports.pApi);
    expect(await runNode(script), 'the health check fails before the server is up').not.toBe(0);
    await waitHealthy(processor as Started, script);
    // role processor: operations endpoints only, no admin or analytics routes
    expect((await adminStates(ports.pApi)).status, (processor as Started).output()).toBe(404);

    // Kong's export (kong/fixtures/kong-otel-span.json), sent with the Authorization header Kong's
    // opentelemetry plugin sends in the stack: accepted in full (no partial success).
    const fixture = JSON.parse(read('kong/fixtures/kong-otel-span.json')) as {
      resourceSpans: { scopeSpans: { spans: Record<string, unknown>[] }[] }[];
    };
    const now = BigInt(Date.now() - 2000) * 1_000_000n;
    for (const rs of fixture.resourceSpans)
      for (const ss of rs.scopeSpans)
        for (const s of ss.spans) {
          const dur = BigInt(s.endTimeUnixNano as string) - BigInt(s.startTimeUnixNano as string);
          s.startTimeUnixNano = String(now);
          s.endTimeUnixNano = String(now + dur);
        }
    const send = (authorization: string) =>
      fetch(`http://127.0.0.1:${ports.pOtlp}/v1/traces`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization },
        body: JSON.stringify(fixture),
      });
    // Like every OTLP exporter (and Kong's queue), retry 429/503 after Retry-After: a processor that
    // has just started may still be connecting to Redis.
    const auth = (svc.kong as Service).env.TOLLGATE_INGEST_AUTHORIZATION as string;
    let ok = await send(auth);
    for (let attempt = 0; attempt < 10 && (ok.status === 429 || ok.status === 503); attempt++) {
      await new Promise((r) => setTimeout(r, 1000 * Number(ok.headers.get('retry-after') ?? 1)));
      ok = await send(auth);
    }
    const body = await ok.text();
    expect(ok.status, `${body}\n${(processor as Started).output()}`).toBe(200);
    expect(body).toBe('{}');
    expect((await send('Bearer not-the-compose-key')).status).toBe(401);
  });

  it('tollgate-api: ready by its health check, serves the admin routes with the compose API key, no receiver', async () => {
    const script = withPort(nodeHealthScript(apiSvc()), 8080, ports.aApi);
    await waitHealthy(api as Started, script);
    // role api: the admin routes, authenticated with the compose API key of otel-config/tollgate.yaml
    const states = await adminStates(ports.aApi);
    expect(states.status, (api as Started).output()).toBe(200);
    expect((await adminStates(ports.aApi, 'not-a-key')).status).toBe(401);
    // and no OTLP receiver
    const receiverProbe = await fetch(`http://127.0.0.1:${ports.aOtlp}/v1/traces`).then(
      (r) => r.status,
      () => 0,
    );
    expect(receiverProbe, `no receiver on ${ports.aOtlp}`).toBe(0);
  });

  it('mcp-example: healthy by its health check, a real MCP server with tools the plans price', async () => {
    const m = svc['mcp-example'] as Service;
    const deadline = Date.now() + 30_000;
    let port = 0;
    while (!port) {
      port = Number(/on http:\/\/127\.0\.0\.1:(\d+)\//.exec((mcp as Started).output())?.[1] ?? 0);
      if (Date.now() > deadline)
        throw new Error(`example MCP server did not start: ${(mcp as Started).output()}`);
      if (!port) await new Promise((r) => setTimeout(r, 100));
    }
    await waitHealthy(mcp as Started, withPort(nodeHealthScript(m), Number(m.env.MCP_PORT), port));

    const path = arr(
      obj(arr(obj(arr(kong.services, 's')[0], 's').routes, 'r')[0], 'r').paths,
      'p',
    )[0] as string;
    const client = new Client({ name: 'config-test', version: '1.0.0' });
    await client.connect(new StreamableHTTPClientTransport(new URL(`http://127.0.0.1:${port}${path}`)));
    try {
      const tools = (await client.listTools()).tools.map((t) => t.name).sort();
      expect(tools).toEqual(['get_forecast', 'search_docs']);
      const product = String(
        obj(
          arr(kong.plugins, 'p')
            .map((p) => obj(p, 'p'))
            .find((p) => p.name === 'tollgate')?.config,
          'c',
        ).product,
      );
      const plans = obj(parseDocument(read('collector-processor/defaults/plans.yaml')).toJS(), 'plans');
      const standard = obj(
        obj(obj(obj(obj(plans.products, 'products')[product], product).plans, 'plans').standard, 'standard')
          .tools,
        'tools',
      );
      for (const t of tools) expect(Object.keys(standard), `${t} has its own price`).toContain(t);
      const ok = await client.callTool({ name: 'get_forecast', arguments: { city: 'Oslo' } });
      expect(ok.isError ?? false).toBe(false);
      const failed = await client.callTool({ name: 'search_docs', arguments: { query: 'fail' } });
      expect(failed.isError).toBe(true);
    } finally {
      await client.close();
    }
  });
});
