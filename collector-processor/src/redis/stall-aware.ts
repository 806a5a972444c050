/**
 * ioredis's `commandTimeout` with the process's own stalls left out. ioredis arms a timer per command
 * (Command.prototype.setTimeout, ioredis 5 `built/Command.js`) and rejects the command when it fires. After the
 * event loop was blocked for longer than the timeout (decoding a hostile export can take seconds), the timer
 * fires in the timers phase, before the poll phase reads the reply Redis sent in time: the command failed as
 * "Redis unreachable", and the calls of every tenant in flight were rated fail-open (unenforced). Here the
 * timer decides one turn of the loop later (setImmediate runs after the poll phase), when a reply that is
 * already there has been read and has resolved the command.
 */

interface TimedCommand {
  isResolved: boolean;
  reject(err: Error): void;
  _commandTimeoutTimer?: NodeJS.Timeout;
  setTimeout(ms: number): void;
}

function stallAwareTimeout(this: TimedCommand, ms: number): void {
  if (this._commandTimeoutTimer) return;
  this._commandTimeoutTimer = setTimeout(() => {
    setImmediate(() => {
      if (!this.isResolved) this.reject(new Error('Command timed out'));
    });
  }, ms);
}

/** Makes the command timeout of a client (a `Redis` or a `Cluster`) ignore the process's own stalls. */
export function stallAwareCommandTimeout<T extends object>(client: T): T {
  const c = client as unknown as { sendCommand: (command: TimedCommand, ...rest: unknown[]) => unknown };
  const send = c.sendCommand.bind(client);
  c.sendCommand = (command: TimedCommand, ...rest: unknown[]) => {
    if (command && typeof command === 'object') command.setTimeout = stallAwareTimeout;
    return send(command, ...rest);
  };
  return client;
}
