#!/usr/bin/env node
import { rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { formatNano } from '@tollgate/contracts';
import { PlanPricing } from '../api-ports.js';
import {
  clickhouseOptionsOf,
  createLogger,
  startTollgate,
  stopLeftoverPrivateRedis,
  type Tollgate,
} from '../app.js';
import {
  type Config,
  ConfigError,
  EMBEDDED_PLANS,
  loadConfig,
  SETTINGS,
  settingsTableMarkdown,
  splitArgs,
} from '../config/settings.js';
import { PlanFileError, readPlanBook } from '../plans/load.js';
import { sha256Hex } from '../receiver/ingest-keys.js';
import { type RunningRecord, runningProcess } from '../running.js';
import { migrate, openClickHouse } from '../storage/clickhouse.js';
import { StripeSyncError } from '../stripe/errors.js';
import { reportCsv, reportJson } from '../stripe/report.js';
import { sqlBusyMessage, startBusyMessage, stripeSyncBusyMessage } from './sql-busy.js';

/** The public development keys of the embedded configuration (loopback only). */
const DEV_INGEST_KEY = 'tg_dev_ingest_demo';
const DEV_ADMIN_KEY = 'tg_dev_admin';

const USAGE = `tollgate — meter, price and enforce MCP tool calls

Usage:
  tollgate start [options]          run the OTLP receiver and the HTTP API (embedded defaults)
  tollgate demo [--seconds S] [--exit] [options]
                                    the real demo: instrumented MCP servers (stdio and Streamable HTTP),
                                    agents calling their tools, live billing and enforcement, a summary;
                                    keeps serving the dashboard afterwards unless --exit
  tollgate demo --synthetic [--calls N]
                                    a synthetic load of tool-call spans from the OTel JS SDK instead
  tollgate check-plans <file>       validate a rate-plan file and list every problem
  tollgate hash-key <token>         print the SHA-256 to put in the config for an ingest or API key
  tollgate sql "<query>" [options]  run a read query against Tollgate's ClickHouse; with embedded chDB
                                    only while the server is stopped (one process per data directory):
                                    otherwise it names the running process and the API routes to ask
  tollgate config [--doc]           print the effective settings (or the settings table as Markdown)
  tollgate billing sync stripe [--period YYYY-MM[,YYYY-MM]] [--customer C[,C]] [--dry-run]
                               [--json] [--report-json FILE] [--report-csv FILE]
                               [--resolve KEY=sent|unsent[,…]]  (meter events left unsure)
                                    push rated usage to Stripe as the config's stripe: mapping says
                                    (secret key in STRIPE_SECRET_KEY); idempotent and resumable; prints
                                    the reconciliation report (docs/stripe.md). Stop the server first
                                    when it uses embedded chDB
  tollgate admin states [--customer C]
  tollgate admin lift|kill --customer C [--scope customer|agent|session|tool --id ID] [--note TEXT]
                                    enforcement state through the HTTP API (admin key in TOLLGATE_API_KEY
                                    or --api-key; API at --api-url, default http://127.0.0.1:8080;
                                    --product when the key has several)
  tollgate admin credits grant|top-up --customer C --amount 25.00 --currency USD
                  [--effective DATE] [--expires DATE] [--priority N] [--note TEXT] [--idempotency-key K]
  tollgate admin credits adjust --customer C --grant ID|overdraft --amount -2.50 --currency USD --note TEXT
                  [--idempotency-key K]
  tollgate admin credits balance [--customer C] [--format csv]
  tollgate admin credits ledger [--customer C] [--period YYYY-MM] [--format csv]
                                    prepaid credit wallets through the same API (docs/enforcement.md)

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

/**
 * When `err` is chDB refusing an embedded data directory another process has open ("Cannot lock file
 * …/status"), ends the command naming that process, in the command's own words (`busyMessage`).
 */
function failIfChdbBusy(
  config: Config,
  err: unknown,
  busyMessage: (chdbDir: string, running: RunningRecord | undefined) => string,
): void {
  if (config.settings['clickhouse.url'] || (err as Error | undefined)?.name !== 'ChdbConnectionError') return;
  const dataDir = resolve(String(config.settings.dataDir));
  fail(busyMessage(join(dataDir, 'chdb'), runningProcess(dataDir)), 1);
}

async function cmdStart(flags: Record<string, string>): Promise<void> {
  const config = loadConfig(flags);
  let tg: Tollgate;
  try {
    tg = await startTollgate(config);
  } catch (err) {
    failIfChdbBusy(config, err, startBusyMessage);
    throw err;
  }
  onSignals(tg);
  process.stderr.write(
    `tollgate ${tg.instanceId} ready — OTLP ${tg.otlpUrl ?? '(off)'}/v1/traces, ${grpcPart(tg)}API ${tg.apiUrl ?? '(off)'}\n`,
  );
}

/** `OTLP/gRPC host:port, ` when the gRPC receiver listens. */
function grpcPart(tg: Tollgate): string {
  return tg.otlpGrpcAddress ? `OTLP/gRPC ${tg.otlpGrpcAddress}, ` : '';
}

function pad(s: string, n: number, right = false): string {
  return right ? s.padStart(n) : s.padEnd(n);
}

/** The synthetic load of `tollgate demo --synthetic`: tool-call spans straight from the OTel JS SDK. */
async function syntheticDemo(tg: Tollgate, calls: number): Promise<void> {
  const out = process.stdout;
  out.write(`Sending ${calls} MCP tool-call spans through the OpenTelemetry JS SDK (OTLP/HTTP protobuf)…\n`);
  const started = Date.now();
  // loaded here, not at start: the OpenTelemetry SDK is the demo's, never `tollgate start`'s
  const { runWorkload } = await import('../demo/workload.js');
  await runWorkload({
    otlpUrl: tg.otlpUrl as string,
    ingestKey: DEV_INGEST_KEY,
    calls,
    onProgress: (n) => out.write(`  exported ${n}/${calls}\r`),
  });
  await tg.lander?.idle(120_000);
  out.write(`\nExported and landed in ${((Date.now() - started) / 1000).toFixed(1)} s.\n\n`);
  const rows = await customerTotals(tg);
  out.write(
    `${pad('customer', 12)}${pad('calls', 8, true)}${pad('revenue', 16, true)}${pad('cost', 16, true)}${pad('margin', 10, true)}\n`,
  );
  for (const r of rows) {
    const margin = r.marginBps === null ? '—' : `${(r.marginBps / 100).toFixed(2)}%`;
    out.write(
      `${pad(r.customer, 12)}${pad(String(r.calls), 8, true)}${pad(r.revenue, 16, true)}${pad(r.cost, 16, true)}${pad(margin, 10, true)}\n`,
    );
  }
}

/** Revenue, cost and margin per customer, from the raw table (exact decimals). */
async function customerTotals(tg: Tollgate) {
  const rows = await (
    await tg.clickhouse.client.query({
      query:
        'SELECT customer, count() AS calls, sum(price_nano) AS r, sum(cost_nano) AS c FROM mcp_tool_calls GROUP BY customer ORDER BY customer',
      format: 'JSONEachRow',
    })
  ).json<{ customer: string; calls: string; r: string; c: string }>();
  return rows.map((x) => {
    const r = BigInt(x.r);
    const c = BigInt(x.c);
    return {
      customer: x.customer,
      calls: Number(x.calls),
      revenue: formatNano(r, 4),
      cost: formatNano(c, 4),
      marginBps: r > 0n ? Number(((r - c) * 10000n) / r) : null,
    };
  });
}

async function cmdDemo(flags: Record<string, string>): Promise<void> {
  const take = (name: string) => {
    const v = flags[name];
    delete flags[name];
    return v;
  };
  const synthetic = take('--synthetic') === 'true';
  const calls = Number(take('--calls') ?? 5000);
  const seconds = Number(take('--seconds') ?? 25);
  const exit = take('--exit') === 'true';
  if (!Number.isSafeInteger(calls) || calls <= 0) fail('--calls must be a positive whole number');
  if (!Number.isFinite(seconds) || seconds <= 0) fail('--seconds must be a positive number');
  // The demo tells its story from a clean slate: its own data directory, emptied at each run.
  const dataDir = resolve(flags['--data-dir'] ?? '.tollgate-demo');
  const running = runningProcess(dataDir);
  if (running)
    fail(
      `${dataDir} is in use by a running Tollgate (pid ${running.pid}): stop it, or give the demo another --data-dir`,
      1,
    );
  // a demo killed hard left its private redis-server running; emptying the directory would orphan it
  // the flags are checked first: a mistyped one must not cost the last run's data
  const config = loadConfig({ '--log-level': 'warn', ...flags, '--data-dir': dataDir });
  await stopLeftoverPrivateRedis(dataDir);
  rmSync(dataDir, { recursive: true, force: true });
  const tg = await startTollgate(config);
  onSignals(tg);
  const out = process.stdout;
  out.write(
    `Tollgate started on the embedded defaults: OTLP ${tg.otlpUrl}/v1/traces, ${grpcPart(tg)}API ${tg.apiUrl}\n\n`,
  );
  if (synthetic) await syntheticDemo(tg, calls);
  else {
    // the MCP SDKs, the instrumentation and its OpenTelemetry SDK: loaded for the demo only
    const { runMcpDemo } = await import('@tollgate/instrumentation/demo');
    await runMcpDemo({
      otlpUrl: tg.otlpUrl as string,
      apiUrl: tg.apiUrl as string,
      ingestKey: DEV_INGEST_KEY,
      durationSeconds: seconds,
      totals: async () => {
        await tg.lander?.idle(60_000);
        return (await customerTotals(tg)).map(({ calls: _c, ...t }) => t);
      },
    });
  }
  if (exit) {
    // nothing is left serving: the calls stay in the data directory, readable once the demo has stopped
    await tg.stop();
    out.write(
      `\nThe demo's calls: npx tollgate sql --data-dir ${dataDir} "SELECT customer, count() FROM mcp_tool_calls GROUP BY customer"\n`,
    );
    return;
  }
  out.write(
    [
      '',
      `Dashboard:  ${tg.apiUrl}/dashboard   (API key: ${DEV_ADMIN_KEY} — the embedded development admin key)`,
      `API docs:   ${tg.apiUrl}/docs`,
      `Enforcement: TOLLGATE_API_KEY=${DEV_ADMIN_KEY} npx tollgate admin states --api-url ${tg.apiUrl}`,
      '',
    ].join('\n'),
  );
  out.write('Tollgate keeps running so you can look around; Ctrl-C to stop.\n');
}

