import { DEFAULT_ACTIVITY_GAP_MS } from '@tollgate/contracts';
import type { ExporterSettings } from './exporter.js';
import type { LeaseOptions } from './leases.js';
import type { RuntimeOptions } from './runtime.js';
import { defaultStateFile } from './state-file.js';
import type { IdentityResolver, McpInstrumentationConfig, TollgateLogger } from './types.js';
import { loadTokenizer } from './usage.js';
import { defaultAgentResolver, defaultCustomerResolver, tracesUrl } from './utils.js';

/** Defaults of every tunable, in one place (documented in the README). */
export const DEFAULTS = Object.freeze({
  exportIntervalMs: 1000,
  /** Short enough that a kill of an idle session lands within about two seconds. */
  heartbeatIntervalMs: 2000,
  timeoutMs: 5000,
  maxBufferedSpans: 50_000,
  logIntervalMs: 60_000,
  startupSyncTimeoutMs: 1500,
  format: 'protobuf' as const,
  compression: 'none' as const,
  serviceName: 'mcp-server',
  /** Inactivity gap of the `activity` billing session (contracts/src/billing-session.ts). */
  sessionGapMs: DEFAULT_ACTIVITY_GAP_MS,
  leaseTimeoutMs: 250,
  leaseFirstTimeoutMs: 2000,
  leaseWindowMs: 2000,
  leaseFailMode: 'open' as const,
});

/** Environment variables the SDK reads (explicit options win). */
export const ENV = Object.freeze({
  endpoint: 'TOLLGATE_OTLP_ENDPOINT',
  ingestKey: 'TOLLGATE_INGEST_KEY',
  directivesEndpoint: 'TOLLGATE_DIRECTIVES_ENDPOINT',
  serviceName: 'OTEL_SERVICE_NAME',
  sessionGapMs: 'TOLLGATE_SESSION_GAP_MS',
  leases: 'TOLLGATE_LEASES',
  leaseFailMode: 'TOLLGATE_LEASE_FAIL_MODE',
  leaseTimeoutMs: 'TOLLGATE_LEASE_TIMEOUT_MS',
  leaseFirstTimeoutMs: 'TOLLGATE_LEASE_FIRST_TIMEOUT_MS',
  /** Read by the default customer and agent resolvers (after the request's own authentication). */
  customer: 'TOLLGATE_CUSTOMER_ID',
  agent: 'TOLLGATE_AGENT_ID',
});

/** `TOLLGATE_LEASES`: on or off in the usual spellings; anything else is a problem, never silently off. */
function leasesFromEnv(problems: string[], value: string | undefined): true | undefined {
  if (value === undefined || value === '') return undefined;
  const v = value.trim().toLowerCase();
  if (v === '1' || v === 'true' || v === 'yes' || v === 'on') return true;
  if (v === '0' || v === 'false' || v === 'no' || v === 'off') return undefined;
  problems.push(
    `${ENV.leases} must be 1, true, yes or on (or 0, false, no, off); got ${value}: leases are off`,
  );
  return undefined;
}

type CountTokens = (text: string) => number;

const exporterIds = new WeakMap<object, number>();
let lastExporterId = 0;
function exporterId(e: object): number {
  let id = exporterIds.get(e);
  if (id === undefined) {
    id = ++lastExporterId;
    exporterIds.set(e, id);
  }
  return id;
}

/** A configuration validated once, then frozen. */
export interface ResolvedConfig {
  /** Billing pipeline options; undefined when neither an endpoint nor a billing exporter is configured. */
  runtime: RuntimeOptions | undefined;
  /** Servers configured alike share one runtime (one exporter, one heartbeat, one directive store). */
  runtimeKey: string;
  customer: IdentityResolver;
  agent: IdentityResolver;
  countTokens: CountTokens | undefined;
  /** Inactivity gap of the `activity` billing session, in ms. */
  sessionGapMs: number;
  /** Where the instrumentation reports problems (stderr by default; undefined when silenced). */
  logger: TollgateLogger | undefined;
}

