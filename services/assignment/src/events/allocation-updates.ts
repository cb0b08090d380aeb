/**
 * Consumes `AllocationUpdate` events from Analysis: new weights for a BANDIT experiment. Replicas
 * share one durable, so each update is applied once; the stored allocation and the config version
 * then carry it to every replica. A stale update (sequence not after the stored one) is ignored,
 * as is one that can never apply (no sequence, unknown experiment, not a bandit, invalid weights);
 * an unavailable store, or a concurrent write on another replica, makes the event come again,
 * for as long as {@link ALLOCATION_RETRY_SPAN_MS}: a storage outage must not lose an update.
 * Each update settled is counted by outcome in `tandem.assignment.allocation.updates`.
 */
import type { Attributes } from '@opentelemetry/api';
import { AllocationUpdate } from '../../../../gen/ts/tandem/events/v1/allocation_update';
import type { EventBus, Subscription } from '../../../platform/src/events/bus';
import { checkingTimestamps } from '../../../platform/src/events/timestamp-checked-codec';
import {
  AbortedError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  TandemError,
  UnavailableError,
} from '../../../platform/src/errors';
import {
  ALLOCATION_REJECTED,
  ALLOCATION_UPDATE,
  allocationUpdateCounter,
} from '../assignment-metrics';
import type { AssignmentContext } from '../assignment-context';
import { applyAllocation } from '../handlers/allocations';
import { ALLOCATION_STREAM, ALLOCATION_SUBJECT } from './streams';

/**
 * The updates' codec. Their Timestamps are informational (`event_time` is not read; the stored
 * allocation keeps `compute_time`), so one with nanos out of range, which the generated decoder
 * would move by up to two seconds, is cleared, as a compute time no Timestamp holds is, rather
 * than losing the weights.
 */
const ALLOCATION_UPDATES = checkingTimestamps(
  AllocationUpdate,
  'tandem.events.v1.AllocationUpdate',
  (event, paths) => {
    const cleared = { ...event };
    for (const path of paths) {
      if (path === 'compute_time') cleared.computeTime = undefined;
      else if (path === 'event_time') cleared.eventTime = undefined;
      else return undefined;
    }
    return cleared;
  },
);

/** How long a failing update keeps coming again (at the bus's 30 s back-off cap) before it is dropped. */
export const ALLOCATION_RETRY_SPAN_MS = 24 * 3_600_000;

/**
 * How long an update waits for another replica's configuration-write lease before it is left for
 * its next delivery: the replica's admin writes queue behind it meanwhile.
 */
const LEASE_WAIT_MS = 1_000;

/** Deliveries that span {@link ALLOCATION_RETRY_SPAN_MS}: the first ones back off from 1 s. */
const ALLOCATION_MAX_DELIVER = Math.ceil(ALLOCATION_RETRY_SPAN_MS / 30_000) + 10;

/** The `tandem.reason` of an update that cannot be applied, refused with `error`. */
function rejection(error: TandemError): Attributes {
  if (error instanceof InvalidArgumentError) return ALLOCATION_REJECTED.invalid_allocation;
  if (error instanceof NotFoundError) return ALLOCATION_REJECTED.unknown_experiment;
  if (
    error instanceof FailedPreconditionError &&
    error.violations.some((v) => v.type === 'ALLOCATION_MODE')
  ) {
    return ALLOCATION_REJECTED.not_a_bandit;
  }
  return ALLOCATION_REJECTED.other;
}

export function followAllocationUpdates(
  bus: EventBus,
  context: AssignmentContext,
): Promise<Subscription> {
  const updates = allocationUpdateCounter();
  return bus.subscribe(
    {
      stream: ALLOCATION_STREAM.name,
      durable: 'assignment-allocations',
      filterSubjects: [ALLOCATION_SUBJECT],
      codec: ALLOCATION_UPDATES,
      maxDeliver: ALLOCATION_MAX_DELIVER,
      maxRetryDelayMs: 30_000,
    },
    async ({ event, eventId }) => {
      if (event.sequence <= 0) {
        // Required on events: 0 would mean "the next one" to applyAllocation (an RPC rule) and
        // order this update after newer ones.
        context.logger.warn(
          { eventId, experiment: event.experimentId, sequence: event.sequence },
          'allocation update rejected: no sequence',
        );
        updates.add(1, ALLOCATION_REJECTED.no_sequence);
        return;
      }
      try {
        await context.writes.exclusively(
          () =>
            applyAllocation(
              context,
              {
                experimentId: event.experimentId,
                weights: event.weights,
                minArmShare: event.minArmShare,
                sequence: event.sequence,
                method: event.method,
                computeTime: event.computeTime,
                analysisPlanId: event.analysisPlanId,
                source: 'analysis',
                etag: '',
                updateTime: undefined,
              },
              'analysis',
            ),
          LEASE_WAIT_MS,
        );
        updates.add(1, ALLOCATION_UPDATE.applied);
      } catch (error) {
        if (error instanceof UnavailableError || !(error instanceof TandemError)) throw error;
        // Lost a race with a write on another replica, or its lease is held: try again (it may
        // be stale by then).
        if (error instanceof AbortedError && error.reason !== 'STALE_SEQUENCE') throw error;
        // Its own sequence stored: this update was applied, and comes again because its first
        // delivery failed after that (its change not yet announced, say).
        const fields = {
          eventId,
          experiment: event.experimentId,
          sequence: event.sequence,
          reason: error.reason ?? error.message,
        };
        if (error.reason === 'STALE_SEQUENCE') {
          const applied = error.metadata.current_sequence === String(event.sequence);
          context.logger.info(
            fields,
            applied ? 'allocation update already applied' : 'allocation update ignored',
          );
          updates.add(1, applied ? ALLOCATION_UPDATE.duplicate : ALLOCATION_UPDATE.stale);
        } else if (
          error instanceof FailedPreconditionError &&
          error.violations.every((v) => v.type === 'STATUS')
        ) {
          // Concluded meanwhile: the producer had not seen it yet, which is no mistake.
          context.logger.info(fields, 'allocation update ignored: the experiment takes none now');
          updates.add(1, ALLOCATION_UPDATE.concluded);
        } else {
          // Weights for other arms, an experiment unknown or not a bandit: the producer's mistake,
          // which leaves the bandit at its old weights for as long as it goes on. Warned, so that
          // it is seen (dropped for good, it does not count as a failed event).
          context.logger.warn(
            { ...fields, error: error.message },
            'allocation update rejected: it cannot be applied',
          );
          updates.add(1, rejection(error));
        }
      }
    },
  );
}
