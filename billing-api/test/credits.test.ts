import { existsSync } from 'node:fs';
import { formatNano } from '@tollgate/contracts';
import { type Browser, chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEV_INGEST_KEY } from '../../collector-processor/test/support/harness.js';
import { exportOf, toolSpan } from '../../collector-processor/test/support/otlp-json.js';
import { KEYS, type RawCall, rawCalls, type Seeded, startSeededTollgate } from './support/seed.js';

/**
 * Prepaid credits on the seeded Tollgate: a wallet opened for a customer that already had calls this period
 * — the invoice preview shows what the credits paid (the calls after the wallet), what stays due (the calls
 * before it), reconciled call by call; the OpenAPI document lists the routes; the dashboard's credits card
 * shows the wallet (headless Chromium).
 */

const CHROMIUM = '/usr/bin/chromium';
let s: Seeded;
let browser: Browser | undefined;

beforeAll(async () => {
  s = await startSeededTollgate();
}, 180_000);
afterAll(async () => {
  await browser?.close();
  await s?.cleanup();
});

const api = (path: string, key: string, init: RequestInit = {}) =>
  fetch(`${s.tg.apiUrl}${path}`, {
    ...init,
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...init.headers },
  });

describe('prepaid credits on the billing API', () => {
  it('the invoice preview applies the credits drawn and leaves the calls before the wallet due', async () => {
    const period = new Date().toISOString().slice(0, 7);
    const g = await api('/admin/credits/top-up', KEYS.admin, {
      method: 'POST',
      body: JSON.stringify({ customer: 'hooli', amount: '1', currency: 'USD', note: 'prepaid pilot' }),
    });
    expect(g.status).toBe(200);
    const spans = Array.from({ length: 5 }, () => toolSpan({ customer: 'hooli', tool: 'thin' }));
    const res = await fetch(`${s.tg.otlpUrl}/v1/traces`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${DEV_INGEST_KEY}` },
      body: JSON.stringify(exportOf(spans)),
    });
    expect(res.status).toBe(200);
    await s.tg.lander?.idle();
    // the ledger is copied from Redis to ClickHouse off the request path (a short timer after the export):
    // wait until the drawdown of these calls is there
    for (let i = 0; i < 100; i++) {
      const led = (await (await api('/billing/credits/ledger?customer=hooli', KEYS.finance)).json()) as {
        entries: { type: string; calls: number }[];
      };
      if (led.entries.some((e) => e.type === 'drawdown' && e.calls === 5)) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    const ids = new Set(spans.map((x) => `${x.traceId}${x.spanId}`));
    const rows = (await rawCalls(s.tg)).filter(
      (r: RawCall) => r.product === 'demo-mcp' && r.customer === 'hooli' && r.period === period,
    );
    const drawn = rows.filter((r) => ids.has(`${r.traceId}${r.spanId}`));
    const before = rows.filter((r) => !ids.has(`${r.traceId}${r.spanId}`));
    expect(drawn).toHaveLength(5);
    const sum = (xs: RawCall[]) => xs.reduce((a, r) => a + r.price, 0n);

    const inv = (await (
      await api(`/billing/invoices/preview?customer=hooli&period=${period}`, KEYS.finance)
    ).json()) as {
      totals: { amountNano: string };
      credits: Record<string, unknown>;
    };
    expect(inv.totals.amountNano).toBe(String(sum(rows)));
    expect(inv.credits).toEqual({
      appliedNano: String(sum(drawn)),
      applied: formatNano(sum(drawn)),
      amountDueNano: String(sum(before)),
      amountDue: formatNano(sum(before)),
      grantsDrawnNano: String(sum(drawn)),
      grantsDrawn: formatNano(sum(drawn)),
      overdraftDrawnNano: '0',
      overdraftDrawn: formatNano(0n),
      overdraftRepaidNano: '0',
      overdraftRepaid: formatNano(0n),
      undrawnNano: String(sum(before)),
      undrawn: formatNano(sum(before)),
      drawnCalls: 5,
      undrawnCalls: before.filter((r) => r.price !== 0n).length,
      reconciliation: {
        drawnNano: String(sum(drawn)),
        callsPriceNano: String(sum(drawn)),
        mismatchedCalls: 0,
        unlandedCalls: 0,
        reconciled: true,
      },
    });
    const w = (await (await api('/billing/credits?customer=hooli', KEYS.finance)).json()) as {
      wallets: { balanceNano: string }[];
    };
    expect(w.wallets[0]?.balanceNano).toBe(String(1_000_000_000n - sum(drawn)));
  });

  it('customer keys see their own wallet only; the ledger answers CSV; the routes are in the OpenAPI document', async () => {
    expect(await (await api('/billing/credits', KEYS.acme)).json()).toEqual({ wallets: [] });
    expect((await api('/billing/credits?customer=hooli', KEYS.acme)).status).toBe(403);
    expect((await api('/billing/credits/ledger?customer=hooli', KEYS.globex)).status).toBe(403);
    expect((await api('/billing/credits?product=demo-mcp', KEYS.otherAdmin)).status).toBe(403);
    const csv = await api('/billing/credits/ledger?customer=hooli&format=csv', KEYS.finance);
    const lines = (await csv.text()).trim().split('\r\n');
    expect(lines[0]).toBe('customer,seq,at,type,grantId,amount,amountNano,currency,period,calls,actor,note');
    expect(lines.slice(1).map((l) => l.split(',')[3])).toEqual(['top_up', 'drawdown']);
    expect(lines[2]?.split(',')[9]).toBe('5');

    const doc = (await (await fetch(`${s.tg.apiUrl}/docs/json`)).json()) as {
      paths: Record<string, unknown>;
    };
    for (const p of [
      '/admin/credits/grant',
      '/admin/credits/top-up',
      '/admin/credits/adjust',
      '/billing/credits',
      '/billing/credits/ledger',
    ])
      expect(Object.keys(doc.paths)).toContain(p);
  });

  it('the dashboard shows the wallets in its credits card (headless Chromium)', async () => {
    if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} is missing (apt-get install -y chromium)`);
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
      headless: true,
    });
    for (const [key, expected] of [
      [KEYS.finance, /^hooli\s*\|\s*0\.98\d* USD/],
      [KEYS.acme, /^no prepaid credits$/],
    ] as const) {
      const page = await browser.newPage();
      const problems: string[] = [];
      page.on('pageerror', (e) => problems.push(e.message));
      page.on('response', (r) => {
        if (r.status() >= 400) problems.push(`${r.status()} ${r.url()}`);
      });
      await page.goto(`${s.tg.apiUrl}/dashboard`);
      await page.fill('#key', key);
      await page.click('#connect');
      await page.waitForSelector('#credits-card:not([hidden])', { timeout: 30_000 });
      const first = await page.$$eval('#credits-table tbody tr', (trs) =>
        trs.map((tr) => [...tr.children].map((td) => td.textContent?.trim()).join(' | ')),
      );
      expect(first[0]).toMatch(expected);
      expect(problems).toEqual([]);
      await page.close();
    }
  });
});
