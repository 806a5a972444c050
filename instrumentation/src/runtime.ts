import { randomUUID } from 'node:crypto';
import { unlinkSync } from 'node:fs';
import { type Attributes, isSpanContextValid, type SpanContext } from '@opentelemetry/api';
import type { InstrumentationScope } from '@opentelemetry/core';
import { safeExecuteInTheMiddle } from '@opentelemetry/instrumentation';
import { defaultResource, type Resource, resourceFromAttributes } from '@opentelemetry/resources';
import type { SpanExporter } from '@opentelemetry/sdk-trace-base';
import type { Directive, McpTransport, SessionRule } from '@tollgate/contracts';
import { type AttributeCopier, BillingSpan, fastIds, SpanBatcher, sampledContext } from './billing-span.js';
import { startCourier } from './courier-start.js';
import { DirectiveStore, type Verdict } from './directives.js';
import { type ExporterSettings, OutageLog, TollgateExporter } from './exporter.js';
import { claimHandoff, handoffDir, writeHandoff } from './handoff.js';
import type { ServerLike, TransportLike } from './internal-types.js';
import { LeaseBook, type LeaseOptions } from './leases.js';
import { RESOURCE_SERVICE_INSTANCE_ID, RESOURCE_SERVICE_NAME } from './semconv.js';
import { readState, writeState } from './state-file.js';
import type { DirectiveHook, DirectiveHookResult, TollgateLogger } from './types.js';
import { PACKAGE_NAME, PACKAGE_VERSION } from './version.js';

/** A kill that arrives between calls closes the session after this grace, so a call in flight can finish. */
const KILL_GRACE_MS = 1000;
/** A refused call's error response is written before its session is closed. */
const CLOSE_AFTER_REFUSAL_MS = 50;
/** Directive changes kept for inspection (`changes`). */
const MAX_CHANGES_KEPT = 1000;
/** Spans are flushed for at most this long before a killed stdio server exits or a signal is re-raised. */
const EXIT_FLUSH_MS = 3000;

/** One connection of a server: a stdio process, an SSE stream, a Streamable HTTP session or exchange. */
export interface SessionInfo {
  server: ServerLike;
  transport: TransportLike | undefined;
  kind: McpTransport;
  /**
   * The connection's own session, when it has one: the protocol's session id (2025-era sessionful
   * transports) or, for stdio and in-process transports, an id made once per connection (`conn-<uuid>`).
   * Undefined on stateless HTTP, where each call's billing session comes from its trace or activity.
   */
  sessionId: string | undefined;
  /** The rule that gave `sessionId` (see contracts/src/billing-session.ts). */
  sessionRule: SessionRule | undefined;
  /** Negotiated in `initialize` (2025 era); 2026-07-28 requests carry theirs in `_meta`. */
  protocolVersion: string | undefined;
  /** From `initialize` (2025 era); 2026-07-28 requests carry theirs in `_meta`. */
  clientInfo: { name?: string; version?: string } | undefined;
  customer: string | undefined;
  agent: string | undefined;
  closing: boolean;
  /** Known to the runtime (a kill can close it). */
  tracked: boolean;
  /** Tool calls of this connection running now (a stateless one is untracked when none runs). */
  inFlight: number;
  /** The per-session span attributes and what they were built from (see tool-call.ts). */
  template:
    | {
        kind: McpTransport;
        sessionId: string;
        rule: SessionRule | undefined;
        customer: string | undefined;
        agent: string | undefined;
        protocolVersion: string | undefined;
        attributes: Attributes;
        /** Copies `attributes` into a call's own record, adding its tool name. */
        copy: AttributeCopier;
        /** The same, adding its tool name and JSON-RPC request id. */
        copyWithRequestId: AttributeCopier;
      }
    | undefined;
}

