/**
 * A background job: `run` soon after start (after `firstMs`) and then every `everyMs`, never two runs at once
 * (a tick that finds the previous run still going is skipped). `run` handles its own errors. The timers do not
 * keep the process alive; `stop()` clears them and waits for a run under way.
 */
export function startPeriodic(
  run: () => Promise<void>,
  opts: { everyMs: number; firstMs: number },
): { stop(): Promise<void> } {
  let running: Promise<void> | undefined;
  const tick = () => {
    if (running) return;
    running = run().finally(() => {
      running = undefined;
    });
  };
  const first = setTimeout(tick, opts.firstMs);
  const timer = setInterval(tick, opts.everyMs);
  first.unref();
  timer.unref();
  return {
    async stop() {
      clearTimeout(first);
      clearInterval(timer);
      await running;
    },
  };
}
