/**
 * Event codecs that read Timestamps before decoding: an event with nanos out of range is refused,
 * or mended by the consumer's `repair`, never decoded with its time moved. The bad bytes are made
 * by bufbuild's runtime (`withTimestampNanos`), not by the code under test.
 */
import { AllocationUpdate } from '../../../../gen/ts/tandem/events/v1/allocation_update';
import { checkingTimestamps } from '../../src/events/timestamp-checked-codec';
import { withTimestampNanos } from '../support/timestamps';

const TYPE = 'tandem.events.v1.AllocationUpdate';
const computeTime = new Date(Date.UTC(2026, 0, 1));
const valid = AllocationUpdate.encode(
  AllocationUpdate.fromPartial({
    eventId: 'e-1',
    eventTime: new Date(Date.UTC(2026, 0, 2)),
    experimentId: 'x',
    sequence: 7,
    computeTime,
  }),
).finish();
const badComputeTime = withTimestampNanos(TYPE, valid, 'compute_time', 2_000_000_000);

it('decodes an event whose Timestamps are valid as the codec does', () => {
  const codec = checkingTimestamps(AllocationUpdate, TYPE);
  expect(codec.decode(valid)).toEqual(AllocationUpdate.decode(valid));
  // The generated decoder alone moves the time by the two seconds of nanos.
  expect(AllocationUpdate.decode(badComputeTime).computeTime?.getTime()).toBe(
    computeTime.getTime() + 2000,
  );
});

it('refuses an event with nanos out of range, naming the field, when there is no repair', () => {
  const codec = checkingTimestamps(AllocationUpdate, TYPE);
  expect(() => codec.decode(badComputeTime)).toThrow(/invalid Timestamp: compute_time/);
});

it('hands the bad paths to the repair and returns what it makes of the event', () => {
  const seen: string[][] = [];
  const codec = checkingTimestamps(AllocationUpdate, TYPE, (event, paths) => {
    seen.push([...paths]);
    return { ...event, computeTime: undefined };
  });
  const bothBad = withTimestampNanos(TYPE, badComputeTime, 'event_time', -1);
  const mended = codec.decode(bothBad);
  expect(seen).toEqual([['event_time', 'compute_time']]);
  expect(mended.computeTime).toBeUndefined();
  expect(mended).toMatchObject({ eventId: 'e-1', experimentId: 'x', sequence: 7 });
  // Valid events do not reach the repair.
  codec.decode(valid);
  expect(seen).toHaveLength(1);
});

it('refuses an event the repair cannot mend, and bytes that are not well-formed', () => {
  const codec = checkingTimestamps(AllocationUpdate, TYPE, () => undefined);
  expect(() => codec.decode(badComputeTime)).toThrow(/invalid Timestamp/);
  // A stray end-group tag after the message: the generated decoder stops there and accepts it.
  const malformed = withTimestampNanos(TYPE, valid, 'compute_time', 5, [0x0c]);
  expect(() => codec.decode(malformed)).toThrow(/not well-formed/);
});
