/**
 * A wake-up call for background loops (consumers, the buffered publisher): a loop with nothing to
 * do waits on the signal, with an optional time limit; whoever makes work notifies it.
 */
export class Signal {
  private waiters: (() => void)[] = [];

  /** Wakes every loop waiting now. */
  notify(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
  }

  /**
   * Resolves on the next `notify()`, or after `timeoutMs` when given. The timer is `unref`'d: a
   * loop that is only waiting never keeps the process alive.
   */
  async wait(timeoutMs?: number): Promise<void> {
    await new Promise<void>((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const wake = (): void => {
        if (timer !== undefined) clearTimeout(timer);
        resolve();
      };
      this.waiters.push(wake);
      if (timeoutMs !== undefined) {
        timer = setTimeout(
          () => {
            this.waiters = this.waiters.filter((waiter) => waiter !== wake);
            resolve();
          },
          Math.max(0, timeoutMs),
        );
        timer.unref();
      }
    });
  }
}