export interface RuntimeOptions {
  serviceName: string;
  resourceAttributes: Record<string, string>;
  /** Built-in OTLP exporter settings (absent when `billingExporter` replaces it). */
  exporter: ExporterSettings | undefined;
  billingExporter: SpanExporter | undefined;
  exportIntervalMs: number;
  heartbeatIntervalMs: number;
  logIntervalMs: number;
  stateFile: string | undefined;
  startupSyncTimeoutMs: number;
  /** Quota leases (absent: calls are enforced when their spans arrive, as for any OTLP sender). */
  leases: LeaseOptions | undefined;
  onDirective: DirectiveHook | undefined;
  closeSessionsOnKill: boolean;
  exitOnStdioKill: boolean;
  logger: TollgateLogger | undefined;
}

function hookKey(d: Directive): string {
  return `${d.scope}\u0000${d.customer}\u0000${d.id}`;
}

/** Whether a kill covers a live session: always within its customer (session ids are not unique across them). */
function covers(d: Directive, s: SessionInfo): boolean {
  if (s.customer !== d.customer) return false;
  if (d.scope === 'session') return s.sessionId === d.id;
  if (d.scope === 'customer') return true;
  if (d.scope === 'agent') return s.agent === d.id;
  return false; // a tool-scope kill refuses that tool only
}

/**
 * Everything a process shares across the servers it instruments for one Tollgate endpoint: the billing
 * pipeline (its own spans, never sampled, batched to its own exporter), the directives in force, the live
 * sessions a kill may close, the heartbeat timer and the state file.
 */
export class TollgateRuntime {
  readonly instanceId = randomUUID();
  readonly store = new DirectiveStore();
  readonly sessions = new Set<SessionInfo>();
  readonly exporter: TollgateExporter | undefined;
  /** The quota leases this process holds (when `leases` is configured). */
  readonly leases: LeaseBook | undefined;
  readonly log: OutageLog;
  /** Directive changes seen, in order (the demo and tests read them). */
  readonly changes: Directive[] = [];
  readonly stats = {
    calls: 0,
    refusedKilled: 0,
    refusedThrottled: 0,
    sessionsClosed: 0,
    sessionsRefused: 0,
    /**
     * Client-sent `_meta` fields that were malformed and ignored (a non-string or invalid `traceparent`, an
     * oversized or non-object `clientInfo`, a protocol version that is not a revision date). The call went
     * on; its session came from the next rule.
     */
    malformedMeta: { traceparent: 0, clientInfo: 0, protocolVersion: 0 },
    /** `tools/call`s refused before running: a tool name Tollgate cannot bill (`UnbillableToolName`). */
    unbillableToolNames: 0,
    /** Rounds of multi-round-trip calls that asked for input: not billed (the completing round is). */
    inputRequiredRounds: 0,
  };
  private readonly resource: Resource;
  private readonly scope: InstrumentationScope = { name: PACKAGE_NAME, version: PACKAGE_VERSION };
  private readonly batcher: SpanBatcher | undefined;
  private readonly sink = (span: BillingSpan) => this.batcher?.add(span);
  private readonly hookResults = new Map<string, DirectiveHookResult>();
  private readonly previousInstances: { id: string; seenAtMs: number }[];
  private readonly synced: Promise<void>;
  private readonly timer: NodeJS.Timeout;
  private instanceRecorded = false;
  private shutDown = false;
  /**
   * Nothing is left to run (a stdio server whose client closed its input ends this way): the spans go out,
   * then what the leases still hold goes back, so the customer's next session can use it at once instead of
   * waiting for the leases to expire (it would be refused as over its limit meanwhile).
   */
  private readonly onBeforeExit = () =>
    void withTimeout(
      this.forceFlush().then(() => this.leases?.releaseAll()),
      EXIT_FLUSH_MS,
    );
  /**
   * The process is exiting (no more I/O): what is still undelivered is handed over — to a courier process
   * started now, unless Tollgate is known to be unreachable, and else to the next process of the service.
   */
  private readonly onExit = () => this.handOver('take', true);
  private readonly onSignal = (signal: NodeJS.Signals) => {
    const othersListen = process.listenerCount(signal) > 0;
    // A supervisor may kill the process before the flush below ends (the MCP SDK 2.x stdio client sends
    // SIGKILL 2 s after SIGTERM, while an export to a Tollgate that hangs waits out its timeout): a copy of
    // what is undelivered goes to the next process first. A body that is then delivered anyway is billed
    // once (Tollgate deduplicates by trace and span id).
    const copies = this.handOver('copy');
    void withTimeout(
      this.forceFlush().then(() => this.leases?.releaseAll()),
      EXIT_FLUSH_MS,
    ).finally(() => {
      // Re-raise so the default action (exit) happens, unless the app handles the signal itself. A death by
      // signal emits no 'exit' event: hand over first (what is still undelivered now, instead of the copy).
      if (!othersListen) {
        removeFiles(copies);
        this.handOver();
        process.kill(process.pid, signal);
      }
    });
  };

