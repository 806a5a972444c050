// `npm run bench`: runs every benchmark in turn (each prints its own table of ratios against the
// baseline or peer it names) — or only those named: `npm run bench -- e2e enforcement`.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT } from './lib.mjs';

const ALL = [
  ['e2e', ['node', 'bench/e2e.mjs']],
  ['decode', ['node', 'bench/decode.mjs']],
  ['large-exports', ['node', 'bench/large-exports.mjs']],
  ['grpc', ['node', 'bench/grpc.mjs']],
  ['landing', ['node', 'bench/landing.mjs']],
  ['enforcement', ['node', 'bench/enforcement.mjs']],
  ['credits', ['node', 'bench/credits.mjs']],
  ['kill-simulation', ['node', 'bench/kill-simulation.mjs']],
  ['overage', ['node', 'bench/overage.mjs']],
  ['mcp-overhead', ['node', 'bench/mcp-overhead.mjs']],
  ['analytics', ['node', 'bench/analytics.mjs']],
  ['reads-under-ingest', ['node', 'bench/reads-under-ingest.mjs']],
  ['stripe-sync', ['node', 'bench/stripe-sync.mjs']],
  ['kong', ['bash', 'kong/bench/run.sh']],
];
const wanted = process.argv.slice(2);
let failed = 0;
for (const [name, [cmd, file, ...args]] of ALL) {
  if (wanted.length && !wanted.includes(name)) continue;
  if (!existsSync(join(ROOT, file))) {
    console.log(`\n## ${name}: ${file} not present, skipped`);
    continue;
  }
  console.log(`\n## ${name}`);
  const r = spawnSync(cmd, [file, ...args], { cwd: ROOT, stdio: 'inherit' });
  if (r.status !== 0) {
    failed++;
    console.log(`## ${name} failed (exit ${r.status})`);
  }
}
process.exit(failed ? 1 : 0);
