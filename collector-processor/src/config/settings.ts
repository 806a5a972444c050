import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { checkStripeMapping, type StripeMapping } from '../stripe/mapping.js';

/**
 * Every setting of `tollgate`: one flag, one environment variable and one config-file key each, in this
 * single table (docs/configuration.md is generated from it and a test keeps the two in sync).
 * Precedence: flag > environment > config file > default.
 */
type Kind = 'string' | 'int' | 'bool' | 'enum';

interface SettingSpec {
  key: string;
  flag: string;
  env: string;
  kind: Kind;
  default: string | number | boolean;
  values?: readonly string[];
  doc: string;
}

export const SETTINGS = [
  {
    key: 'otlp.host',
    flag: '--otlp-host',
    env: 'TOLLGATE_OTLP_HOST',
    kind: 'string',
    default: '127.0.0.1',
    doc: 'Address the OTLP/HTTP and OTLP/gRPC receivers bind to.',
  },
  {
    key: 'otlp.port',
    flag: '--otlp-port',
    env: 'TOLLGATE_OTLP_PORT',
    kind: 'int',
    default: 4318,
    doc: 'Port of the OTLP/HTTP receiver (`POST /v1/traces`, `/v1/ingest/*`). 0 picks a free port.',
  },
  {
    key: 'otlp.grpc',
    flag: '--otlp-grpc',
    env: 'TOLLGATE_OTLP_GRPC',
    kind: 'bool',
    default: true,
    doc: "Also receive OTLP/gRPC (`opentelemetry.proto.collector.trace.v1.TraceService/Export`, the Collector's default `otlp` exporter) on `otlp.grpcPort`, at `otlp.host`.",
  },
  {
    key: 'otlp.grpcPort',
    flag: '--otlp-grpc-port',
    env: 'TOLLGATE_OTLP_GRPC_PORT',
    kind: 'int',
    default: 4317,
    doc: 'Port of the OTLP/gRPC receiver. 0 picks a free port.',
  },
  {
    key: 'otlp.bodyLimitBytes',
    flag: '--otlp-body-limit',
    env: 'TOLLGATE_OTLP_BODY_LIMIT',
    kind: 'int',
    default: 16 * 1024 * 1024,
    doc: 'Largest request body as sent (compressed or not); larger → 413. On OTLP/gRPC the smaller of this and `otlp.maxDecompressedBytes` bounds the message as sent and inflated (grpc-js applies one bound to both).',
  },
  {
    key: 'otlp.maxDecompressedBytes',
    flag: '--otlp-max-decompressed',
    env: 'TOLLGATE_OTLP_MAX_DECOMPRESSED',
    kind: 'int',
    default: 64 * 1024 * 1024,
    doc: 'Largest body after gzip decompression (gzip-bomb guard); larger → 413 (RESOURCE_EXHAUSTED on OTLP/gRPC).',
  },
  {
    key: 'otlp.maxInFlight',
    flag: '--otlp-max-in-flight',
    env: 'TOLLGATE_OTLP_MAX_IN_FLIGHT',
    kind: 'int',
    default: 64,
    doc: "Exports processed at once (counted once a request's body has arrived); more → 429 with Retry-After. Each ingest key may also have at most this many requests still sending their bodies, so one key's slow uploads never hold what other keys need.",
  },
  {
    key: 'api.host',
    flag: '--api-host',
    env: 'TOLLGATE_API_HOST',
    kind: 'string',
    default: '127.0.0.1',
    doc: 'Address the HTTP API (health, metrics, analytics) binds to.',
  },
  {
    key: 'api.port',
    flag: '--api-port',
    env: 'TOLLGATE_API_PORT',
    kind: 'int',
    default: 8080,
    doc: 'Port of the HTTP API. 0 picks a free port.',
  },
  {
    key: 'roles',
    flag: '--roles',
    env: 'TOLLGATE_ROLES',
    kind: 'string',
    default: 'processor,api',
    doc: 'What this process runs: `processor`, `api` or both (comma-separated).',
  },
  {
    key: 'dataDir',
    flag: '--data-dir',
    env: 'TOLLGATE_DATA_DIR',
    kind: 'string',
    default: '.tollgate',
    doc: 'Directory for the spool, plan snapshots, the instance id and the embedded ClickHouse (chDB) data.',
  },
  {
    key: 'plansFile',
    flag: '--plans',
    env: 'TOLLGATE_PLANS',
    kind: 'string',
    default: '',
    doc: 'Rate-plan YAML file (hot-reloaded). Empty: the embedded example plans.',
  },
  {
    key: 'redis.url',
    flag: '--redis-url',
    env: 'REDIS_URL',
    kind: 'string',
    default: '',
    doc: 'Redis URL (`redis://…`). Empty: start a private `redis-server` on a free loopback port.',
  },
  {
    key: 'redis.clusterNodes',
    flag: '--redis-cluster',
    env: 'TOLLGATE_REDIS_CLUSTER',
    kind: 'string',
    default: '',
    doc: 'Comma-separated `host:port` seed nodes of a Redis Cluster (instead of `redis.url`).',
  },
  {
    key: 'redis.failMode',
    flag: '--redis-fail-mode',
    env: 'TOLLGATE_REDIS_FAIL_MODE',
    kind: 'enum',
    values: ['open', 'closed'],
    default: 'open',
    doc: 'Redis unreachable: `open` bills and marks calls `unenforced`; `closed` answers 503 (retryable).',
  },
  {
    key: 'redis.commandTimeoutMs',
    flag: '--redis-timeout',
    env: 'TOLLGATE_REDIS_TIMEOUT_MS',
    kind: 'int',
    default: 1000,
    doc: 'Timeout of one Redis script call before Redis counts as unreachable.',
  },
  {
    key: 'redis.serverBinary',
    flag: '--redis-server',
    env: 'TOLLGATE_REDIS_SERVER',
    kind: 'string',
    default: 'redis-server',
    doc: 'Binary used to start the private Redis.',
  },
  {
    key: 'redis.privateAppendFsync',
    flag: '--redis-private-appendfsync',
    env: 'TOLLGATE_REDIS_PRIVATE_APPENDFSYNC',
    kind: 'enum',
    values: ['always', 'everysec'],
    default: 'always',
    doc:
      "The private Redis's `appendfsync`. `always`: a claim, counter or kill is on disk before Redis answers it. " +
      '`everysec` lets Redis answer writes it has not yet written to its file while a slow fsync runs (up to 2 s): ' +
      'a `kill -9` of redis-server then loses acknowledged dedup claims, and retried calls are billed twice.',
  },
  {
    key: 'clickhouse.url',
    flag: '--clickhouse-url',
    env: 'CLICKHOUSE_URL',
    kind: 'string',
    default: '',
    doc: 'ClickHouse server URL (`http://host:8123`). Empty: embedded chDB in `<dataDir>/chdb`.',
  },
  {
    key: 'clickhouse.chdbInsert',
    flag: '--chdb-insert',
    env: 'TOLLGATE_CHDB_INSERT',
    kind: 'enum',
    values: ['inline', 'file'],
    default: 'file',
    doc: 'How landed rows reach embedded chDB: `file` (Native blocks written to `<dataDir>/chdb-inserts/`, then `INSERT … SELECT FROM file()`) or `inline` (TabSeparated text after the INSERT; binary cannot go inline): `file` took 16–28% less process CPU per span end to end than `inline` and 4–9% less peak RSS in five A/Bs; its export latency at half load was higher in some runs and lower in others (docs/benchmarks.md, "Landing in Native"). A data directory whose path holds `*?{}[]` always uses `inline`.',
  },
  {
    key: 'clickhouse.chdbMallocConf',
    flag: '--chdb-malloc-conf',
    env: 'TOLLGATE_CHDB_MALLOC_CONF',
    kind: 'string',
    default: '',
    doc: "Options for the embedded chDB engine's jemalloc (`JE_MALLOC_CONF` syntax, e.g. `dirty_decay_ms:1000`), read once when the engine loads; a `JE_MALLOC_CONF` already in the environment wins. Empty: jemalloc's defaults.",
  },
  {
    key: 'clickhouse.chdbThreadNice',
    flag: '--chdb-thread-nice',
    env: 'TOLLGATE_CHDB_THREAD_NICE',
    kind: 'int',
    default: 10,
    doc: "Linux nice value (1–19) that Tollgate gives the embedded chDB engine's threads (landing inserts, the views, merges, queries), so that on a busy machine the thread answering exports runs first and chDB takes the CPU left over; no privilege needed (raising a thread's nice value is allowed to its own process). In three 5-pair A/Bs the half-load p99 per export was 0.63–0.80× (medians) with throughput unchanged (docs/benchmarks.md, \"chDB's threads at a lower priority\"). 0: leave them at the process's priority. Linux only; not used with a ClickHouse server.",
  },
  {
    key: 'clickhouse.chdbReadConnections',
    flag: '--chdb-read-connections',
    env: 'TOLLGATE_CHDB_READ_CONNECTIONS',
    kind: 'int',
    default: 2,
    doc: "Connections of their own (0–16) that the API's reads get on the embedded chDB engine, their parameters written into the SQL as typed literals: chDB runs one query at a time per connection and every query with bound parameters through one queue per process, so on the lander's connection a request's queries ran one after the other and behind landing inserts. With 2, the month's session list over 10M calls took 0.76–0.82× the time and the month's summary 0.84–0.86× in three A/Bs, and while ingest saturated two cores a month's question every 250 ms answered at p99 138 ms against 1,108 on the lander's connection (docs/benchmarks.md, \"Read connections of their own\"). 0: read on the lander's connection with parameters bound by the engine. Not used with a ClickHouse server.",
  },
  {
    key: 'memory.heapGrowingPercent',
    flag: '--heap-growing-percent',
    env: 'TOLLGATE_HEAP_GROWING_PERCENT',
    kind: 'int',
    default: 0,
    doc: "V8's old-generation growing factor, as 1 + P/100, set when `tollgate start` begins: with 100 a full GC runs before the heap grows past 2× what survived the previous one (≈ 9% lower peak RSS under load for ≈ 3–6% more CPU per span). 0: V8's own heuristic (up to 4×).",
  },
  {
    key: 'clickhouse.database',
    flag: '--clickhouse-database',
    env: 'CLICKHOUSE_DATABASE',
    kind: 'string',
    default: 'default',
    doc: 'ClickHouse database holding the Tollgate tables.',
  },
  {
    key: 'clickhouse.username',
    flag: '--clickhouse-user',
    env: 'CLICKHOUSE_USER',
    kind: 'string',
    default: 'default',
    doc: 'ClickHouse user (server mode).',
  },
  {
    key: 'clickhouse.password',
    flag: '--clickhouse-password',
    env: 'CLICKHOUSE_PASSWORD',
    kind: 'string',
    default: '',
    doc: 'ClickHouse password (server mode). Never logged.',
  },
  {
    key: 'landing.batchRows',
    flag: '--landing-batch-rows',
    env: 'TOLLGATE_LANDING_BATCH_ROWS',
    kind: 'int',
    default: 50_000,
    doc: 'Most rows in one ClickHouse insert.',
  },
  {
    key: 'landing.flushIntervalMs',
    flag: '--landing-flush-ms',
    env: 'TOLLGATE_LANDING_FLUSH_MS',
    kind: 'int',
    default: 500,
    doc: 'Longest a rated call waits before it is inserted.',
  },
  {
    key: 'landing.maxBacklogRows',
    flag: '--landing-max-backlog',
    env: 'TOLLGATE_LANDING_MAX_BACKLOG',
    kind: 'int',
    default: 2_000_000,
    doc: 'Rated calls waiting for ClickHouse beyond which exports get 503 + Retry-After.',
  },
  {
    key: 'sessions.snapshotIntervalSeconds',
    flag: '--session-snapshot-interval',
    env: 'TOLLGATE_SESSION_SNAPSHOT_INTERVAL',
    kind: 'int',
    default: 300,
    doc: "Seconds between two snapshots of every session's first and last call, which past-range session questions of the API read instead of grouping every session (processor role; 0: none, the answers are the same, slower). See docs/operations.md.",
  },
  {
    key: 'sessions.snapshotMarginSeconds',
    flag: '--session-snapshot-margin',
    env: 'TOLLGATE_SESSION_SNAPSHOT_MARGIN',
    kind: 'int',
    default: 60,
    doc: 'Sessions with calls landed this long before a snapshot started are read again from the session view: must exceed the longest time an insert takes from its views to its commit.',
  },
  {
    key: 'spool.fsync',
    flag: '--spool-fsync',
    env: 'TOLLGATE_SPOOL_FSYNC',
    kind: 'bool',
    default: true,
    doc: 'Make each spool write durable before acknowledging an export (O_DSYNC writes; fdatasync where the platform has none). Turn off only for benchmarks of the rest.',
  },
  {
    key: 'spool.segmentBytes',
    flag: '--spool-segment-bytes',
    env: 'TOLLGATE_SPOOL_SEGMENT_BYTES',
    kind: 'int',
    default: 64 * 1024 * 1024,
    doc: 'Size at which the spool starts a new segment file.',
  },
  {
    key: 'ingest.maxSpanAgeHours',
    flag: '--max-span-age-hours',
    env: 'TOLLGATE_MAX_SPAN_AGE_HOURS',
    kind: 'int',
    default: 168,
    doc: 'Oldest accepted call (and the dedup window: ids are remembered this long plus 48 hours).',
  },
  {
    key: 'ingest.maxFutureSeconds',
    flag: '--max-future-seconds',
    env: 'TOLLGATE_MAX_FUTURE_SECONDS',
    kind: 'int',
    default: 600,
    doc: 'Clock skew tolerated for start and end times in the future.',
  },
  {
    key: 'forward.endpoint',
    flag: '--forward-endpoint',
    env: 'TOLLGATE_FORWARD_ENDPOINT',
    kind: 'string',
    default: '',
    doc: 'OTLP/HTTP traces URL to forward every received export to, with price and decision attributes stamped on billed spans (best effort, off the request path). Empty: no forwarding.',
  },
  {
    key: 'forward.headers',
    flag: '--forward-headers',
    env: 'TOLLGATE_FORWARD_HEADERS',
    kind: 'string',
    default: '',
    doc: 'Headers for the forward endpoint, `key=value,key2=value2` (values URL-decoded, as OTEL_EXPORTER_OTLP_HEADERS). Never logged.',
  },
  {
    key: 'forward.maxQueueBytes',
    flag: '--forward-max-queue',
    env: 'TOLLGATE_FORWARD_MAX_QUEUE',
    kind: 'int',
    default: 64 * 1024 * 1024,
    doc: 'Bytes waiting to be forwarded beyond which exports are not forwarded (counted in tollgate_forward_dropped_total).',
  },
  {
    key: 'shutdownTimeoutMs',
    flag: '--shutdown-timeout',
    env: 'TOLLGATE_SHUTDOWN_TIMEOUT_MS',
    kind: 'int',
    default: 15_000,
    doc: 'How long a graceful shutdown waits for in-flight exports and the landing queue.',
  },
  {
    key: 'enforcement.enabled',
    flag: '--enforcement',
    env: 'TOLLGATE_ENFORCEMENT',
    kind: 'bool',
    default: true,
    doc: 'Hard limits, the margin guard and directives (Redis enforce.lua). Off: calls are still deduplicated and rated.',
  },
  {
    key: 'leases.ttlMs',
    flag: '--lease-ttl',
    env: 'TOLLGATE_LEASE_TTL_MS',
    kind: 'int',
    default: 30_000,
    doc: 'A quota lease lapses this long after its last grant or renewal unless renewed; what it holds back returns to the customer then (so a dead SDK instance never strands a budget longer).',
  },
  {
    key: 'leases.shareBps',
    flag: '--lease-share',
    env: 'TOLLGATE_LEASE_SHARE_BPS',
    kind: 'int',
    default: 5000,
    doc: 'Share of what a limit still leaves that one lease grant may take, in basis points (at least one call).',
  },
  {
    key: 'leases.maxCalls',
    flag: '--lease-max-calls',
    env: 'TOLLGATE_LEASE_MAX_CALLS',
    kind: 'int',
    default: 10_000,
    doc: 'Most calls one lease grant may add, whatever the holder asks.',
  },
  {
    key: 'leases.releaseGraceMs',
    flag: '--lease-release-grace',
    env: 'TOLLGATE_LEASE_RELEASE_GRACE_MS',
    kind: 'int',
    default: 10_000,
    doc: 'After a lease is released, calls its holder consumed whose spans have not arrived stay reserved this long.',
  },
  {
    key: 'pipeline.mode',
    flag: '--pipeline-mode',
    env: 'TOLLGATE_PIPELINE_MODE',
    kind: 'enum',
    values: ['full', 'decode-only'],
    default: 'full',
    doc: '`decode-only` decodes and selects spans, then discards them: the floor the benchmark compares against. Never use it in production.',
  },
  {
    key: 'logLevel',
    flag: '--log-level',
    env: 'TOLLGATE_LOG_LEVEL',
    kind: 'enum',
    values: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'],
    default: 'info',
    doc: 'Log level (JSON logs on stderr).',
  },
  {
    key: 'traceLinkTemplate',
    flag: '--trace-link-template',
    env: 'TOLLGATE_TRACE_LINK_TEMPLATE',
    kind: 'string',
    default: 'http://localhost:16686/trace/{traceId}',
    doc: 'URL template for trace links in analytics (`{traceId}`, `{spanId}`): Jaeger, Tempo or Grafana.',
  },
  {
    key: 'stripe.secretKey',
    flag: '--stripe-secret-key',
    env: 'STRIPE_SECRET_KEY',
    kind: 'string',
    default: '',
    doc: 'Stripe secret key (`sk_…` or a restricted `rk_…`) of the Stripe sync. Never logged; prefer the environment to a flag.',
  },
  {
    key: 'stripe.apiHost',
    flag: '--stripe-host',
    env: 'TOLLGATE_STRIPE_HOST',
    kind: 'string',
    default: 'api.stripe.com',
    doc: 'Host the Stripe SDK talks to (the SDK’s `host` option; tests point it at a local fake).',
  },
  {
    key: 'stripe.apiPort',
    flag: '--stripe-port',
    env: 'TOLLGATE_STRIPE_PORT',
    kind: 'int',
    default: 443,
    doc: 'Port of the Stripe API (the SDK’s `port` option).',
  },
  {
    key: 'stripe.apiProtocol',
    flag: '--stripe-protocol',
    env: 'TOLLGATE_STRIPE_PROTOCOL',
    kind: 'enum',
    values: ['https', 'http'],
    default: 'https',
    doc: 'Protocol of the Stripe API (the SDK’s `protocol` option); `http` only for a local fake.',
  },
  {
    key: 'stripe.sync.enabled',
    flag: '--stripe-sync',
    env: 'TOLLGATE_STRIPE_SYNC',
    kind: 'bool',
    default: false,
    doc: 'Run the Stripe sync as a background job (the `stripe:` mapping of the config file and a secret key are then required). See docs/stripe.md.',
  },
  {
    key: 'stripe.sync.intervalSeconds',
    flag: '--stripe-sync-interval',
    env: 'TOLLGATE_STRIPE_SYNC_INTERVAL',
    kind: 'int',
    default: 3600,
    doc: 'Seconds between two runs of the background Stripe sync (a run never overlaps the previous one).',
  },
] as const satisfies readonly SettingSpec[];

