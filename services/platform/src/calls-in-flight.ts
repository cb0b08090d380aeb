/**
 * The calls of this process still running, by key, so that a retry arriving while its first call
 * runs (a client whose deadline is shorter than the work) waits for it instead of running beside
 * it. Used for idempotent mutations (`RequestResults`) and Assignment's `Apply`. Replicas do not
 * share it.
 */
export class CallsInFlight {
  private readonly running = new Map<string, Promise<unknown>>();

  /** Resolves once no call runs under `key` (each one settled, whatever its outcome). */
  async settled(key: string): Promise<void> {
    for (let call = this.running.get(key); call; call = this.running.get(key)) {
      await call.catch(() => undefined);
    }
  }

  /** Whether a call runs under `key` (one may have started while the caller awaited). */
  has(key: string): boolean {
    return this.running.has(key);
  }

  /** Runs `call` under `key`; the caller found none running there (see `settled`). */
  async run<T>(key: string, call: () => Promise<T>): Promise<T> {
    const running = call();
    this.running.set(key, running);
    try {
      return await running;
    } finally {
      this.running.delete(key);
    }
  }
}
