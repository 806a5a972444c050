import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { formatNano } from '@tollgate/contracts';
import { type Browser, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  KEYS,
  type RawCall,
  rawCalls,
  type Seeded,
  sendUsageCalls,
  startSeededTollgate,
  sumBy,
  TRACE_TEMPLATE,
  USAGE_CALLS,
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

/**
 * What finance reads: the amount rounded to cents, half away from zero, on the integer nano amount (never a
 * float), written the en-US way. The page rounds the API's decimal text itself; this is an independent check.
 */
function usd(nano: bigint): string {
  const abs = nano < 0n ? -nano : nano;
  const cents = (abs + 5_000_000n) / 10_000_000n;
  if (cents === 0n && nano !== 0n) return nano < 0n ? '> -$0.01' : '< $0.01'; // never a misleading $0.00
  const text = `${nano < 0n ? '-' : ''}${cents / 100n}.${String(cents % 100n).padStart(2, '0')}`;
  // a decimal string is formatted exactly (Intl.NumberFormat v3)
  return new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD' }).format(
    text as unknown as number,
  );
}
const exact = (nano: bigint) => `${formatNano(nano)} USD (exact)`;
/** One call's price, like a rate card: every decimal it has, at least two. */
const usdPrice = (nano: bigint) =>
  new Intl.NumberFormat('en-US', {
    style: 'currency',
    currency: 'USD',
    minimumFractionDigits: 2,
    maximumFractionDigits: 9,
  }).format(formatNano(nano) as unknown as number);

async function open(
  key: string,
  viewport = { width: 1440, height: 1000 },
): Promise<{ page: Page; problems: string[] }> {
  const page = await browser.newPage({ viewport, locale: 'en-US', acceptDownloads: true });
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
  await page.locator('[data-kpi="revenue"]', { hasText: '$' }).waitFor({ timeout: 30_000 });
  return { page, problems };
}

const text = (page: Page, sel: string) => page.$eval(sel, (e) => e.textContent ?? '');
const column = (page: Page, table: string, i: number) =>
  page.$$eval(`${table} tbody tr`, (trs, idx) => trs.map((tr) => tr.children[idx]?.textContent ?? ''), i);
const titles = (page: Page, table: string, i: number) =>
  page.$$eval(
    `${table} tbody tr`,
    (trs, idx) => trs.map((tr) => tr.children[idx]?.getAttribute('title') ?? ''),
    i,
  );

/** Clicks a card's CSV button and returns the file the browser saved. */
async function csvOf(page: Page, name: string): Promise<string[][]> {
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    page.click(`button.csv[data-csv="${name}"]`),
  ]);
  const path = await download.path();
  return readFileSync(path, 'utf8')
    .trim()
    .split('\r\n')
    .map((line) => line.split(','));
}

