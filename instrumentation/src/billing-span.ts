import { randomFillSync } from 'node:crypto';
// Imported rather than read from the global: Node defines the global `performance` as a lazy accessor, so
// every `performance.now()` went through a global-load IC and the accessor call (about 170 of its 400
// instructions, callgrind); a span reads the clock twice.
import { performance } from 'node:perf_hooks';
import {
  type Attributes,
  type AttributeValue,
  type HrTime,
  type Link,
  type SpanContext,
  SpanKind,
  type SpanStatus,
  SpanStatusCode,
  TraceFlags,
} from '@opentelemetry/api';
import {
  addHrTimes,
  type ExportResult,
  getTimeOrigin,
  hrTime,
  hrTimeDuration,
  type InstrumentationScope,
  millisToHrTime,
} from '@opentelemetry/core';
import type { Resource } from '@opentelemetry/resources';
import type { ReadableSpan, SpanExporter, TimedEvent } from '@opentelemetry/sdk-trace-base';

const NO_LINKS: Link[] = [];
const NO_EVENTS: TimedEvent[] = [];
const UNSET: SpanStatus = { code: SpanStatusCode.UNSET };

/** A performance.now() value as the HrTime of the wall clock (what OTel's own `hrTime()` computes). */
function toHrTime(perfNow: number): HrTime {
  return addHrTimes(millisToHrTime(getTimeOrigin()), millisToHrTime(perfNow));
}

/**
 * A copy of `base` to add keys to, copied key by key: V8 builds `{ ...base }` and then gives the copy keys
 * of its own through a slow path (measured about 2 µs against 0.2 µs for this loop, per span).
 */
export function copyAttributes(base: Attributes): Attributes {
  const a: Attributes = {};
  for (const k in base) a[k] = base[k];
  return a;
}

/** Copies a session's attribute record and adds a call's own values (`values[i]` under `extraKeys[i]`). */
export type AttributeCopier = (base: Attributes, ...values: AttributeValue[]) => Attributes;

/** Copiers by key list (a session's attributes have one of a few key lists). Bounded. */
const copiers = new Map<string, AttributeCopier>();
const MAX_COPIERS = 64;

/**
 * A function that copies records with `base`'s keys, plus `extraKeys` set from its further arguments, into
 * an object literal of that final shape. Cheaper than `copyAttributes` and adding keys one by one (about 50
 * against 190 ns per call for ten keys in a micro-benchmark: one allocation of the final size, no growing
 * property store), and, unlike a `{ ...base }` copy, the result takes further keys (`setAttribute`, usage)
 * on V8's fast path. The generated code names only keys, which are this package's attribute names; values
 * are read from the arguments, never written into code. Where code generation is disallowed, the
 * key-by-key copy is used.
 */
export function attributeCopier(base: Attributes, extraKeys: readonly string[] = []): AttributeCopier {
  const keys = Object.keys(base);
  const id = `${keys.join('\n')}\n\n${extraKeys.join('\n')}`;
  let c = copiers.get(id);
  if (c === undefined) {
    if (copiers.size >= MAX_COPIERS) copiers.clear();
    c = compileCopier(keys, extraKeys);
    copiers.set(id, c);
  }
  return c;
}

function slowCopier(extraKeys: readonly string[]): AttributeCopier {
  return (base, ...values) => {
    const a = copyAttributes(base);
    for (let i = 0; i < extraKeys.length; i++) a[extraKeys[i] as string] = values[i];
    return a;
  };
}

function compileCopier(keys: string[], extraKeys: readonly string[]): AttributeCopier {
  // a literal's `__proto__` key would set the prototype; a key given twice would keep its first place
  if (
    keys.includes('__proto__') ||
    extraKeys.includes('__proto__') ||
    extraKeys.some((k) => keys.includes(k))
  )
    return slowCopier(extraKeys);
  const params = extraKeys.map((_, i) => `v${i}`);
  const fields = [
    ...keys.map((k) => `${JSON.stringify(k)}: b[${JSON.stringify(k)}]`),
    ...extraKeys.map((k, i) => `${JSON.stringify(k)}: v${i}`),
  ].join(', ');
  try {
    return new Function('b', ...params, `return { ${fields} };`) as AttributeCopier;
  } catch {
    return slowCopier(extraKeys); // --disallow-code-generation-from-strings
  }
}

