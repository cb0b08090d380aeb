/**
 * How long an AllocationUpdate that keeps failing (storage unreachable) keeps coming again: a
 * storage outage of up to a day must not lose Analysis' weights. Played with the bus's own
 * delivery rules on the consumer the service declares.
 */
import type {
  ConsumerSpec,
  EventBus,
  EventHandler,
  Subscription,
} from '../../platform/src/events/bus';
import { AllocationUpdate } from '../../../gen/ts/tandem/events/v1/allocation_update';
import { dispositionFor } from '../../platform/src/events/delivery';
import { consumerSettings } from '../../platform/src/events/event-settings';
import {
  AbortedError,
  FailedPreconditionError,
  InvalidArgumentError,
  UnavailableError,
} from '../../platform/src/errors';
import type { AssignmentContext } from '../src/assignment-context';
import {
  ALLOCATION_RETRY_SPAN_MS,
  followAllocationUpdates,
} from '../src/events/allocation-updates';

it('retries a failing allocation update for a day before giving up on it', async () => {
  let declared: ConsumerSpec<unknown> | undefined;
  const bus = {
    subscribe: (spec: ConsumerSpec<unknown>) => {
      declared = spec;
      return Promise.resolve({} as Subscription);
    },
  } as unknown as EventBus;
  await followAllocationUpdates(bus, {} as AssignmentContext);
  if (!declared) throw new Error('no consumer declared');
  const settings = consumerSettings(declared);

  const outage = { kind: 'failed', error: new UnavailableError('storage is unreachable') } as const;
  let waitedMs = 0;
  let delivery = 1;
  for (; ; delivery++) {
    const disposition = dispositionFor(settings, outage, delivery);
    if (disposition.kind !== 'retry') break;
    waitedMs += disposition.delayMs;
  }
  expect(ALLOCATION_RETRY_SPAN_MS).toBe(24 * 3_600_000);
  expect(waitedMs).toBeGreaterThanOrEqual(ALLOCATION_RETRY_SPAN_MS);
  // Not hammering the store meanwhile: at most one delivery every 30 s once backed off.
  expect(delivery).toBeLessThan(ALLOCATION_RETRY_SPAN_MS / 30_000 + 20);
});

/**
 * Follows allocation updates on a bus that only hands over the handler, with `context`; returns
 * the delivery of an update of experiment `bandit` with a sequence.
 */
async function followedWith(
  context: AssignmentContext,
): Promise<(sequence: number) => Promise<void>> {
  let handler: EventHandler<AllocationUpdate> | undefined;
  const bus = {
    subscribe: (_spec: ConsumerSpec<AllocationUpdate>, handle: EventHandler<AllocationUpdate>) => {
      handler = handle;
      return Promise.resolve({} as Subscription);
    },
  } as unknown as EventBus;
  await followAllocationUpdates(bus, context);
  const handle = handler;
  if (!handle) throw new Error('no handler');
  return (sequence) =>
    handle({
      event: AllocationUpdate.fromPartial({ experimentId: 'bandit', sequence }),
      eventId: `update-${sequence}`,
    } as Parameters<EventHandler<AllocationUpdate>>[0]);
}

it('tells an update delivered again after it was applied from one older than the stored one', async () => {
  const logged: string[] = [];
  const context = {
    // Storage holds sequence 7, as a first delivery that stored it and then failed left it.
    writes: {
      exclusively: () =>
        Promise.reject(
          new AbortedError('stale', {
            reason: 'STALE_SEQUENCE',
            metadata: { current_sequence: '7' },
          }),
        ),
    },
    logger: { info: (_fields: unknown, message: string) => logged.push(message) },
  } as unknown as AssignmentContext;
  const deliver = await followedWith(context);
  await deliver(7);
  await deliver(5);
  expect(logged).toEqual(['allocation update already applied', 'allocation update ignored']);
});

it('warns of an update it rejects, which leaves the bandit at its old weights', async () => {
  const logged: [string, string][] = [];
  const refusals = [
    // Weights for arms the experiment does not have.
    new InvalidArgumentError('invalid allocation', [
      { field: 'weights', description: 'names arms the experiment does not have' },
    ]),
    new FailedPreconditionError('not a bandit', {
      violations: [{ type: 'ALLOCATION_MODE', subject: 'experiments/bandit', description: '' }],
    }),
    // Concluded meanwhile, which the producer could not know: no mistake of its own.
    new FailedPreconditionError('concluded', {
      violations: [{ type: 'STATUS', subject: 'experiments/bandit', description: '' }],
    }),
  ];
  const context = {
    writes: { exclusively: () => Promise.reject(refusals.shift() ?? new Error('no refusal')) },
    logger: {
      info: (_fields: unknown, message: string) => logged.push(['info', message]),
      warn: (_fields: unknown, message: string) => logged.push(['warn', message]),
    },
  } as unknown as AssignmentContext;
  const deliver = await followedWith(context);
  for (const sequence of [3, 4, 5, 0]) await deliver(sequence);
  expect(logged).toEqual([
    ['warn', 'allocation update rejected: it cannot be applied'],
    ['warn', 'allocation update rejected: it cannot be applied'],
    ['info', 'allocation update ignored: the experiment takes none now'],
    ['warn', 'allocation update rejected: no sequence'],
  ]);
});
