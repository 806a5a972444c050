import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { AnalyticsDeps } from '@tollgate/billing-api';
import { PlanPricing } from '../../src/api-ports.js';
import { type Config, loadConfig } from '../../src/config/settings.js';
import { sha256Hex } from '../../src/receiver/ingest-keys.js';
import { type StripeGateway, sdkGateway } from '../../src/stripe/gateway.js';
import type { FakeStripe } from './fake-stripe.js';
import { DEV_INGEST_KEY, startTestTollgate, type TestTollgate, tempDir } from './harness.js';
import { exportOf } from './otlp-json.js';

/**
 * The plan file of the prepaid-credit sync tests: product `demo-mcp`, one plan priced per call and per token
 * (the same prices as stripe-sync.test.ts), no margin guard, and `walletCustomers` whose wallets pay without
 * a hard stop (their calls go on into the overdraft bucket).
 */
export function walletPlans(
  walletCustomers: readonly string[],
  { cost = false, others = [] as string[] } = {},
) {
  return `
currency: USD
products:
  demo-mcp:
    defaultPlan: std
    plans:
      std:
        tools:
          "*":
            price: { perCall: "0.0043", perInputToken: "0.0000013", perOutputToken: "0.0000021" }
${cost ? '            cost: { perCall: "0.001" }\n' : ''}        marginGuard: { enabled: false }
    customers:
${walletCustomers.map((c) => `      ${c}: { overrides: { credits: { hardStop: false } } }\n`).join('')}${others
  .map((c) => `      ${c}: {}\n`)
  .join('')}`;
}

/** The admin and finance API keys of the credit sync tests (`extra`: more admin keys by name). */
export function creditApiKeys(keys: { admin: string; finance: string }, extra: Record<string, string> = {}) {
  return `apiKeys:
  - { name: ops, sha256: ${sha256Hex(keys.admin)}, role: admin, products: [demo-mcp] }
  - { name: finance, sha256: ${sha256Hex(keys.finance)}, role: finance, products: [demo-mcp] }
${Object.entries(extra)
  .map(
    ([name, key]) => `  - { name: ${name}, sha256: ${sha256Hex(key)}, role: admin, products: [demo-mcp] }\n`,
  )
  .join('')}`;
}

/**
 * What the Stripe sync tests share: a running Tollgate (product `demo-mcp`, old spans accepted) whose
 * usage they send as OTLP spans, the analytics deps the sync reads, a config file with a `stripe:` mapping
 * pointed at a fake Stripe, and a fresh data directory per scenario (its own ledger).
 */
export interface StripeTestbed {
  tg: TestTollgate;
  dir: string;
  configFile: string;
  deps: AnalyticsDeps;
  /** The config with `mapping` (a `stripe:` section), the SDK pointed at `fake`, and its secret key. */
  configFor(fake: FakeStripe, mapping: string): Config;
  /** Exports spans to the receiver; throws on any rejected span; waits until they are landed. */
  send(spans: unknown[]): Promise<void>;
  /** A fresh data directory for the ledger of one scenario (the usage stays in the running Tollgate). */
  ledgerDir(): string;
}

/** `extraConfig`: more of the config file (e.g. an `apiKeys:` section), kept when `configFor` adds a mapping. */
export async function startStripeTestbed(
  prefix: string,
  plans: string,
  extraConfig = '',
): Promise<StripeTestbed> {
  const dir = tempDir(prefix);
  const configFile = join(dir, 'tollgate.yaml');
  const keys = `ingestKeys:\n  - { name: dev, sha256: ${sha256Hex(DEV_INGEST_KEY)}, product: demo-mcp }\n${extraConfig}`;
  writeFileSync(configFile, keys);
  const tg = await startTestTollgate(
    { '--data-dir': dir, '--config': configFile, '--max-span-age-hours': String(24 * 3650) },
    plans,
  );
  return {
    tg,
    dir,
    configFile,
    deps: {
      clickhouse: tg.clickhouse.client,
      traceLinkTemplate: '',
      pricing: new PlanPricing(tg.plans as NonNullable<TestTollgate['plans']>),
    },
    configFor(fake, mapping) {
      writeFileSync(configFile, `${keys}${mapping}`);
      return loadConfig(
        {
          '--config': configFile,
          '--stripe-host': fake.host,
          '--stripe-port': String(fake.port),
          '--stripe-protocol': 'http',
          '--data-dir': dir,
        },
        { STRIPE_SECRET_KEY: fake.secretKey },
      );
    },
    async send(spans) {
      const res = await fetch(`${tg.otlpUrl}/v1/traces`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
        body: JSON.stringify(exportOf(spans)),
      });
      const text = await res.text();
      if (res.status !== 200 || text.includes('rejected')) throw new Error(`export: ${res.status} ${text}`);
      await tg.lander?.idle();
    },
    ledgerDir() {
      const d = join(dir, `run-${Math.random().toString(36).slice(2)}`);
      mkdirSync(d);
      return d;
    },
  };
}

/**
 * The SDK gateway to `fake`, whose `n`-th `method` call (an invoice item or a meter event) dies before it
 * leaves or after Stripe took it — either way the ledger has an intent and no outcome.
 */
export function gatewayDying(
  fake: FakeStripe,
  method: 'createInvoiceItem' | 'createMeterEvent',
  n: number,
  when: 'before' | 'after',
): StripeGateway {
  const real = sdkGateway({ secretKey: fake.secretKey, host: fake.host, port: fake.port, protocol: 'http' });
  let calls = 0;
  const dying = async <T>(send: () => Promise<T>): Promise<T> => {
    const dies = ++calls === n;
    if (dies && when === 'before') throw new Error('killed before sending');
    const r = await send();
    if (dies) throw new Error('power cut'); // Stripe has it; the ledger does not
    return r;
  };
  return method === 'createInvoiceItem'
    ? { ...real, createInvoiceItem: (p, key) => dying(() => real.createInvoiceItem(p, key)) }
    : { ...real, createMeterEvent: (p, key) => dying(() => real.createMeterEvent(p, key)) };
}
