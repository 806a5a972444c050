import { readdirSync, readFileSync } from 'node:fs';
import { getPriority, setPriority } from 'node:os';
import { basename } from 'node:path';

const NODE_THREAD = /^(libuv-worker|V8 )/;

/**
 * Lowers the CPU priority of the threads the embedded chDB engine starts in this process (its query and
 * insert pipelines, merges, background pools) by raising their Linux nice value, so that on a loaded machine
 * the main thread — which answers exports — and Node's own threads (V8's garbage collector helpers, libuv's
 * pool: spool fsyncs) run first, and chDB's landing and merges take the CPU time left over. Landing is
 * asynchronous to the answer, so it only waits; nothing acknowledged depends on it.
 *
 * Linux keeps a nice value per thread and lets a process raise its own threads' values without privilege
 * (lowering one needs CAP_SYS_NICE). ClickHouse's own settings for this (`os_threads_nice_value_query`,
 * `…_materialized_view`, `…_merge_mutate`) are no-ops without CAP_SYS_NICE, even for positive values
 * (ClickHouse src/Common/OSThreadNiceValue.cpp), which a container's default capabilities do not include.
 * So Tollgate does it from Node: every `intervalMs` it lists `/proc/self/task` and sets `nice` on each thread
 * it has not set yet whose name is not one of Node's. chDB names its threads (`ThreadPool`,
 * `QueryCompPipeEx`, `MergeMutate`, `BgSchPool`, …); Node's threads carry the executable's name (`node`)
 * or, in newer releases, `libuv-worker` / `V8 …`. A chDB thread still under the executable's name is left
 * until it names itself (the next scan). Threads are reniced once: a thread that exits takes its value with
 * it, and its id is forgotten. The first scan runs at once; `stop` ends them.
 */
export function startThreadNice(nice: number, intervalMs = 1000): { stop(): void } {
  if (!Number.isInteger(nice) || nice < 1 || nice > 19)
    throw new RangeError(`nice must be 1..19, got ${nice}`);
  const self = process.pid;
  // the kernel names a process's threads after its executable (15 bytes); Node does not rename its own
  const nodeName = basename(process.execPath).slice(0, 15);
  const done = new Set<number>();
  let timer: NodeJS.Timeout | undefined;
  const scan = (): void => {
    let tids: string[];
    try {
      tids = readdirSync('/proc/self/task');
    } catch {
      clearInterval(timer); // not Linux, or /proc not mounted: nothing to do
      return;
    }
    const alive = new Set<number>();
    for (const t of tids) {
      const tid = Number(t);
      alive.add(tid);
      if (tid === self || done.has(tid)) continue;
      let name: string;
      try {
        name = readFileSync(`/proc/self/task/${t}/comm`, 'utf8').trimEnd();
      } catch {
        continue; // the thread exited
      }
      if (name === nodeName || NODE_THREAD.test(name)) continue;
      try {
        // only ever raised: a thread already nicer (the whole process started under `nice`) is left alone
        if (getPriority(tid) < nice) setPriority(tid, nice);
        done.add(tid);
      } catch {
        // the thread exited between the listing and now
      }
    }
    for (const tid of done) if (!alive.has(tid)) done.delete(tid);
  };
  timer = setInterval(scan, intervalMs).unref();
  scan();
  return { stop: () => clearInterval(timer) };
}
