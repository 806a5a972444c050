import type { Directive } from '@tollgate/contracts';
import { DIRECTIVE_SCOPES } from '@tollgate/contracts';
import type { FastifyInstance } from 'fastify';
import { type ApiKeyring, requireRole, scopeFor } from './auth.js';
import { ApiError } from './errors.js';
import { identifier, querystring, responses } from './schemas.js';

/** What the processor provides for operator actions on enforcement state (audited by the implementation). */
export interface EnforcementAdminPort {
  states(product: string, customer?: string): Promise<Directive[]>;
  lift(a: OperatorAction): Promise<Directive>;
  kill(a: OperatorAction): Promise<Directive>;
}

export interface OperatorAction {
  product: string;
  customer: string;
  scope: (typeof DIRECTIVE_SCOPES)[number];
  id?: string | undefined;
  actor: string;
  note?: string | undefined;
}

const directiveSchema = {
  type: 'object',
  properties: {
    action: { type: 'string' },
    scope: { type: 'string' },
    id: { type: 'string' },
    customer: { type: 'string' },
    reason: { type: 'string' },
    marginBps: { type: 'integer' },
    ratePerSecond: { type: 'number' },
    untilUnixMs: { type: 'integer' },
  },
} as const;

const actionBody = {
  type: 'object',
  required: ['customer', 'scope'],
  additionalProperties: false,
  properties: {
    product: identifier,
    customer: identifier,
    scope: { type: 'string', enum: [...DIRECTIVE_SCOPES] },
    id: identifier,
    note: { type: 'string', maxLength: 1000 },
  },
} as const;

interface ActionBody {
  product?: string;
  customer: string;
  scope: OperatorAction['scope'];
  id?: string;
  note?: string;
}

/** Admin routes for enforcement: see who is killed or throttled, lift, kill. Admin keys only. */
export function registerEnforcementAdmin(
  app: FastifyInstance,
  keyring: ApiKeyring,
  admin: EnforcementAdminPort | undefined,
): void {
  const port = () => {
    if (!admin) throw new ApiError('API_UNAVAILABLE', 'enforcement is not enabled in this process');
    return admin;
  };

  app.get<{ Querystring: { product?: string; customer?: string } }>(
    '/admin/enforcement/states',
    {
      schema: {
        tags: ['admin'],
        summary: 'Enforcement states in force (kills, throttles, warns, lifts) of the key’s product',
        security: [{ apiKey: [] }],
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { product: identifier, customer: identifier },
        },
        response: responses(
          { type: 'object', properties: { states: { type: 'array', items: directiveSchema } } },
          false,
        ),
      },
    },
    async (req) => {
      const principal = keyring.authenticate(req);
      requireRole(principal, 'admin', 'finance');
      const scope = scopeFor(principal, req.query);
      return { states: await port().states(scope.product, scope.customer) };
    },
  );

  for (const verb of ['lift', 'kill'] as const) {
    app.post<{ Body: ActionBody }>(
      `/admin/enforcement/${verb}`,
      {
        schema: {
          tags: ['admin'],
          summary: `${verb === 'lift' ? 'Lift a kill or throttle' : 'Kill'} a customer, agent, session or tool (admin keys, audited)`,
          security: [{ apiKey: [] }],
          // Everything is in the body: `?customer=…` on the URL must not look honoured.
          querystring: querystring([]),
          body: actionBody,
          response: responses({ type: 'object', properties: { directive: directiveSchema } }, false),
        },
      },
      async (req) => {
        const principal = keyring.authenticate(req);
        requireRole(principal, 'admin');
        const { product } = scopeFor(principal, { product: req.body.product });
        if (req.body.scope !== 'customer' && !req.body.id)
          throw new ApiError('API_BAD_REQUEST', `scope ${req.body.scope} needs an id`);
        // the customer is the subject of a customer-scoped action: an id beside it would be silently dropped
        if (req.body.scope === 'customer' && req.body.id !== undefined)
          throw new ApiError('API_BAD_REQUEST', 'scope customer takes no id (the customer is the subject)');
        const action: OperatorAction = {
          product,
          customer: req.body.customer,
          scope: req.body.scope,
          id: req.body.id,
          actor: principal.name,
          note: req.body.note,
        };
        return { directive: await (verb === 'lift' ? port().lift(action) : port().kill(action)) };
      },
    );
  }
}
