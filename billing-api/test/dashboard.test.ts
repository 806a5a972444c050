import { existsSync, mkdirSync } from 'node:fs';
import { formatNano } from '@tollgate/contracts';
import { type Browser, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  KEYS,
  type RawCall,
  rawCalls,
  type Seeded,
  startSeededTollgate,
  sumBy,
  TRACE_TEMPLATE,
} from './support/seed.js';

/**
 * The dashboard in real headless Chromium (Debian's `chromium`, driven by playwright-core), against a
 * seeded Tollgate: the page loads, shows the seeded numbers, drills into a session, and a screenshot is
 * saved to test-results/dashboard.png.
 */

const CHROMIUM = '/usr/bin/chromium';
const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];
const RESULTS = new URL('../../test-results/', import.meta.url).pathname;

let s: Seeded;
let raw: RawCall[];
let browser: Browser;

beforeAll(async () => {
  if (!existsSync(CHROMIUM)) {
    throw new Error(
      `${CHROMIUM} is missing: the dashboard test needs Debian's Chromium (apt-get install -y chromium)`,
    );
  }
  s = await startSeededTollgate();
  raw = await rawCalls(s.tg);
  browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS, headless: true });
}, 180_000);
afterAll(async () => {
  await browser?.close();
  await s?.cleanup();
});

async function open(key: string): Promise<{ page: Page; problems: string[] }> {
  const page = await browser.newPage({ viewport: { width: 1440, height: 1000 } });
  const problems: string[] = [];
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`page: ${e.message}`));
  page.on('requestfailed', (r) => problems.push(`request: ${r.url()} ${r.failure()?.errorText}`));
  page.on('response', (r) => {
    if (r.status() >= 400) problems.push(`response: ${r.status()} ${r.url()}`);
  });
  // the page's default period is its own clock's month: the seeded month (see seedNowMs)
  await page.clock.setFixedTime(Date.now());
  await page.goto(`${s.tg.apiUrl}/dashboard`);
  await page.fill('#key', key);
  await page.click('#connect');
  await page.locator('[data-kpi="revenue"]', { hasText: 'USD' }).waitFor({ timeout: 30_000 });
  return { page, problems };
}

const text = (page: Page, sel: string) => page.$eval(sel, (e) => e.textContent ?? '');
const column = (page: Page, table: string, i: number) =>
  page.$$eval(`${table} tbody tr`, (trs, idx) => trs.map((tr) => tr.children[idx]?.textContent ?? ''), i);

