import { createHash } from 'node:crypto';
import type { IngestKeyConfig } from '../config/settings.js';

export function sha256Hex(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

export interface IngestIdentity {
  name: string;
  product: string;
  defaultCustomer: string | undefined;
  /** The one customer the key is bound to: calls naming another are rejected, leases for another refused. */
  customer: string | undefined;
}

/**
 * Ingest keys are stored as SHA-256 hashes only; a presented bearer token is hashed and looked up.
 * (Keys are high-entropy random tokens, so a fast hash is the right tool, as for API tokens generally.)
 */
export class IngestKeyring {
  private readonly byHash: Map<string, IngestIdentity>;
  constructor(keys: readonly IngestKeyConfig[]) {
    this.byHash = new Map(
      keys.map((k) => [
        k.sha256,
        {
          name: k.name,
          product: k.product,
          defaultCustomer: k.defaultCustomer ?? k.customer,
          customer: k.customer,
        },
      ]),
    );
  }
  /** The identity behind an `Authorization: Bearer <token>` header, or undefined. */
  authenticate(authorization: string | undefined): IngestIdentity | undefined {
    if (!authorization) return undefined;
    const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization);
    if (!m) return undefined;
    return this.byHash.get(sha256Hex(m[1] as string));
  }
}