describe('dashboard in headless Chromium', () => {
  it('shows the seeded numbers for the current period, drills into a session, and is screenshotted', async () => {
    const { page, problems } = await open(KEYS.finance);
    const period = new Date(s.nowMs).toISOString().slice(0, 7);
    const rows = raw.filter((r) => r.product === 'demo-mcp' && r.period === period);
    const t = sumBy(rows, () => 'x').get('x');
    expect(t).toBeDefined();
    if (!t) return;

    // money in the currency's usual decimals, the exact amount on hover
    expect(await text(page, '[data-kpi="revenue"]')).toBe(usd(t.revenue));
    expect(await text(page, '[data-kpi="cost"]')).toBe(usd(t.cost));
    expect(await text(page, '[data-kpi="margin"]')).toContain(usd(t.revenue - t.cost));
    expect(await page.getAttribute('[data-kpi="revenue"]', 'title')).toBe(exact(t.revenue));
    expect(await page.getAttribute('[data-kpi="margin"]', 'title')).toBe(exact(t.revenue - t.cost));
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
    const exactRevenues = await titles(page, '#tool-table', 3);
    expect(Object.fromEntries(tools.map((tool, i) => [tool, [revenues[i], exactRevenues[i]]]))).toEqual(
      Object.fromEntries([...byTool].map(([tool, x]) => [tool, [usd(x.revenue), exact(x.revenue)]])),
    );
    // ... and the CSV download is the API's, exact to the nano-unit
    const [header, ...csvRows] = await csvOf(page, 'tools');
    const at = (h: string) => (header as string[]).indexOf(h);
    expect(Object.fromEntries(csvRows.map((r) => [r[at('tool')], r[at('revenue')]]))).toEqual(
      Object.fromEntries([...byTool].map(([tool, x]) => [tool, formatNano(x.revenue)])),
    );
    const chartTools = (await page.evaluate("Chart.getChart('tool-chart').data.labels")) as string[];
    expect(new Set(chartTools)).toEqual(new Set(byTool.keys()));

    // daily trend by agent: one stacked bar series per agent
    const agents = await page.evaluate("Chart.getChart('agent-chart').data.datasets.map((d) => d.label)");
    expect(agents).toEqual([...new Set(rows.map((r) => r.agent))].sort());
    expect(await text(page, '#agent-title')).toBe('Daily revenue by agent');

    // margin health: bands drawn and named in words, with why; umbrella (negative margin) in the kill band,
    // hooli in the throttle band, o'hara (free calls only) not judged because it has no revenue
    expect(await text(page, '#bands')).toContain('throttle below 10.00 %');
    const customers = await column(page, '#margin-table', 0);
    const bands = await column(page, '#margin-table', 4);
    const whys = await column(page, '#margin-table', 5);
    const band = Object.fromEntries(customers.map((c, i) => [c, `${bands[i]}: ${whys[i]}`]));
    expect(band).toMatchObject({
      umbrella: 'Kill: margin below 0.00 %',
      hooli: 'Throttle: margin below 10.00 %',
      acme: 'Healthy: margin at or above 20.00 %',
      "o'hara": 'Not judged: no revenue yet (free or failed calls only)',
    });
    expect(bands.join(' ')).not.toMatch(/not_judged|_/);

    // recent kills
    const killed = await column(page, '#kills-table', 1);
    const reasons = await column(page, '#kills-table', 4);
    expect(killed.map((c, i) => `${c} ${reasons[i]}`)).toEqual(
      expect.arrayContaining(['globex hard_limit:spend_per_period', 'umbrella margin_guard:kill']),
    );

    // the session id is a link to its drill-down, which has the session's trace link
    const first = page.locator('#sessions-table tbody tr').first();
    const sessionId = (await first.getAttribute('data-session')) as string;
    const customer = (await first.locator('td').nth(1).textContent()) as string;
    const link = first.locator('td').first().locator('a');
    expect(await link.textContent()).toBe(sessionId);
    expect(await link.getAttribute('href')).toBe(`#${new URLSearchParams({ session: sessionId, customer })}`);
    await link.click();
    await page.waitForSelector('#session-detail:not([hidden])');
    expect(await text(page, '#session-id')).toBe(sessionId);
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
    expect(await page.locator('#session-trace a').getAttribute('href')).toBe(href);
    expect(await column(page, '#calls-table', 7)).toEqual(calls.map((c) => usdPrice(c.price)));
    expect(await titles(page, '#calls-table', 7)).toEqual(calls.map((c) => exact(c.price)));
    // the drill-down is addressed by the URL: a reload opens it again
    expect(new URL(page.url()).hash).toBe(`#${new URLSearchParams({ session: sessionId, customer })}`);

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
    expect(await text(page, '[data-kpi="revenue"]')).toBe(usd(t?.revenue ?? 0n));
    expect(await text(page, '[data-kpi="customers"]')).toBe('1');
    expect(await page.isHidden('#customer-filter')).toBe(true);
    // the vendor's side is not shown (nor sent): cost and margin, the margin-health card, their columns
    for (const sel of [
      '[data-kpi="cost"]',
      '[data-kpi="margin"]',
      '#margin-table',
      '#tool-table th:nth-child(5)',
    ])
      expect([sel, await page.isHidden(sel)]).toEqual([sel, true]);
    expect(await page.isVisible('#tool-table th:nth-child(4)')).toBe(true); // revenue
    const toolCells =
      (await page.evaluate(`[...document.querySelectorAll('#tool-table tbody tr:first-child td')]
      .filter((td) => getComputedStyle(td).display !== 'none').map((td) => td.textContent)`)) as string[];
    expect(toolCells).toHaveLength(6); // tool, calls, errors, revenue, p95, usage lines
    expect(toolCells.join(' ')).not.toMatch(/NaN|undefined/);
    expect(problems).toEqual([]);
    await page.close();
  });

  it('long tables scroll inside their card: nothing runs off a card on a narrow screen', async () => {
    const { page, problems } = await open(KEYS.finance, { width: 1000, height: 900 });
    await page.locator('#sessions-table tbody tr').first().click();
    await page.waitForSelector('#session-detail:not([hidden])');
    const overflowing = await page.$$eval('.card', (cards) =>
      cards
        .filter((c) => c.scrollWidth > c.clientWidth + 1)
        .map((c) => `${c.querySelector('h2')?.textContent}: ${c.scrollWidth} > ${c.clientWidth}`),
    );
    expect(overflowing).toEqual([]);
    // the kills table (long reasons) scrolls inside its own box
    const kills = await page.evaluate(`(() => {
      const box = document.querySelector('#kills-table').parentElement;
      return { overflow: getComputedStyle(box).overflowX, fits: box.clientWidth <= box.closest('.card').clientWidth };
    })()`);
    expect(kills).toEqual({ overflow: 'auto', fits: true });
    expect(problems).toEqual([]);
    await page.close();
  });

  it('a customer whose calls fall on one day gets an hourly chart, not isolated dots', async () => {
    const { page, problems } = await open(KEYS.finance);
    await page.fill('#customer', 'hooli');
    await page.click('#controls button[type="submit"]');
    await page.locator('#agent-title', { hasText: 'Hourly' }).waitFor();
    const period = new Date(s.nowMs).toISOString().slice(0, 7);
    const rows = raw.filter((r) => r.product === 'demo-mcp' && r.customer === 'hooli' && r.period === period);
    const hours = new Set(rows.map((r) => Math.floor(Number(r.startUs / 1_000_000n) / 3600)));
    expect(
      new Set(rows.map((r) => new Date(Number(r.startUs / 1000n)).toISOString().slice(0, 10))).size,
    ).toBe(1);
    const chart = (await page.evaluate(
      "(() => { const c = Chart.getChart('agent-chart'); return { type: c.config.type, labels: c.data.labels, data: c.data.datasets.map((d) => d.data) }; })()",
    )) as { type: string; labels: string[]; data: number[][] };
    expect(chart.type).toBe('bar');
    expect(chart.labels.length).toBeGreaterThanOrEqual(hours.size); // every hour from the first to the last
    expect(chart.labels.length).toBeGreaterThan(1);
    const total = chart.data.flat().reduce((a, b) => a + b, 0);
    const t = sumBy(rows, () => 'x').get('x');
    expect(total).toBeCloseTo(Number(formatNano(t?.revenue ?? 0n)), 9); // plotted as floats (drawing only)
    await page.screenshot({ path: `${RESULTS}dashboard-one-day.png` });
    expect(problems).toEqual([]);
    await page.close();
  });

  it("a tool's usage lines: one row each, quantity in the locale's grouping, amount in cents, exact on hover", async () => {
    // llm-co's plan (seed PLANS, `llm`) prices cached input tokens at 0.0000003, reasoning tokens at 0.00002
    // and gb_seconds at 0.000016667 per unit (each call's amount rounded half up to the nano-unit)
    await sendUsageCalls(s.tg, Date.now() - 60_000);
    const cached = USAGE_CALLS.reduce((a, c) => a + c[1], 0);
    const reasoning = USAGE_CALLS.reduce((a, c) => a + c[3], 0);
    const gbNano = USAGE_CALLS.reduce(
      (a, c) =>
        a + (c[4] === undefined ? 0n : (BigInt(Math.round(c[4] * 1e6)) * 16_667n + 500_000n) / 1_000_000n),
      0n,
    );
    // [line, in words, exact quantity, quantity as shown, amount]
    const lines: [string, string, string, string, bigint][] = [
      [
        'cached_input_tokens',
        'cached input tokens',
        String(cached),
        cached.toLocaleString('en-US'),
        BigInt(cached) * 300n,
      ],
      ['gb_seconds', 'gb seconds', '1.75', '1.75', gbNano],
      [
        'reasoning_tokens',
        'reasoning tokens',
        String(reasoning),
        reasoning.toLocaleString('en-US'),
        BigInt(reasoning) * 20_000n,
      ],
    ];

    const { page, problems } = await open(KEYS.finance);
    await page.fill('#customer', 'llm-co');
    await page.click('#controls button[type="submit"]');
    await page.locator('#tool-table tbody tr', { hasText: 'summarize' }).waitFor();
    const row = page.locator('#tool-table tbody tr', { hasText: 'summarize' });
    const usage = row.locator('td').nth(7);
    expect(await usage.locator('div').allTextContents()).toEqual(
      lines.map(([, words, , shown, nano]) => `${words}: ${shown} → ${usd(nano)}`),
    );
    expect(await usage.getAttribute('title')).toBe(
      lines
        .map(([line, , qty, , nano]) => `${line}: ${qty} units, ${formatNano(nano)} USD (exact)`)
        .join('\n'),
    );
    // the tools CSV carries the usage revenue exactly
    const [header, ...csvRows] = await csvOf(page, 'tools');
    const at = (h: string) => (header as string[]).indexOf(h);
    const summarize = csvRows.find((r) => r[at('tool')] === 'summarize') as string[];
    expect(summarize[at('usageRevenue')]).toBe(formatNano(lines.reduce((a, l) => a + l[4], 0n)));
    await page.locator('article', { has: page.locator('#tool-table') }).screenshot({
      path: `${RESULTS}dashboard-usage-lines.png`,
    });
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
