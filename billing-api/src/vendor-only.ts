/**
 * What a customer key never reads: the vendor's side of the money — what calls cost the vendor, its margin on
 * them, the margin guard's band and thresholds (how far a customer could push before being throttled or
 * stopped). Answers to customer keys (JSON and CSV) leave these fields out, wherever they are nested; admin
 * and finance keys read everything. Plain field names, as the answers spell them.
 */
const VENDOR_ONLY = new Set([
  'cost',
  'costNano',
  'margin',
  'marginNano',
  'marginBps',
  'band',
  'bands',
  'guard',
  'guardEnabled',
  'warnBelowBps',
  'throttleBelowBps',
  'killBelowBps',
  'minRevenue',
  'minRevenueNano',
]);

export function isVendorOnly(field: string): boolean {
  return VENDOR_ONLY.has(field);
}

/** A copy of an answer without the vendor-only fields (arrays and nested objects included). */
export function withoutVendorOnly(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(withoutVendorOnly);
  if (value === null || typeof value !== 'object' || Buffer.isBuffer(value)) return value;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) if (!VENDOR_ONLY.has(k)) out[k] = withoutVendorOnly(v);
  return out;
}
