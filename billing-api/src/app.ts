import Fastify, { type FastifyBaseLogger, type FastifyInstance, LogController } from 'fastify';

export interface ReadinessCheck {
  name: string;
  ok: boolean;
  detail?: string;
}

export interface ApiDeps {
  log: FastifyBaseLogger;
  /** Readiness of the parts this process runs (ClickHouse, Redis, plans, landing backlog). */
  readiness: () => Promise<ReadinessCheck[]>;
  /** Prometheus exposition of the process metrics. */
  metrics: () => Promise<{ contentType: string; body: string }>;
}

/**
 * The HTTP API: health, readiness, Prometheus metrics (and, in later parts, analytics and admin).
 * Built separately from listen() so routes are tested with inject().
 */
export function buildApi(deps: ApiDeps): FastifyInstance {
  const app = Fastify({
    loggerInstance: deps.log,
    logController: new LogController({ disableRequestLogging: true }),
  });

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

  return app;
}
