/**
 * A local stand-in for the Stripe API, only for what the Stripe sync calls (Stripe cannot be reached
 * from the test machines). It mirrors github:stripe/openapi `latest/openapi.spec3.json` at commit
 * 19be337d (API version 2026-07-29.dahlia; read through the stored-file index, the mirror lacks that blob):
 *   - `paths["/v1/invoiceitems"].post` (PostInvoiceitems): a form-encoded body (`deepObject` encoding of
 *     `metadata`, `period`, `pricing`); `amount` (integer, minor units) + `currency`, or `pricing[price]`
 *     + `quantity` (non-negative integer); `customer`, `description`, `period[start]`/`period[end]`
 *     (required together, unix time, inclusive); answers `#/components/schemas/invoiceitem`. A negative
 *     `amount` is a credit ("Passing in a negative `amount` will reduce the `amount_due` on the invoice";
 *     `discountable` "Defaults to false for prorations or negative invoice items"): the same texts in the
 *     SDK 23.2.0's `InvoiceItemCreateParams` (OpenAPI v2602, node_modules/stripe/esm/resources/InvoiceItems.d.ts)
 *     and in openapi/spec3.json at commit adc02f76 (2022, the newest whose blob this mirror holds);
 *   - `paths["/v1/invoiceitems"].get` (GetInvoiceitems): `customer`, `created[gte]` (range_query_specs),
 *     `limit` (1-100, default 10), `starting_after`; answers the list object `InvoicesItemsList`
 *     `{object: "list", data, has_more, url: "/v1/invoiceitems"}`, newest first;
 *   - `components.schemas.invoiceitem`: required amount, currency, customer, date, discountable, id,
 *     livemode, object, period, proration, quantity, quantity_decimal; `pricing` nullable
 *     (`billing_bill_resource_invoicing_pricing_pricing`: type `price_details`, `price_details.price`/
 *     `product`, `unit_amount_decimal`) — also openapi/fixtures3.json `invoiceitem` at HEAD;
 *   - errors as `#/components/schemas/error` → `api_errors` (`type` one of api_error, card_error,
 *     idempotency_error, invalid_request_error; `code`, `message`, `param`, `doc_url`; read in
 *     openapi/spec3.json of the git history, 2022), with Stripe's HTTP statuses (400, 401, 404);
 *   - `paths["/v1/billing/meter_events"].post` (PostBillingMeterEvents; read at commit 18fa2cc7, API
 *     2026-09-30.endive, through the stored-file index): required `event_name` (≤ 100) and `payload`
 *     (string values; must hold the meter's `customer_mapping.event_payload_key`, default
 *     `stripe_customer_id`, and `value_settings.event_payload_key`, default `value`), `identifier` (≤ 100;
 *     "Stripe enforces uniqueness within a rolling period of at least 24 hours"), `timestamp` (unix time,
 *     "must be within the past 35 calendar days or up to 5 minutes in the future"); answers
 *     `#/components/schemas/billing.meter_event` {object: "billing.meter_event", created, event_name,
 *     identifier, livemode, payload, timestamp} (openapi/fixtures3.json `billing.meter_event` at HEAD);
 *   - `paths["/v1/billing/meters/{id}/event_summaries"].get` (GetBillingMetersIdEventSummaries): required
 *     `customer`, `start_time` (inclusive) and `end_time` (exclusive), both minute-aligned; `limit`,
 *     `starting_after`, `value_grouping_window` (`day`/`hour`: bounds aligned to it); answers the list
 *     `{object: "list", data, has_more, url: "/v1/billing/meters/<id>/event_summaries"}` of
 *     `billing.meter_event_summary` {id, object, aggregated_value (number), start_time, end_time, livemode,
 *     meter}; the meter's `default_aggregation.formula` (`sum` here) aggregates the events' values;
 *     an unknown meter is a 404 `resource_missing`.
 *   What the documents leave open, and the fake decides: how Stripe answers a second event with an identifier
 *   it has seen (the fake answers 200 with the event and does not count it again — "uniqueness is
 *   enforced"); that a value must be a number (the fake refuses any other with 400 `parameter_invalid`); that a missing
 *   meter or customer is found only by the asynchronous validation (docs.stripe.com/api/v2/core/events/event-types:
 *   `v1.billing.meter.error_report_triggered`, "invalid async usage events", and `v1.billing.meter.no_meter_found`:
 *   the fake answers 200, records `meterErrors` and never counts the event);
 *   that summaries are complete at once (Stripe aggregates asynchronously; `meterLag` holds the newest
 *   events back to mimic it). Meter events are counted by the meter whose `event_name` they carry.
 *   - idempotency as documented (docs.stripe.com/idempotency, /api/idempotent_requests): the first answer
 *     to a key, once the endpoint ran, is saved and replayed with `Idempotent-Replayed: true` and
 *     `Original-Request` for the same key and the same parameters; the same key with other parameters (or
 *     another endpoint) is a 400 `idempotency_error`; requests that fail validation save nothing; keys
 *     are pruned after 24 hours.
 * docs/stripe.md lists what this fake does not reproduce.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

type Params = { [k: string]: string | Params };

/** `a[b][c]=v` form fields → nested objects (how the SDK encodes hashes). */
export function decodeForm(body: string): Params {
  const out: Params = {};
  for (const [rawK, v] of new URLSearchParams(body)) {
    const parts = rawK.split(/\[|\]\[|\]/).filter((p) => p !== '');
    let cur = out;
    parts.forEach((p, i) => {
      if (i === parts.length - 1) cur[p] = v;
      else {
        if (typeof cur[p] !== 'object') cur[p] = {};
        cur = cur[p] as Params;
      }
    });
  }
  return out;
}

