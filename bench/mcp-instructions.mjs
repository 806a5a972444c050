// Instructions per tool call, counted by valgrind's callgrind: a measure of the SDK's per-call work that a
// shared machine's load does not move (CPU time on two shared cores moves by more than the SDK costs).
// Each variant runs the loop of bench/mcp-overhead-direct.mjs (`--child`) twice under callgrind, with
// `--short` and `--long` calls, and `node --predictable` (garbage collection and compilation on the main
// thread, no timing-dependent concurrency); the difference of the two totals divided by the difference of
// the calls is the steady-state count per call, without start-up. It is split into garbage collection,
// compilation (parser, bytecode, TurboFan) and the rest (the program: JIT code, builtins, runtime). The GC
// share still moves between runs (whether a mark-compact falls inside the window); the rest is the stable
// part. Needs valgrind (`apt-get install valgrind`); a 1.x run takes a few minutes per variant.
//
//   node bench/mcp-instructions.mjs [--line 1|2] [--short N] [--long N] [--variants plain,tollgate] [--base DIR]
//                                   [--keep DIR]
//
// `--keep DIR` keeps the callgrind files in DIR (cg.<variant>.<calls>) and runs node with --perf-basic-prof,
// keeping each run's map of JIT code (cg.<variant>.<calls>.map), so bench/callgrind-functions.mjs can name
// the JIT-compiled JS functions that callgrind only knows by address.
//
// 2.x requests cost ~30× a 1.x call, so its affordable windows (defaults 300 → 900) still include JIT
// warm-up: read 2.x counts as indicative only.
import { execFileSync, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const SELF = fileURLToPath(import.meta.url);
const DIRECT = resolve(SELF, '../mcp-overhead-direct.mjs');
const WARMUP = 3000; // as in mcp-overhead-direct.mjs

const GC =
  /Mark|Scaveng|Sweep|Evacuat|RecordMigrated|LiveObjectRange|Heap::|HeapObject::SizeFromMap|RawMigrate|BodyDescriptor|MemoryChunk|Compactor|Remembered|SlotSet|Worklist|RecordWrite|MarkingBarrier|Pretenuring|GlobalHandles|SemiSpace|PagedSpace|FreeList|Unmapper|ShouldBePromoted|ArrayBufferSweeper|heap::base/;
const COMPILE =
  /compiler::|Zone|Pipeline|std::_Rb_tree|std::_Hashtable|Parser|Scanner|AstValue|Bytecode|Interpreter::|CodeGenerator|Assembler/;

/** Instructions by category of one callgrind run of `calls` calls. */
function count(dir, variant, line, calls, base) {
  const out = join(dir, `cg.${variant}.${calls}`);
  const r = spawnSync(
    'valgrind',
    [
      '--tool=callgrind',
      `--callgrind-out-file=${out}`,
      process.execPath,
      '--predictable',
      // --perf-basic-prof also writes V8's log: into DIR, not the working directory
      ...(keep
        ? [
            '--perf-basic-prof',
            '--no-logfile-per-isolate',
            `--logfile=${join(keep, `v8.${variant}.${calls}.log`)}`,
          ]
        : []),
      DIRECT,
      '--child',
      variant,
      String(line),
      String(calls),
      base ?? '',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'], maxBuffer: 64 << 20 },
  );
  if (r.status !== 0) throw new Error(`callgrind run failed: ${r.stderr?.toString().slice(-500)}`);
  if (keep) {
    copyFileSync(out, join(keep, `cg.${variant}.${calls}`));
    copyFileSync(`/tmp/perf-${r.pid}.map`, join(keep, `cg.${variant}.${calls}.map`));
    rmSync(`/tmp/perf-${r.pid}.map`, { force: true });
  }
  const text = execFileSync('callgrind_annotate', ['--threshold=100', out], {
    maxBuffer: 256 << 20,
  }).toString();
  const sums = { gc: 0, compile: 0, rest: 0 };
  for (const l of text.split('\n')) {
    const m = /^\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)$/.exec(l);
    if (!m || m[2].includes('PROGRAM TOTALS')) continue;
    const n = Number(m[1].replaceAll(',', ''));
    sums[GC.test(m[2]) ? 'gc' : COMPILE.test(m[2]) ? 'compile' : 'rest'] += n;
  }
  return sums;
}

const argv = process.argv.slice(2);
const opt = (name, d) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : d;
};
const line = Number(opt('--line', 1));
const short = Number(opt('--short', line === 2 ? 300 : 4000));
const long = Number(opt('--long', line === 2 ? 900 : 12000));
const base = opt('--base') ? resolve(opt('--base')) : undefined;
const keep = opt('--keep') ? resolve(opt('--keep')) : undefined;
if (keep) mkdirSync(keep, { recursive: true });
const variants = (opt('--variants') ?? (base ? 'plain,tollgate,base' : 'plain,tollgate')).split(',');
const total = (n) => n + Math.min(WARMUP, n);
const dir = mkdtempSync(join(tmpdir(), 'mcp-instr-'));
const rows = [];
try {
  let plainRest;
  for (const v of variants) {
    const a = count(dir, v, line, short, base);
    const b = count(dir, v, line, long, base);
    const per = (k) => (b[k] - a[k]) / (total(long) - total(short));
    const row = { gc: per('gc'), compile: per('compile'), rest: per('rest') };
    if (v === 'plain') plainRest = row.rest;
    rows.push({
      line: `${line}.x`,
      variant: v,
      'instr/call': Math.round(row.gc + row.compile + row.rest),
      'rest (program)': Math.round(row.rest),
      '+rest vs plain': plainRest === undefined ? '-' : Math.round(row.rest - plainRest),
      gc: Math.round(row.gc),
      compile: Math.round(row.compile),
    });
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
console.log(
  `callgrind, node --predictable, calls ${total(short)} → ${total(long)}; ${new Date().toISOString()}`,
);
console.table(rows);