const stderrLogger: TollgateLogger = {
  // stdout is the protocol channel of stdio servers: the SDK only ever writes to stderr.
  warn: (m) => process.stderr.write(`[tollgate] ${m}\n`),
  info: (m) => process.stderr.write(`[tollgate] ${m}\n`),
};

function positiveInt(problems: string[], name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value <= 0) {
    problems.push(`${name} must be a positive integer (got ${value}); using ${fallback}`);
    return fallback;
  }
  return value;
}

function url(problems: string[], name: string, value: string | undefined): string | undefined {
  if (!value) return undefined;
  try {
    const u = tracesUrl(value);
    if (!/^https?:$/.test(new URL(u).protocol)) throw new Error('not http(s)');
    return u;
  } catch {
    problems.push(`${name} is not an http(s) URL: ${value}`);
    return undefined;
  }
}

/** Validates a configuration (options first, then the environment) and names every problem found. */
export function resolveConfig(
  c: McpInstrumentationConfig,
  env: NodeJS.ProcessEnv = process.env,
): { resolved: ResolvedConfig; problems: string[] } {
  const problems: string[] = [];
  const logger = c.logger === false ? undefined : (c.logger ?? stderrLogger);
  const endpoint = url(problems, 'endpoint', c.endpoint ?? env[ENV.endpoint]);
  const directivesEndpoint = url(
    problems,
    'directivesEndpoint',
    c.directivesEndpoint ?? env[ENV.directivesEndpoint],
  );
  const ingestKey = c.ingestKey ?? env[ENV.ingestKey];
  const serviceName = c.serviceName ?? env[ENV.serviceName] ?? DEFAULTS.serviceName;
  const format = c.format ?? DEFAULTS.format;
  if (format !== 'protobuf' && format !== 'json')
    problems.push(`format must be protobuf or json (got ${format})`);
  const compression = c.compression ?? DEFAULTS.compression;
  if (compression !== 'gzip' && compression !== 'none') {
    problems.push(`compression must be gzip or none (got ${compression})`);
  }
  const exportIntervalMs = positiveInt(
    problems,
    'exportIntervalMs',
    c.exportIntervalMs,
    DEFAULTS.exportIntervalMs,
  );
  const heartbeatIntervalMs = positiveInt(
    problems,
    'heartbeatIntervalMs',
    c.heartbeatIntervalMs,
    DEFAULTS.heartbeatIntervalMs,
  );
  const timeoutMs = positiveInt(problems, 'timeoutMs', c.timeoutMs, DEFAULTS.timeoutMs);
  const maxBufferedSpans = positiveInt(
    problems,
    'maxBufferedSpans',
    c.maxBufferedSpans,
    DEFAULTS.maxBufferedSpans,
  );
  const logIntervalMs = positiveInt(problems, 'logIntervalMs', c.logIntervalMs, DEFAULTS.logIntervalMs);
  const startupSyncTimeoutMs = positiveInt(
    problems,
    'startupSyncTimeoutMs',
    c.startupSyncTimeoutMs,
    DEFAULTS.startupSyncTimeoutMs,
  );

  const gapEnv = env[ENV.sessionGapMs];
  const sessionGapMs = positiveInt(
    problems,
    'sessionGapMs',
    c.sessionGapMs ?? (gapEnv === undefined || gapEnv === '' ? undefined : Number(gapEnv)),
    DEFAULTS.sessionGapMs,
  );

  const headers: Record<string, string> = { ...c.headers };
  if (ingestKey) headers.authorization = `Bearer ${ingestKey}`;

  let exporter: ExporterSettings | undefined;
  const spansUrl = endpoint ?? directivesEndpoint;
  if (spansUrl && !c.billingExporter) {
    exporter = {
      tracesUrl: spansUrl,
      directivesUrl: directivesEndpoint ?? spansUrl,
      heartbeatAlways: directivesEndpoint !== undefined && directivesEndpoint !== spansUrl,
      headers,
      directivesHeaders: headers,
      format: format === 'json' ? 'json' : 'protobuf',
      compression: compression === 'gzip' ? 'gzip' : 'none',
      timeoutMs,
      maxBufferedSpans,
      heartbeatIntervalMs,
      serviceName,
    };
  }
  let leases: LeaseOptions | undefined;
  const leaseConfig = c.leases ?? leasesFromEnv(problems, env[ENV.leases]);
  if (leaseConfig) {
    const lc = leaseConfig === true ? {} : leaseConfig;
    const envTimeout = env[ENV.leaseTimeoutMs];
    const envFirstTimeout = env[ENV.leaseFirstTimeoutMs];
    if (!exporter) {
      problems.push(
        `leases need the built-in exporter: set \`endpoint\` or ${ENV.endpoint} (without one no call is leased)`,
      );
    } else {
      const failMode = lc.failMode ?? env[ENV.leaseFailMode] ?? DEFAULTS.leaseFailMode;
      if (failMode !== 'open' && failMode !== 'closed')
        problems.push(`leases.failMode must be open or closed (got ${failMode})`);
      const u = new URL(exporter.directivesUrl);
      u.pathname = `${u.pathname.replace(/\/v1\/traces\/?$/, '')}/v1/leases`;
      leases = {
        url: u.toString(),
        headers: exporter.directivesHeaders,
        timeoutMs: positiveInt(
          problems,
          'leases.timeoutMs',
          lc.timeoutMs ?? (envTimeout ? Number(envTimeout) : undefined),
          DEFAULTS.leaseTimeoutMs,
        ),
        firstTimeoutMs: positiveInt(
          problems,
          'leases.firstTimeoutMs',
          lc.firstTimeoutMs ?? (envFirstTimeout ? Number(envFirstTimeout) : undefined),
          DEFAULTS.leaseFirstTimeoutMs,
        ),
        failMode: failMode === 'closed' ? 'closed' : 'open',
        windowMs: positiveInt(problems, 'leases.windowMs', lc.windowMs, DEFAULTS.leaseWindowMs),
        // the spans of a lease's calls must reach Tollgate before it lapses
        safetyMs: exportIntervalMs * 2 + 500,
        requestTimeoutMs: timeoutMs,
      };
    }
  }

  const stateFile =
    c.stateFile === false || !exporter
      ? undefined
      : (c.stateFile ?? defaultStateFile(serviceName, exporter.directivesUrl));

  const runtime: RuntimeOptions | undefined =
    exporter || c.billingExporter
      ? {
          serviceName,
          resourceAttributes: { ...c.resourceAttributes },
          exporter,
          billingExporter: c.billingExporter,
          exportIntervalMs,
          heartbeatIntervalMs,
          logIntervalMs,
          stateFile,
          startupSyncTimeoutMs,
          onDirective: c.onDirective,
          leases,
          closeSessionsOnKill: c.closeSessionsOnKill ?? true,
          exitOnStdioKill: c.exitOnStdioKill ?? true,
          logger,
        }
      : undefined;

  let countTokens: CountTokens | undefined;
  if (c.estimateTokens) {
    const t = loadTokenizer();
    if (t instanceof Error) problems.push(`estimateTokens needs the gpt-tokenizer package: ${t.message}`);
    else countTokens = t;
  }

  const runtimeKey = c.billingExporter
    ? `custom:${exporterId(c.billingExporter)}|${serviceName}`
    : `${exporter?.tracesUrl}|${exporter?.directivesUrl}|${ingestKey ?? ''}|${serviceName}|${format}|${leases ? JSON.stringify(leases) : ''}`;
  const resolved: ResolvedConfig = Object.freeze({
    runtime: runtime && Object.freeze(runtime),
    runtimeKey,
    customer: c.customer ?? defaultCustomerResolver(env),
    agent: c.agent ?? defaultAgentResolver(env),
    countTokens,
    sessionGapMs,
    logger,
  });
  return { resolved, problems };
}
