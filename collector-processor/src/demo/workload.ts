import { SpanKind } from '@opentelemetry/api';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-proto';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BasicTracerProvider, BatchSpanProcessor } from '@opentelemetry/sdk-trace-base';

/**
 * A realistic MCP workload emitted through the real OpenTelemetry JS SDK and its OTLP/HTTP protobuf
 * exporter: the server-side `tools/call` spans an instrumented MCP server produces (semantic-convention
 * attributes, sessions over stdio and Streamable HTTP, token usage, some tool errors), plus spans of
 * other instrumentations that are not tool calls.
 */
export interface WorkloadOptions {
  otlpUrl: string;
  ingestKey: string;
  calls: number;
  seed?: number;
  onProgress?: (sent: number) => void;
}

const CUSTOMERS = ['acme', 'globex', 'initech', 'umbrella', 'hooli'];
const AGENTS = ['planner', 'researcher', 'support-bot'];
const TOOLS: {
  name: string;
  inTok: [number, number];
  outTok: [number, number];
  ms: [number, number];
  errorRate: number;
}[] = [
  { name: 'get_forecast', inTok: [20, 80], outTok: [150, 600], ms: [40, 250], errorRate: 0.03 },
  { name: 'search_docs', inTok: [50, 400], outTok: [300, 2000], ms: [80, 600], errorRate: 0.05 },
  { name: 'run_report', inTok: [10, 40], outTok: [500, 3000], ms: [800, 4000], errorRate: 0.08 },
  { name: 'lookup_customer', inTok: [10, 30], outTok: [50, 200], ms: [10, 60], errorRate: 0.01 },
];

/** Small deterministic PRNG so a demo run is reproducible. */
function mulberry32(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export async function runWorkload(opts: WorkloadOptions): Promise<{ sent: number }> {
  const rnd = mulberry32(opts.seed ?? 42);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rnd() * xs.length)] as T;
  const between = ([lo, hi]: [number, number]) => Math.round(lo + rnd() * (hi - lo));
  const exporter = new OTLPTraceExporter({
    url: `${opts.otlpUrl}/v1/traces`,
    headers: { Authorization: `Bearer ${opts.ingestKey}` },
  });
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({ 'service.name': 'demo-mcp-server', 'service.instance.id': 'demo-1' }),
    spanProcessors: [
      new BatchSpanProcessor(exporter, {
        maxExportBatchSize: 512,
        maxQueueSize: 65_536,
        scheduledDelayMillis: 100,
      }),
    ],
  });
  const tracer = provider.getTracer('@modelcontextprotocol/demo-server');
  const sessions = new Map<string, { id: string; transport: 'pipe' | 'tcp'; agent: string }>();
  const now = Date.now() - 60_000;
  for (let i = 0; i < opts.calls; i++) {
    const customer = pick(CUSTOMERS);
    let session = sessions.get(customer);
    if (!session || rnd() < 0.02) {
      session = { id: `sess-${customer}-${i}`, transport: rnd() < 0.5 ? 'pipe' : 'tcp', agent: pick(AGENTS) };
      sessions.set(customer, session);
    }
    const tool = pick(TOOLS);
    const start = now + Math.floor((i / opts.calls) * 55_000);
    const isError = rnd() < tool.errorRate;
    const span = tracer.startSpan(`tools/call ${tool.name}`, {
      kind: SpanKind.SERVER,
      startTime: start,
      attributes: {
        'mcp.method.name': 'tools/call',
        'gen_ai.tool.name': tool.name,
        'gen_ai.operation.name': 'execute_tool',
        'mcp.session.id': session.id,
        'mcp.protocol.version': '2025-06-18',
        'network.transport': session.transport,
        'jsonrpc.request.id': String(i),
        'tollgate.customer.id': customer,
        'tollgate.agent.id': session.agent,
        'gen_ai.usage.input_tokens': between(tool.inTok),
        'gen_ai.usage.output_tokens': isError ? 0 : between(tool.outTok),
        ...(isError ? { 'error.type': 'tool_error' } : {}),
      },
    });
    span.end(start + between(tool.ms));
    if (i % 10 === 0) tracer.startSpan('SELECT weather.forecasts', { startTime: start }).end(start + 3);
    if (i % 1000 === 999) {
      await provider.forceFlush();
      opts.onProgress?.(i + 1);
    }
  }
  await provider.forceFlush();
  await provider.shutdown();
  opts.onProgress?.(opts.calls);
  return { sent: opts.calls };
}
