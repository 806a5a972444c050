import { AjvCompiler } from '@fastify/ajv-compiler';
import Fastify, {
  type FastifyBaseLogger,
  type FastifyError,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  LogController,
  type RawServerDefault,
} from 'fastify';
import { type EnforcementAdminPort, registerEnforcementAdmin } from './admin.js';
import { registerAnalytics } from './analytics.js';
import { type ApiKeyConfig, ApiKeyring } from './auth.js';
import { registerBilling } from './billing.js';
import { type CreditsPort, registerCredits } from './credits.js';
import { registerDashboard } from './dashboard.js';
import { API_ERRORS, ApiError } from './errors.js';
import { drainRequest, edgeClientErrorHandler, edgeServerFactory, MAX_URL_BYTES } from './http-edges.js';
import { registerOpenApi } from './openapi.js';
import type { AnalyticsDeps } from './ports.js';
import { withoutVendorOnly } from './vendor-only.js';

export interface ReadinessCheck {
  name: string;
  ok: boolean;
  detail?: string | undefined;
}

export interface ApiDeps {
  log: FastifyBaseLogger;
  /** Readiness of the parts this process runs (ClickHouse, Redis, plans, landing backlog). */
  readiness: () => Promise<ReadinessCheck[]>;
  /** Prometheus exposition of the process metrics. */
  metrics: () => Promise<{ contentType: string; body: string }>;
  apiKeys: readonly ApiKeyConfig[];
  /** Operator actions on enforcement state; undefined when enforcement is off. */
  admin?: EnforcementAdminPort | undefined;
  /** Prepaid credit wallets; undefined when enforcement is off (the credit routes answer 503). */
  credits?: CreditsPort | undefined;
  /** ClickHouse, plans and trace links for analytics, invoices and quotes; undefined: those answer 503. */
  analytics?: AnalyticsDeps | undefined;
  /** `ops`: health, readiness and metrics only (a processor-only process); `all`: every route. */
  routes?: 'ops' | 'all';
}

/**
 * The HTTP API: health, readiness, Prometheus metrics, enforcement admin, analytics, billing, the
 * dashboard and the OpenAPI document. Built separately from listen() so routes are tested with inject().
 */
const EDGE_CODES = {
  uriTooLong: 'API_URI_TOO_LONG',
  headersTooLarge: 'API_HEADERS_TOO_LARGE',
  badRequest: 'API_BAD_REQUEST',
  timeout: 'API_BAD_REQUEST',
};

export function buildApi(deps: ApiDeps): FastifyInstance {
  const app = Fastify<RawServerDefault>({
    loggerInstance: deps.log,
    serverFactory: edgeServerFactory(EDGE_CODES),
    clientErrorHandler: edgeClientErrorHandler(EDGE_CODES),
    logController: new LogController({ disableRequestLogging: true }),
    // An unknown parameter is a 400, not silently dropped: a typo must not widen a report.
    ajv: { customOptions: { removeAdditional: false } },
    schemaController: { compilersFactory: { buildValidator: bodiesAsSent } },
    // A path parameter (a session id: up to 256 characters, each up to 12 percent-encoded) is bounded by the
    // request target's own bound and its route schema, not by the router's default of 100 characters.
    routerOptions: { maxParamLength: MAX_URL_BYTES },
    // What the router refuses before any route (a malformed percent-escape) answers in the catalogue shape.
    frameworkErrors: (error: FastifyError, _req: FastifyRequest, reply: FastifyReply) =>
      reply.code(400).send({
        error: {
          code: 'API_BAD_REQUEST',
          message:
            error.code === 'FST_ERR_BAD_URL'
              ? 'the request path holds a malformed percent-escape'
              : error.message,
        },
      }),
  });
  const keyring = new ApiKeyring(deps.apiKeys);

  // A refusal whose body is still arriving is answered once it has been read (up to a bound), then the
  // connection closes: closing under a client that is still sending resets it before it reads the status.
  const drainRefused = async (req: FastifyRequest, reply: FastifyReply) => {
    if (req.raw.complete) return;
    reply.header('connection', 'close');
    await drainRequest(req.raw);
  };

  app.setErrorHandler(
    async (error: Error & { statusCode?: number; code?: string; validation?: unknown }, req, reply) => {
      await drainRefused(req, reply);
      if (error.code === 'FST_ERR_CTP_BODY_TOO_LARGE' || error.statusCode === 413) {
        const e = new ApiError('API_BODY_TOO_LARGE');
        return reply.code(e.status).send({ error: { code: e.code, message: e.message } });
      }
      if (error instanceof ApiError) {
        return reply.code(error.status).send({ error: { code: error.code, message: error.message } });
      }
      if (error.validation) {
        return reply.code(400).send({
          error: { code: 'API_BAD_REQUEST', message: validationMessage(error.message, error.validation) },
        });
      }
      if (error.statusCode && error.statusCode < 500) {
        return reply
          .code(error.statusCode)
          .send({ error: { code: 'API_BAD_REQUEST', message: error.message } });
      }
      req.log.error({ err: error }, 'unexpected API error');
      return reply.code(500).send({ error: { code: 'API_INTERNAL', message: 'internal error' } });
    },
  );
  app.setNotFoundHandler(async (req, reply) => {
    await drainRefused(req, reply);
    return reply.code(404).send({
      error: {
        code: 'API_NOT_FOUND',
        message: `${API_ERRORS.API_NOT_FOUND.message}: ${req.method} ${req.url}`,
      },
    });
  });

  const full = deps.routes !== 'ops';
  if (full) registerOpenApi(app);
  // Routes live in a plugin registered after the OpenAPI plugin, so its onRoute hook sees every one.
  app.register(async (api) => {
    // Every route that takes a key (its schema names the `apiKey` security) authenticates before its body is
    // read and its parameters are validated: without a valid key the answer is 401, never a 400 that
    // describes the schema or the body.
    // a customer key reads its own usage and charges, never the vendor's cost, margin or guard thresholds
    api.addHook('preSerialization', async (req, _reply, payload) =>
      req.principal?.role === 'customer' ? withoutVendorOnly(payload) : payload,
    );
    api.addHook('onRequest', async (req) => {
      if (req.routeOptions.schema?.security) keyring.authenticate(req);
      checkPercentEscapes(req.url);
      // A whole-number parameter is written in decimal digits: ajv's coercion (Number()) would read
      // `limit=0x10` as 16, `1e3` as 1000 and `limit=` as 0.
      const props = (
        req.routeOptions.schema?.querystring as { properties?: Record<string, { type?: unknown }> }
      )?.properties;
      if (props) {
        for (const [name, value] of Object.entries((req.query ?? {}) as Record<string, unknown>)) {
          if (props[name]?.type === 'integer' && (typeof value !== 'string' || !/^-?\d+$/.test(value))) {
            throw new ApiError(
              'API_BAD_REQUEST',
              `querystring/${name} must be a whole number in decimal digits`,
            );
          }
        }
      }
    });
    // A body nested deeper than MAX_BODY_DEPTH is refused before a route reads it: a quote's `plan` nested
    // 5,000 objects deep (60 KB) overflowed the stack of the JSON.stringify that compiles it (500).
    api.addHook('preValidation', async (req) => {
      if (req.body !== null && typeof req.body === 'object') checkDepth(req.body);
    });
    api.get(
      '/healthz',
      {
        schema: {
          tags: ['ops'],
          response: { 200: { type: 'object', properties: { status: { type: 'string' } } } },
        },
      },
      async () => ({
        status: 'ok',
      }),
    );

    api.get('/readyz', { schema: { tags: ['ops'] } }, async (_req, reply) => {
      const checks = await deps.readiness();
      const ready = checks.every((c) => c.ok);
      return reply.code(ready ? 200 : 503).send({ status: ready ? 'ready' : 'not_ready', checks });
    });

    api.get('/metrics', { schema: { tags: ['ops'] } }, async (_req, reply) => {
      const m = await deps.metrics();
      return reply.type(m.contentType).send(m.body);
    });

    if (full) {
      registerEnforcementAdmin(api, keyring, deps.admin);
      registerAnalytics(api, keyring, deps.analytics);
      registerBilling(api, keyring, deps.analytics);
      registerCredits(api, keyring, deps.credits, deps.analytics);
      registerDashboard(api);
    }
  });
  return app;
}

