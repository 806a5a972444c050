import Fastify, { type FastifyBaseLogger, type FastifyInstance, LogController } from 'fastify';
import { type EnforcementAdminPort, registerEnforcementAdmin } from './admin.js';
import { type ApiKeyConfig, ApiKeyring } from './auth.js';
import { API_ERRORS, ApiError } from './errors.js';

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
  /** `ops`: health, readiness and metrics only (a processor-only process); `all`: every route. */
  routes?: 'ops' | 'all';
}

/**
 * The HTTP API: health, readiness, Prometheus metrics, enforcement admin (and analytics).
 * Built separately from listen() so routes are tested with inject().
 */
export function buildApi(deps: ApiDeps): FastifyInstance {
  const app = Fastify({
    loggerInstance: deps.log,
    logController: new LogController({ disableRequestLogging: true }),
  });
  const keyring = new ApiKeyring(deps.apiKeys);

  app.setErrorHandler((error: Error & { statusCode?: number; validation?: unknown }, req, reply) => {
    if (error instanceof ApiError) {
      return reply.code(error.status).send({ error: { code: error.code, message: error.message } });
    }
    if (error.validation) {
      return reply.code(400).send({ error: { code: 'API_BAD_REQUEST', message: error.message } });
    }
    if (error.statusCode && error.statusCode < 500) {
      return reply
        .code(error.statusCode)
        .send({ error: { code: 'API_BAD_REQUEST', message: error.message } });
    }
    req.log.error({ err: error }, 'unexpected API error');
    return reply.code(500).send({ error: { code: 'API_INTERNAL', message: 'internal error' } });
  });
  app.setNotFoundHandler((req, reply) =>
    reply.code(404).send({
      error: {
        code: 'API_NOT_FOUND',
        message: `${API_ERRORS.API_NOT_FOUND.message}: ${req.method} ${req.url}`,
      },
    }),
  );

  app.get(
    '/healthz',
    { schema: { response: { 200: { type: 'object', properties: { status: { type: 'string' } } } } } },
    async () => ({
      status: 'ok',
    }),
  );

  app.get('/readyz', async (_req, reply) => {
    const checks = await deps.readiness();
    const ready = checks.every((c) => c.ok);
    return reply.code(ready ? 200 : 503).send({ status: ready ? 'ready' : 'not_ready', checks });
  });

  app.get('/metrics', async (_req, reply) => {
    const m = await deps.metrics();
    return reply.type(m.contentType).send(m.body);
  });

  if (deps.routes !== 'ops') registerEnforcementAdmin(app, keyring, deps.admin);
  return app;
}
