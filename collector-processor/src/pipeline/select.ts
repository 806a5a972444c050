import { type ExtractOptions, extractToolCall, type ToolCall } from '@tollgate/contracts';
import { decodeJsonExport } from '../otlp/decode-json.js';
import { decodeProtobufExport } from '../otlp/decode-protobuf.js';
import type { DecodedExport, SpanView } from '../otlp/decoded.js';
import type { PayloadFormat } from '../spool/spool.js';
import { SPAN_WORK, Turn } from '../turn.js';
import type { RejectionTally } from './tally.js';

/** Instrumentation scope name of the Tollgate SDK (its spans are recorded with source `sdk`). */
export const SDK_SCOPE_NAME = '@tollgate/instrumentation';

export interface SelectionWindow {
  maxSpanAgeHours: number;
  maxFutureSeconds: number;
}

/** Extraction options as of `nowMs` (the receipt time, also on replay, so selection is deterministic). */
export function extractOptions(
  window: SelectionWindow,
  defaultCustomer: string | undefined,
  nowMs: number,
  usageAttributes?: readonly string[],
): ExtractOptions {
  return {
    usageAttributes,
    defaultCustomer,
    sdkScopeName: SDK_SCOPE_NAME,
    nowUnixUs: nowMs * 1000,
    maxAgeUs: window.maxSpanAgeHours * 3_600_000_000,
    maxFutureUs: window.maxFutureSeconds * 1_000_000,
  };
}

/**
 * Decodes an OTLP body (throws DecodeError when unreadable), over several turns of the event loop when it is
 * large (`turn`: the slices it shares with the selection after it).
 */
export function decodeOtlp(
  format: PayloadFormat,
  body: Uint8Array,
  turn = new Turn(),
): Promise<DecodedExport> {
  return format === 'otlp-protobuf' ? decodeProtobufExport(body, turn) : decodeJsonExport(body, turn);
}

/**
 * The billable tool calls of a decoded export; malformed and contract-breaking spans go to `rejected`. Many
 * spans are selected over several turns of the event loop (`turn`'s slices).
 */
export async function selectCalls(
  decoded: DecodedExport,
  opts: ExtractOptions,
  rejected: RejectionTally,
  turn = new Turn(),
): Promise<ToolCall[]> {
  for (let i = 0; i < decoded.malformed; i++) rejected.add('malformed_span');
  const calls: ToolCall[] = [];
  const { spans } = decoded;
  for (let i = 0; i < spans.length; i++) {
    if (turn.due(SPAN_WORK)) await turn.next();
    const x = extractToolCall(spans[i] as SpanView, opts);
    if (x.kind === 'call') calls.push(x.call);
    else if (x.kind === 'rejected') rejected.add(x.reason, x.detail);
  }
  return calls;
}
