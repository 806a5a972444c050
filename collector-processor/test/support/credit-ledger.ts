import { query, type TestTollgate } from './harness.js';

/** Waits until `n` calls of `customer` have landed in `mcp_tool_calls` (10 s at most). */
export async function landed(tg: TestTollgate, customer: string, n: number): Promise<void> {
  await tg.lander?.idle(10_000);
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const [r] = await query(tg, 'SELECT count() AS n FROM mcp_tool_calls WHERE customer = {c:String}', {
      c: customer,
    });
    if (Number(r?.n) >= n) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`${customer}: ${n} calls did not land`);
}

export interface LedgerRow {
  seq: string;
  entry_type: string;
  bucket: string;
  amount_nano: string;
  event_ids: string[];
  event_amounts_nano: string[];
  actor: string;
  note: string;
}

/** The customer's credit ledger in ClickHouse, in sequence order, once the wallet's outbox is drained (5 s at most). */
export async function creditLedger(
  tg: TestTollgate,
  customer: string,
  product = 'demo-mcp',
): Promise<LedgerRow[]> {
  await tg.credits?.wallet(product, customer); // nudges a drain of anything left in the outbox
  const deadline = Date.now() + 5000;
  for (;;) {
    const w = await tg.credits?.wallet(product, customer);
    if (!w?.ledgerBacklog || Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  return query<LedgerRow>(
    tg,
    'SELECT seq, entry_type, bucket, amount_nano, event_ids, event_amounts_nano, actor, note FROM credit_ledger FINAL WHERE customer = {c:String} ORDER BY seq',
    { c: customer },
  );
}
