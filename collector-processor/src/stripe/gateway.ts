import Stripe from 'stripe';
import { StripeSyncError } from './errors.js';

/**
 * The two Stripe calls the sync makes, behind a small port: create an invoice item (with an
 * Idempotency-Key) and list a customer's invoice items. The adapter is the official `stripe` SDK; tests
 * point it at a local fake through the SDK's own host/port/protocol options (test/support/fake-stripe.ts).
 */

/** `POST /v1/invoiceitems` parameters the sync sends (form-encoded by the SDK). */
export interface InvoiceItemParams {
  customer: string;
  /** Amount mode: integer minor units, with `currency`. */
  amount?: number;
  currency?: string;
  /** Quantity mode: a Stripe price and a whole quantity (Stripe prices it). */
  pricing?: { price: string };
  quantity?: number;
  description: string;
  /** Inclusive bounds, seconds since the epoch. */
  period: { start: number; end: number };
  metadata: Record<string, string>;
}

/** What the sync reads back of an invoice item. */
export interface InvoiceItemSeen {
  id: string;
  amount: number;
  currency: string;
  quantity: number;
  metadata: Record<string, string>;
}

export interface StripeGateway {
  /** Creates the item; `replayed` is Stripe's Idempotent-Replayed answer (the key was seen before). */
  createInvoiceItem(
    params: InvoiceItemParams,
    idempotencyKey: string,
  ): Promise<InvoiceItemSeen & { replayed: boolean }>;
  /** Every invoice item of a customer created at or after `createdGte` (seconds), all pages. */
  listInvoiceItems(customer: string, createdGte: number): Promise<InvoiceItemSeen[]>;
}

export interface StripeConnection {
  secretKey: string;
  host: string;
  port: number;
  protocol: 'http' | 'https';
}

function seen(item: Stripe.InvoiceItem): InvoiceItemSeen {
  return {
    id: item.id,
    amount: item.amount,
    currency: item.currency,
    quantity: item.quantity,
    metadata: { ...(item.metadata ?? {}) },
  };
}

/** A Stripe error as one of ours; the message is Stripe's (never the key, which Stripe does not echo). */
function wrap(err: unknown): never {
  if (err instanceof Stripe.errors.StripeError) {
    const where = `${err.statusCode ?? '?'} ${err.rawType ?? err.type}${err.code ? `/${err.code}` : ''}`;
    // The SDK's message starts with the request id ([req_…]), which support needs to trace it.
    const detail = `${where}: ${err.message}`;
    if (err.rawType === 'idempotency_error') throw new StripeSyncError('STRIPE_IDEMPOTENCY_CONFLICT', detail);
    throw new StripeSyncError('STRIPE_API', detail);
  }
  throw err;
}

export function sdkGateway(conn: StripeConnection): StripeGateway {
  if (!conn.secretKey)
    throw new StripeSyncError(
      'STRIPE_NOT_CONFIGURED',
      'no secret key (STRIPE_SECRET_KEY or --stripe-secret-key)',
    );
  const stripe = new Stripe(conn.secretKey, {
    host: conn.host,
    port: conn.port,
    protocol: conn.protocol,
    // Network failures and 409/5xx answers are retried by the SDK with the same Idempotency-Key.
    maxNetworkRetries: 2,
    timeout: 30_000,
    telemetry: false,
    appInfo: { name: 'Tollgate', url: 'https://github.com/tollgate' },
  });
  return {
    async createInvoiceItem(params, idempotencyKey) {
      try {
        const item = await stripe.invoiceItems.create(params, { idempotencyKey });
        return { ...seen(item), replayed: item.lastResponse.headers['idempotent-replayed'] === 'true' };
      } catch (err) {
        return wrap(err);
      }
    },
    async listInvoiceItems(customer, createdGte) {
      const out: InvoiceItemSeen[] = [];
      try {
        for await (const item of stripe.invoiceItems.list({
          customer,
          created: { gte: createdGte },
          limit: 100,
        }))
          out.push(seen(item));
      } catch (err) {
        return wrap(err);
      }
      return out;
    },
  };
}
