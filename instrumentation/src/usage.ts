import { createRequire } from 'node:module';
import { type Span, trace } from '@opentelemetry/api';
import { MAX_COUNT } from '@tollgate/contracts';
import type { ToolUsage } from './types.js';
import { count } from './utils.js';

/** Usage accumulated by one tool call while its handler runs. */
export interface UsageRecord {
  inputTokens: number | undefined;
  outputTokens: number | undefined;
  quantities: Record<string, number> | undefined;
  /** false once the call has finished (late reports are ignored). */
  open: boolean;
  /** Where a refused report is told (the runtime's rate-limited warning), when the call has a runtime. */
  rt?: { log: { problem(message: string): void } } | undefined;
}

/** Records by the app's span of the call, for `reportUsage` without `extra` (needs the app's OTel SDK). */
const bySpan = new WeakMap<Span, UsageRecord>();

export function linkUsageToSpan(span: Span, rec: UsageRecord): void {
  bySpan.set(span, rec);
}

/**
 * The call's record rides on the handler's `extra` object under a symbol (the SDK passes that object, or a
 * spread copy of it, to `McpServer` tool callbacks; spreads copy symbol keys). Measured cheaper than a Map
 * or WeakMap keyed by the object, which must first give the object an identity hash.
 */
const USAGE = Symbol('@tollgate/instrumentation call');
type WithUsage = { [USAGE]?: UsageRecord };

/** Makes `rec` the record `reportUsage(usage, extra)` adds to while the call runs. */
export function openUsage<R extends UsageRecord>(rec: R, extra: object | undefined): R {
  if (extra) (extra as WithUsage)[USAGE] = rec;
  return rec;
}

export function closeUsage(rec: UsageRecord, _extra: object | undefined): void {
  rec.open = false;
}

/**
 * Reports usage of the tool call in progress, from inside its handler: tokens it spent (e.g. on an LLM it
 * called) and any custom quantity a plan prices. Calls add up. Pass the handler's `extra` (the second
 * argument of every MCP tool callback); without it the call is found through the active span, which needs
 * the app's own OTel SDK (a tracer provider and context manager, as NodeSDK registers). Returns false when no call
 * is found, and when the report would take a total past 10¹² (Tollgate's bound on a count): it is then not added
 * (none of it), a warning is logged, and the call is billed with what was reported before.
 *
 * ```ts
 * server.registerTool('summarize', { inputSchema }, async (args, extra) => {
 *   const r = await llm(args);
 *   reportUsage({ inputTokens: r.usage.input, outputTokens: r.usage.output }, extra);
 *   return { content: [{ type: 'text', text: r.text }] };
 * });
 * ```
 */
export function reportUsage(usage: ToolUsage, extra?: object): boolean {
  const rec = (extra as WithUsage | undefined)?.[USAGE] ?? bySpan.get(trace.getActiveSpan() as Span);
  if (!rec?.open) return false;
  const inTok = count(usage.inputTokens);
  const outTok = count(usage.outputTokens);
  const quantities: [string, number][] = [];
  if (usage.quantities) {
    for (const [name, value] of Object.entries(usage.quantities)) {
      if (!/^[a-z][a-z0-9_.]{0,63}$/.test(name) || typeof value !== 'number' || !(value >= 0)) continue;
      quantities.push([name, (rec.quantities?.[name] ?? 0) + value]);
    }
  }
  // Tollgate refuses a call whose count passes MAX_COUNT (the whole call: its price too), so a report that
  // would take a total past it is refused here instead, whole, and the call stays billable with the rest.
  const over =
    (inTok !== undefined && (rec.inputTokens ?? 0) + inTok > MAX_COUNT) ||
    (outTok !== undefined && (rec.outputTokens ?? 0) + outTok > MAX_COUNT) ||
    quantities.some(([, total]) => !(total <= MAX_COUNT));
  if (over) {
    rec.rt?.log.problem(
      `reportUsage refused: a total would pass ${MAX_COUNT} (Tollgate would refuse the whole call); the call is billed without this report`,
    );
    return false;
  }
  if (inTok !== undefined) rec.inputTokens = (rec.inputTokens ?? 0) + inTok;
  if (outTok !== undefined) rec.outputTokens = (rec.outputTokens ?? 0) + outTok;
  for (const [name, total] of quantities) {
    rec.quantities ??= {};
    rec.quantities[name] = total;
  }
  return true;
}

type CountTokens = (text: string) => number;

/** Loads the tokenizer once (the optional peer dependency `gpt-tokenizer`, o200k_base encoding). */
export function loadTokenizer(): CountTokens | Error {
  try {
    const require = createRequire(import.meta.url);
    const mod = require('gpt-tokenizer/encoding/o200k_base') as { countTokens?: CountTokens };
    if (typeof mod.countTokens !== 'function') return new Error('gpt-tokenizer has no countTokens');
    return mod.countTokens;
  } catch (err) {
    return err as Error;
  }
}

/** The text a tool returned: its text content items and its structured content. */
export function resultText(result: unknown): string {
  if (typeof result !== 'object' || result === null) return '';
  const r = result as { content?: unknown; structuredContent?: unknown };
  let text = '';
  if (Array.isArray(r.content)) {
    for (const item of r.content) {
      if (item && typeof item === 'object' && typeof (item as { text?: unknown }).text === 'string') {
        text += (item as { text: string }).text;
      }
    }
  }
  if (r.structuredContent !== undefined) text += JSON.stringify(r.structuredContent);
  return text;
}

export function argumentsText(args: unknown): string {
  if (args === undefined || args === null) return '';
  return typeof args === 'string' ? args : JSON.stringify(args);
}