/** Objects and arrays one request body may nest: the deepest body a route documents nests 6. */
export const MAX_BODY_DEPTH = 64;

function checkDepth(body: object): void {
  const stack: [unknown, number][] = [[body, 1]];
  while (stack.length > 0) {
    const [v, depth] = stack.pop() as [unknown, number];
    if (depth > MAX_BODY_DEPTH) {
      throw new ApiError(
        'API_BAD_REQUEST',
        `the body nests objects and arrays deeper than ${MAX_BODY_DEPTH}`,
      );
    }
    for (const child of Object.values(v as object)) {
      if (child !== null && typeof child === 'object') stack.push([child, depth + 1]);
    }
  }
}

/**
 * Refuses a request target whose query has a malformed percent-escape (`%FF%FE`, half a surrogate's UTF-8):
 * the query parser keeps such text as it is, so `customer=%FF%FE` named a customer `%FF%FE` instead of being
 * refused.
 */
function checkPercentEscapes(url: string): void {
  const q = url.indexOf('?');
  if (q < 0 || !url.includes('%', q)) return;
  for (const part of url.slice(q + 1).split('&')) {
    try {
      decodeURIComponent(part.replaceAll('+', ' '));
    } catch {
      throw new ApiError('API_BAD_REQUEST', 'the query has a malformed percent-escape');
    }
  }
}

const ajvCompilers = AjvCompiler();
/**
 * fastify's validators, but request bodies are validated as sent: JSON has types of its own, and ajv's
 * coercion read a quote's `"0x10"` GB-seconds as 16, `"1e3"` as 1000, `calls: true` as 1 and `[3]` as 3 —
 * values a span's usage attributes are refused for. Query and path parameters are text and keep the
 * coercion (their whole numbers are checked for decimal digits first).
 */
function bodiesAsSent(
  externalSchemas: Parameters<ReturnType<typeof AjvCompiler>>[0],
  options: Parameters<ReturnType<typeof AjvCompiler>>[1],
): ReturnType<ReturnType<typeof AjvCompiler>> {
  const coercing = ajvCompilers(externalSchemas, options);
  const asSent = ajvCompilers(externalSchemas, {
    ...options,
    customOptions: { ...options?.customOptions, coerceTypes: false },
  } as typeof options);
  return (route) => (route.httpPart === 'body' ? asSent(route) : coercing(route));
}

/**
 * ajv's message for an unknown parameter or body field ("querystring must NOT have additional properties")
 * does not say which one; the docs promise a message that names it (a misspelt `customr=acme`).
 */
function validationMessage(message: string, validation: unknown): string {
  const first = Array.isArray(validation)
    ? (validation[0] as { keyword?: unknown; params?: unknown })
    : undefined;
  const extra = (first?.params as { additionalProperty?: unknown } | undefined)?.additionalProperty;
  return first?.keyword === 'additionalProperties' && typeof extra === 'string'
    ? `${message}: ${extra}`
    : message;
}