describe('dashboard in headless Chromium', () => {
  it('shows the seeded numbers for the current period, drills into a session, and is screenshotted', async () => {
    const { page, problems } = await open(KEYS.finance);
    const period = new Date(s.nowMs).toISOString().slice(0, 7);
    const rows = raw.filter((r) => r.product === 'demo-mcp' && r.period === period);
    const t = sumBy(rows, () => 'x').get('x');
    expect(t).toBeDefined();
    if (!t) return;

    expect(await text(page, '[data-kpi="revenue"]')).toBe(`${formatNano(t.revenue)} USD`);
    expect(await text(page, '[data-kpi="cost"]')).toBe(`${formatNano(t.cost)} USD`);
    expect(await text(page, '[data-kpi="calls"]')).toBe(String(t.calls));
    expect(await text(page, '[data-kpi="customers"]')).toBe(
      String(new Set(rows.map((r) => r.customer)).size),
    );
    expect(Number(await text(page, '[data-kpi="kills"]'))).toBeGreaterThanOrEqual(2);
    expect(Number(await text(page, '[data-kpi="throttles"]'))).toBeGreaterThanOrEqual(1);
    expect(await text(page, '#who')).toBe('finance-bob (finance)');

    // revenue by tool: the table and the chart carry the exact per-tool revenue
    const byTool = sumBy(rows, (r) => r.tool);
    const tools = await column(page, '#tool-table', 0);
    const revenues = await column(page, '#tool-table', 3);
    expect(Object.fromEntries(tools.map((tool, i) => [tool, revenues[i]]))).toEqual(
      Object.fromEntries([...byTool].map(([tool, x]) => [tool, formatNano(x.revenue)])),
    );
    const chartTools = (await page.evaluate("Chart.getChart('tool-chart').data.labels")) as string[];
    expect(new Set(chartTools)).toEqual(new Set(byTool.keys()));

    // daily trend by agent: one line per agent
    const agents = await page.evaluate("Chart.getChart('agent-chart').data.datasets.map((d) => d.label)");
    expect(agents).toEqual([...new Set(rows.map((r) => r.agent))].sort());

    // margin health: bands drawn, umbrella (negative margin) in the kill band, hooli in the throttle band
    expect(await text(page, '#bands')).toContain('throttle below 10.00 %');
    const customers = await column(page, '#margin-table', 0);
    const bands = await column(page, '#margin-table', 4);
    const band = Object.fromEntries(customers.map((c, i) => [c, bands[i]]));
    expect(band).toMatchObject({ umbrella: 'kill', hooli: 'throttle' });

    // recent kills
    const killed = await column(page, '#kills-table', 1);
    const reasons = await column(page, '#kills-table', 4);
    expect(killed.map((c, i) => `${c} ${reasons[i]}`)).toEqual(
      expect.arrayContaining(['globex hard_limit:spend_per_period', 'umbrella margin_guard:kill']),
    );

    // session drill-down with trace links
    const first = page.locator('#sessions-table tbody tr').first();
    const sessionId = (await first.getAttribute('data-session')) as string;
    const customer = (await first.locator('td').nth(1).textContent()) as string;
    await first.click();
    await page.waitForSelector('#session-detail:not([hidden])');
    const calls = raw
      .filter((r) => r.product === 'demo-mcp' && r.session === sessionId && r.customer === customer)
      .sort((a, b) => (a.startUs === b.startUs ? 0 : a.startUs < b.startUs ? -1 : 1));
    expect(await page.locator('#calls-table tbody tr').count()).toBe(calls.length);
    const href = await page.locator('#calls-table tbody tr').first().locator('a').getAttribute('href');
    expect(href).toBe(
      TRACE_TEMPLATE.replace('{traceId}', calls[0]?.traceId as string).replace(
        '{spanId}',
        calls[0]?.spanId as string,
      ),
    );
    expect(await column(page, '#calls-table', 7)).toEqual(calls.map((c) => formatNano(c.price)));

    expect(problems).toEqual([]);
    mkdirSync(RESULTS, { recursive: true });
    await page.screenshot({ path: `${RESULTS}dashboard.png`, fullPage: true });
    expect(existsSync(`${RESULTS}dashboard.png`)).toBe(true);
    await page.close();
  });

  it("a customer key sees only its customer's numbers, and no customer filter", async () => {
    const { page, problems } = await open(KEYS.acme);
    const period = new Date(s.nowMs).toISOString().slice(0, 7);
    const rows = raw.filter((r) => r.product === 'demo-mcp' && r.customer === 'acme' && r.period === period);
    const t = sumBy(rows, () => 'x').get('x');
    expect(await text(page, '[data-kpi="revenue"]')).toBe(`${formatNano(t?.revenue ?? 0n)} USD`);
    expect(await text(page, '[data-kpi="customers"]')).toBe('1');
    expect(await page.isHidden('#customer-filter')).toBe(true);
    expect(await column(page, '#margin-table', 0)).toEqual(['acme']);
    expect(problems).toEqual([]);
    await page.close();
  });

  it('a wrong key is refused with the API error, and the key is kept for the tab only', async () => {
    const page = await browser.newPage();
    // the page's default period is its own clock's month: the seeded month (see seedNowMs)
    await page.clock.setFixedTime(Date.now());
    await page.goto(`${s.tg.apiUrl}/dashboard`);
    await page.fill('#key', 'tg_wrong');
    await page.click('#connect');
    await page.locator('#status.error').waitFor();
    expect(await text(page, '#status')).toContain('API_UNAUTHORIZED');
    expect(await page.isHidden('#main')).toBe(true);
    expect(await page.evaluate("[sessionStorage.getItem('tollgate.apiKey'), localStorage.length]")).toEqual([
      'tg_wrong',
      0,
    ]);
    await page.close();
  });
});
