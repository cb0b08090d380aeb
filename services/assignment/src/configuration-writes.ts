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
  UnavailableError,
} from '../../platform/src/errors';
import { SerialWrites, type AcrossReplicas } from '../../platform/src/storage/write-lease';
import {
  ConcludeExperimentRequest,
  CreateExperimentRequest,
  CreateHoldoutRequest,
  CreateLayerRequest,
  DeleteExperimentRequest,
  DeleteHoldoutRequest,
  DeleteLayerRequest,
  StartExperimentRequest,
  StopExperimentRequest,
  UpdateAllocationRequest,
  UpdateExperimentRequest,
  UpdateHoldoutRequest,
  UpdateLayerRequest,
} from '../../../gen/ts/tandem/assignment/v1/assignment_service';
import type { LiveConfiguration } from './live-configuration';
import type { RequestResults, RequestType, ResponseCodec } from './store/request-results';

export type { AcrossReplicas };

/** The request message of every write, by method. */
export interface WriteRequests {
  readonly CreateLayer: CreateLayerRequest;
  readonly UpdateLayer: UpdateLayerRequest;
  readonly DeleteLayer: DeleteLayerRequest;
  readonly CreateExperiment: CreateExperimentRequest;
  readonly UpdateExperiment: UpdateExperimentRequest;
  readonly DeleteExperiment: DeleteExperimentRequest;
  readonly StartExperiment: StartExperimentRequest;
  readonly StopExperiment: StopExperimentRequest;
  readonly ConcludeExperiment: ConcludeExperimentRequest;
  readonly CreateHoldout: CreateHoldoutRequest;
  readonly UpdateHoldout: UpdateHoldoutRequest;
  readonly DeleteHoldout: DeleteHoldoutRequest;
  readonly UpdateAllocation: UpdateAllocationRequest;
}

/**
 * The request types, so that a `request_id` reused for another request is told apart from a
 * retry by every value the write sees (see `RequestResults`).
 */
const REQUEST_TYPES: { readonly [M in keyof WriteRequests]: RequestType<WriteRequests[M]> } = {
  CreateLayer: CreateLayerRequest,
  UpdateLayer: UpdateLayerRequest,
  DeleteLayer: DeleteLayerRequest,
  CreateExperiment: CreateExperimentRequest,
  UpdateExperiment: UpdateExperimentRequest,
  DeleteExperiment: DeleteExperimentRequest,
  StartExperiment: StartExperimentRequest,
  StopExperiment: StopExperimentRequest,
  ConcludeExperiment: ConcludeExperimentRequest,
  CreateHoldout: CreateHoldoutRequest,
  UpdateHoldout: UpdateHoldoutRequest,
  DeleteHoldout: DeleteHoldoutRequest,
  UpdateAllocation: UpdateAllocationRequest,
};

/**
 * The response a write's first call would have answered, built from what it stored, when what is
 * stored carries `stamp` (see `Recover` in the platform's request results); undefined otherwise.
 */
export type RecoverWrite = <M extends keyof WriteRequests>(
  method: M,
  request: WriteRequests[M],
  stamp: string,
) => Promise<unknown>;

/** The admin writes and allocation updates: {@link SerialWrites}, idempotent by `request_id`. */
export class ConfigurationWrites extends SerialWrites {
  /**
   * `unannounced`, when given, tells whether a change this replica stored is not yet announced
   * (its version bump failed: see `LiveConfiguration.commit`); `recover` answers a retry whose
   * first call stored its change but not its response.
   */
  constructor(
    private readonly results: RequestResults,
    acrossReplicas?: AcrossReplicas,
    private readonly unannounced?: () => boolean,
    private readonly recover?: RecoverWrite,
  ) {
    super(acrossReplicas);
  }

  /**
   * {@link SerialWrites.exclusively}, except that a write that stored its change but could not
   * announce it fails with UNAVAILABLE (after `once` has kept its result). Its retry, on any
   * replica, takes the lease this one releases unsettled: it reloads everything and bumps the
   * version, so every replica loads the change, and then finds the first result by `request_id`.
   * Answered as made instead, nothing would prompt that: a replica stopped or killed before its
   * next check would leave the other replicas without the change until some other write.
   */
  override exclusively<T>(write: () => Promise<T>, leaseWaitMs?: number): Promise<T> {
    return super.exclusively(async () => {
      const result = await write();
      if (this.unannounced?.() === true) {
        throw new UnavailableError(
          'the change is stored but could not be announced to the other replicas yet; retry with the same request_id for its result',
          { reason: 'CHANGE_NOT_ANNOUNCED' },
        );
      }
      return result;
    }, leaseWaitMs);
  }

  /**
   * {@link RequestResults.once} (idempotent by `request_id`), as one write of `exclusively`.
   */
  once<M extends keyof WriteRequests, T>(
    method: M,
    request: WriteRequests[M],
    codec: ResponseCodec<T>,
    mutation: () => Promise<T>,
  ): Promise<T> {
    const requestType: RequestType<WriteRequests[M]> = REQUEST_TYPES[method];
    return this.exclusively(async () => {
      const state = { started: false };
      const run = () => {
        state.started = true;
        return mutation();
      };
      try {
        const recover = this.recover;
        return await this.results.once(
          method,
          request,
          codec,
          run,
          requestType,
          // The recovery builds the method's response type (see `recoverWrite`).
          recover && ((stamp) => recover(method, request, stamp) as Promise<T | undefined>),
        );
      } catch (error) {
        // Before the write began (the request_id's stored answer, its fingerprint): nothing of
        // the configuration was stored, whatever the failure.
        if (!state.started && typeof error === 'object' && error !== null) beforeStoring.add(error);
        throw error;
      }
    });
  }
}

/** Failures of writes that ended before storing anything (see `ConfigurationWrites.once`). */
const beforeStoring = new WeakSet<object>();

/**
 * Whether a configuration write may have stored a change the other replicas will not reload for:
 * its version bump failed, or it failed otherwise than by a refusal (a storage write that timed
 * out may have been made). A refusal (a violation, a stale etag, an id missing or taken) comes
 * before anything is stored, or is storage refusing the write.
 */
export function leftUnannounced(configuration: LiveConfiguration, failure: unknown): boolean {
  if (configuration.hasUnannouncedChange() || configuration.isUnsure()) return true;
  if (failure === undefined) return false;
  if (typeof failure === 'object' && failure !== null && beforeStoring.has(failure)) return false;
  return !(
    failure instanceof InvalidArgumentError ||
    failure instanceof FailedPreconditionError ||
    failure instanceof NotFoundError ||
    failure instanceof AlreadyExistsError ||
    failure instanceof AbortedError
  );
}
