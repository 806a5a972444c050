import { createHash } from 'node:crypto';
import type { FastifyRequest } from 'fastify';
import { ApiError } from './errors.js';

export type Role = 'admin' | 'finance' | 'customer';

/** An API key as configured: only its SHA-256 is stored. */
export interface ApiKeyConfig {
  name: string;
  sha256: string;
  role: Role;
  /** Products (tenants) the key may read. */
  products: readonly string[];
  /** Role `customer`: the only customer the key may see. */
  customer?: string | undefined;
}

export interface Principal {
  name: string;
  role: Role;
  products: readonly string[];
  customer: string | undefined;
}

declare module 'fastify' {
  interface FastifyRequest {
    principal?: Principal;
  }
}

export class ApiKeyring {
  private readonly byHash: Map<string, Principal>;
  constructor(keys: readonly ApiKeyConfig[]) {
    this.byHash = new Map(
      keys.map((k) => [k.sha256, { name: k.name, role: k.role, products: k.products, customer: k.customer }]),
    );
  }

  /**
   * `Authorization: Bearer <key>` → the key's principal (remembered on the request: the app's onRequest hook
   * authenticates first, so a request without a valid key is a 401 before its body or parameters are read).
   */
  authenticate(req: FastifyRequest): Principal {
    if (req.principal) return req.principal;
    const m = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '');
    const principal = m
      ? this.byHash.get(
          createHash('sha256')
            .update(m[1] as string)
            .digest('hex'),
        )
      : undefined;
    if (!principal) throw new ApiError('API_UNAUTHORIZED');
    req.principal = principal;
    return principal;
  }
}

export interface Scope {
  product: string;
  /** Undefined: all customers of the product (admin and finance only). */
  customer: string | undefined;
}

/**
 * The data a request may touch: the product must be one of the key's, and a customer key sees only its
 * own customer — asking for another one (through any parameter) is a 403, never an empty answer.
 */
export function scopeFor(
  principal: Principal,
  requested: { product?: string | undefined; customer?: string | undefined },
): Scope {
  const product = requested.product ?? (principal.products.length === 1 ? principal.products[0] : undefined);
  if (!product) throw new ApiError('API_BAD_REQUEST', 'product is required for a key with several products');
  if (!principal.products.includes(product)) throw new ApiError('API_FORBIDDEN', `product ${product}`);
  if (principal.role === 'customer') {
    if (requested.customer !== undefined && requested.customer !== principal.customer) {
      throw new ApiError('API_FORBIDDEN', `customer ${requested.customer}`);
    }
    return { product, customer: principal.customer };
  }
  return { product, customer: requested.customer };
}

export function requireRole(principal: Principal, ...roles: Role[]): void {
  if (!roles.includes(principal.role)) throw new ApiError('API_FORBIDDEN', `role ${principal.role}`);
}
