import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import type { ReadableSpan, SpanExporter } from '@opentelemetry/sdk-trace-base';
import { ATTR_GEN_AI_TOOL_NAME, ATTR_MCP_SESSION_ID, ATTR_TOLLGATE_SESSION_RULE } from '@tollgate/contracts';
import { flushTollgate } from './registry.js';

/**
 * What the instrumentation knows about the MCP SDKs of this process, and a self-check that proves a tool
 * call of each installed SDK becomes a billing span (`npx tollgate-instrumentation check`).
 */

export interface SdkModuleReport {
  package: string;
  version: string | undefined;
  /** The module hook patched it (zero-code path). */
  patched: boolean;
  /** Why it could not be patched. */
  problem?: string;
}

const seen = new Map<string, SdkModuleReport>();

/** Called by the module hooks for every MCP SDK module they see (patched or not). */
export function recordSdk(r: SdkModuleReport): void {
  seen.set(`${r.package}@${r.version}`, r);
}

/** The MCP SDK modules the module hooks saw in this process. */
export function sdkModules(): SdkModuleReport[] {
  return [...seen.values()];
}

export interface SelfCheckResult {
  package: string;
  version: string | undefined;
  dir: string;
  supported: boolean;
  /** The module hook patched it when it was loaded. */
  hooked: boolean;
  /** A tool call through a real server of this SDK produced a billing span. */
  billed: boolean;
  detail: string;
}

/** The directory of an installed package, found from `fromDir` upwards (exports maps may hide package.json). */
export function findPackageDir(name: string, fromDir: string): string | undefined {
  let dir = resolve(fromDir);
  for (;;) {
    const candidate = join(dir, 'node_modules', name);
    if (existsSync(join(candidate, 'package.json'))) return candidate;
    const up = dirname(dir);
    if (up === dir) return undefined;
    dir = up;
  }
}

class CapturingExporter implements SpanExporter {
  readonly spans: ReadableSpan[] = [];
  export(spans: ReadableSpan[], done: (r: { code: number }) => void): void {
    this.spans.push(...spans);
    done({ code: 0 });
  }
  async shutdown(): Promise<void> {}
  async forceFlush(): Promise<void> {}
}

interface LinkedTransport {
  onmessage?: (m: unknown) => void;
  start(): Promise<void>;
  send(m: unknown): Promise<void>;
  close(): Promise<void>;
}

/**
 * Drives one `tools/call` through a real `McpServer` of the given SDK over its own in-memory transport,
 * speaking raw JSON-RPC (no client package needed), and returns the billing spans it produced.
 */
async function roundTrip(
  load: (spec: string) => Promise<Record<string, unknown>>,
  line: 1 | 2,
  instrument: (server: object, exporter: SpanExporter) => void,
): Promise<ReadableSpan[]> {
  const mcpMod = await load(line === 1 ? 'server/mcp.js' : '');
  const memMod = line === 1 ? await load('inMemory.js') : mcpMod;
  const McpServer = mcpMod.McpServer as new (
    info: object,
    opts?: object,
  ) => {
    server: object;
    tool?: (...a: unknown[]) => void;
    registerTool?: (...a: unknown[]) => void;
    connect(t: unknown): Promise<void>;
    close(): Promise<void>;
  };
  const InMemoryTransport = memMod.InMemoryTransport as {
    createLinkedPair(): [LinkedTransport, LinkedTransport];
  };
  const exporter = new CapturingExporter();
  const server = new McpServer(
    { name: 'tollgate-self-check', version: '1.0.0' },
    { capabilities: { tools: {} } },
  );
  instrument(server, exporter);
  const handler = async () => ({ content: [{ type: 'text', text: 'ok' }] });
  if (typeof server.registerTool === 'function') server.registerTool('tollgate_self_check', {}, handler);
  else server.tool?.('tollgate_self_check', handler);
  const [client, serverSide] = InMemoryTransport.createLinkedPair();
  const answers = new Map<number, unknown>();
  client.onmessage = (m) => {
    const id = (m as { id?: number }).id;
    if (typeof id === 'number') answers.set(id, m);
  };
  await server.connect(serverSide);
  await client.start();
  const ask = async (id: number, method: string, params: object) => {
    await client.send({ jsonrpc: '2.0', id, method, params });
    for (let i = 0; i < 200 && !answers.has(id); i++) await new Promise((r) => setTimeout(r, 5));
    return answers.get(id);
  };
  await ask(1, 'initialize', {
    protocolVersion: '2025-06-18',
    capabilities: {},
    clientInfo: { name: 'tollgate-self-check', version: '1.0.0' },
  });
  await client.send({ jsonrpc: '2.0', method: 'notifications/initialized' });
  await ask(2, 'tools/call', { name: 'tollgate_self_check', arguments: {} });
  await server.close();
  await flushTollgate();
  return exporter.spans;
}

/**
 * Checks, for each MCP SDK installed where `fromDir` resolves packages, that its version is supported and
 * that a tool call through a real server becomes a billing span with a session. With `hooked`, the
 * instrumentation's module hooks must be active (the CLI registers them first) and are checked too.
 */
export async function checkInstrumentation(
  fromDir: string,
  instrument: (server: object, exporter: SpanExporter) => void,
): Promise<SelfCheckResult[]> {
  const { SDK_PACKAGES, isSupportedSdkVersion, unsupportedMessage } = await import('./instrumentation.js');
  const out: SelfCheckResult[] = [];
  for (const [line, pkg] of [
    [1, SDK_PACKAGES.v1],
    [2, SDK_PACKAGES.v2],
  ] as const) {
    const dir = findPackageDir(pkg, fromDir);
    if (!dir) continue;
    const manifest = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8')) as {
      version?: string;
      exports?: Record<string, unknown>;
    };
    const version = manifest.version;
    const supported = isSupportedSdkVersion(pkg, version);
    const r: SelfCheckResult = {
      package: pkg,
      version,
      dir,
      supported,
      hooked: false,
      billed: false,
      detail: '',
    };
    out.push(r);
    if (!supported) {
      r.detail = unsupportedMessage(pkg, version, 'unsupported version');
      continue;
    }
    // Loaded the way an app loads it (by package name, so the module hooks see it): resolved from this
    // package's location, which finds the project's copy in a normal install.
    const load = async (sub: string) =>
      (await import(sub ? `${pkg}/${sub}` : pkg)) as Record<string, unknown>;
    try {
      const spans = await roundTrip(load, line, instrument);
      r.hooked = sdkModules().some((m) => m.package === pkg && m.version === version && m.patched);
      const span = spans[0];
      r.billed =
        span !== undefined &&
        span.attributes[ATTR_GEN_AI_TOOL_NAME] === 'tollgate_self_check' &&
        typeof span.attributes[ATTR_MCP_SESSION_ID] === 'string' &&
        typeof span.attributes[ATTR_TOLLGATE_SESSION_RULE] === 'string';
      r.detail = r.billed
        ? `tool call billed (session rule ${String(span?.attributes[ATTR_TOLLGATE_SESSION_RULE])})`
        : `no billing span for a tool call (${spans.length} spans)`;
    } catch (err) {
      r.detail = `round trip failed: ${(err as Error).message}`;
    }
    const problem = sdkModules().find((m) => m.package === pkg && m.version === version && m.problem);
    if (problem?.problem) r.detail += `; ${problem.problem}`;
  }
  return out;
}
