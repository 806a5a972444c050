import Stripe from 'stripe';
import { StripeSyncError } from './errors.js';

/**
 * The Stripe calls the sync makes, behind a small port: create an invoice item (with an
 * Idempotency-Key), list a customer's invoice items, create a billing meter event (with an
 * Idempotency-Key and an `identifier`) and read a meter's event summary. The adapter is the official `stripe` SDK; tests
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

/** `POST /v1/billing/meter_events` parameters the sync sends (form-encoded by the SDK). */
export interface MeterEventParams {
  event_name: string;
  /** The meter's customer key → `cus_…`, its value key → the quantity as an integer string. */
  payload: Record<string, string>;
  /** Stripe deduplicates events of the same identifier (at most 100 characters) over at least 24 hours. */
  identifier: string;
  /** Seconds since the epoch; Stripe takes the past 35 days to 5 minutes ahead. */
  timestamp: number;
}

export interface StripeGateway {
  /** Sends the event; `replayed` is Stripe's Idempotent-Replayed answer (the key was seen before). */
  createMeterEvent(
    params: MeterEventParams,
    idempotencyKey: string,
  ): Promise<{ identifier: string; replayed: boolean }>;
  /**
   * The meter's aggregated value for a customer over [startTime, endTime) (seconds, minute-aligned), summed
   * over the summaries Stripe answers. Stripe aggregates meter events asynchronously: recent events may not
   * be in it yet.
   */
  meterEventSummary(meterId: string, customer: string, startTime: number, endTime: number): Promise<number>;
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
    async createMeterEvent(params, idempotencyKey) {
      try {
        const ev = await stripe.billing.meterEvents.create(params, { idempotencyKey });
        return {
          identifier: ev.identifier,
          replayed: ev.lastResponse.headers['idempotent-replayed'] === 'true',
        };
      } catch (err) {
        return wrap(err);
      }
    },
    async meterEventSummary(meterId, customer, startTime, endTime) {
      let sum = 0;
      try {
        for await (const s of stripe.billing.meters.listEventSummaries(meterId, {
          customer,
          start_time: startTime,
          end_time: endTime,
          limit: 100,
        }))
          sum += s.aggregated_value;
      } catch (err) {
        return wrap(err);
      }
      return sum;
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