interface Saved {
  fingerprint: string;
  status: number;
  body: string;
  requestId: string;
  atMs: number;
}

export interface FakePrice {
  id: string;
  currency: string;
  unit_amount: number;
  product: string;
}

/** A billing meter of the fake (`billing.meter`, aggregation `sum`, Stripe's default payload keys unless set). */
export interface FakeMeter {
  id: string;
  event_name: string;
  customerKey?: string;
  valueKey?: string;
}

export interface FakeStripe {
  /** `127.0.0.1` / port / `http`: what the SDK's host, port and protocol options are set to. */
  host: string;
  port: number;
  secretKey: string;
  /** Every invoice item created, oldest first. */
  items: Record<string, unknown>[];
  /**
   * Every meter event accepted, oldest first (`counted: false`: a repeated identifier, or one Stripe's
   * asynchronous validation drops — see `meterErrors` — not aggregated).
   */
  meterEvents: { event: Record<string, unknown>; value: number; customer: string; counted: boolean }[];
  /**
   * What Stripe's asynchronous validation of meter events reports (the `v1.billing.meter.error_report_triggered`
   * and `v1.billing.meter.no_meter_found` events): the event was answered 200 and is never counted.
   */
  meterErrors: { identifier: string; code: string }[];
  /** The newest this many counted events are not yet in the summaries (Stripe aggregates asynchronously). */
  meterLag: number;
  /** Every request received: method, path, idempotency key, answer status, replayed. */
  requests: { method: string; path: string; key: string | undefined; status: number; replayed: boolean }[];
  customers: Set<string>;
  prices: Map<string, FakePrice>;
  /** Moves the fake's clock (idempotency keys expire 24 h after first use). */
  advanceMs(ms: number): void;
  close(): Promise<void>;
}

const HOUR = 3_600_000;
const KEY_TTL_MS = 24 * HOUR;

const err = (status: number, e: Record<string, string>) => ({ status, body: { error: e } });

