import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from 'prom-client';

/** Prometheus metrics of one Tollgate process (served on the API's `/metrics`). */
export function createMetrics() {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry, prefix: 'tollgate_process_' });
  const r = { registers: [registry] };
  return {
    registry,
    exports: new Counter({
      name: 'tollgate_exports_total',
      help: 'OTLP exports and usage-event requests by outcome',
      labelNames: ['endpoint', 'status'],
      ...r,
    }),
    spansReceived: new Counter({
      name: 'tollgate_spans_received_total',
      help: 'Spans received (all, billable or not)',
      ...r,
    }),
    callsAccepted: new Counter({
      name: 'tollgate_calls_accepted_total',
      help: 'Billable tool calls accepted (durably spooled)',
      labelNames: ['product'],
      ...r,
    }),
    callsDuplicate: new Counter({
      name: 'tollgate_calls_duplicate_total',
      help: 'Tool calls dropped as retries of calls already counted',
      ...r,
    }),
    callsRejected: new Counter({
      name: 'tollgate_calls_rejected_total',
      help: 'Spans or events rejected (partial success), by reason',
      labelNames: ['reason'],
      ...r,
    }),
    callsUnenforced: new Counter({
      name: 'tollgate_calls_unenforced_total',
      help: 'Calls rated while Redis was unreachable (fail-open)',
      ...r,
    }),
    callsOwed: new Gauge({
      name: 'tollgate_calls_owed',
      help: 'Billed calls not yet counted in Redis (fail-open outage: claim; failed enforcement step: enforce), waiting for it',
      labelNames: ['step'],
      ...r,
    }),
    callsSettled: new Counter({
      name: 'tollgate_calls_settled_total',
      help: 'Owed calls counted in Redis once it answered again (result counted), found claimed elsewhere (duplicate), or given up (dropped)',
      labelNames: ['step', 'result'],
      ...r,
    }),
    revenueNano: new Counter({
      name: 'tollgate_revenue_nano_total',
      help: 'Revenue rated, in nano-units of the plan currency',
      labelNames: ['product', 'currency'],
      ...r,
    }),
    leases: new Counter({
      name: 'tollgate_lease_requests_total',
      help: 'Quota lease requests by op (grant, release, refused) and outcome (ok, exhausted, or the error code)',
      labelNames: ['op', 'outcome'],
      ...r,
    }),
    replayFailures: new Counter({
      name: 'tollgate_spool_replay_failures_total',
      help: 'Spool records a replay could not process (they stay in the spool; the replay goes on with the next)',
      ...r,
    }),
    redisErrors: new Counter({
      name: 'tollgate_redis_errors_total',
      help: 'Redis script calls that failed',
      ...r,
    }),
    exportSeconds: new Histogram({
      name: 'tollgate_export_duration_seconds',
      help: 'Time to process one export, receipt to response',
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
      ...r,
    }),
    exportStageSeconds: new Histogram({
      name: 'tollgate_export_stage_seconds',
      help: 'Time one accepted export spent in each stage before its answer (decode, spool, claim, rate, enforce, land)',
      labelNames: ['stage'],
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      ...r,
    }),
    landingBacklog: new Gauge({
      name: 'tollgate_landing_backlog_rows',
      help: 'Rated calls waiting for ClickHouse',
      ...r,
    }),
    landedRows: new Counter({
      name: 'tollgate_landed_rows_total',
      help: 'Rated calls inserted into ClickHouse',
      ...r,
    }),
    landingErrors: new Counter({
      name: 'tollgate_landing_errors_total',
      help: 'Failed ClickHouse inserts (retried)',
      ...r,
    }),
    landingInsertSeconds: new Histogram({
      name: 'tollgate_landing_insert_seconds',
      help: 'Duration of one ClickHouse insert',
      buckets: [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      ...r,
    }),
    sessionSnapshots: new Counter({
      name: 'tollgate_session_snapshots_total',
      help: 'Builds of the session-interval snapshot by result (ok, failed)',
      labelNames: ['result'],
      ...r,
    }),
    sessionSnapshotLastSuccess: new Gauge({
      name: 'tollgate_session_snapshot_last_success_timestamp_seconds',
      help: 'When the latest session-interval snapshot finished (Unix seconds; 0: none yet)',
      ...r,
    }),
    planReloads: new Counter({
      name: 'tollgate_plan_reloads_total',
      help: 'Rate-plan reloads by result',
      labelNames: ['result'],
      ...r,
    }),
    directives: new Counter({
      name: 'tollgate_directives_total',
      help: 'Enforcement state changes (warn, throttle, kill, resume) by reason',
      labelNames: ['action', 'reason'],
      ...r,
    }),
    forwarded: new Counter({
      name: 'tollgate_forwarded_exports_total',
      help: 'Exports forwarded to the downstream OTLP endpoint',
      ...r,
    }),
    forwardDropped: new Counter({
      name: 'tollgate_forward_dropped_total',
      help: 'Exports not forwarded (queue full, downstream refused, retries exhausted)',
      labelNames: ['reason'],
      ...r,
    }),
    inFlight: new Gauge({ name: 'tollgate_exports_in_flight', help: 'Exports being processed', ...r }),
  };
}
export type Metrics = ReturnType<typeof createMetrics>;
