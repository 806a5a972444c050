// What the resident memory of `tollgate start` was made of at its peak, from bench/memory-parts.cjs's samples:
//   node bench/memory-parts.mjs /tmp/tollgate-memory/memory-<pid>.jsonl [more files]
// Per file: the sample with the highest RSS split into file-backed pages (libchdb's and Node's code and data
// touched so far), V8's heap (committed), Buffers (ArrayBuffers) and the rest of the anonymous memory (chDB's
// allocations and Node's own), in MiB; then the highest value of each part over the run (they need not peak
// together).
import { readFileSync } from 'node:fs';
import { table } from './lib.mjs';

const files = process.argv.slice(2);
if (files.length === 0) throw new Error('usage: node bench/memory-parts.mjs memory-<pid>.jsonl [more]');
const rest = (s) => s.anon - s.heapCommitted - s.arrayBuffers;
const rows = [
  [
    'file',
    'at the peak: RSS',
    'file-backed',
    'V8 heap committed (in use)',
    'Buffers',
    'rest of anon',
    'peak of each: heap',
    'Buffers',
    'rest',
  ],
];
for (const f of files) {
  const samples = readFileSync(f, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l));
  if (samples.length === 0) continue;
  const top = samples.reduce((a, b) => (b.rss > a.rss ? b : a));
  const max = (pick) => Math.max(...samples.map(pick)).toFixed(1);
  rows.push([
    f.split('/').pop(),
    top.rss.toFixed(1),
    top.file.toFixed(1),
    `${top.heapCommitted.toFixed(1)} (${top.heapUsed.toFixed(1)})`,
    top.arrayBuffers.toFixed(1),
    rest(top).toFixed(1),
    max((s) => s.heapCommitted),
    max((s) => s.arrayBuffers),
    max(rest),
  ]);
}
console.log(table(rows));
