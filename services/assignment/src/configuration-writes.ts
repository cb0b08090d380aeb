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
 *
 * A replica reloads under the lease when the stored version moved, so a write that stored a
 * change but could not bump the version (or may have: storage failing mid-write) releases the
 * lease unsettled, and the next holder, on whichever replica, reloads everything (see
 * {@link leftUnannounced}).
 */
import {
  AbortedError,
  AlreadyExistsError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
} from '../../platform/src/errors';
import { SerialWrites, type AcrossReplicas } from '../../platform/src/storage/write-lease';
import type { LiveConfiguration } from './live-configuration';
import type { IdentifiedRequest, RequestResults, ResponseCodec } from './store/request-results';

export type { AcrossReplicas };

/** The admin writes and allocation updates: {@link SerialWrites}, idempotent by `request_id`. */
export class ConfigurationWrites extends SerialWrites {
  constructor(
    private readonly results: RequestResults,
    acrossReplicas?: AcrossReplicas,
  ) {
    super(acrossReplicas);
  }

  /**
   * {@link RequestResults.once} (idempotent by `request_id`), as one write of `exclusively`.
   */
  once<T>(
    method: string,
    request: IdentifiedRequest,
    codec: ResponseCodec<T>,
    mutation: () => Promise<T>,
  ): Promise<T> {
    return this.exclusively(() => this.results.once(method, request, codec, mutation));
  }
}

/**
 * Whether a configuration write may have stored a change the other replicas will not reload for:
 * its version bump failed, or it failed otherwise than by a refusal (a storage write that timed
 * out may have been made). A refusal (a violation, a stale etag, an id missing or taken) comes
 * before anything is stored, or is storage refusing the write.
 */
export function leftUnannounced(configuration: LiveConfiguration, failure: unknown): boolean {
  if (configuration.hasUnannouncedChange()) return true;
  if (failure === undefined) return false;
  return !(
    failure instanceof InvalidArgumentError ||
    failure instanceof FailedPreconditionError ||
    failure instanceof NotFoundError ||
    failure instanceof AlreadyExistsError ||
    failure instanceof AbortedError
  );
}
