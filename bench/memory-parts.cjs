// Preload for `tollgate start` (node -r): what the process's resident memory is made of, over time. Every
// MEMORY_PARTS_MS (default 100) it appends one JSON line to <MEMORY_PARTS_DIR>/memory-<pid>.jsonl (default
// dir /tmp/tollgate-memory): RSS and its peak (VmRSS, VmHWM), its anonymous and file-backed parts (RssAnon,
// RssFile), V8's heap committed and in use, external memory and the ArrayBuffers (Buffers) in it, in MiB.
//   BENCH_SERVERS=full BENCH_NODE_ARGS="-r ./bench/memory-parts.cjs" node bench/e2e.mjs
//   node bench/memory-parts.mjs /tmp/tollgate-memory/memory-<pid>.jsonl
// With MEMORY_PARTS_BUFFERS=1 it also counts every Buffer of 8 KiB or more by the code that allocated it
// (Buffer.alloc*, which Buffer.concat calls, and Buffer.from), and writes the table to memory-<pid>.buffers.txt when the
// process gets SIGTERM. That wraps Buffer's own functions: it costs CPU, so read bytes, not times, then.
const { appendFileSync, mkdirSync, readFileSync, writeFileSync } = require('node:fs');
const { join } = require('node:path');
const v8 = require('node:v8');

const dir = process.env.MEMORY_PARTS_DIR || '/tmp/tollgate-memory';
mkdirSync(dir, { recursive: true });
const file = join(dir, `memory-${process.pid}.jsonl`);
const MiB = 1048576;

function sample() {
  const status = readFileSync('/proc/self/status', 'utf8');
  const kb = (name) => Number(new RegExp(`${name}:\\s+(\\d+) kB`).exec(status)?.[1] ?? 0) / 1024;
  const m = process.memoryUsage();
  const h = v8.getHeapStatistics();
  const line = {
    t: Date.now(),
    rss: kb('VmRSS'),
    hwm: kb('VmHWM'),
    anon: kb('RssAnon'),
    file: kb('RssFile'),
    heapCommitted: h.total_heap_size / MiB,
    heapUsed: m.heapUsed / MiB,
    external: m.external / MiB,
    arrayBuffers: m.arrayBuffers / MiB,
  };
  appendFileSync(file, `${JSON.stringify(line)}\n`);
}
setInterval(sample, Number(process.env.MEMORY_PARTS_MS || 100)).unref();

if (process.env.MEMORY_PARTS_BUFFERS === '1') {
  const tally = new Map();
  const count = (bytes, how) => {
    if (bytes < 8192) return;
    const where = (new Error().stack ?? '')
      .split('\n')
      .slice(3, 6)
      .map((l) => l.trim().replace(/^at /, ''))
      .join(' < ');
    const key = `${how} ${where}`;
    const t = tally.get(key) ?? { bytes: 0, n: 0 };
    t.bytes += bytes;
    t.n++;
    tally.set(key, t);
  };
  for (const name of ['alloc', 'allocUnsafe', 'allocUnsafeSlow']) {
    const original = Buffer[name];
    Buffer[name] = function (size, ...rest) {
      count(size, name);
      return original.call(this, size, ...rest);
    };
  }
  const from = Buffer.from;
  Buffer.from = function (value, a, b) {
    const out = from.call(this, value, a, b);
    // a view of an existing ArrayBuffer allocates nothing
    if (!(value instanceof ArrayBuffer || value instanceof SharedArrayBuffer)) count(out.length, 'from');
    return out;
  };
  process.prependListener('SIGTERM', () => {
    const rows = [...tally].sort((a, b) => b[1].bytes - a[1].bytes).slice(0, 30);
    const lines = rows.map(
      ([k, t]) => `${(t.bytes / MiB).toFixed(1).padStart(9)} MiB ${String(t.n).padStart(8)}× ${k}`,
    );
    writeFileSync(join(dir, `memory-${process.pid}.buffers.txt`), `${lines.join('\n')}\n`);
  });
}
