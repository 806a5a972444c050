import { createHash } from 'node:crypto';
import type { ClickHouseClient } from '@clickhouse/client';
import pino from 'pino';
import { buildApi } from '../../src/index.js';

/**
 * The API alone over a ClickHouse client (no Tollgate process around it), with one finance key of one product
 * and no plans: for tests that seed tables directly and compare the views' answers (`views`) with the raw
 * table's (`raw`).
 */
export function financeApi(client: ClickHouseClient, key: string, product: string, source: 'views' | 'raw') {
  return buildApi({
    log: pino({ level: 'silent' }),
    readiness: async () => [],
    metrics: async () => ({ contentType: 'text/plain', body: '' }),
    apiKeys: [
      {
        name: 'finance',
        sha256: createHash('sha256').update(key).digest('hex'),
        role: 'finance',
        products: [product],
      },
    ],
    analytics: {
      clickhouse: client,
      traceLinkTemplate: 'http://localhost:16686/trace/{traceId}',
      pricing: {
        currency: () => 'USD',
        planFor: () => undefined,
        quote: () => {
          throw new Error('not used');
        },
      },
      source,
    },
  });
}