  constructor(private readonly o: RuntimeOptions) {
    const now = Date.now();
    const remembered = o.stateFile ? readState(o.stateFile, now) : { instances: [], directives: [] };
    this.previousInstances = remembered.instances;
    this.store.apply(remembered.directives, now, () => true, true);

    this.log = new OutageLog(o.logger, o.logIntervalMs, o.exporter?.tracesUrl ?? 'billing exporter');
    if (o.exporter) {
      this.exporter = new TollgateExporter(
        o.exporter,
        () => [this.instanceId, ...this.previousInstances.map((i) => i.id)],
        (ds, source) => this.onDirectives(ds, source),
        this.log,
      );
    }
    this.leases = o.leases ? new LeaseBook(o.leases, this.instanceId, (m) => this.log.problem(m)) : undefined;
    this.resource = defaultResource().merge(
      resourceFromAttributes({
        ...o.resourceAttributes,
        [RESOURCE_SERVICE_NAME]: o.serviceName,
        [RESOURCE_SERVICE_INSTANCE_ID]: this.instanceId,
      }),
    );
    const exporter = o.billingExporter ?? this.exporter;
    if (exporter) this.batcher = new SpanBatcher(exporter, o.exportIntervalMs);

    // Sessions that ended leave the registry at every tick; the exporter heartbeats when idle.
    this.timer = setInterval(() => {
      this.pruneSessions();
      void this.exporter?.tick();
      void this.leases?.releaseIdle(Date.now());
    }, o.heartbeatIntervalMs);
    this.timer.unref();
    if (this.exporter && o.stateFile) {
      // what predecessors of this service could not deliver before they exited (Tollgate was down)
      this.exporter.adopt(claimHandoff(handoffDir(o.stateFile), this.instanceId));
    }
    if (this.exporter) {
      const exp = this.exporter;
      // First contact at once: confirms (or drops) remembered kills, learns of kills while we were away.
      this.synced = exp.heartbeat().then((answered) => {
        if (answered) {
          const dropped = this.store.dropUnconfirmed();
          if (dropped.length) this.persist();
        }
      });
    } else {
      this.synced = Promise.resolve();
    }
    process.once('beforeExit', this.onBeforeExit);
    process.once('exit', this.onExit);
    process.once('SIGTERM', this.onSignal);
    process.once('SIGINT', this.onSignal);
  }

  /**
   * Starts the billing span of a call. Billing is never sampled: every call gets one, recorded and
   * exported whatever the app's sampler decided. `shared` are the app span's ids, when the app made real
   * ones, so a billing row points at the span the app's own backend holds.
   */
  startSpan(
    name: string,
    attributes: Attributes,
    parent: SpanContext | undefined,
    shared: SpanContext | undefined,
  ): BillingSpan {
    const p = parent && isSpanContextValid(parent) ? parent : undefined;
    const traceId = shared?.traceId ?? p?.traceId ?? fastIds.traceId();
    const spanId = shared?.spanId ?? fastIds.spanId();
    return new BillingSpan(
      name,
      sampledContext(traceId, spanId, p),
      p,
      attributes,
      this.resource,
      this.scope,
      this.sink,
    );
  }

  /** Waits (bounded) for the first answer from Tollgate; used only when a remembered kill may apply. */
  awaitSync(): Promise<void> {
    return withTimeout(this.synced, this.o.startupSyncTimeoutMs);
  }

  /** Remembers a live session and who it serves (kills close the sessions they cover). */
  track(s: SessionInfo, customer: string | undefined, agent: string | undefined): void {
    s.customer = customer;
    s.agent = agent;
    s.tracked = true;
    if (!s.closing) this.sessions.add(s);
    if (!this.instanceRecorded && this.o.stateFile) {
      this.instanceRecorded = true;
      this.persist();
    }
  }

