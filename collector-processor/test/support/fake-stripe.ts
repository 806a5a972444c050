/**
 * A local stand-in for the Stripe API, only for what the Stripe sync calls (Stripe cannot be reached
 * from the test machines). It mirrors github:stripe/openapi `latest/openapi.spec3.json` at commit
 * 19be337d (API version 2026-07-29.dahlia; read through the stored-file index, the mirror lacks that blob):
 *   - `paths["/v1/invoiceitems"].post` (PostInvoiceitems): a form-encoded body (`deepObject` encoding of
 *     `metadata`, `period`, `pricing`); `amount` (integer, minor units) + `currency`, or `pricing[price]`
 *     + `quantity` (non-negative integer); `customer`, `description`, `period[start]`/`period[end]`
 *     (required together, unix time, inclusive); answers `#/components/schemas/invoiceitem`;
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

export interface FakeStripe {
  /** `127.0.0.1` / port / `http`: what the SDK's host, port and protocol options are set to. */
  host: string;
  port: number;
  secretKey: string;
  /** Every invoice item created, oldest first. */
  items: Record<string, unknown>[];
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
  opts: { secretKey?: string; customers?: string[]; prices?: FakePrice[] } = {},
): Promise<FakeStripe> {
  const secretKey = opts.secretKey ?? `sk_test_${randomBytes(12).toString('hex')}`;
  const idem = new Map<string, Saved>();
  let offsetMs = 0;
  const now = () => Date.now() + offsetMs;
  const fake = {
    host: '127.0.0.1',
    port: 0,
    secretKey,
    items: [] as Record<string, unknown>[],
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
    if (url.pathname === '/v1/invoiceitems' && req.method === 'POST') {
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
      const r = createItem(params);
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
