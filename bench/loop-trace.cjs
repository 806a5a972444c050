// Preload for bench/e2e-tail.mjs (`node --require bench/loop-trace.cjs …`): records, in the server process,
// every garbage collection pause (PerformanceObserver 'gc': start, duration, kind) and every event-loop turn
// longer than LOOP_TRACE_MIN_MS (default 7; seen by a 2 ms interval timer arriving late), with absolute
// times (ms since the epoch), and writes them as JSON to `${LOOP_TRACE_OUT}.${pid}` when the process exits.
const { writeFileSync } = require('node:fs');
const { PerformanceObserver, performance } = require('node:perf_hooks');

const out = process.env.LOOP_TRACE_OUT;
if (out) {
  const origin = performance.timeOrigin;
  const minMs = Number(process.env.LOOP_TRACE_MIN_MS ?? 7);
  const gcs = [];
  const turns = [];
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) gcs.push([origin + e.startTime, e.duration, e.detail?.kind ?? 0]);
  }).observe({ entryTypes: ['gc'] });
  let last = performance.now();
  setInterval(() => {
    const now = performance.now();
    if (now - last > minMs) turns.push([origin + last, now - last]);
    last = now;
  }, 2).unref();
  process.on('exit', () => writeFileSync(`${out}.${process.pid}`, JSON.stringify({ gcs, turns })));
}
