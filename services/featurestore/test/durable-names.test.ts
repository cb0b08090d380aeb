/**
 * A replica's durable consumer names, read back: the start-up sweep deletes a durable only when
 * it is this replica's, of a view that is gone. Replica ids may hold `-`; view names never do.
 */
import { aggregationDurable, viewOfDurable } from '../src/events/stream-aggregation';

it('reads the view back from the name of a durable of this replica', () => {
  expect(viewOfDurable('featurestore-item_plays-featurestore-0', 'featurestore-0')).toBe(
    'item_plays',
  );
  expect(viewOfDurable(aggregationDurable('v2', 'host-42_a'), 'host-42_a')).toBe('v2');
});

it("takes no other replica's durable, even one whose id ends like this replica's", () => {
  // Replica `x-r1`'s durable of `v`, seen by replica `r1`: `v-x` is no view name.
  expect(viewOfDurable(aggregationDurable('v', 'x-r1'), 'r1')).toBeUndefined();
  expect(viewOfDurable(aggregationDurable('v', 'x-r1'), 'x-r1')).toBe('v');
  expect(viewOfDurable(aggregationDurable('v', 'r2'), 'r1')).toBeUndefined();
});

it("takes no other service's durable", () => {
  expect(viewOfDurable('assignment-config-r1', 'r1')).toBeUndefined();
  expect(viewOfDurable('featurestore--r1', 'r1')).toBeUndefined();
  expect(viewOfDurable('featurestore-Plays-r1', 'r1')).toBeUndefined();
});
