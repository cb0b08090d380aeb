/**
 * Configuration writes, one at a time. Every write validates against the configuration in
 * memory, then stores its document and records the change; two writes run side by side would
 * each validate against a configuration without the other (two creates in one layer could each
 * pass the overlap check and then own the same units). In a queue, each validates against what
 * the previous one left.
 *
 * Within a replica, a queue does it. Across the replicas sharing a storage, the admin writes
 * (`once`) and Analysis' allocation updates (`exclusively`) also hold a lease stored beside the
 * configuration, and reload the configuration under it when another replica changed it, so that
 * they validate against every replica's writes (an update cannot land between another replica's
 * deletion of its experiment and of the experiment's allocation).
 */
import type { RequestResults, ResponseCodec } from './store/request-results';

/** What makes admin writes one at a time across replicas. */
export interface AcrossReplicas {
  /**
   * Takes the storage lease, waiting for another holder up to `waitMs` (the replica's default
   * when not given); resolves with its release.
   */
  lease(waitMs?: number): Promise<() => Promise<void>>;
  /** Brings the configuration in memory up to the stored one. */
  refresh(): Promise<unknown>;
}

export class ConfigurationWrites {
  private chain: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly results: RequestResults,
    private readonly acrossReplicas?: AcrossReplicas,
  ) {}

  /** Runs `write` once every write this replica started before it has finished. */
  serially<T>(write: () => Promise<T>): Promise<T> {
    const run = this.chain.then(write, write);
    this.chain = run.catch(() => undefined);
    return run;
  }

  /**
   * {@link RequestResults.once} (idempotent by `request_id`), as one write of {@link exclusively}.
   */
  once<T>(
    method: string,
    requestId: string,
    codec: ResponseCodec<T>,
    mutation: () => Promise<T>,
  ): Promise<T> {
    return this.exclusively(() => this.results.once(method, requestId, codec, mutation));
  }

  /**
   * Runs `write` as one write of the queue, holding the lease across replicas when there is one
   * and validating against the configuration brought up to the stored one under it: for every
   * write that checks the configuration before storing (an admin RPC, an AllocationUpdate event).
   * `leaseWaitMs` bounds the wait for another replica's lease, during which this replica's queue
   * waits too: an event, which comes again anyway, waits less than a caller's RPC.
   */
  exclusively<T>(write: () => Promise<T>, leaseWaitMs?: number): Promise<T> {
    const across = this.acrossReplicas;
    if (across === undefined) return this.serially(write);
    return this.serially(async () => {
      const release = await across.lease(leaseWaitMs);
      try {
        await across.refresh();
        return await write();
      } finally {
        await release();
      }
    });
  }
}
