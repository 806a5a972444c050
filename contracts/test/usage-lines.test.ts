import { describe, expect, it } from 'vitest';
import { extractToolCall, type SpanView } from '../src/billable-span.js';
import { toolCallFromUsageEvent, UsageEventSchema } from '../src/usage-event.js';

const NOW_US = Date.UTC(2026, 2, 10) * 1000;

const span = (attrs: SpanView['attributes']): SpanView => ({
  traceId: '0af7651916cd43dd8448eb211c80319c',
  spanId: 'b7ad6b7169203331',
  name: 'tools/call search',
  kind: 2,
  startUnixUs: NOW_US - 2_000_000,
  endUnixUs: NOW_US - 1_000_000,
  statusCode: 0,
  attributes: {
    'mcp.method.name': 'tools/call',
    'gen_ai.tool.name': 'search',
    'tollgate.customer.id': 'acme',
    ...attrs,
  },
  resource: {},
  scopeName: 'x',
});

const opts = (usageAttributes?: string[]) => ({
  sdkScopeName: '@tollgate/instrumentation',
  nowUnixUs: NOW_US,
  maxAgeUs: 86_400_000_000,
  maxFutureUs: 60_000_000,
  usageAttributes,
});

describe('usage-line sources on the call', () => {
  it('keeps the raw values of the attributes the plans read, and only those', () => {
    const s = span({
      'gen_ai.usage.cache_read.input_tokens': 800,
      'tollgate.usage.rows': '12',
      'tollgate.usage.bad': -1,
      'other.attr': 5,
    });
    const r = extractToolCall(
      s,
      opts(['gen_ai.usage.cache_read.input_tokens', 'tollgate.usage.rows', 'absent']),
    );
    expect(r.kind === 'call' && r.call.usage).toEqual({
      'gen_ai.usage.cache_read.input_tokens': 800,
      'tollgate.usage.rows': '12',
    });
  });

  it('no usage attributes read → no usage on the call (negative values are checked when rated, not here)', () => {
    const r = extractToolCall(span({ 'tollgate.usage.bad': -1 }), opts());
    expect(r.kind === 'call' && r.call.usage).toBeUndefined();
  });

  it('a usage event reads metadata fields named like a line as tollgate.usage.<name>', () => {
    const e = UsageEventSchema.parse({
      id: 'e1',
      customerId: 'acme',
      timestamp: NOW_US / 1000,
      metricName: 'mcp.tool_call',
      productType: 'mcp',
      toolName: 'search',
      executionDurationMs: 1,
      metadata: { inputTokens: 10, cached_input_tokens: 4, pages: '3', Note: 'x', nested: { a: 1 } },
    });
    expect(toolCallFromUsageEvent(e, 'p', undefined)?.usage).toEqual({
      'tollgate.usage.cached_input_tokens': 4,
      'tollgate.usage.pages': '3',
      // not a quantity: kept as null, so a plan line of that name refuses it (invalid_usage) instead of
      // reading it as absent; a name no line reads is ignored when rated
      'tollgate.usage.nested': null,
    });
  });
});