export type SettingKey = (typeof SETTINGS)[number]['key'];

const ingestKeySchema = z
  .strictObject({
    name: z.string().min(1),
    /** Hex SHA-256 of the bearer token (`tollgate hash-key <token>` prints it). Tokens are never stored. */
    sha256: z.string().regex(/^[0-9a-f]{64}$/, 'must be the hex SHA-256 of the key (tollgate hash-key)'),
    product: z.string().min(1),
    /** Customer for calls that carry none (single-customer senders). */
    defaultCustomer: z.string().min(1).optional(),
    /** The only customer the key may bill or take leases for; also the default. */
    customer: z.string().min(1).optional(),
  })
  .refine((k) => !(k.customer && k.defaultCustomer && k.customer !== k.defaultCustomer), {
    message: 'customer binds the key to one customer: defaultCustomer, if set, must be the same',
  });

const apiKeySchema = z.strictObject({
  name: z.string().min(1),
  sha256: z.string().regex(/^[0-9a-f]{64}$/, 'must be the hex SHA-256 of the key (tollgate hash-key)'),
  role: z.enum(['admin', 'finance', 'customer']),
  /** Products (tenants) the key may read. */
  products: z.array(z.string().min(1)).min(1),
  /** For role `customer`: the only customer the key may see. */
  customer: z.string().min(1).optional(),
});

