// Preload for `tollgate start` (node -r): samples every allocation of the process's main thread, including
// the objects garbage collection has already freed, and writes the profile when the process gets SIGTERM.
//   BENCH_SERVERS=full BENCH_NODE_ARGS="-r ./bench/heap-sample.cjs" node bench/e2e.mjs
//   node bench/heap-top.mjs /tmp/tollgate-heap/heap-<pid>.json <spans sent>
// HEAP_SAMPLE_DIR sets where the profile goes (default /tmp/tollgate-heap), HEAP_SAMPLE_BYTES the mean
// bytes between samples (default 1024). The sampling costs CPU: read bytes, not times, from such a run.
const inspector = require('node:inspector');
const { mkdirSync, writeFileSync } = require('node:fs');
const { join } = require('node:path');

const dir = process.env.HEAP_SAMPLE_DIR || '/tmp/tollgate-heap';
const session = new inspector.Session();
session.connect();
session.post('HeapProfiler.enable');
session.post('HeapProfiler.startSampling', {
  samplingInterval: Number(process.env.HEAP_SAMPLE_BYTES || 1024),
  includeObjectsCollectedByMajorGC: true,
  includeObjectsCollectedByMinorGC: true,
});
let written = false;
// before Tollgate's own handler: an in-process session answers synchronously, so the profile is on disk
// before the shutdown starts
process.prependListener('SIGTERM', () => {
  if (written) return;
  written = true;
  session.post('HeapProfiler.stopSampling', (err, res) => {
    if (err) return;
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, `heap-${process.pid}.json`), JSON.stringify(res.profile));
  });
});
