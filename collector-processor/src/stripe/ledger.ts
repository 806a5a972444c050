import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { StripeSyncError } from './errors.js';
import type { InvoiceItemParams, MeterEventParams } from './gateway.js';

/**
 * The sync's progress, an append-only JSON-lines file in the data directory (`<dataDir>/stripe/ledger.jsonl`),
 * fsynced at every line. Exactly-once by ordering: the intent (key and the exact body) is written before
 * the push, the outcome after it. A crash between the two leaves an intent that the next run sends again,
 * byte for byte, under the same key — Stripe replays its first answer (or creates the item if the first
 * attempt never reached it) — and, should the key have expired at Stripe (24 h), the run first looks for
 * an item carrying that key in its metadata.
 */

export interface Intent {
  t: 'intent';
  key: string;
  customer: string;
  line: string;
  period: string;
  unit: string;
  /** The line's running totals of the period through this unit, when the intent was written. */
  cumulativeNano: string;
  cumulativeQuantity: string;
  /** What this push adds: minor units (amount lines) or units (quantity lines). */
  amountMinor: string;
  quantity: string;
  /** What is sent: an invoice item (absent: ledgers written before meters) or a billing meter event. */
  kind?: 'invoice_item' | 'meter_event';
  params: InvoiceItemParams | MeterEventParams;
  at: string;
}

export interface Outcome {
  t: 'done';
  key: string;
  stripeId: string;
  /**
   * `created`; `replayed`: Stripe answered Idempotent-Replayed (the key had been seen); `found`: the item
   * was found at Stripe by its metadata; `nothing`: the unit added nothing (no intent, nothing sent).
   */
  how: 'created' | 'replayed' | 'found' | 'nothing';
  /**
   * `found`: what the item held at Stripe when it was found (minor units, or units of a quantity line), which may
   * differ from this ledger's intent (another data directory pushed the key). Absent in older ledgers.
   */
  foundMinor?: string;
  foundQuantity?: string;
  at: string;
}

type Entry = Intent | Outcome;

export class Ledger {
  private readonly intents = new Map<string, Intent>();
  private readonly outcomes = new Map<string, Outcome>();

  private constructor(readonly file: string | undefined) {}

  /** The same entries, kept in memory from now on (a dry run reads the progress, writes nothing). */
  forDryRun(): Ledger {
    const copy = new Ledger(undefined);
    for (const e of this.intents.values()) copy.remember(e);
    for (const e of this.outcomes.values()) copy.remember(e);
    return copy;
  }

  /** Opens (or starts) the ledger file; a torn last line (a crash mid-write) is ignored, anything else is an error. */
  static open(file: string): Ledger {
    const ledger = new Ledger(file);
    if (!existsSync(file)) return ledger;
    const lines = readFileSync(file, 'utf8').split('\n');
    lines.forEach((text, i) => {
      if (!text) return;
      let e: Entry;
      try {
        e = JSON.parse(text) as Entry;
      } catch {
        if (i >= lines.length - 2) return; // the torn tail of an interrupted append
        throw new StripeSyncError('STRIPE_LEDGER', `${file}:${i + 1} is not JSON`);
      }
      ledger.remember(e);
    });
    return ledger;
  }

  private remember(e: Entry): void {
    if (e.t === 'intent') this.intents.set(e.key, e);
    else if (e.t === 'done') this.outcomes.set(e.key, e);
  }

  private append(e: Entry): void {
    this.remember(e);
    if (!this.file) return;
    mkdirSync(dirname(this.file), { recursive: true });
    const fd = openSync(this.file, 'a');
    try {
      writeSync(fd, `${JSON.stringify(e)}\n`);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  }

  intent(key: string): Intent | undefined {
    return this.intents.get(key);
  }

  outcome(key: string): Outcome | undefined {
    return this.outcomes.get(key);
  }

  /** The units of `customer`'s `period` that a push was meant for (an intent: sent, or maybe sent). */
  unitsWithIntent(customer: string, period: string): Set<string> {
    const out = new Set<string>();
    for (const i of this.intents.values())
      if (i.customer === customer && i.period === period) out.add(i.unit);
    return out;
  }

  /** When the newest push of `customer`'s `line` in `period` was meant (its intent), in ms; undefined: none. */
  lastIntentAtMs(customer: string, period: string, line: string): number | undefined {
    let last: number | undefined;
    for (const i of this.intents.values())
      if (i.customer === customer && i.period === period && i.line === line) {
        const at = Date.parse(i.at);
        if (last === undefined || at > last) last = at;
      }
    return last;
  }

  writeIntent(i: Omit<Intent, 't' | 'at'>, atMs = Date.now()): Intent {
    const e: Intent = { t: 'intent', ...i, at: new Date(atMs).toISOString() };
    this.append(e);
    return e;
  }

  writeOutcome(
    key: string,
    stripeId: string,
    how: Outcome['how'],
    found?: { minor: bigint; quantity: bigint },
  ): void {
    this.append({
      t: 'done',
      key,
      stripeId,
      how,
      ...(found ? { foundMinor: found.minor.toString(), foundQuantity: found.quantity.toString() } : {}),
      at: new Date().toISOString(),
    });
  }
}
