import { describe, expect, it } from 'vitest';
import { type AttrValue, extractToolCall, type SpanView } from '../src/billable-span.js';

/**
 * Issue 12, point 3: one rule for the status attributes, in code and in docs/span-contract.md
 * ("Success and failure"). Each row is a form real instrumentations send.
 */

const NOW_US = Date.UTC(2026, 2, 10) * 1000;

function outcome(attrs: Record<string, AttrValue>, statusCode = 0): { ok: boolean; errorType: string } {
  const span: SpanView = {
    traceId: '0af7651916cd43dd8448eb211c80319c',
    spanId: 'b7ad6b7169203331',
    name: 'tools/call search',
    kind: 2,
    startUnixUs: NOW_US - 2_000_000,
    endUnixUs: NOW_US - 1_000_000,
    statusCode,
    attributes: {
      'mcp.method.name': 'tools/call',
      'gen_ai.tool.name': 'search',
      'tollgate.customer.id': 'acme',
      ...attrs,
    },
    resource: {},
    scopeName: 'x',
  };
  const r = extractToolCall(span, {
    sdkScopeName: '@tollgate/instrumentation',
    nowUnixUs: NOW_US,
    maxAgeUs: 86_400_000_000,
    maxFutureUs: 60_000_000,
  });
  if (r.kind !== 'call') throw new Error(`not a call: ${JSON.stringify(r)}`);
  return { ok: r.call.ok, errorType: r.call.errorType };
}

const OK = { ok: true, errorType: '' };
const failed = (errorType: string) => ({ ok: false, errorType });

describe('http.response.status_code: a status 100–599 as int, whole double or decimal text', () => {
  it.each<[string, AttrValue, { ok: boolean; errorType: string }]>([
    ['int 200', 200, OK],
    ['int 399', 399, OK],
    ['int 400', 400, failed('400')],
    ['int 503', 503, failed('503')],
    ['Kong double 502.0', 502.0, failed('502')],
    ['numeric string "503"', '503', failed('503')],
    ['numeric string "200"', '200', OK],
    // not a status: not read (the call's outcome comes from the other signals)
    ['fractional double 503.5', 503.5, OK],
    ['hex string "0x1F7" (was read as 503)', '0x1F7', OK],
    ['padded string " 503"', ' 503', OK],
    ['text "Service Unavailable"', 'Service Unavailable', OK],
    ['out of range 999', 999, OK],
    ['out of range 42', 42, OK],
    ['empty string', '', OK],
    ['boolean', true, OK],
  ])('%s', (_name, value, expected) => {
    expect(outcome({ 'http.response.status_code': value })).toEqual(expected);
  });
});

describe('rpc.response.status_code: JSON-RPC error codes and gRPC code names', () => {
  it.each<[string, AttrValue, { ok: boolean; errorType: string }]>([
    ['JSON-RPC error as string "-32602" (the Tollgate SDK, semconv)', '-32602', failed('jsonrpc_error')],
    ['JSON-RPC error as int -32603', -32603, failed('jsonrpc_error')],
    ['Kong double -32000.0', -32000.0, failed('jsonrpc_error')],
    ['0', 0, OK],
    ['"0"', '0', OK],
    ['gRPC "OK"', 'OK', OK],
    ['gRPC "UNAVAILABLE"', 'UNAVAILABLE', failed('UNAVAILABLE')],
    ['gRPC "DEADLINE_EXCEEDED"', 'DEADLINE_EXCEEDED', failed('DEADLINE_EXCEEDED')],
    ['gRPC numeric 14', 14, failed('jsonrpc_error')],
    // not a status code: not read
    ['lower-case "ok"', 'ok', OK],
    ['text "success"', 'success', OK],
    ['text "error"', 'error', OK],
    ['fractional 1.5', 1.5, OK],
    ['empty string', '', OK],
    ['boolean false', false, OK],
  ])('%s', (_name, value, expected) => {
    expect(outcome({ 'rpc.response.status_code': value })).toEqual(expected);
  });
});

describe('precedence: the first failing signal names error_type', () => {
  it('error.type wins over the statuses, an HTTP status over an RPC status, any over span status', () => {
    expect(
      outcome({
        'error.type': 'tool_error',
        'http.response.status_code': 502,
        'rpc.response.status_code': '-1',
      }),
    ).toEqual(failed('tool_error'));
    expect(outcome({ 'http.response.status_code': '502', 'rpc.response.status_code': 'INTERNAL' })).toEqual(
      failed('502'),
    );
    expect(outcome({ 'rpc.response.status_code': 'INTERNAL' }, 2)).toEqual(failed('INTERNAL'));
    expect(outcome({}, 2)).toEqual(failed('_OTHER'));
    // a success status does not clear another signal
    expect(outcome({ 'http.response.status_code': 200 }, 2)).toEqual(failed('_OTHER'));
    expect(outcome({ 'rpc.response.status_code': 'OK', 'error.type': 'timeout' })).toEqual(failed('timeout'));
  });
});
