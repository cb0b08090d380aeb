/**
 * Runs of a read (a reload from storage) for callers that each need one begun after they asked,
 * since what made them ask may have been stored after a run under way began. Callers share the
 * run that has not begun yet; one arriving while a run is under way gets the next, which begins
 * when that one ends. A run that fails fails its callers; the next caller starts another.
 */
export class FreshRuns {
  /** The run that has not begun yet, shared by its callers. */
  private queued: Promise<void> | undefined;
  /** The last run, settled or not. */
  private last: Promise<void> = Promise.resolve();

  constructor(private readonly run: () => Promise<void>) {}

  /** Settles with a run begun after this call. */
  afterNow(): Promise<void> {
    if (this.queued === undefined) {
      const queued = this.last.then(() => {
        this.queued = undefined;
        return this.run();
      });
      this.queued = queued;
      this.last = queued.then(
        () => undefined,
        () => undefined,
      );
    }
    return this.queued;
  }
}
