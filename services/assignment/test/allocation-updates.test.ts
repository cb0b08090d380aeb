/**
 * How long an AllocationUpdate that keeps failing (storage unreachable) keeps coming again: a
 * storage outage of up to a day must not lose Analysis' weights. Played with the bus's own
 * delivery rules on the consumer the service declares.
 */
import type { ConsumerSpec, EventBus, Subscription } from '../../platform/src/events/bus';
import { dispositionFor } from '../../platform/src/events/delivery';
import { consumerSettings } from '../../platform/src/events/event-settings';
import { UnavailableError } from '../../platform/src/errors';
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
