import type { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { reportUsage } from '../usage.js';

/**
 * The demo's tools, registered on every demo server (stdio and HTTP). Each reports the tokens it "spent"
 * through the usage API, as a tool that calls an LLM would; the plan prices them (see the embedded plans).
 * The tools take no arguments, so the demo needs no schema library of its own.
 */
type Server = Pick<McpServer, 'registerTool'>;

/** Prefix of the stderr lines by which the stdio demo server reports directive changes. */
export const DIRECTIVE_LINE = 'TOLLGATE_DIRECTIVE ';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const between = (lo: number, hi: number) => Math.round(lo + Math.random() * (hi - lo));

interface DemoTool {
  name: string;
  description: string;
  ms: [number, number];
  inTok: [number, number];
  outTok: [number, number];
  text: (args: Record<string, unknown>) => string;
}

export const DEMO_TOOLS: readonly DemoTool[] = [
  {
    name: 'get_forecast',
    description: 'Weather forecast for a city',
    ms: [5, 30],
    inTok: [20, 80],
    outTok: [150, 600],
    text: (a) => `Forecast for ${String(a.city ?? 'Paris')}: sunny, 21°C`,
  },
  {
    name: 'search_docs',
    description: 'Search the product documentation',
    ms: [10, 60],
    inTok: [50, 400],
    outTok: [300, 2000],
    text: (a) => `3 results for "${String(a.query ?? '')}"`,
  },
  {
    name: 'run_report',
    description: 'Build a usage report (expensive)',
    ms: [20, 80],
    inTok: [10, 40],
    outTok: [500, 3000],
    text: () => 'Report ready: 42 pages',
  },
  {
    name: 'lookup_customer',
    description: 'Look a customer up in the CRM',
    ms: [2, 15],
    inTok: [10, 30],
    outTok: [50, 200],
    text: (a) => `Customer ${String(a.id ?? '?')}: active`,
  },
];

export function registerDemoTools(server: Server): void {
  for (const t of DEMO_TOOLS) {
    server.registerTool(t.name, { description: t.description }, async (extra: object) => {
      await sleep(between(...t.ms));
      reportUsage({ inputTokens: between(...t.inTok), outputTokens: between(...t.outTok) }, extra);
      return { content: [{ type: 'text' as const, text: t.text({}) }] };
    });
  }
}
