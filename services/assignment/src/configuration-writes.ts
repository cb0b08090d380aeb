/**
 * The configuration writes of one replica, one at a time. Every write validates against the
 * configuration in memory, then stores its document and records the change; two writes run side
 * by side would each validate against a configuration without the other (two creates in one
 * layer could each pass the overlap check and then own the same units). In a queue, each
 * validates against what the previous one left.
 */
import type { RequestResults, ResponseCodec } from './store/request-results';

export class ConfigurationWrites {
  private chain: Promise<unknown> = Promise.resolve();

  constructor(private readonly results: RequestResults) {}

  /** Runs `write` once every write this replica started before it has finished. */
  serially<T>(write: () => Promise<T>): Promise<T> {
    const run = this.chain.then(write, write);
    this.chain = run.catch(() => undefined);
    return run;
  }

  /** {@link RequestResults.once} (idempotent by `request_id`), as one write of the queue. */
  once<T>(
    method: string,
    requestId: string,
    codec: ResponseCodec<T>,
    mutation: () => Promise<T>,
  ): Promise<T> {
    return this.serially(() => this.results.once(method, requestId, codec, mutation));
  }
}