  /**
   * A connection without a session of its own (stateless HTTP: 2.x builds a server per request) is tracked
   * only while a call runs on it: a kill can close nothing else of it, and keeping it until the next prune
   * would keep every per-request server alive for a heartbeat interval (garbage collection work).
   */
  callEnded(s: SessionInfo): void {
    if (--s.inFlight === 0 && s.sessionId === undefined && s.tracked) {
      s.tracked = false;
      this.sessions.delete(s);
    }
  }

  /** A call (or a new session) was refused: count it, and close its session if a kill covers it. */
  refused(s: SessionInfo, v: Verdict, what: 'call' | 'session'): void {
    if (what === 'session') this.stats.sessionsRefused++;
    if (v.kill) {
      if (what === 'call') this.stats.refusedKilled++;
      const decision = this.hookResults.get(hookKey(v.kill));
      if (
        (decision?.closeSessions ?? this.o.closeSessionsOnKill) &&
        (what === 'session' || covers(v.kill, s))
      ) {
        this.scheduleClose(s, v.kill, CLOSE_AFTER_REFUSAL_MS);
      }
    } else this.stats.refusedThrottled++;
  }

  private onDirectives(directives: Directive[], _source: 'export' | 'heartbeat'): void {
    const changed = this.store.apply(directives, Date.now(), (d) => this.decide(d));
    if (changed.length === 0) return;
    for (const d of changed) {
      if (this.changes.length >= MAX_CHANGES_KEPT) this.changes.shift();
      this.changes.push(d);
      if (d.action === 'kill') this.onKill(d);
    }
    this.persist();
  }

  /** Runs the author's hook (guarded) and remembers what it chose; returns whether to enforce. */
  private decide(d: Directive): boolean {
    let result: DirectiveHookResult | undefined;
    const hook = this.o.onDirective;
    if (hook) {
      safeExecuteInTheMiddle(
        () => hook(d),
        (err, r) => {
          if (err) this.log.problem(`onDirective hook threw: ${err.message}`);
          else if (r) result = r;
        },
        true,
      );
    }
    if (result) this.hookResults.set(hookKey(d), result);
    else this.hookResults.delete(hookKey(d));
    return result?.enforce !== false;
  }

  private onKill(d: Directive): void {
    const decision = this.hookResults.get(hookKey(d));
    if (decision?.enforce === false) return;
    if (!(decision?.closeSessions ?? this.o.closeSessionsOnKill)) return;
    for (const s of this.sessions) {
      if (covers(d, s)) this.scheduleClose(s, d, KILL_GRACE_MS);
    }
  }

  private scheduleClose(s: SessionInfo, d: Directive, delayMs: number): void {
    // Stateless HTTP (no protocol session, not a connection: a server per request) has nothing to close:
    // its calls are refused one by one, and "closing" each per-request server would log a line per call.
    if (s.closing || s.sessionId === undefined) return;
    s.closing = true;
    this.sessions.delete(s);
    setTimeout(() => void this.closeSession(s, d), delayMs);
  }

  private async closeSession(s: SessionInfo, d: Directive): Promise<void> {
    this.stats.sessionsClosed++;
    const what = s.sessionId ? `session ${s.sessionId}` : 'session';
    this.o.logger?.warn(
      `Tollgate ${d.action} (${d.reason || 'no reason'}) for ${d.scope} ${d.id}: closing ${s.kind} ${what}`,
    );
    try {
      await s.server.close();
    } catch {
      // already closed
    }
    const decision = this.hookResults.get(hookKey(d));
    if (s.kind === 'stdio' && (decision?.exitProcess ?? this.o.exitOnStdioKill)) {
      await withTimeout(
        this.forceFlush().then(() => this.leases?.releaseAll()),
        EXIT_FLUSH_MS,
      );
      process.exit(0);
    }
  }

  private pruneSessions(): void {
    for (const s of this.sessions) {
      if (s.server.transport !== s.transport) this.sessions.delete(s);
    }
  }

