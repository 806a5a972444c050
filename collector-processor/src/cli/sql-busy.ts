import type { RunningRecord } from '../running.js';

/**
 * What `tollgate sql` says when the embedded data directory is held by a running Tollgate: chDB opens a
 * directory in one process only. An SQL route on the running server was not added on purpose: API keys are
 * scoped to products (tenants), and one read-only query reads every tenant's rows. The analytics routes answer
 * the usual questions with the key's scope, so the message points at the ones for the tables the query reads.
 */

const ROUTES_BY_TABLE: ReadonlyArray<readonly [RegExp, readonly (readonly [string, string])[]]> = [
  [
    /\bmcp_tool_calls\b/,
    [
      ['/analytics/mcp/revenue/by-tool', 'per tool: calls, revenue, cost, margin, tokens, durations'],
      ['/analytics/mcp/by-customer', 'per customer: revenue, cost, margin'],
      ['/billing/invoices/preview?customer=…&period=YYYY-MM', 'a customer’s invoice lines, exact'],
    ],
  ],
  [
    /\bmcp_(daily|tool_daily|customer_daily)_stats\b/,
    [
      ['/analytics/mcp/by-agent', 'per agent and day (or hour)'],
      ['/analytics/mcp/revenue/by-tool', 'per tool'],
      ['/analytics/mcp/by-customer', 'per customer'],
    ],
  ],
  [
    /\bmcp_session_(summary|daily)\b/,
    [
      ['/analytics/mcp/sessions', 'sessions with their totals and margin'],
      ['/analytics/mcp/sessions/{id}', 'one session’s calls with trace links'],
    ],
  ],
  [
    /\benforcement_events\b/,
    [['/analytics/mcp/enforcement-events', 'warn / throttle / kill / resume events']],
  ],
];
const DEFAULT_ROUTES = [
  ['/analytics/mcp/summary', 'totals: calls, sessions, customers, revenue, cost, margin, kills'],
] as const;

/** The API routes answering questions about the tables a query names (the summary when it names none). */
export function routesForQuery(sql: string): (readonly [string, string])[] {
  const seen = new Map<string, string>();
  for (const [table, routes] of ROUTES_BY_TABLE) {
    if (table.test(sql)) for (const [route, what] of routes) if (!seen.has(route)) seen.set(route, what);
  }
  if (seen.size === 0) for (const [route, what] of DEFAULT_ROUTES) seen.set(route, what);
  return [...seen];
}

/** The first line: who holds the directory. */
function holderLine(dir: string, running: RunningRecord | undefined): string {
  return running
    ? `${dir} is open in a running Tollgate: pid ${running.pid}, instance ${running.instanceId}, started ` +
        `${running.startedAt}${running.apiUrl ? `, API ${running.apiUrl}` : ''}.`
    : `${dir} is open in another process (no running Tollgate is recorded in the data directory).`;
}

export function sqlBusyMessage(dir: string, sql: string, running: RunningRecord | undefined): string {
  const lines: string[] = [holderLine(dir, running)];
  lines.push(
    'Embedded ClickHouse (chDB) lets one process open a data directory, so `tollgate sql` cannot read it now.',
  );
  if (running?.apiUrl) {
    lines.push('Ask the running server instead (an API key: Authorization: Bearer <key>; amounts exact):');
    for (const [route, what] of routesForQuery(sql)) lines.push(`  GET ${running.apiUrl}${route}   ${what}`);
    lines.push(`  (every route: ${running.apiUrl}/docs)`);
  }
  lines.push(
    running
      ? `Or stop it (kill -TERM ${running.pid}) and run tollgate sql again.`
      : 'Or stop that process and run tollgate sql again.',
    'With a ClickHouse server (clickhouse.url / CLICKHOUSE_URL) tollgate sql runs while Tollgate does.',
  );
  return lines.join('\n');
}

/** `tollgate billing sync stripe` on a directory a running Tollgate holds (docs/stripe.md: stop it first). */
export function stripeSyncBusyMessage(dir: string, running: RunningRecord | undefined): string {
  return [
    holderLine(dir, running),
    'Embedded ClickHouse (chDB) lets one process open a data directory, so `tollgate billing sync stripe` cannot read it now.',
    running
      ? `Stop it (kill -TERM ${running.pid}) and run the sync again, or let that server run it as its background job (settings.stripe.sync.enabled, docs/stripe.md).`
      : 'Stop that process and run the sync again.',
  ].join('\n');
}

/** A second `tollgate start` on a data directory a running Tollgate holds (one data directory per process). */
export function startBusyMessage(dir: string, running: RunningRecord | undefined): string {
  return [
    holderLine(dir, running),
    'Embedded ClickHouse (chDB) lets one process open a data directory, and a data directory (its spool) belongs to one process.',
    running
      ? `Use the running one, stop it first (kill -TERM ${running.pid}), or start this one with another --data-dir.`
      : 'Stop that process first, or start this one with another --data-dir.',
  ].join('\n');
}
