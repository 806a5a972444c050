import { IDENTIFIER_FORBIDDEN_CLASS, MAX_IDENTIFIER_LENGTH } from '@tollgate/contracts';
import { INSTANT_PATTERN, PERIOD_PATTERN } from './range.js';

/** JSON schemas shared by the analytics and billing routes (request validation, responses, OpenAPI). */

/**
 * Ids (product, customer, agent, tool, session): 1–256 characters, no control or bidirectional-control
 * characters (contracts' isValidIdentifier: what the receiver accepts).
 */
export const identifier = {
  type: 'string',
  minLength: 1,
  maxLength: MAX_IDENTIFIER_LENGTH,
  pattern: `^[^${IDENTIFIER_FORBIDDEN_CLASS}]+$`,
} as const;

export const DEFAULT_LIMIT = 100;
export const MAX_LIMIT = 10_000;

export const queryProps = {
  product: { ...identifier, description: 'Product (tenant); required when the key has several products.' },
  customer: { ...identifier, description: 'Only this customer (a customer key may only name its own).' },
  agent: { ...identifier, description: 'Only this agent.' },
  tool: { ...identifier, description: 'Only this tool.' },
  from: {
    type: 'string',
    pattern: INSTANT_PATTERN,
    description:
      'Start (inclusive), `YYYY-MM-DD` or RFC 3339 UTC/offset; default: start of the current billing period.',
  },
  to: {
    type: 'string',
    pattern: INSTANT_PATTERN,
    description: 'End (exclusive); default: end of the current billing period.',
  },
  period: {
    type: 'string',
    pattern: PERIOD_PATTERN,
    description: 'Billing period `YYYY-MM` (UTC month), instead of from/to.',
  },
  format: { type: 'string', enum: ['json', 'csv'], description: 'Answer as JSON (default) or CSV.' },
  limit: { type: 'integer', minimum: 1, maximum: MAX_LIMIT, default: DEFAULT_LIMIT },
  offset: { type: 'integer', minimum: 0, maximum: 100_000_000, default: 0 },
} as const;

type QueryKey = keyof typeof queryProps;

/** A querystring schema with the named common parameters (plus `extra`); unknown parameters are a 400. */
export function querystring(keys: readonly QueryKey[], extra: Record<string, unknown> = {}) {
  return {
    type: 'object',
    additionalProperties: false,
    properties: { ...Object.fromEntries(keys.map((k) => [k, queryProps[k]])), ...extra },
  } as const;
}

export interface CommonQuery {
  product?: string;
  customer?: string;
  agent?: string;
  tool?: string;
  from?: string;
  to?: string;
  period?: string;
  format?: 'json' | 'csv';
  limit?: number;
  offset?: number;
}

export function moneyProps(...names: string[]): Record<string, { type: 'string'; description?: string }> {
  const out: Record<string, { type: 'string'; description?: string }> = {};
  for (const n of names) {
    out[`${n}Nano`] = { type: 'string', description: `${n}, integer nano-units (10⁻⁹ of the currency)` };
    out[n] = { type: 'string', description: `${n}, exact decimal in currency units` };
  }
  return out;
}

export const revenueCostMarginProps = {
  ...moneyProps('revenue', 'cost', 'margin'),
  marginBps: {
    type: ['integer', 'null'],
    description: '(revenue − cost) ÷ revenue in basis points, rounded down; null without revenue',
  },
} as const;

export const rangeSchema = {
  type: 'object',
  properties: { from: { type: 'string' }, to: { type: 'string' } },
} as const;

export const pageSchema = {
  type: 'object',
  properties: {
    limit: { type: 'integer' },
    offset: { type: 'integer' },
    total: { type: ['integer', 'null'], description: 'rows in all pages; null when offset is past the end' },
    nextOffset: { type: ['integer', 'null'], description: 'offset of the next page; null on the last page' },
  },
} as const;

export const errorSchema = {
  type: 'object',
  properties: {
    error: {
      type: 'object',
      properties: { code: { type: 'string' }, message: { type: 'string' } },
    },
  },
} as const;

const ERROR_RESPONSES = {
  400: { description: 'invalid parameter (API_BAD_REQUEST, …)', ...errorSchema },
  401: { description: 'missing or unknown API key', ...errorSchema },
  403: { description: 'the key may not see that product or customer', ...errorSchema },
  404: { description: 'not found (or not visible to this key)', ...errorSchema },
  503: { description: 'analytics not enabled in this process', ...errorSchema },
} as const;

/**
 * Response schemas: JSON body, the CSV alternative for lists, and the error shape; `conflict` describes the
 * route's 409 when it has one.
 */
export function responses(json: Record<string, unknown>, csv: boolean, conflict?: string) {
  return {
    ...(conflict ? { 409: { description: conflict, ...errorSchema } } : {}),
    200: csv
      ? {
          description: 'JSON, or CSV with `format=csv` / `Accept: text/csv`',
          content: {
            'application/json': { schema: json },
            'text/csv': { schema: { type: 'string' } },
          },
        }
      : json,
    ...ERROR_RESPONSES,
  };
}

export const SECURITY = [{ apiKey: [] }];