/**
 * The billing span of one tool call: a plain `ReadableSpan`, built without the SDK's tracer machinery
 * (sampler, span processors, attribute sanitising, limits), because billing spans are always recorded, carry
 * a fixed set of attributes this package writes itself, and go to exactly one exporter. It is what keeps
 * the billing span within a few microseconds per call.
 */
export class BillingSpan implements ReadableSpan {
  // Fields are declared and assigned in the constructor rather than given class-field initializers: V8
  // (Node 20) runs initializers as a separate function defining each field through a define-own-property
  // IC, measurable per call (callgrind) against plain stores the constructor's code inlines.
  declare readonly name: string;
  declare private readonly context: SpanContext;
  declare readonly parentSpanContext: SpanContext | undefined;
  /** The call's attributes: a copy of its session's plus its own (owned by the span, exported as is). */
  declare readonly attributes: Attributes;
  declare readonly resource: Resource;
  declare readonly instrumentationScope: InstrumentationScope;
  declare private readonly sink: (span: BillingSpan) => void;
  // Times are kept as performance.now() values and turned into HrTime only when exported.
  declare private readonly startedAt: number;
  declare private endedAt: number;
  declare ended: boolean;
  declare status: SpanStatus;
  declare events: TimedEvent[];

  constructor(
    name: string,
    context: SpanContext,
    parentSpanContext: SpanContext | undefined,
    attributes: Attributes,
    resource: Resource,
    instrumentationScope: InstrumentationScope,
    sink: (span: BillingSpan) => void,
  ) {
    this.name = name;
    this.context = context;
    this.parentSpanContext = parentSpanContext;
    this.attributes = attributes;
    this.resource = resource;
    this.instrumentationScope = instrumentationScope;
    this.sink = sink;
    this.startedAt = performance.now();
    this.endedAt = 0;
    this.ended = false;
    this.status = UNSET;
    this.events = NO_EVENTS;
  }

  get kind(): SpanKind {
    return SpanKind.SERVER;
  }
  get links(): Link[] {
    return NO_LINKS;
  }
  get droppedAttributesCount(): number {
    return 0;
  }
  get droppedEventsCount(): number {
    return 0;
  }
  get droppedLinksCount(): number {
    return 0;
  }
  get startTime(): HrTime {
    return toHrTime(this.startedAt);
  }
  get endTime(): HrTime {
    return toHrTime(this.endedAt);
  }
  get duration(): HrTime {
    return hrTimeDuration(this.startTime, this.endTime);
  }

  spanContext(): SpanContext {
    return this.context;
  }

  setAttribute(key: string, value: AttributeValue): void {
    if (!this.ended) this.attributes[key] = value;
  }

  addEvent(name: string, attributes: Attributes): void {
    if (this.ended) return;
    if (this.events === NO_EVENTS) this.events = [];
    this.events.push({ name, attributes, time: hrTime(), droppedAttributesCount: 0 });
  }

  setStatus(status: SpanStatus): void {
    if (!this.ended) this.status = status;
  }

  end(): void {
    if (this.ended) return;
    this.ended = true;
    this.endedAt = performance.now();
    this.sink(this);
  }

  /** Ends the span without exporting it: what it recorded is not a billable call. */
  discard(): void {
    this.ended = true;
  }
}

const POOL = Buffer.allocUnsafe(8192);
let poolHex = '';
let poolAt = POOL.length;

