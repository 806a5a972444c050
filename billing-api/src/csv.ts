import type { FastifyReply, FastifyRequest } from 'fastify';
import { isVendorOnly } from './vendor-only.js';

export type Cell = string | number | boolean | null | undefined;

const NUMERIC = /^-?\d+(\.\d+)?$/;

/**
 * Text a spreadsheet may run as a formula: =, +, -, @ first (or their fullwidth forms, which some read as
 * them), also after spaces or a byte-order mark it trims, or a tab or CR first.
 */
const FORMULA = /^[\s\uFEFF]*[=+\-@\uFF1D\uFF0B\uFF0D\uFF20]|^[\t\r]/;

/**
 * One CSV field (RFC 4180). Text that a spreadsheet would run as a formula is prefixed with `'`; numbers,
 * money included ("-0.5"), are left as they are.
 */
export function csvField(v: Cell): string {
  if (v === null || v === undefined) return '';
  let s = String(v);
  if (typeof v === 'string' && FORMULA.test(s) && !NUMERIC.test(s)) s = `'${s}`;
  return /[",\r\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/** Rows of flat objects as CSV with a header line; `columns` fixes the order (and the header of an empty list). */
export function toCsv(columns: readonly string[], rows: readonly Record<string, Cell>[]): string {
  const lines = [columns.map(csvField).join(',')];
  for (const r of rows) lines.push(columns.map((c) => csvField(r[c])).join(','));
  return `${lines.join('\r\n')}\r\n`;
}

/** CSV when `?format=csv`, or without `format` when the Accept header asks for text/csv. */
export function wantsCsv(req: FastifyRequest<{ Querystring: { format?: string } }>): boolean {
  const format = (req.query as { format?: string } | undefined)?.format;
  if (format !== undefined) return format === 'csv';
  return /\btext\/csv\b/i.test(req.headers.accept ?? '');
}

export function sendCsv(
  reply: FastifyReply,
  filename: string,
  columns: readonly string[],
  rows: readonly Record<string, Cell>[],
  nextOffset?: number | null,
): FastifyReply {
  if (nextOffset !== undefined && nextOffset !== null) reply.header('x-next-offset', String(nextOffset));
  // a customer key's CSV has the columns of its JSON: without the vendor's cost and margin (vendor-only.ts)
  const cols =
    reply.request.principal?.role === 'customer' ? columns.filter((c) => !isVendorOnly(c)) : columns;
  return reply
    .type('text/csv; charset=utf-8')
    .header('content-disposition', `attachment; filename="${filename}.csv"`)
    .send(toCsv(cols, rows));
}
