// Where the per-call instructions of bench/mcp-instructions.mjs go, function by function: reads the files
// that `node bench/mcp-instructions.mjs --keep DIR` kept and prints, per function, the self instructions
// per call of variant A and variant B and their difference (largest first). The per-call count is the
// difference between the long and the short run over the calls in between, as in mcp-instructions.mjs.
// JIT-compiled JS functions, which callgrind knows only by address, are named from the run's
// --perf-basic-prof map ("JS:*name file:line:col"; `*` optimized, `^` baseline); addresses no map covers
// (stubs, regexps compiled later) fall under "JIT (unnamed)".
//
//   node bench/callgrind-functions.mjs DIR [--a plain] [--b tollgate] [--short 4000] [--long 12000] [--top 40]
//                                      [--all]
//
// Garbage collection and compilation functions (the categories mcp-instructions.mjs leaves out of its
// "program" column) are left out unless `--all`. Read single rows with care: garbage collection and compilation move between runs (see mcp-instructions.mjs).
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const argv = process.argv.slice(2);
const opt = (name, d) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : d;
};
const dir = argv[0];
if (!dir || dir.startsWith('--')) {
  console.error(
    'usage: node bench/callgrind-functions.mjs DIR [--a plain] [--b tollgate] [--short N] [--long N]',
  );
  process.exit(2);
}
const [a, b] = [opt('--a', 'plain'), opt('--b', 'tollgate')];
const [short, long] = [Number(opt('--short', 4000)), Number(opt('--long', 12000))];
const top = Number(opt('--top', 40));
const WARMUP = 3000; // as in mcp-overhead-direct.mjs
const total = (n) => n + Math.min(WARMUP, n);
const all = argv.includes('--all');
// as in mcp-instructions.mjs
const GC =
  /Mark|Scaveng|Sweep|Evacuat|RecordMigrated|LiveObjectRange|Heap::|HeapObject::SizeFromMap|RawMigrate|BodyDescriptor|MemoryChunk|Compactor|Remembered|SlotSet|Worklist|RecordWrite|MarkingBarrier|Pretenuring|GlobalHandles|SemiSpace|PagedSpace|FreeList|Unmapper|ShouldBePromoted|ArrayBufferSweeper|heap::base/;
const COMPILE =
  /compiler::|Zone|Pipeline|std::_Rb_tree|std::_Hashtable|Parser|Scanner|AstValue|Bytecode|Interpreter::|CodeGenerator|Assembler/;

/** The JIT code map of one run: sorted [start, size, name]. */
function jitMap(file) {
  if (!existsSync(`${file}.map`)) return [];
  const rows = readFileSync(`${file}.map`, 'utf8')
    .trim()
    .split('\n')
    .map((l) => {
      const [start, size, ...name] = l.split(' ');
      return [Number.parseInt(start, 16), Number.parseInt(size, 16), name.join(' ')];
    });
  return rows.sort((x, y) => x[0] - y[0]);
}

function nameAt(map, addr) {
  let lo = 0;
  let hi = map.length - 1;
  let at = -1;
  while (lo <= hi) {
    const m = (lo + hi) >> 1;
    if (map[m][0] <= addr) {
      at = m;
      lo = m + 1;
    } else hi = m - 1;
  }
  return at >= 0 && addr < map[at][0] + map[at][1] ? map[at][2] : 'JIT (unnamed)';
}

/** Self instructions by function name of one callgrind file. */
function selfCost(file) {
  const map = jitMap(file);
  const text = execFileSync('callgrind_annotate', ['--threshold=100', file], {
    maxBuffer: 256 << 20,
  }).toString();
  const out = new Map();
  for (const l of text.split('\n')) {
    const m = /^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)$/.exec(l);
    if (!m || m[2].includes('PROGRAM TOTALS')) continue;
    // a recursive call's frames carry a suffix ('2): counted with the function
    let name = m[2]
      .replace(/ \[[^\]]*\]$/, '')
      .replace(/^\?\?\?:/, '')
      .replace(/'\d+$/, '');
    const jit = /^0x([0-9a-f]+)$/.exec(name);
    if (jit) name = nameAt(map, Number.parseInt(jit[1], 16)).replace(`file://${process.cwd()}/`, '');
    name = name.replace(`${process.cwd()}/`, '');
    out.set(name, (out.get(name) ?? 0) + Number(m[1].replaceAll(',', '')));
  }
  return out;
}

function perCall(variant) {
  const s = selfCost(join(dir, `cg.${variant}.${short}`));
  const l = selfCost(join(dir, `cg.${variant}.${long}`));
  const out = new Map();
  for (const k of new Set([...s.keys(), ...l.keys()]))
    out.set(k, ((l.get(k) ?? 0) - (s.get(k) ?? 0)) / (total(long) - total(short)));
  return out;
}

const A = perCall(a);
const B = perCall(b);
const rows = [];
let sumA = 0;
let sumB = 0;
for (const k of new Set([...A.keys(), ...B.keys()])) {
  if (!all && (GC.test(k) || COMPILE.test(k))) continue;
  const x = A.get(k) ?? 0;
  const y = B.get(k) ?? 0;
  sumA += x;
  sumB += y;
  rows.push({ function: k.slice(0, 110), [a]: Math.round(x), [b]: Math.round(y), diff: Math.round(y - x) });
}
rows.sort((x, y) => Math.abs(y.diff) - Math.abs(x.diff));
console.log(
  `${all ? 'instructions' : 'program instructions'} per call, ${a} ${Math.round(sumA)}, ${b} ${Math.round(sumB)}, difference ${Math.round(sumB - sumA)}`,
);
console.table(rows.slice(0, top));
