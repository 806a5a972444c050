#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { formatNano } from '@tollgate/contracts';
import { startTollgate, type Tollgate } from '../app.js';
import { ConfigError, loadConfig, SETTINGS, settingsTableMarkdown, splitArgs } from '../config/settings.js';
import { runWorkload } from '../demo/workload.js';
import { loadPlanBook, PlanFileError } from '../plans/load.js';
import { sha256Hex } from '../receiver/ingest-keys.js';
import { openClickHouse } from '../storage/clickhouse.js';

const USAGE = `tollgate — meter, price and enforce MCP tool calls

Usage:
  tollgate start [options]          run the OTLP receiver and the HTTP API (embedded defaults)
  tollgate demo [--calls N] [options]
                                    start, send a demo workload through the real OTel SDK, print the bill
  tollgate check-plans <file>       validate a rate-plan file and list every problem
  tollgate hash-key <token>         print the SHA-256 to put in the config for an ingest or API key
  tollgate sql "<query>" [options]  run a read query against Tollgate's ClickHouse (stop the server first
                                    when it uses embedded chDB: one process per data directory)
  tollgate config [--doc]           print the effective settings (or the settings table as Markdown)
  tollgate admin states [--customer C]
  tollgate admin lift|kill --customer C [--scope customer|agent|session|tool --id ID] [--note TEXT]
                                    enforcement state through the HTTP API (admin key in TOLLGATE_API_KEY
                                    or --api-key; API at --api-url, default http://127.0.0.1:8080;
                                    --product when the key has several)

Options: every setting has a flag; see \`tollgate config --doc\` or docs/configuration.md.
  --config <file>                   config file (settings, ingest keys, API keys)
`;

function fail(message: string, code = 2): never {
  process.stderr.write(`tollgate: ${message}\n`);
  process.exit(code);
}

