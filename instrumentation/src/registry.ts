import { ActivitySessions } from '@tollgate/contracts';
import type { ResolvedConfig } from './config.js';
import { TollgateRuntime } from './runtime.js';

/** One runtime per distinct billing configuration in this process. */
const runtimes = new Map<string, TollgateRuntime>();

export function runtimeFor(config: ResolvedConfig): TollgateRuntime | undefined {
  if (!config.runtime) return undefined;
  let rt = runtimes.get(config.runtimeKey);
  if (!rt) {
    rt = new TollgateRuntime(config.runtime);
    runtimes.set(config.runtimeKey, rt);
  }
  return rt;
}

/**
 * Rule-4 (`activity`) session state of this process, one per inactivity gap. Process-wide, because 2.x
 * HTTP servers build a fresh server instance (and, with `instrumentMcpServer` in the factory, a fresh
 * tracer) for every request: the calls of one caller must still meet in one session.
 */
const activity = new Map<number, ActivitySessions>();

export function activitySessionsFor(gapMs: number): ActivitySessions {
  let a = activity.get(gapMs);
  if (!a) {
    a = new ActivitySessions(gapMs);
    activity.set(gapMs, a);
  }
  return a;
}

/** The runtimes of this process (the demo and tests read their stats and directive changes). */
export function tollgateRuntimes(): TollgateRuntime[] {
  return [...runtimes.values()];
}

/** Exports every finished billing span now. Call it before a planned exit if you exit with `process.exit`. */
export async function flushTollgate(): Promise<void> {
  await Promise.all([...runtimes.values()].map((rt) => rt.forceFlush()));
}

/** Flushes and stops every billing pipeline of this process (heartbeats, timers, sockets). */
export async function shutdownTollgate(): Promise<void> {
  const all = [...runtimes.values()];
  runtimes.clear();
  await Promise.all(all.map((rt) => rt.shutdown()));
}
