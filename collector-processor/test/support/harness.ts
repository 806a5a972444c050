import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SpanKind, type Tracer } from '@opentelemetry/api';
import { OTLPTraceExporter as HttpJsonExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { OTLPTraceExporter as ProtoExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BasicTracerProvider, BatchSpanProcessor } from '@opentelemetry/sdk-trace-base';
import type { Directive } from '@tollgate/contracts';
import { startTollgate, type Tollgate } from '../../src/app.js';
import { loadConfig } from '../../src/config/settings.js';

export const DEV_INGEST_KEY = 'tg_dev_ingest_demo';

export function tempDir(prefix = 'tollgate-test-'): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export const TEST_PLANS = `
currency: USD
products:
  demo-mcp:
    defaultPlan: std
    plans:
      std:
        freeCallsPerMonth: 2
        tools:
          "*":
            price: { perCall: "0.002" }
            cost: { perCall: "0.001" }
          search_docs:
            price: { perCall: "0.004", perInputToken: "0.000001", perOutputToken: "0.000003" }
            cost: { perCall: "0.001", perOutputToken: "0.000001" }
`;

export interface TestTollgate extends Tollgate {
  dataDir: string;
  cleanup(): Promise<void>;
}

/** A real Tollgate (chDB in a temp dir, a private redis-server) on free ports. */
export async function startTestTollgate(
  flags: Record<string, string> = {},
  plans = TEST_PLANS,
): Promise<TestTollgate> {
  const dataDir = flags['--data-dir'] ?? tempDir();
  const plansFile = join(dataDir, 'plans.yaml');
  writeFileSync(plansFile, plans);
  const config = loadConfig(
    {
      '--data-dir': dataDir,
      '--plans': plansFile,
      '--otlp-port': '0',
      '--otlp-grpc-port': '0',
      '--api-port': '0',
      '--log-level': 'warn',
      '--landing-flush-ms': '50',
      ...flags,
    },
    {},
  );
  const tg = await startTollgate(config);
  return Object.assign(tg, {
    dataDir,
    cleanup: async () => {
      await tg.stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  });
}

/** A real OTel JS tracer provider exporting over OTLP/HTTP (protobuf or JSON) to `otlpUrl`. */
export function otelTracer(
  otlpUrl: string,
  format: 'protobuf' | 'json',
  opts: { key?: string; resource?: Record<string, string>; maxExportBatchSize?: number } = {},
): { tracer: Tracer; provider: BasicTracerProvider } {
  const exporterOpts = {
    url: `${otlpUrl}/v1/traces`,
    headers: { Authorization: `Bearer ${opts.key ?? DEV_INGEST_KEY}` },
  };
  const exporter =
    format === 'protobuf' ? new ProtoExporter(exporterOpts) : new HttpJsonExporter(exporterOpts);
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ 'service.name': 'weather-mcp', ...opts.resource }),
    spanProcessors: [
      new BatchSpanProcessor(exporter, {
        maxExportBatchSize: opts.maxExportBatchSize ?? 512,
        maxQueueSize: 100_000,
        scheduledDelayMillis: 50,
      }),
    ],
  });
  return { tracer: provider.getTracer('@modelcontextprotocol/test-server'), provider };
}

export interface CallSpec {
  tool: string;
  customer: string;
  agent?: string;
  session?: string;
  inputTokens?: number;
  outputTokens?: number;
  durationMs?: number;
  isError?: boolean;
}

/** Emits one MCP `tools/call` SERVER span with the semantic-convention attributes. */
export function emitToolCall(tracer: Tracer, c: CallSpec, startMs = Date.now() - 1000): void {
  const attrs: Record<string, string | number> = {
    'mcp.method.name': 'tools/call',
    'gen_ai.tool.name': c.tool,
    'gen_ai.operation.name': 'execute_tool',
    'mcp.session.id': c.session ?? 'session-1',
    'mcp.protocol.version': '2025-06-18',
    'network.transport': 'pipe',
    'jsonrpc.request.id': '7',
    'tollgate.customer.id': c.customer,
    'tollgate.agent.id': c.agent ?? 'agent-1',
  };
  if (c.inputTokens !== undefined) attrs['gen_ai.usage.input_tokens'] = c.inputTokens;
  if (c.outputTokens !== undefined) attrs['gen_ai.usage.output_tokens'] = c.outputTokens;
  if (c.isError) attrs['error.type'] = 'tool_error';
  const span = tracer.startSpan(`tools/call ${c.tool}`, {
    kind: SpanKind.SERVER,
    attributes: attrs,
    startTime: startMs,
  });
  span.end(startMs + (c.durationMs ?? 20));
}

/** The samples of a Tollgate's `/metrics`, by `name` or `name{labels}` as the exposition writes them. */
export async function readMetrics(apiUrl: string): Promise<Map<string, number>> {
  const text = await (await fetch(`${apiUrl}/metrics`)).text();
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    const m = /^(\S+) (\S+)$/.exec(line);
    if (m) out.set(m[1] as string, Number(m[2]));
  }
  return out;
}

export async function query<T = Record<string, string>>(
  tg: Tollgate,
  sql: string,
  params: Record<string, unknown> = {},
): Promise<T[]> {
  const rs = await tg.clickhouse.client.query({ query: sql, query_params: params, format: 'JSONEachRow' });
  return rs.json<T>();
}

export interface ExportAnswer {
  partialSuccess?: { rejectedSpans?: string };
  tollgate?: { directives: Directive[] };
}

/** The answer of an OTLP/HTTP JSON export with the dev ingest key; fails the test unless it is a 200. */
export async function sendExport(tg: Tollgate, body: string): Promise<ExportAnswer> {
  const res = await fetch(`${tg.otlpUrl}/v1/traces`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
    body,
  });
  if (res.status !== 200) throw new Error(`export answered ${res.status}: ${await res.text()}`);
  return (await res.json()) as ExportAnswer;
}