/**
 * Tollgate's ClickHouse as the settings say (embedded chDB in the data directory, or a server). An embedded
 * directory a running Tollgate holds ends the command naming that process, in the command's own words.
 */
function clickhouseOf(
  config: Config,
  busyMessage: (chdbDir: string, running: RunningRecord | undefined) => string,
) {
  try {
    return openClickHouse(clickhouseOptionsOf(config, resolve(String(config.settings.dataDir))));
  } catch (err) {
    failIfChdbBusy(config, err, busyMessage);
    throw err;
  }
}

async function cmdSql(flags: Record<string, string>, sql: string | undefined): Promise<void> {
  if (!sql) fail('usage: tollgate sql "<query>"');
  const ch = clickhouseOf(loadConfig(flags), (dir, running) => sqlBusyMessage(dir, sql, running));
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

async function cmdBillingSync(flags: Record<string, string>, provider: string | undefined): Promise<void> {
  if (provider !== 'stripe') fail('usage: tollgate billing sync stripe [--period YYYY-MM] [--dry-run] ...');
  const take = (name: string) => {
    const v = flags[name];
    delete flags[name];
    return v;
  };
  const periods = take('--period')
    ?.split(',')
    .map((p) => p.trim());
  for (const p of periods ?? [])
    if (!/^\d{4}-(0[1-9]|1[0-2])$/.test(p)) fail(`--period: ${p} is not a billing period (YYYY-MM)`);
  const customers = take('--customer')
    ?.split(',')
    .map((c) => c.trim());
  const dryRun = take('--dry-run') === 'true';
  const asJson = take('--json') === 'true';
  const jsonFile = take('--report-json');
  const csvFile = take('--report-csv');
  const resolveArg = take('--resolve');
  const resolveKeys: Record<string, 'sent' | 'unsent'> = {};
  for (const pair of resolveArg?.split(',') ?? []) {
    const at = pair.lastIndexOf('=');
    const said = pair.slice(at + 1).trim();
    if (at < 1 || (said !== 'sent' && said !== 'unsent'))
      fail(`--resolve: ${pair} is not KEY=sent or KEY=unsent`);
    resolveKeys[pair.slice(0, at).trim()] = said as 'sent' | 'unsent';
  }
  const config = loadConfig(flags);
  // the Stripe SDK is loaded by the commands and the job that use it, not by every `tollgate` command
  const { checkRunnable, runStripeSync } = await import('../stripe/job.js');
  checkRunnable(config, dryRun); // before ClickHouse is opened
  const s = config.settings;
  const log = createLogger(String(s.logLevel));
  const dataDir = resolve(String(s.dataDir));
  const ch = clickhouseOf(config, stripeSyncBusyMessage);
  try {
    await migrate(ch.client);
    const plansFile = s.plansFile ? resolve(String(s.plansFile)) : EMBEDDED_PLANS.pathname;
    const book = readPlanBook(plansFile);
    const report = await runStripeSync(
      config,
      dataDir,
      {
        clickhouse: ch.client,
        traceLinkTemplate: String(s.traceLinkTemplate),
        pricing: new PlanPricing({ current: book }),
      },
      log,
      { periods, customers, dryRun, resolve: resolveKeys },
    );
    if (jsonFile) writeFileSync(jsonFile, reportJson(report));
    if (csvFile) writeFileSync(csvFile, reportCsv(report));
    const out = process.stdout;
    if (asJson) out.write(reportJson(report));
    else {
      const p = report.pushes;
      out.write(
        `${dryRun ? 'DRY RUN — nothing was sent to Stripe. ' : ''}pushes: ${p.created} created, ${p.replayed} replayed (${p.meterEvents} of these meter events), ${p.found} already at Stripe, ${p.wouldPush} would be pushed, ${p.skippedZero} with nothing to push\n`,
      );
      out.write(
        `${pad('customer', 14)}${pad('period', 9)}${pad('line', 26)}${pad('tollgate', 12, true)}${pad('pushed', 12, true)}${pad('stripe', 12, true)}  status\n`,
      );
      for (const r of report.rows) {
        const q = r.push !== 'amount'; // quantity and meter lines count units
        out.write(
          `${pad(r.customer, 14)}${pad(r.period, 9)}${pad(r.line, 26)}${pad((q ? r.tollgateQuantity : r.tollgateMinor) ?? '—', 12, true)}${pad(q ? r.pushedQuantity : r.pushedMinor, 12, true)}${pad((q ? r.stripeQuantity : r.stripeMinor) ?? '—', 12, true)}  ${r.status}\n`,
        );
      }
      out.write(
        `(amounts in minor units of ${report.currency.toUpperCase()}, quantities in Stripe units; pending: the meter's summary is behind, within an hour of the line's last push)\n`,
      );
      for (const e of report.errors) out.write(`error: ${e.customer}: ${e.message}\n`);
    }
    if (report.errors.length || report.rows.some((r) => r.status === 'mismatch')) process.exitCode = 1;
  } finally {
    await ch.close();
  }
}

/** The flags the admin commands read: any other is a typo (`--custmer` would widen `states` to every customer). */
const ADMIN_FLAGS = new Set(
  [
    'api-url',
    'api-key',
    'product',
    'customer',
    'scope',
    'id',
    'note',
    'sub',
    'amount',
    'currency',
    'grant',
    'effective',
    'expires',
    'priority',
    'idempotency-key',
    'format',
    'period',
    'from',
    'to',
  ].map((f) => `--${f}`),
);

async function cmdAdmin(flags: Record<string, string>, verb: string | undefined): Promise<void> {
  for (const f of Object.keys(flags)) if (!ADMIN_FLAGS.has(f)) fail(`unknown option ${f} for tollgate admin`);
  const apiUrl = flags['--api-url'] ?? process.env.TOLLGATE_API_URL ?? 'http://127.0.0.1:8080';
  const key = flags['--api-key'] ?? process.env.TOLLGATE_API_KEY;
  if (!key) fail('an admin API key is needed: --api-key or TOLLGATE_API_KEY');
  const headers = { authorization: `Bearer ${key}`, 'content-type': 'application/json' };
  const res = await adminRequest(apiUrl, headers, flags, verb).catch((err: Error) =>
    fail(
      `cannot reach the Tollgate API at ${apiUrl} (${(err.cause as Error | undefined)?.message ?? err.message}): start Tollgate, or give its API address with --api-url or TOLLGATE_API_URL`,
      1,
    ),
  );
  const text = await res.text();
  if (!res.ok) fail(`${res.status} ${text}`, 1);
  if ((res.headers.get('content-type') ?? '').startsWith('text/csv')) process.stdout.write(text);
  else process.stdout.write(`${JSON.stringify(JSON.parse(text), null, 2)}\n`);
}

async function adminRequest(
  apiUrl: string,
  headers: Record<string, string>,
  flags: Record<string, string>,
  verb: string | undefined,
): Promise<Response> {
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
  } else if (verb === 'credits') {
    res = await adminCredits(apiUrl, headers, flags);
  } else {
    return fail('usage: tollgate admin states|lift|kill|credits ...');
  }
  return res;
}