export type IngestKeyConfig = z.infer<typeof ingestKeySchema>;
export type ApiKeyConfig = z.infer<typeof apiKeySchema>;

export interface Config {
  settings: Readonly<Record<SettingKey, string | number | boolean>>;
  ingestKeys: readonly IngestKeyConfig[];
  apiKeys: readonly ApiKeyConfig[];
  /** The `stripe:` mapping of the config file (Tollgate customers and lines → Stripe), when present. */
  stripe: StripeMapping | undefined;
  /** Where the settings came from, for `tollgate config`. */
  configFile: string;
}

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

function coerce(spec: SettingSpec, raw: unknown, from: string): string | number | boolean {
  const fail = (why: string): never => {
    throw new ConfigError(`${spec.key} (${from}): ${why}`);
  };
  switch (spec.kind) {
    case 'int': {
      const n =
        typeof raw === 'number' ? raw : typeof raw === 'string' && /^\d+$/.test(raw) ? Number(raw) : NaN;
      if (!Number.isSafeInteger(n) || n < 0)
        fail(`must be a non-negative whole number, got ${JSON.stringify(raw)}`);
      return n;
    }
    case 'bool':
      if (raw === true || raw === 'true' || raw === '1') return true;
      if (raw === false || raw === 'false' || raw === '0') return false;
      return fail(`must be true or false, got ${JSON.stringify(raw)}`);
    case 'enum':
      if (typeof raw === 'string' && spec.values?.includes(raw)) return raw;
      return fail(`must be one of ${spec.values?.join(', ')}, got ${JSON.stringify(raw)}`);
    default:
      if (typeof raw !== 'string') fail(`must be a string, got ${JSON.stringify(raw)}`);
      return raw as string;
  }
}

