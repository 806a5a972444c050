// Self time per function of a V8 .cpuprofile (from `node --cpu-prof`), largest first:
//   node bench/profile-top.mjs /tmp/prof/CPU.….cpuprofile [top=40]
// Shares are of the sampled time excluding (idle); `(garbage collector)` is what allocation costs.
import { readFileSync } from 'node:fs';

const [file, topArg] = process.argv
  .slice(2)
  .filter((a, i, all) => a !== '--lines' && all[i - 1] !== '--lines');
if (!file) throw new Error('usage: node bench/profile-top.mjs FILE.cpuprofile [top]');
const prof = JSON.parse(readFileSync(file, 'utf8'));
const byId = new Map(prof.nodes.map((n) => [n.id, n]));
const self = new Map();
for (let i = 0; i < prof.samples.length; i++) {
  const n = byId.get(prof.samples[i]);
  const { functionName, url, lineNumber } = n.callFrame;
  const where = url
    ? `${url.replace(/^.*\/(node_modules|collector-processor|contracts)\//, '$1/')}:${lineNumber + 1}`
    : '';
  const key = `${functionName || '(anonymous)'} ${where}`.trim();
  self.set(key, (self.get(key) ?? 0) + (prof.timeDeltas[i] ?? 0));
}
const idle = self.get('(idle)') ?? 0;
self.delete('(idle)');
const busy = [...self.values()].reduce((a, b) => a + b, 0);
const wall = prof.endTime - prof.startTime;
console.log(
  `busy ${(busy / 1000).toFixed(0)} ms of ${(wall / 1000).toFixed(0)} ms (idle ${(idle / 1000).toFixed(0)} ms)`,
);
for (const [k, v] of [...self].sort((a, b) => b[1] - a[1]).slice(0, Number(topArg ?? 40)))
  console.log(`${((100 * v) / busy).toFixed(1).padStart(5)}%  ${(v / 1000).toFixed(0).padStart(6)} ms  ${k}`);

// `--lines NAME`: sampled lines inside functions called NAME (V8's positionTicks; inlined callees count
// on the caller's line that called them).
const linesOf = process.argv.indexOf('--lines');
if (linesOf > 0) {
  const name = process.argv[linesOf + 1];
  const ticks = new Map();
  for (const n of prof.nodes)
    if (n.callFrame.functionName === name)
      for (const t of n.positionTicks ?? []) ticks.set(t.line, (ticks.get(t.line) ?? 0) + t.ticks);
  const total = [...ticks.values()].reduce((a, b) => a + b, 0);
  console.log(`\nlines of ${name} (${total} ticks):`);
  for (const [line, t] of [...ticks].sort((a, b) => b[1] - a[1]).slice(0, 25))
    console.log(`${((100 * t) / total).toFixed(1).padStart(5)}%  line ${line}`);
}
