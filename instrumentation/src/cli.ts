#!/usr/bin/env node
import { ENV, resolveConfig } from './config.js';
import { instrumentMcpServer } from './instrument-server.js';
/**
 * `npx tollgate-instrumentation check`: the self-check. Registers the instrumentation's module hooks as
 * `--import @tollgate/instrumentation/register` would, then for each MCP SDK installed in the project says
 * whether its version is supported, whether the hooks patched it, and whether a real tool call through it
 * becomes a billing span; then checks the configured Tollgate endpoint answers (and accepts the key).
 * Exits 1 when anything would leave tool calls unbilled.
 */
import { mcpInstrumentation } from './register.js';
import { checkInstrumentation } from './self-check.js';
import { PACKAGE_NAME, PACKAGE_VERSION } from './version.js';

/** The configuration as the environment gives it (read once: the endpoint and lease lines both use it). */
type Checked = ReturnType<typeof resolveConfig>;

async function endpointStatus({ resolved, problems }: Checked): Promise<{ ok: boolean; line: string }> {
  if (problems.length) return { ok: false, line: `configuration: ${problems.join('; ')}` };
  const exporter = resolved.runtime?.exporter;
  if (!exporter) {
    return {
      ok: false,
      line: 'endpoint: TOLLGATE_OTLP_ENDPOINT is not set — billing spans would go nowhere',
    };
  }
  try {
    const res = await fetch(exporter.tracesUrl, {
      method: 'POST',
      headers: { ...exporter.headers, 'content-type': 'application/json' },
      body: JSON.stringify({ resourceSpans: [] }),
      signal: AbortSignal.timeout(exporter.timeoutMs),
    });
    if (res.status === 200) return { ok: true, line: `endpoint: ${exporter.tracesUrl} answers 200` };
    const hint = res.status === 401 ? ' — check TOLLGATE_INGEST_KEY' : '';
    return { ok: false, line: `endpoint: ${exporter.tracesUrl} answers HTTP ${res.status}${hint}` };
  } catch (err) {
    return { ok: false, line: `endpoint: ${exporter.tracesUrl} unreachable (${(err as Error).message})` };
  }
}

/** Whether the configuration turns quota leases on (information: either way calls are billed). */
function leaseStatus({ resolved }: Checked): string {
  const leases = resolved.runtime?.leases;
  return leases
    ? `quota leases: on (fail mode ${leases.failMode}, ${leases.url})`
    : `quota leases: off (${ENV.leases}=1 turns them on: zero overage on hard limits)`;
}

async function check(): Promise<number> {
  process.stdout.write(`${PACKAGE_NAME} ${PACKAGE_VERSION} self-check (Node ${process.versions.node})\n`);
  // the round trip captures its spans in memory: no leases (they need the built-in exporter), whatever
  // TOLLGATE_LEASES says; whether the configuration turns them on is reported with the endpoint below
  const results = await checkInstrumentation(process.cwd(), (server, exporter) =>
    instrumentMcpServer(server, {
      billingExporter: exporter,
      logger: false,
      stateFile: false,
      leases: false,
    }),
  );
  let ok = true;
  if (results.length === 0) {
    ok = false;
    process.stdout.write(
      'no MCP SDK found from this folder (@modelcontextprotocol/server 2.x or @modelcontextprotocol/sdk 1.x)\n',
    );
  }
  for (const r of results) {
    const good = r.supported && r.hooked && r.billed;
    if (!good) ok = false;
    process.stdout.write(
      `${good ? 'ok  ' : 'FAIL'} ${r.package}@${r.version ?? '?'}: supported=${r.supported} ` +
        `patched-by-hooks=${r.hooked} billed=${r.billed} — ${r.detail}\n`,
    );
  }
  const config = resolveConfig({ stateFile: false, logger: false });
  const ep = await endpointStatus(config);
  if (!ep.ok) ok = false;
  process.stdout.write(`${ep.ok ? 'ok  ' : 'FAIL'} ${ep.line}\n`);
  process.stdout.write(`     ${leaseStatus(config)}\n`);
  mcpInstrumentation.disable();
  return ok ? 0 : 1;
}

const [command] = process.argv.slice(2);
if (command !== 'check') {
  process.stderr.write('usage: tollgate-instrumentation check\n');
  process.exit(2);
}
check().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`self-check failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
