import { type TracerProvider, trace } from '@opentelemetry/api';
import { resolveConfig } from './config.js';
import type { McpServerLike, ServerLike } from './internal-types.js';
import { linkMcpServer, ToolCallTracer } from './tool-call.js';
import type { McpInstrumentationConfig } from './types.js';
import { PACKAGE_NAME, PACKAGE_VERSION } from './version.js';

export interface InstrumentMcpServerOptions extends McpInstrumentationConfig {
  /** Tracer provider of the app's span (default: the global one). Billing spans never depend on it. */
  tracerProvider?: TracerProvider;
}

const PATCHED = Symbol.for('@tollgate/instrumentation:instance-patched');

/** Every option `instrumentMcpServer` takes (the compiler keeps it complete): any other name is a typo. */
const OPTIONS = {
  endpoint: true,
  directivesEndpoint: true,
  ingestKey: true,
  headers: true,
  format: true,
  compression: true,
  exportIntervalMs: true,
  heartbeatIntervalMs: true,
  timeoutMs: true,
  maxBufferedSpans: true,
  logIntervalMs: true,
  stateFile: true,
  startupSyncTimeoutMs: true,
  leases: true,
  serviceName: true,
  resourceAttributes: true,
  billingExporter: true,
  customer: true,
  agent: true,
  sessionGapMs: true,
  estimateTokens: true,
  onDirective: true,
  closeSessionsOnKill: true,
  exitOnStdioKill: true,
  logger: true,
  tracerProvider: true,
  // OpenTelemetry's InstrumentationConfig, which the options extend
  enabled: true,
} satisfies Record<keyof InstrumentMcpServerOptions, true>;

function serverOf(server: unknown): ServerLike {
  const s = server as Partial<McpServerLike> & Partial<ServerLike>;
  const target = s?._requestHandlers instanceof Map ? s : s?.server;
  if (
    !target ||
    !(target._requestHandlers instanceof Map) ||
    typeof target.setRequestHandler !== 'function'
  ) {
    throw new TypeError(
      'instrumentMcpServer: expected an McpServer or a Server of @modelcontextprotocol/sdk 1.x (no request handler map found)',
    );
  }
  return target as ServerLike;
}

/**
 * Instruments one MCP server explicitly, without module hooks: every `tools/call` it handles is traced,
 * billed and enforced. Accepts an `McpServer` or a low-level `Server`; call it before or after registering
 * tools. Safe to call twice (the second call re-applies the new options). Returns the server.
 *
 * ```ts
 * instrumentMcpServer(server, { endpoint: 'http://127.0.0.1:4318', ingestKey: process.env.TOLLGATE_INGEST_KEY });
 * ```
 */
export function instrumentMcpServer<T extends object>(
  server: T,
  options: InstrumentMcpServerOptions = {},
): T {
  const target = serverOf(server);
  // an McpServer knows its tools: a call of one it lacks is passed to the SDK unbilled
  if (target !== server) linkMcpServer(server as McpServerLike);
  const { resolved, problems } = resolveConfig(options);
  for (const key of Object.keys(options)) {
    if (!Object.hasOwn(OPTIONS, key)) problems.push(`unknown option ${key}`);
  }
  if (problems.length) throw new TypeError(`instrumentMcpServer: ${problems.join('; ')}`);
  const provider = options.tracerProvider;
  const appTracer = provider
    ? provider.getTracer(PACKAGE_NAME, PACKAGE_VERSION)
    : trace.getTracer(PACKAGE_NAME, PACKAGE_VERSION);
  const calls = new ToolCallTracer(resolved, () => appTracer);
  calls.adopt(target);
  calls.instrumentHandlers(target);

  // Handlers registered later (McpServer registers `tools/call` with its first tool) are wrapped too.
  const own = target as ServerLike & { [PATCHED]?: true };
  if (!own[PATCHED]) {
    const original = target.setRequestHandler;
    Object.defineProperty(target, 'setRequestHandler', {
      configurable: true,
      writable: true,
      value: function setRequestHandler(this: ServerLike, ...args: unknown[]) {
        const r = original.apply(this, args);
        ToolCallTracer.ownerOf(this, calls).instrumentHandlers(this);
        return r;
      },
    });
    own[PATCHED] = true;
  }
  return server;
}
