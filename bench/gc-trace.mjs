// Summarizes V8's `--trace-gc-nvp` output of a server: what each young-generation collection (scavenge)
// copied and how long it paused the main thread. Recipe (docs/operations.md, "Profiling the ingest path"):
//   BENCH_SERVER_STDOUT=/tmp/gc.log BENCH_NODE_ARGS=--trace-gc-nvp BENCH_SERVERS=full node bench/e2e.mjs
//   node bench/gc-trace.mjs /tmp/gc.log [more logs…]
// Only scavenges that follow at least MIN_ALLOCATED_MB (10) of allocation are counted: the ones of a loaded
// server, not of its start. Per log: their number, and the median of the main thread's pause, the helper
// threads' parallel work, the bytes allocated since the last one, the bytes they copied within the young
// generation (survived) and into the old one (promoted); then mark-compacts and their pauses.
import { readFileSync } from 'node:fs';
import { table } from './lib.mjs';

const MIN_ALLOCATED = Number(process.env.MIN_ALLOCATED_MB ?? 10) * 1e6;
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? (s[(s.length - 1) >> 1] + s[s.length >> 1]) / 2 : Number.NaN;
};

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error('usage: node bench/gc-trace.mjs <--trace-gc-nvp log>…');
  process.exit(2);
}
const rows = [];
for (const file of files) {
  const scavenges = [];
  const majors = [];
  for (const line of readFileSync(file, 'utf8').split('\n')) {
    if (!line.includes(' gc=')) continue;
    const f = Object.fromEntries([...line.matchAll(/(\S+)=(\S+)/g)].map((m) => [m[1], m[2]]));
    if (f.gc === 's') {
      if (Number(f.allocated) >= MIN_ALLOCATED) scavenges.push(f);
    } else if (f.gc === 'mc' || f.gc === 'mmc') majors.push(f);
  }
  const m = (key, scale = 1) => (median(scavenges.map((s) => Number(s[key]))) / scale).toFixed(2);
  const sum = (list) => list.reduce((t, s) => t + Number(s.pause), 0).toFixed(0);
  rows.push([
    file,
    String(scavenges.length),
    m('pause'),
    m('background.scavenge.parallel'),
    m('allocated', 1e6),
    m('new_space_survived', 1e6),
    m('promoted', 1e6),
    sum(scavenges),
    String(majors.length),
    sum(majors),
  ]);
}
console.log(
  table([
    [
      'log',
      'scavenges',
      'pause ms',
      'helpers ms',
      'allocated MB',
      'survived MB',
      'promoted MB',
      'all pauses ms',
      'mark-compacts',
      'their pauses ms',
    ],
    ...rows,
  ]),
);