function onSignals(tg: Tollgate): void {
  let signals = 0;
  const handler = (sig: string) => {
    signals++;
    if (signals > 1) process.exit(130);
    tg.log.info({ signal: sig }, 'signal received');
    tg.stop().then(
      () => process.exit(0),
      (err) => {
        tg.log.error({ err }, 'shutdown failed');
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', () => handler('SIGINT'));
  process.on('SIGTERM', () => handler('SIGTERM'));
}

async function cmdStart(flags: Record<string, string>): Promise<void> {
  const tg = await startTollgate(loadConfig(flags));
  onSignals(tg);
  process.stderr.write(
    `tollgate ${tg.instanceId} ready — OTLP ${tg.otlpUrl ?? '(off)'}/v1/traces, API ${tg.apiUrl ?? '(off)'}\n`,
  );
}

function pad(s: string, n: number, right = false): string {
  return right ? s.padStart(n) : s.padEnd(n);
}

async function cmdDemo(flags: Record<string, string>): Promise<void> {
  const calls = Number(flags['--calls'] ?? 5000);
  delete flags['--calls'];
  const keep = flags['--keep-running'] === 'true';
  delete flags['--keep-running'];
  if (!Number.isSafeInteger(calls) || calls <= 0) fail('--calls must be a positive whole number');
  const tg = await startTollgate(loadConfig({ '--log-level': 'warn', ...flags }));
  onSignals(tg);
  const out = process.stdout;
  out.write(`Tollgate started: OTLP ${tg.otlpUrl}/v1/traces, API ${tg.apiUrl}\n`);
  out.write(`Sending ${calls} MCP tool-call spans through the OpenTelemetry JS SDK (OTLP/HTTP protobuf)…\n`);
  const started = Date.now();
  await runWorkload({
    otlpUrl: tg.otlpUrl as string,
    ingestKey: 'tg_dev_ingest_demo',
    calls,
    onProgress: (n) => out.write(`  exported ${n}/${calls}\r`),
  });
  await tg.lander?.idle(120_000);
  out.write(`\nExported and landed in ${((Date.now() - started) / 1000).toFixed(1)} s.\n\n`);

  const rows = await (
    await tg.clickhouse.client.query({
      query: `SELECT customer, count() AS calls, countIf(status = 'error') AS errors, countIf(decision = 'free') AS free,
                     sum(price_nano) AS revenue, sum(cost_nano) AS cost, any(currency) AS currency
              FROM mcp_tool_calls GROUP BY customer ORDER BY customer`,
      format: 'JSONEachRow',
    })
  ).json<{
    customer: string;
    calls: string;
    errors: string;
    free: string;
    revenue: string;
    cost: string;
    currency: string;
  }>();
  const margin = (rev: bigint, cost: bigint) =>
    rev > 0n ? `${(Number(((rev - cost) * 10000n) / rev) / 100).toFixed(2)}%` : '—';
  out.write(
    `${pad('customer', 12)}${pad('calls', 8, true)}${pad('errors', 8, true)}${pad('free', 6, true)}${pad('revenue', 16, true)}${pad('cost', 16, true)}${pad('margin', 10, true)}\n`,
  );
  let totRev = 0n;
  let totCost = 0n;
  let totCalls = 0;
  for (const r of rows) {
    const rev = BigInt(r.revenue);
    const cost = BigInt(r.cost);
    totRev += rev;
    totCost += cost;
    totCalls += Number(r.calls);
    out.write(
      `${pad(r.customer, 12)}${pad(r.calls, 8, true)}${pad(r.errors, 8, true)}${pad(r.free, 6, true)}${pad(`${formatNano(rev, 4)} ${r.currency}`, 16, true)}${pad(`${formatNano(cost, 4)} ${r.currency}`, 16, true)}${pad(margin(rev, cost), 10, true)}\n`,
    );
  }
  out.write(
    `${pad('total', 12)}${pad(String(totCalls), 8, true)}${pad('', 14)}${pad(formatNano(totRev, 4), 16, true)}${pad(formatNano(totCost, 4), 16, true)}${pad(margin(totRev, totCost), 10, true)}\n\n`,
  );
  out.write(
    `Every row above is in ClickHouse table mcp_tool_calls (views mcp_daily_stats, mcp_session_summary).\n`,
  );
  out.write(`Metrics: ${tg.apiUrl}/metrics   Readiness: ${tg.apiUrl}/readyz\n`);
  if (keep) {
    out.write('Still running (Ctrl-C to stop).\n');
    return;
  }
  await tg.stop();
}

async function cmdSql(flags: Record<string, string>, sql: string | undefined): Promise<void> {
  if (!sql) fail('usage: tollgate sql "<query>"');
  const config = loadConfig(flags);
  const s = config.settings;
  const ch = openClickHouse({
    url: String(s['clickhouse.url']),
    dataDir: String(s.dataDir),
    database: String(s['clickhouse.database']),
    username: String(s['clickhouse.username']),
    password: String(s['clickhouse.password']),
  });
  try {
    const rs = await ch.client.query({
      query: sql,
      format: 'JSONEachRow',
      clickhouse_settings: { readonly: '1' },
    });
    process.stdout.write(`${JSON.stringify(await rs.json())}\n`);
  } finally {
    await ch.close();
  }
}

async function cmdAdmin(flags: Record<string, string>, verb: string | undefined): Promise<void> {
  const apiUrl = flags['--api-url'] ?? process.env.TOLLGATE_API_URL ?? 'http://127.0.0.1:8080';
  const key = flags['--api-key'] ?? process.env.TOLLGATE_API_KEY;
  if (!key) fail('an admin API key is needed: --api-key or TOLLGATE_API_KEY');
  const headers = { authorization: `Bearer ${key}`, 'content-type': 'application/json' };
  let res: Response;
  if (verb === 'states') {
    const q = new URLSearchParams();
    if (flags['--product']) q.set('product', flags['--product']);
    if (flags['--customer']) q.set('customer', flags['--customer']);
    res = await fetch(`${apiUrl}/admin/enforcement/states?${q}`, { headers });
  } else if (verb === 'lift' || verb === 'kill') {
    if (!flags['--customer'])
      fail(`usage: tollgate admin ${verb} --customer C [--scope S --id ID] [--note TEXT]`);
    const body: Record<string, string> = {
      customer: flags['--customer'],
      scope: flags['--scope'] ?? 'customer',
    };
    for (const f of ['product', 'id', 'note']) if (flags[`--${f}`]) body[f] = flags[`--${f}`] as string;
    res = await fetch(`${apiUrl}/admin/enforcement/${verb}`, {
      method: 'POST',
      headers,
      body: JSON.stringify(body),
    });
  } else {
    return fail('usage: tollgate admin states|lift|kill ...');
  }
  const text = await res.text();
  if (!res.ok) fail(`${res.status} ${text}`, 1);
  process.stdout.write(`${JSON.stringify(JSON.parse(text), null, 2)}\n`);
}

async function main(): Promise<void> {
  const { flags, positional } = splitArgs(process.argv.slice(2));
  const [cmd, arg] = positional;
  switch (cmd) {
    case 'start':
      return cmdStart(flags);
    case 'demo':
      return cmdDemo(flags);
    case 'hash-key':
      if (!arg) fail('usage: tollgate hash-key <token>');
      process.stdout.write(`${sha256Hex(arg)}\n`);
      return;
    case 'check-plans': {
      if (!arg) fail('usage: tollgate check-plans <file>');
      try {
        const book = loadPlanBook(readFileSync(arg, 'utf8'), arg);
        process.stdout.write(
          `${arg}: valid (version ${book.version}, products: ${book.products().join(', ')})\n`,
        );
      } catch (err) {
        if (err instanceof PlanFileError) fail(err.message, 1);
        throw err;
      }
      return;
    }
    case 'sql':
      return cmdSql(flags, arg);
    case 'admin':
      return cmdAdmin(flags, arg);
    case 'config': {
      if (flags['--doc']) {
        process.stdout.write(`${settingsTableMarkdown()}\n`);
        return;
      }
      const c = loadConfig(flags);
      const shown = Object.fromEntries(
        SETTINGS.map((spec) => [
          spec.key,
          (spec.key.includes('password') || spec.key.includes('headers')) && c.settings[spec.key]
            ? '[redacted]'
            : c.settings[spec.key],
        ]),
      );
      process.stdout.write(
        `${JSON.stringify({ configFile: c.configFile, settings: shown, ingestKeys: c.ingestKeys.map((k) => k.name), apiKeys: c.apiKeys.map((k) => k.name) }, null, 2)}\n`,
      );
      return;
    }
    case undefined:
    case 'help':
      process.stdout.write(USAGE);
      return;
    default:
      fail(`unknown command "${cmd}"\n\n${USAGE}`);
  }
}

main().catch((err) => {
  if (err instanceof ConfigError || err instanceof PlanFileError) fail(err.message, 2);
  process.stderr.write(`tollgate: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
