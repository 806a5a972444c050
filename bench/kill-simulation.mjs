// The "heartbeat kill signal" scenario: an agent calls a tool at 8 calls/s against a spend budget; its
// spans are exported every `interval` ms (and an empty export is a heartbeat); the agent stops when an
// export response carries a kill for its customer. We count the calls and money that pass the limit
// before the kill lands. Usage: node bench/kill-simulation.mjs  (after npm run build)
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DEV_INGEST_KEY, startTollgate, table, writeResult } from './lib.mjs';

const PRICE_NANO = 10_000_000n; // 0.01 per call
const BUDGET = '0.50'; // 50 calls
const RATE = 8; // calls per second

export async function simulate(otlpUrl, { customer, intervalMs, rate = RATE, maxSeconds = 30 }) {
  let buffer = [];
  let calls = 0;
  let killedAt = null;
  let crossedAt = null;
  const started = Date.now();
  const span = () => {
    const start = BigInt(Date.now()) * 1_000_000n;
    return {
      traceId: randomBytes(16).toString('hex'),
      spanId: randomBytes(8).toString('hex'),
      name: 'tools/call search',
      kind: 2,
      startTimeUnixNano: String(start),
      endTimeUnixNano: String(start + 5_000_000n),
      attributes: [
        { key: 'mcp.method.name', value: { stringValue: 'tools/call' } },
        { key: 'gen_ai.tool.name', value: { stringValue: 'search' } },
        { key: 'tollgate.customer.id', value: { stringValue: customer } },
        { key: 'mcp.session.id', value: { stringValue: `${customer}-session` } },
      ],
    };
  };
  const exportNow = async () => {
    const spans = buffer;
    buffer = [];
    const res = await fetch(`${otlpUrl}/v1/traces`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
      body: JSON.stringify({
        resourceSpans: [
          {
            resource: {
              attributes: [{ key: 'service.instance.id', value: { stringValue: `sim-${customer}` } }],
            },
            scopeSpans: [{ spans }],
          },
        ],
      }),
    });
    const body = await res.json();
    const kill = (body.tollgate?.directives ?? []).find(
      (d) => d.action === 'kill' && d.customer === customer,
    );
    if (kill && killedAt === null) killedAt = calls;
  };
  const exporter = setInterval(() => void exportNow(), intervalMs);
  try {
    while (killedAt === null && Date.now() - started < maxSeconds * 1000) {
      calls++;
      buffer.push(span());
      if (crossedAt === null && BigInt(calls) * PRICE_NANO > 500_000_000n) crossedAt = calls;
      await new Promise((r) => setTimeout(r, 1000 / rate));
    }
  } finally {
    clearInterval(exporter);
  }
  const overCalls = killedAt === null ? null : killedAt - (crossedAt - 1);
  return {
    intervalMs,
    calls: killedAt,
    crossedAt,
    overCalls,
    overNano: overCalls === null ? null : BigInt(overCalls) * PRICE_NANO,
  };
}

const PLANS = `currency: USD
products:
  demo-mcp:
    defaultPlan: p
    plans:
      p:
        tools: { "*": { price: { perCall: "0.01" }, cost: { perCall: "0.001" } } }
        limits: { spendPerPeriod: "${BUDGET}" }
`;

if (import.meta.url === `file://${process.argv[1]}`) {
  const dir = mkdtempSync(join(tmpdir(), 'tollgate-sim-'));
  writeFileSync(join(dir, 'plans.yaml'), PLANS);
  const tg = await startTollgate(['--plans', join(dir, 'plans.yaml')]);
  const rows = [
    [
      'export interval',
      'calls made',
      'limit crossed at call',
      'calls over the limit',
      'money over the limit',
      'calls per interval',
    ],
  ];
  const results = [];
  try {
    for (const intervalMs of [250, 1000, 2000, 5000]) {
      const r = await simulate(tg.otlpUrl, { customer: `sim-${intervalMs}`, intervalMs });
      results.push({ ...r, overNano: String(r.overNano) });
      rows.push([
        `${intervalMs} ms`,
        r.calls,
        r.crossedAt,
        r.overCalls,
        `${Number(r.overNano) / 1e9} USD`,
        ((intervalMs / 1000) * RATE).toFixed(0),
      ]);
    }
  } finally {
    await tg.stop();
  }
  console.log(
    `\nKill latency: agent at ${RATE} calls/s, 0.01 USD per call, budget ${BUDGET} USD (SDK not enforcing locally)`,
  );
  console.log(table(rows));
  writeResult('kill-simulation', { at: new Date().toISOString(), rate: RATE, budget: BUDGET, results });
}
