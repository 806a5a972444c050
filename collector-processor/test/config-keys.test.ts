import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../src/config/settings.js';
import { sha256Hex } from '../src/receiver/ingest-keys.js';
import { tempDir } from './support/harness.js';

/**
 * A key is looked up by its SHA-256, so two entries with one hash are one token with two meanings, and the
 * last one silently won: a copied entry whose hash was not changed re-bound a sender to another product
 * (its calls billed to another tenant), or turned a customer portal's token into an admin key.
 */

function load(yaml: string) {
  const file = join(tempDir(), 'tollgate.yaml');
  writeFileSync(file, yaml);
  return () => loadConfig({ '--config': file }, {});
}

const A = sha256Hex('tg_token_a');
const B = sha256Hex('tg_token_b');

describe('ingestKeys and apiKeys: one entry per key', () => {
  it('two ingest keys with one sha256 stop the start, naming both', () => {
    const f = load(`ingestKeys:
  - { name: weather-prod, sha256: ${A}, product: weather-mcp }
  - { name: billing-prod, sha256: ${A}, product: billing-mcp }
`);
    expect(f).toThrow(ConfigError);
    expect(f).toThrow(/ingestKeys billing-prod: the same sha256 as weather-prod/);
  });

  it('two API keys with one sha256 stop the start, naming both', () => {
    const f = load(`apiKeys:
  - { name: acme-portal, sha256: ${A}, role: customer, products: [weather-mcp], customer: acme }
  - { name: ops, sha256: ${A}, role: admin, products: [weather-mcp] }
`);
    expect(f).toThrow(ConfigError);
    expect(f).toThrow(/apiKeys ops: the same sha256 as acme-portal/);
  });

  it('distinct keys load, and one token may be both an ingest key and an API key', () => {
    const config = load(`ingestKeys:
  - { name: weather-prod, sha256: ${A}, product: weather-mcp }
  - { name: billing-prod, sha256: ${B}, product: billing-mcp }
apiKeys:
  - { name: ops, sha256: ${A}, role: admin, products: [weather-mcp] }
`)();
    expect(config.ingestKeys.map((k) => k.name)).toEqual(['weather-prod', 'billing-prod']);
    expect(config.apiKeys.map((k) => k.name)).toEqual(['ops']);
  });
});