/**
 * `bytes` random bytes as hex, never all zero (an all-zero trace or span id is invalid), from a pool refilled
 * by the OS CSPRNG 8 KiB at a time and hex-encoded once per refill: an id is then a substring, with no
 * per-id encoding work. The all-zero test reads the pool's bytes and stops at the first non-zero one (the
 * first, but for 1 in 256): comparing the hex substring with a string of zeros went through V8's runtime
 * string comparison (a sliced string against a flat one), a few hundred instructions per id (callgrind).
 */
function randomHex(bytes: number): string {
  for (;;) {
    if (poolAt + bytes > POOL.length) {
      randomFillSync(POOL);
      poolHex = POOL.toString('hex');
      poolAt = 0;
    }
    const at = poolAt;
    poolAt += bytes;
    for (let i = at; i < poolAt; i++) {
      if (POOL[i] !== 0) return poolHex.slice(2 * at, 2 * poolAt);
    }
  }
}

/** Random trace and span ids, several times cheaper than the SDK generator's per-id Buffer work. */
export const fastIds = {
  traceId(): string {
    return randomHex(16);
  },
  spanId(): string {
    return randomHex(8);
  },
};

/** Test hook: the next ids come from these pool bytes (refilled from the CSPRNG once used up). */
export function seedIdPoolForTest(bytes: Uint8Array): void {
  POOL.fill(0);
  POOL.set(bytes);
  poolHex = POOL.toString('hex');
  poolAt = 0;
}

export function sampledContext(
  traceId: string,
  spanId: string,
  parent: SpanContext | undefined,
): SpanContext {
  const ctx: SpanContext = { traceId, spanId, traceFlags: TraceFlags.SAMPLED };
  if (parent?.traceState) ctx.traceState = parent.traceState;
  return ctx;
}

/**
 * Batches finished billing spans for an exporter: a batch leaves when it is full or when the oldest span
 * in it has waited `intervalMs`. Bounded: beyond `maxQueue` spans waiting, new ones are counted as dropped.
 */
export class SpanBatcher {
  private buffer: ReadableSpan[] = [];
  private timer: NodeJS.Timeout | undefined;
  private exporting: Promise<void> = Promise.resolve();
  /** Batches flushed whose turn at the exporter has not come yet. */
  private readonly transit = new Set<ReadableSpan[]>();
  dropped = 0;

  constructor(
    private readonly exporter: SpanExporter,
    private readonly intervalMs: number,
    private readonly maxBatch = 512,
    private readonly maxQueue = 65_536,
  ) {}

  add(span: ReadableSpan): void {
    if (this.buffer.length >= this.maxQueue) {
      this.dropped++;
      return;
    }
    this.buffer.push(span);
    if (this.buffer.length >= this.maxBatch) void this.flush();
    else if (!this.timer) {
      this.timer = setTimeout(() => void this.flush(), this.intervalMs);
      this.timer.unref();
    }
  }

  /** Hands everything buffered to the exporter; resolves when the exporter has answered. */
  flush(): Promise<void> {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    if (this.buffer.length === 0) return this.exporting;
    const batch = this.buffer;
    this.buffer = [];
    this.transit.add(batch);
    this.exporting = this.exporting.then(
      () =>
        new Promise<void>((resolve) => {
          if (!this.transit.delete(batch)) {
            resolve(); // taken by takeAll meanwhile
            return;
          }
          try {
            this.exporter.export(batch, (_r: ExportResult) => resolve());
          } catch {
            resolve();
          }
        }),
    );
    return this.exporting;
  }

  /**
   * Takes, synchronously, every span not yet handed to the exporter (buffered, or flushed but waiting for
   * the exporter's turn): for a process that exits now and can no longer wait for promises.
   */
  takeAll(): ReadableSpan[] {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    const out: ReadableSpan[] = [];
    for (const b of this.transit) out.push(...b);
    this.transit.clear();
    out.push(...this.buffer);
    this.buffer = [];
    return out;
  }

  async shutdown(): Promise<void> {
    await this.flush();
    await this.exporter.shutdown();
  }
}