  private persist(): void {
    const file = this.o.stateFile;
    if (!file) return;
    const now = Date.now();
    try {
      writeState(
        file,
        {
          instances: [
            ...(this.instanceRecorded ? [{ id: this.instanceId, seenAtMs: now }] : []),
            ...this.previousInstances,
          ],
          directives: this.store.restrictive(now),
        },
        now,
      );
    } catch (err) {
      this.log.problem(`cannot write the Tollgate state file ${file}: ${(err as Error).message}`);
    }
  }

  /**
   * Writes what the exporter could not deliver (and what the batcher still holds) for the next process of
   * this service, next to the state file (synchronous: the process is exiting). `take` forgets it (this
   * process delivers nothing more); `copy` keeps it to deliver, for an exit that may be cut short: the
   * batcher's spans move to the exporter's buffer (its `export` only buffers), so the flush that follows
   * sends them and the copy holds them. Returns the files written. Without a state file, or with a
   * `billingExporter` of the app's, nothing is handed over.
   */
  handOver(mode: 'take' | 'copy' = 'take', atExit = false): string[] {
    const exp = this.exporter;
    const file = this.o.stateFile;
    if (!exp || !file || this.o.billingExporter) return [];
    const held = this.batcher?.takeAll() ?? [];
    if (mode === 'copy' && held.length > 0) exp.export(held, () => {});
    const bodies = mode === 'take' ? exp.takeUnsent(held) : exp.unsentBodies();
    const written: string[] = [];
    if (bodies.length === 0) return written;
    try {
      const skipped = writeHandoff(handoffDir(file), this.instanceId, bodies, written);
      const full = skipped ? `; ${skipped} dropped (the directory is full)` : '';
      if (mode === 'take' && atExit && !this.log.down && this.o.exporter && written.length > 0) {
        // an abrupt exit (`process.exit()`, an uncaught exception) cut the export short, not Tollgate
        const sent = startCourier(handoffDir(file), this.o.exporter);
        this.o.logger?.warn(
          `the process exited with ${written.length} export(s) of billing spans not sent yet: ` +
            (sent
              ? `a background process is delivering them from ${handoffDir(file)}`
              : `left in ${handoffDir(file)} for the next process of this service`) +
            full,
        );
      } else if (mode === 'take') {
        this.o.logger?.warn(
          `Tollgate unreachable at exit: ${bodies.length - skipped} export(s) of billing spans left in ` +
            `${handoffDir(file)} for the next process of this service${full}`,
        );
      }
    } catch (err) {
      this.o.logger?.warn(
        `${mode === 'take' ? 'billing spans lost at exit: ' : ''}cannot write ${handoffDir(file)}: ${(err as Error).message}`,
      );
    }
    return written;
  }

  /** Exports every finished billing span now (bounded by the exporter's timeout). */
  async forceFlush(): Promise<void> {
    await this.batcher?.flush();
    await (this.o.billingExporter ?? this.exporter)?.forceFlush?.();
  }

  async shutdown(): Promise<void> {
    if (this.shutDown) return;
    this.shutDown = true;
    clearInterval(this.timer);
    process.off('beforeExit', this.onBeforeExit);
    process.off('exit', this.onExit);
    process.off('SIGTERM', this.onSignal);
    process.off('SIGINT', this.onSignal);
    await this.batcher?.shutdown();
    // shut down during an outage: the next process of this service delivers what is left
    this.handOver();
    // after the spans went out (they settle what was consumed), what the leases still hold goes back
    if (this.leases) {
      await withTimeout(this.leases.releaseAll(), EXIT_FLUSH_MS);
      this.leases.close();
    }
  }
}

/** Removes files this process wrote, if a successor has not claimed them meanwhile. */
function removeFiles(paths: string[]): void {
  for (const p of paths) {
    try {
      unlinkSync(p);
    } catch {
      // claimed (and sent) by another process of the service: Tollgate bills a body sent twice once
    }
  }
}

export function withTimeout(p: Promise<unknown>, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    t.unref();
    p.then(
      () => {
        clearTimeout(t);
        resolve();
      },
      () => {
        clearTimeout(t);
        resolve();
      },
    );
  });
}
