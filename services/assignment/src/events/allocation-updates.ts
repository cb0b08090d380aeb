/**
 * Consumes `AllocationUpdate` events from Analysis: new weights for a BANDIT experiment. Replicas
 * share one durable, so each update is applied once; the stored allocation and the config version
 * then carry it to every replica. A stale update (sequence not after the stored one) is ignored,
 * as is one that can never apply (unknown experiment, not a bandit, invalid weights); only an
 * unavailable store makes the event come again.
 */
import { AllocationUpdate } from '../../../../gen/ts/tandem/events/v1/allocation_update';
import type { EventBus, Subscription } from '../../../platform/src/events/bus';
import { TandemError, UnavailableError } from '../../../platform/src/errors';
import type { AssignmentContext } from '../assignment-context';
import { applyAllocation } from '../handlers/allocations';
import { ALLOCATION_STREAM, ALLOCATION_SUBJECT } from './streams';

export function followAllocationUpdates(
  bus: EventBus,
  context: AssignmentContext,
): Promise<Subscription> {
  return bus.subscribe(
    {
      stream: ALLOCATION_STREAM.name,
      durable: 'assignment-allocations',
      filterSubjects: [ALLOCATION_SUBJECT],
      codec: AllocationUpdate,
    },
    async ({ event, eventId }) => {
      try {
        await context.writes.serially(() =>
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
        );
      } catch (error) {
        if (error instanceof UnavailableError || !(error instanceof TandemError)) throw error;
        context.logger.info(
          {
            eventId,
            experiment: event.experimentId,
            sequence: event.sequence,
            reason: error.reason ?? error.message,
          },
          'allocation update ignored',
        );
      }
    },
  );
}