function getPath(obj: unknown, path: string): unknown {
  let cur = obj;
  for (const part of path.split('.')) {
    if (typeof cur !== 'object' || cur === null) return undefined;
    cur = (cur as Record<string, unknown>)[part];
  }
  return cur;
}

export const EMBEDDED_CONFIG = new URL('../../defaults/tollgate.yaml', import.meta.url);
export const EMBEDDED_PLANS = new URL('../../defaults/plans.yaml', import.meta.url);

/**
 * Builds the frozen configuration from flags (already split into `--flag value` pairs), the environment
 * and the config file (`--config` / `TOLLGATE_CONFIG`; the embedded default when neither is given).
 */
export function loadConfig(flags: Record<string, string>, env: NodeJS.ProcessEnv = process.env): Config {
  const known = new Set<string>(['--config', ...SETTINGS.map((s) => s.flag)]);
  for (const f of Object.keys(flags))
    if (!known.has(f))
      throw new ConfigError(`unknown option ${f} (every setting's flag: tollgate config --doc)`);

  const configFile = flags['--config'] ?? env.TOLLGATE_CONFIG ?? '';
  const filePath = configFile ? resolve(configFile) : EMBEDDED_CONFIG.pathname;
  let doc: unknown;
  try {
    doc = parseYaml(readFileSync(filePath, 'utf8')) ?? {};
  } catch (err) {
    throw new ConfigError(`cannot read config file ${filePath}: ${(err as Error).message}`);
  }
  const fileSettings = getPath(doc, 'settings') ?? {};
  const knownKeys = new Set<string>(SETTINGS.map((spec) => spec.key));
  const unknown: string[] = [];
  // Values are read by nesting (getPath), so a key holding a dot ("otlp.port": quoted) is never read:
  // it is unknown, named quoted, even though its text equals a setting's key.
  const walk = (obj: unknown, path: string[]) => {
    const key = path.some((p) => p.includes('.')) ? undefined : path.join('.');
    if (typeof obj !== 'object' || obj === null || Array.isArray(obj)) {
      if (key === undefined || !knownKeys.has(key))
        unknown.push(path.map((p) => (p.includes('.') ? JSON.stringify(p) : p)).join('.'));
      return;
    }
    if (key !== undefined && knownKeys.has(key)) return; // a known key whose value is an object: coerce() reports it
    for (const [k, v] of Object.entries(obj)) walk(v, [...path, k]);
  };
  walk(fileSettings, []);
  if (unknown.length)
    throw new ConfigError(
      `${filePath}: unknown setting(s) ${unknown.map((k) => `settings.${k}`).join(', ')}`,
    );
  const topLevel = Object.keys((doc as Record<string, unknown>) ?? {}).filter(
    (k) => !['settings', 'ingestKeys', 'apiKeys', 'stripe'].includes(k),
  );
  if (topLevel.length) throw new ConfigError(`${filePath}: unknown top-level key(s) ${topLevel.join(', ')}`);

  const settings = {} as Record<SettingKey, string | number | boolean>;
  for (const spec of SETTINGS as readonly SettingSpec[]) {
    const flag = flags[spec.flag];
    const envValue = env[spec.env];
    const fileValue = getPath(fileSettings, spec.key);
    let value: string | number | boolean = spec.default;
    if (flag !== undefined) value = coerce(spec, flag, spec.flag);
    else if (envValue !== undefined && envValue !== '') value = coerce(spec, envValue, spec.env);
    else if (fileValue !== undefined) value = coerce(spec, fileValue, `${filePath}: settings.${spec.key}`);
    settings[spec.key as SettingKey] = value;
  }

  const keys = z
    .object({
      ingestKeys: z.array(ingestKeySchema).default([]),
      apiKeys: z.array(apiKeySchema).default([]),
    })
    .safeParse(doc);
  if (!keys.success) {
    const problems = keys.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`);
    throw new ConfigError(`${filePath}: ${problems.join('; ')}`);
  }
  if (Number(settings['clickhouse.chdbReadConnections']) > 16)
    throw new ConfigError(
      `clickhouse.chdbReadConnections: 0..16 connections, got ${settings['clickhouse.chdbReadConnections']}`,
    );
  if (Number(settings['clickhouse.chdbThreadNice']) > 19)
    throw new ConfigError(
      `clickhouse.chdbThreadNice: a nice value is 1..19 (0 = off), got ${settings['clickhouse.chdbThreadNice']}`,
    );
  const roles = String(settings.roles)
    .split(',')
    .map((r) => r.trim());
  if (roles.length === 0 || roles.some((r) => r !== 'processor' && r !== 'api')) {
    throw new ConfigError(`roles: must be processor, api or both, got ${JSON.stringify(settings.roles)}`);
  }
  for (const k of keys.data.apiKeys) {
    if (k.role === 'customer' && !k.customer)
      throw new ConfigError(`${filePath}: apiKeys ${k.name}: role customer needs a customer`);
  }
  // A key is looked up by its hash: two entries with one hash are one token with two meanings (a copied
  // entry that kept its hash would bill a sender to another product, or make a portal key an admin key).
  for (const [list, entries] of [
    ['ingestKeys', keys.data.ingestKeys],
    ['apiKeys', keys.data.apiKeys],
  ] as const) {
    const byHash = new Map<string, string>();
    for (const k of entries) {
      const first = byHash.get(k.sha256);
      if (first !== undefined)
        throw new ConfigError(
          `${filePath}: ${list} ${k.name}: the same sha256 as ${first} (one token, one entry)`,
        );
      byHash.set(k.sha256, k.name);
    }
  }
  const stripeDoc = (doc as Record<string, unknown>).stripe;
  let stripe: StripeMapping | undefined;
  if (stripeDoc !== undefined) {
    const checked = checkStripeMapping(stripeDoc);
    if (!checked.ok)
      throw new ConfigError(`${filePath}: STRIPE_MAPPING_INVALID: ${checked.problems.join('; ')}`);
    stripe = checked.mapping;
  }
  if (settings['stripe.sync.enabled'] && !stripe)
    throw new ConfigError(`stripe.sync.enabled: the config file ${filePath} has no stripe: mapping`);
  if (settings['stripe.sync.enabled'] && !settings['stripe.secretKey'])
    throw new ConfigError('stripe.sync.enabled: a Stripe secret key is needed (STRIPE_SECRET_KEY)');
  return Object.freeze({
    settings: Object.freeze(settings),
    ingestKeys: Object.freeze(keys.data.ingestKeys),
    apiKeys: Object.freeze(keys.data.apiKeys),
    stripe,
    configFile: filePath,
  });
}

/** Splits argv (`--name value` or `--name=value`) into a flag map and positional arguments. */
export function splitArgs(argv: readonly string[]): { flags: Record<string, string>; positional: string[] } {
  const flags: Record<string, string> = {};
  const positional: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    if (!a.startsWith('--')) {
      positional.push(a);
      continue;
    }
    const eq = a.indexOf('=');
    if (eq > 0) flags[a.slice(0, eq)] = a.slice(eq + 1);
    else {
      const next = argv[i + 1];
      if (next === undefined || next.startsWith('--')) flags[a] = 'true';
      else {
        flags[a] = next;
        i++;
      }
    }
  }
  return { flags, positional };
}

/** The settings table as Markdown (docs/configuration.md embeds it). */
export function settingsTableMarkdown(): string {
  const rows = (SETTINGS as readonly SettingSpec[]).map(
    (s) =>
      `| \`${s.key}\` | \`${s.flag}\` | \`${s.env}\` | ${s.default === '' ? '(empty)' : `\`${String(s.default)}\``} | ${s.doc} |`,
  );
  return [
    '| config-file key (`settings.`) | flag | environment | default | meaning |',
    '|---|---|---|---|---|',
    ...rows,
  ].join('\n');
}
