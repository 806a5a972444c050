// Bytes allocated per function in a sampling heap profile (bench/heap-sample.cjs), largest first, and per
// unit of work when given how many units the run did (spans sent, say):
//   node bench/heap-top.mjs /tmp/tollgate-heap/heap-<pid>.json [units] [top=40]
// Allocation of a function inlined by V8 counts in the function it was inlined into.
import { readFileSync } from 'node:fs';

const [file, unitsArg, topArg] = process.argv.slice(2);
if (!file) throw new Error('usage: node bench/heap-top.mjs FILE.json [units] [top]');
const units = Number(unitsArg ?? 1);
const profile = JSON.parse(readFileSync(file, 'utf8'));
const bytes = new Map();
let total = 0;
const stack = [profile.head];
while (stack.length) {
  const n = stack.pop();
  const { functionName, url, lineNumber } = n.callFrame;
  const where = url
    ? `${url.replace(/^.*\/(node_modules|collector-processor|contracts)\//, '$1/')}:${lineNumber + 1}`
    : '';
  const key = `${functionName || '(anonymous)'} ${where}`.trim();
  bytes.set(key, (bytes.get(key) ?? 0) + n.selfSize);
  total += n.selfSize;
  stack.push(...n.children);
}
console.log(
  `${(total / 2 ** 20).toFixed(1)} MiB sampled` +
    (units > 1 ? `, ${(total / units).toFixed(0)} bytes per unit over ${units} units` : ''),
);
for (const [k, v] of [...bytes].sort((a, b) => b[1] - a[1]).slice(0, Number(topArg ?? 40)))
  console.log(`${((100 * v) / total).toFixed(1).padStart(5)}%  ${(v / units).toFixed(0).padStart(9)}  ${k}`);