/** `tollgate admin credits …`: the credit routes of the API (the sub-command is the first positional). */
async function adminCredits(
  apiUrl: string,
  headers: Record<string, string>,
  flags: Record<string, string>,
): Promise<Response> {
  const sub = flags['--sub'];
  const pick = (names: Record<string, string>) => {
    const out: Record<string, string | number> = {};
    for (const [flag, field] of Object.entries(names)) {
      const v = flags[`--${flag}`];
      if (v !== undefined) out[field] = field === 'priority' ? Number(v) : v;
    }
    return out;
  };
  if (sub === 'grant' || sub === 'top-up' || sub === 'adjust') {
    const common = {
      product: 'product',
      customer: 'customer',
      amount: 'amount',
      currency: 'currency',
      note: 'note',
    };
    const body =
      sub === 'adjust'
        ? pick({ ...common, grant: 'grantId', 'idempotency-key': 'idempotencyKey' })
        : pick({
            ...common,
            effective: 'effectiveAt',
            expires: 'expiresAt',
            priority: 'priority',
            'idempotency-key': 'idempotencyKey',
          });
    if (!body.customer || !body.amount || !body.currency)
      fail(`usage: tollgate admin credits ${sub} --customer C --amount A --currency CUR ...`);
    return fetch(`${apiUrl}/admin/credits/${sub}`, { method: 'POST', headers, body: JSON.stringify(body) });
  }
  if (sub === 'balance' || sub === 'ledger') {
    const q = new URLSearchParams();
    for (const f of ['product', 'customer', 'format', ...(sub === 'ledger' ? ['period', 'from', 'to'] : [])])
      if (flags[`--${f}`]) q.set(f, flags[`--${f}`] as string);
    return fetch(`${apiUrl}/billing/credits${sub === 'ledger' ? '/ledger' : ''}?${q}`, { headers });
  }
  return fail('usage: tollgate admin credits grant|top-up|adjust|balance|ledger ...');
}

async function main(): Promise<void> {
  const argv = process.argv.slice(2);
  // `tollgate <anything> --help` (or -h) prints the usage, which covers every command, and does nothing else
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(USAGE);
    return;
  }
  const { flags, positional } = splitArgs(argv);
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
        const book = readPlanBook(arg);
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
      return cmdAdmin(arg === 'credits' ? { ...flags, '--sub': positional[2] ?? '' } : flags, arg);
    case 'billing':
      if (arg !== 'sync') fail('usage: tollgate billing sync stripe ...');
      return cmdBillingSync(flags, positional[2]);
    case 'config': {
      if (flags['--doc']) {
        process.stdout.write(`${settingsTableMarkdown()}\n`);
        return;
      }
      const c = loadConfig(flags);
      const shown = Object.fromEntries(
        SETTINGS.map((spec) => [
          spec.key,
          (spec.key.includes('password') || spec.key.includes('headers') || spec.key.includes('secret')) &&
          c.settings[spec.key]
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
  if (err instanceof StripeSyncError) fail(err.message, 1);
  process.stderr.write(`tollgate: ${(err as Error).stack ?? err}\n`);
  process.exit(1);
});
