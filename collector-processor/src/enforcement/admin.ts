import {
  customerTag,
  type Directive,
  type DirectiveScope,
  encodeState,
  redisKeys,
  stateField,
} from '@tollgate/contracts';
import type { RedisLike } from '../pipeline/pipeline.js';
import type { RedisEnforcer } from './enforcer.js';
import type { EnforcementLog } from './events.js';
import { periodEndMs } from './periods.js';

export interface OperatorAction {
  product: string;
  customer: string;
  scope: DirectiveScope;
  /** Agent, session or tool id; ignored for scope `customer`. */
  id?: string | undefined;
  actor: string;
  note?: string | undefined;
}

function currentPeriod(now: number): string {
  return new Date(now).toISOString().slice(0, 7);
}

/**
 * Operator actions on enforcement state (used by the admin API and the CLI), each audited in
 * `enforcement_events`. A lift holds until the end of the billing period: limits and the margin guard do
 * not re-kill that scope before then (raise the limit in the plan for a lasting change).
 */
export class EnforcementAdmin {
  constructor(
    private readonly redis: RedisLike,
    private readonly enforcer: RedisEnforcer,
    private readonly events: EnforcementLog,
  ) {}

  private async write(a: OperatorAction, action: 'kill' | 'resume', untilMs: number): Promise<Directive> {
    const now = Date.now();
    const id = a.scope === 'customer' ? a.customer : (a.id ?? '');
    if (a.scope !== 'customer' && !id) throw new Error(`scope ${a.scope} needs an id`);
    const reason = `operator:${a.actor}`;
    await this.redis.hset(
      redisKeys.state(customerTag(a.product, a.customer)),
      stateField(a.scope, id),
      encodeState({ action, reason, untilUnixMs: untilMs }),
    );
    await this.redis.sadd(redisKeys.stateIndex(a.product), a.customer);
    this.events.record({
      atMs: now,
      product: a.product,
      customer: a.customer,
      scope: a.scope,
      subjectId: id,
      action: action === 'resume' ? 'lift' : 'kill',
      reason,
      marginBps: null,
      spendNano: 0n,
      actor: a.actor,
      note: a.note ?? '',
    });
    await this.events.flush();
    return { action, scope: a.scope, id, customer: a.customer, reason, untilUnixMs: untilMs };
  }

  /** Lifts a kill or throttle; senders get `resume`. */
  lift(a: OperatorAction): Promise<Directive> {
    return this.write(a, 'resume', periodEndMs(currentPeriod(Date.now())));
  }

  /** Kills a scope until an operator lifts it. */
  kill(a: OperatorAction): Promise<Directive> {
    return this.write(a, 'kill', 0);
  }

  /** Every state in force of a product's customers (or of one customer). */
  async states(product: string, customer?: string): Promise<Directive[]> {
    const customers = customer ? [customer] : await this.redis.smembers(redisKeys.stateIndex(product));
    const out: Directive[] = [];
    for (const c of customers.sort()) out.push(...(await this.enforcer.statesOf(product, c)));
    return out;
  }
}
