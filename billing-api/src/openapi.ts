import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { FastifyInstance } from 'fastify';

/**
 * The OpenAPI 3.1 document, generated from the route schemas (`GET /docs/json`, `/docs/yaml`), and a
 * Swagger UI page at `/docs` (its assets come from node_modules, no CDN). Registered before the routes,
 * so every route declared afterwards is in the document.
 */
export function registerOpenApi(app: FastifyInstance): void {
  app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Tollgate billing API',
        version: '0.1.0',
        description:
          'Analytics, invoice previews and plan quotes for metered MCP tool calls. Money is exact: every ' +
          'amount is given as `<name>Nano` (integer nano-units of the currency, as a string) and `<name>` ' +
          '(the same amount as a decimal string in currency units). Lists answer CSV with `format=csv` or ' +
          '`Accept: text/csv`. See docs/api.md.',
      },
      components: {
        securitySchemes: {
          apiKey: { type: 'http', scheme: 'bearer', description: 'an API key from the config (`apiKeys`)' },
        },
      },
      tags: [
        { name: 'analytics', description: 'calls, revenue, cost and margin from the materialized views' },
        { name: 'billing', description: 'invoice preview and plan quotes' },
        { name: 'admin', description: 'enforcement state and operator actions (admin keys)' },
        { name: 'access', description: 'the key in use' },
        { name: 'ops', description: 'health, readiness, metrics' },
      ],
    },
  });
  app.register(swaggerUi, { routePrefix: '/docs', staticCSP: true });
}
