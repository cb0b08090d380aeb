/**
 * The Assignment service's own counters, for what would otherwise show only in its logs. Exported
 * only when telemetry exports metrics (see `sdk.ts`); otherwise counting is the API's no-op.
 *
 * - `tandem.assignment.sticky.lookups` by `tandem.outcome`: a unit's sticky variants looked up for
 *   a Resolve (or for an Apply of a token with STICKY assignments): `cached` (all from the replica's
 *   cache, no storage read), `read` (storage answered), `timed_out` (storage did not answer within
 *   `TANDEM_ASSIGNMENT_STICKY_LOOKUP_TIMEOUT`) and `failed` (the read failed). On Resolve,
 *   `timed_out` and `failed` mean that the experiments not cached were served STICKY_UNAVAILABLE;
 *   on Apply (whose read is not bounded, so never `timed_out`) a failed one only leaves an expired
 *   variant unrenewed.
 * - `tandem.assignment.sticky.failed_writes` by `tandem.reason`: first sticky variants that
 *   Resolve(apply=true) could not store, so the unit was served STICKY_UNAVAILABLE for that
 *   experiment and no exposure was logged: `unavailable` (storage failed) or `conflict` (the
 *   stored assignment kept changing, STICKY_WRITE_CONFLICT). On Apply such a failure fails the call
 *   instead (UNAVAILABLE or ABORTED in `rpc.server.call.duration`), and is not counted here.
 * - `tandem.assignment.allocation.updates` by `tandem.outcome`: `AllocationUpdate` events handled:
 *   `applied`, `duplicate` (its own sequence already stored: delivered again after it was
 *   applied, or after an attempt that stored it and then failed, announcing it or keeping it in
 *   the history, which the redelivery finishes: so `applied` + `duplicate` counts the updates
 *   that took effect), `stale` (a newer sequence stored), `concluded` (the experiment was concluded
 *   meanwhile, which the producer could not know) and `rejected`, with `tandem.reason`:
 *   `no_sequence`, `invalid_allocation` (weights for arms the experiment lacks, not summing to 1,
 *   a sequence too far ahead), `unknown_experiment`, `not_a_bandit` or `other`. `rejected` is the
 *   one to alert on: the producer's mistake, which leaves the bandit at its old weights. Updates
 *   whose handling failed (storage unavailable, a concurrent write) come again and are counted
 *   when they settle; those given up on count in `tandem.events.consumer.dropped`
 *   (`assignment-allocations`).
 *
 * The counters are made with the objects that count (a replica's `StickyAssignments`, its Resolve
 * handlers, its subscription to allocation updates), after start-up has registered the SDK's
 * meter provider. Every attribute set is made once, frozen, so that counting allocates nothing.
 */
import { metrics, type Attributes, type Counter, type Meter } from '@opentelemetry/api';

function meter(): Meter {
  return metrics.getMeter('tandem.assignment');
}

function attributeSets<K extends string>(
  key: string,
  values: readonly K[],
  common: Attributes = {},
): Readonly<Record<K, Attributes>> {
  const sets = {} as Record<K, Attributes>;
  for (const value of values) sets[value] = Object.freeze({ ...common, [key]: value });
  return Object.freeze(sets);
}

export type StickyLookupOutcome = 'cached' | 'read' | 'timed_out' | 'failed';

export const STICKY_LOOKUP = attributeSets<StickyLookupOutcome>('tandem.outcome', [
  'cached',
  'read',
  'timed_out',
  'failed',
]);

export function stickyLookupCounter(): Counter {
  return meter().createCounter('tandem.assignment.sticky.lookups', {
    description:
      "Lookups of a unit's sticky variants, by outcome: cached, read, timed_out or failed (on Resolve, the last two serve STICKY_UNAVAILABLE)",
    unit: '{lookup}',
  });
}

export type StickyWriteFailure = 'unavailable' | 'conflict';

export const STICKY_WRITE_FAILURE = attributeSets<StickyWriteFailure>('tandem.reason', [
  'unavailable',
  'conflict',
]);

export function stickyFailedWriteCounter(): Counter {
  return meter().createCounter('tandem.assignment.sticky.failed_writes', {
    description:
      'First sticky variants Resolve(apply=true) could not store, served STICKY_UNAVAILABLE instead',
    unit: '{write}',
  });
}

export type AllocationUpdateOutcome = 'applied' | 'duplicate' | 'stale' | 'concluded';
export type AllocationRejection =
  'no_sequence' | 'invalid_allocation' | 'unknown_experiment' | 'not_a_bandit' | 'other';

export const ALLOCATION_UPDATE = attributeSets<AllocationUpdateOutcome>('tandem.outcome', [
  'applied',
  'duplicate',
  'stale',
  'concluded',
]);

export const ALLOCATION_REJECTED = attributeSets<AllocationRejection>(
  'tandem.reason',
  ['no_sequence', 'invalid_allocation', 'unknown_experiment', 'not_a_bandit', 'other'],
  { 'tandem.outcome': 'rejected' },
);

export function allocationUpdateCounter(): Counter {
  return meter().createCounter('tandem.assignment.allocation.updates', {
    description:
      'AllocationUpdate events handled, by outcome: applied, duplicate, stale, concluded or rejected (with a reason)',
    unit: '{event}',
  });
}