/** A request refused before the endpoint ran (validation, unknown object): Stripe saves no idempotent result. */
function rejected(code: string, param: string, message: string) {
  return {
    ...err(400, {
      type: 'invalid_request_error',
      code,
      param,
      message,
      doc_url: `https://stripe.com/docs/error-codes/${code.replace(/_/g, '-')}`,
    }),
    validationFailed: true,
  };
}

export async function startFakeStripe(
  opts: {
    secretKey?: string;
    customers?: string[];
    prices?: FakePrice[];
    meters?: FakeMeter[];
    /** The fake's clock starts here (default: the real time); advanceMs moves it. */
    clockMs?: number;
  } = {},
): Promise<FakeStripe> {
  const secretKey = opts.secretKey ?? `sk_test_${randomBytes(12).toString('hex')}`;
  const idem = new Map<string, Saved>();
  const meters = new Map((opts.meters ?? []).map((m) => [m.id, m]));
  /** Identifier → when it was first seen (ms): uniqueness is enforced for 24 hours. */
  const identifiers = new Map<string, number>();
  const startedAt = Date.now();
  let offsetMs = opts.clockMs === undefined ? 0 : opts.clockMs - startedAt;
  const now = () => Date.now() + offsetMs;
  const fake = {
    host: '127.0.0.1',
    port: 0,
    secretKey,
    items: [] as Record<string, unknown>[],
    meterEvents: [] as FakeStripe['meterEvents'],
    meterErrors: [] as FakeStripe['meterErrors'],
    meterLag: 0,
    requests: [] as FakeStripe['requests'],
    customers: new Set(opts.customers ?? []),
    prices: new Map((opts.prices ?? []).map((p) => [p.id, p])),
  };

  const createItem = (p: Params): { status: number; body: unknown; validationFailed?: boolean } => {
    const customer = p.customer;
    if (typeof customer !== 'string')
      return rejected('parameter_missing', 'customer', 'Missing required param: customer.');
    if (!fake.customers.has(customer))
      return rejected('resource_missing', 'customer', `No such customer: '${customer}'`);
    const intOf = (v: string | Params | undefined) =>
      typeof v === 'string' && /^-?\d+$/.test(v) ? Number(v) : undefined;
    const pricing = p.pricing as Params | undefined;
    const period = p.period as Params | undefined;
    const start = intOf(period?.start) ?? Math.floor(now() / 1000);
    const end = intOf(period?.end) ?? start;
    if (end < start)
      return rejected(
        'parameter_invalid',
        'period[end]',
        'The period end must be greater than or equal to the start.',
      );
    let amount: number;
    let currency: string;
    let quantity = 1;
    let pricingOut: unknown = null;
    if (pricing && typeof pricing.price === 'string') {
      const price = fake.prices.get(pricing.price);
      if (!price) return rejected('resource_missing', 'pricing[price]', `No such price: '${pricing.price}'`);
      if (p.amount !== undefined)
        return rejected('parameter_unknown', 'amount', 'You cannot pass `amount` with `pricing[price]`.');
      const q = p.quantity === undefined ? 1 : intOf(p.quantity);
      if (q === undefined || q < 0)
        return rejected('parameter_invalid_integer', 'quantity', 'Invalid non-negative integer');
      quantity = q;
      amount = price.unit_amount * quantity;
      currency = price.currency;
      pricingOut = {
        type: 'price_details',
        price_details: { price: price.id, product: price.product },
        unit_amount_decimal: String(price.unit_amount),
      };
    } else {
      const a = intOf(p.amount);
      if (a === undefined) return rejected('parameter_invalid_integer', 'amount', 'Invalid integer: amount');
      if (typeof p.currency !== 'string' || !/^[a-z]{3}$/.test(p.currency))
        return rejected(
          'parameter_invalid',
          'currency',
          'Invalid currency: currency must be a lowercase ISO code',
        );
      amount = a;
      currency = p.currency;
    }
    const item = {
      id: `ii_${randomBytes(12).toString('hex')}`,
      object: 'invoiceitem',
      amount,
      currency,
      customer,
      customer_account: null,
      date: Math.floor(now() / 1000),
      description: typeof p.description === 'string' ? p.description : null,
      discountable: amount >= 0,
      discounts: [],
      invoice: null,
      livemode: false,
      metadata: (p.metadata as Record<string, string> | undefined) ?? {},
      net_amount: amount,
      parent: null,
      period: { start, end },
      pricing: pricingOut,
      proration: false,
      quantity,
      quantity_decimal: String(quantity),
      tax_rates: [],
      test_clock: null,
    };
    fake.items.push(item);
    return { status: 200, body: item };
  };

  const createMeterEvent = (p: Params): { status: number; body: unknown; validationFailed?: boolean } => {
    const name = p.event_name;
    if (typeof name !== 'string' || name === '')
      return rejected('parameter_missing', 'event_name', 'Missing required param: event_name.');
    if (name.length > 100)
      return rejected('parameter_invalid', 'event_name', 'event_name must be at most 100 characters.');
    const payload = p.payload;
    if (typeof payload !== 'object')
      return rejected('parameter_missing', 'payload', 'Missing required param: payload.');
    const identifier =
      typeof p.identifier === 'string' ? p.identifier : `evt_${randomBytes(12).toString('hex')}`;
    if (identifier.length > 100)
      return rejected('parameter_invalid', 'identifier', 'identifier must be at most 100 characters.');
    const nowS = Math.floor(now() / 1000);
    const ts = p.timestamp === undefined ? nowS : Number(p.timestamp);
    if (!Number.isInteger(ts))
      return rejected('parameter_invalid_integer', 'timestamp', 'Invalid integer: timestamp');
    if (ts < nowS - 35 * 86_400 || ts > nowS + 300)
      return rejected(
        'parameter_invalid',
        'timestamp',
        'Timestamp must be within the past 35 calendar days or up to 5 minutes in the future.',
      );
    const meter = [...meters.values()].find((m) => m.event_name === name);
    const customerKey = meter?.customerKey ?? 'stripe_customer_id';
    const valueKey = meter?.valueKey ?? 'value';
    const raw = payload[valueKey];
    if (typeof raw !== 'string' || raw.trim() === '' || !Number.isFinite(Number(raw)))
      return rejected('parameter_invalid', `payload[${valueKey}]`, `The ${valueKey} must be a number.`);
    // The meter and the customer are validated asynchronously: the event is answered 200 either way, and one
    // without a meter or a known customer is reported later (v1.billing.meter.no_meter_found,
    // v1.billing.meter.error_report_triggered with meter_event_no_customer_defined /
    // meter_event_customer_not_found) and never aggregated.
    const rawCustomer = payload[customerKey];
    const customer = typeof rawCustomer === 'string' ? rawCustomer : '';
    const invalid = !meter
      ? 'no_meter'
      : typeof rawCustomer !== 'string'
        ? 'meter_event_no_customer_defined'
        : !fake.customers.has(customer)
          ? 'meter_event_customer_not_found'
          : undefined;
    if (invalid) fake.meterErrors.push({ identifier, code: invalid });
    const seenAt = identifiers.get(identifier);
    const counted = invalid === undefined && (seenAt === undefined || now() - seenAt >= KEY_TTL_MS);
    if (counted) identifiers.set(identifier, now());
    const event = {
      object: 'billing.meter_event',
      created: nowS,
      event_name: name,
      identifier,
      livemode: false,
      payload,
      timestamp: ts,
    };
    fake.meterEvents.push({ event, value: Number(raw), customer, counted });
    return { status: 200, body: event };
  };

  const eventSummaries = (meterId: string, q: URLSearchParams): { status: number; body: unknown } => {
    const meter = meters.get(meterId);
    if (!meter)
      return err(404, {
        type: 'invalid_request_error',
        code: 'resource_missing',
        param: 'id',
        message: `No such billing meter: '${meterId}'`,
      });
    const customer = q.get('customer');
    if (!customer)
      return err(400, {
        type: 'invalid_request_error',
        code: 'parameter_missing',
        param: 'customer',
        message: 'Missing required param: customer.',
      });
    const start = Number(q.get('start_time'));
    const end = Number(q.get('end_time'));
    for (const [param, v] of [
      ['start_time', start],
      ['end_time', end],
    ] as const)
      if (!q.has(param) || !Number.isInteger(v) || v % 60 !== 0)
        return err(400, {
          type: 'invalid_request_error',
          code: 'parameter_invalid',
          param,
          message: `${param} must be aligned with minute boundaries.`,
        });
    const window = q.get('value_grouping_window');
    const step = window === 'day' ? 86_400 : window === 'hour' ? 3_600 : end - start;
    if (window && (start % step !== 0 || end % step !== 0))
      return err(400, {
        type: 'invalid_request_error',
        code: 'parameter_invalid',
        param: 'start_time',
        message: `start_time and end_time must be aligned with ${window} boundaries.`,
      });
    const counted = fake.meterEvents.filter((e) => e.counted);
    const visible = counted.slice(0, Math.max(0, counted.length - fake.meterLag));
    const data = [];
    for (let from = start; from < end; from += step) {
      const to = Math.min(end, from + step);
      const value = visible
        .filter(
          (e) =>
            e.event.event_name === meter.event_name &&
            e.customer === customer &&
            (e.event.timestamp as number) >= from &&
            (e.event.timestamp as number) < to,
        )
        .reduce((sum, e) => sum + e.value, 0);
      data.push({
        id: `mtrusg_${randomBytes(8).toString('hex')}`,
        object: 'billing.meter_event_summary',
        aggregated_value: value,
        end_time: to,
        livemode: false,
        meter: meterId,
        start_time: from,
      });
    }
    const limit = q.has('limit') ? Number(q.get('limit')) : 10;
    return {
      status: 200,
      body: {
        object: 'list',
        data: data.slice(0, limit),
        has_more: data.length > limit,
        url: `/v1/billing/meters/${meterId}/event_summaries`,
      },
    };
  };

  const listItems = (q: URLSearchParams): { status: number; body: unknown } => {
    const limit = q.has('limit') ? Number(q.get('limit')) : 10;
    if (!Number.isInteger(limit) || limit < 1 || limit > 100)
      return err(400, {
        type: 'invalid_request_error',
        param: 'limit',
        message: 'Invalid limit: must be between 1 and 100',
      });
    const customer = q.get('customer');
    const gte = q.get('created[gte]');
    // newest first, as Stripe lists
    let rows = [...fake.items].reverse().filter((i) => {
      if (customer && i.customer !== customer) return false;
      if (gte && (i.date as number) < Number(gte)) return false;
      return true;
    });
    const after = q.get('starting_after');
    if (after) {
      const at = rows.findIndex((i) => i.id === after);
      if (at < 0)
        return err(400, {
          type: 'invalid_request_error',
          code: 'resource_missing',
          param: 'starting_after',
          message: `No such invoiceitem: '${after}'`,
        });
      rows = rows.slice(at + 1);
    }
    return {
      status: 200,
      body: {
        object: 'list',
        data: rows.slice(0, limit),
        has_more: rows.length > limit,
        url: '/v1/invoiceitems',
      },
    };
  };

  const send = (res: ServerResponse, status: number, body: string, headers: Record<string, string>) => {
    res.writeHead(status, { 'content-type': 'application/json', ...headers });
    res.end(body);
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const raw = Buffer.concat(chunks).toString('utf8');
    const url = new URL(req.url ?? '/', 'http://fake');
    const requestId = `req_${randomBytes(7).toString('hex')}`;
    const key = req.headers['idempotency-key'] as string | undefined;
    const log = (status: number, replayed: boolean) =>
      fake.requests.push({ method: req.method ?? '', path: url.pathname, key, status, replayed });
    const reply = (status: number, body: unknown, extra: Record<string, string> = {}) => {
      log(status, extra['idempotent-replayed'] === 'true');
      send(res, status, JSON.stringify(body), { 'request-id': requestId, ...extra });
    };
    if (req.headers.authorization !== `Bearer ${secretKey}`) {
      const given = String(req.headers.authorization ?? '').replace(/^Bearer /, '');
      return reply(
        401,
        err(401, {
          type: 'invalid_request_error',
          message: `Invalid API Key provided: ${given.slice(0, 8)}${'*'.repeat(Math.max(0, given.length - 12))}${given.slice(-4)}`,
        }).body,
      );
    }
    if (url.pathname === '/v1/invoiceitems' && req.method === 'GET') {
      const r = listItems(url.searchParams);
      return reply(r.status, r.body);
    }
    const summaries = /^\/v1\/billing\/meters\/([^/]+)\/event_summaries$/.exec(url.pathname);
    if (summaries && req.method === 'GET') {
      const r = eventSummaries(decodeURIComponent(summaries[1] as string), url.searchParams);
      return reply(r.status, r.body);
    }
    const creates: Record<
      string,
      (p: Params) => { status: number; body: unknown; validationFailed?: boolean }
    > = { '/v1/invoiceitems': createItem, '/v1/billing/meter_events': createMeterEvent };
    const create = creates[url.pathname];
    if (create && req.method === 'POST') {
      if (!/application\/x-www-form-urlencoded/.test(String(req.headers['content-type'])))
        return reply(
          400,
          err(400, { type: 'invalid_request_error', message: 'Invalid request: form-encoded body expected' })
            .body,
        );
      const params = decodeForm(raw);
      // The fingerprint: endpoint and parameters (order-insensitive), as Stripe compares them.
      const fingerprint = `POST ${url.pathname} ${JSON.stringify(sortDeep(params))}`;
      if (key) {
        const saved = idem.get(key);
        if (saved && now() - saved.atMs < KEY_TTL_MS) {
          if (saved.fingerprint !== fingerprint)
            return reply(
              400,
              err(400, {
                type: 'idempotency_error',
                message: `Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '${key}' if you meant to execute a different request.`,
              }).body,
            );
          log(saved.status, true);
          return send(res, saved.status, saved.body, {
            'request-id': requestId,
            'idempotent-replayed': 'true',
            'original-request': saved.requestId,
            'idempotency-key': key,
          });
        }
      }
      const r = create(params);
      const body = JSON.stringify(r.body);
      if (key && !r.validationFailed)
        idem.set(key, { fingerprint, status: r.status, body, requestId, atMs: now() });
      log(r.status, false);
      return send(res, r.status, body, {
        'request-id': requestId,
        ...(key ? { 'idempotency-key': key } : {}),
        ...(r.status >= 400 ? { 'stripe-should-retry': 'false' } : {}),
      });
    }
    return reply(
      404,
      err(404, {
        type: 'invalid_request_error',
        message: `Unrecognized request URL (${req.method}: ${url.pathname}).`,
      }).body,
    );
  };

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((e) =>
      send(res, 500, JSON.stringify(err(500, { type: 'api_error', message: String(e) }).body), {}),
    );
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  fake.port = (server.address() as AddressInfo).port;
  return Object.assign(fake, {
    advanceMs(ms: number) {
      offsetMs += ms;
    },
    close: () => new Promise<void>((r) => server.close(() => r())),
  });
}

function sortDeep(p: Params): Params {
  const out: Params = {};
  for (const k of Object.keys(p).sort()) {
    const v = p[k] as string | Params;
    out[k] = typeof v === 'string' ? v : sortDeep(v);
  }
  return out;
}
