/**
 * What storage compares to keep the newer of two records of one key (`upsertIfNewer`, strings by
 * their bytes): the event time first, then the write's order; and versions written
 * by earlier builds, which held the wall-clock write time, lose to any of this build at an equal
 * event time.
 */
import { orderOfVersion, rowVersion } from '../src/store/feature-rows';

const t = 1_733_000_000_000;
/** A version as earlier builds wrote it: event time and write time, 15 digits each. */
const legacy = (eventTime: number, writtenAt: number) =>
  `${String(eventTime).padStart(15, '0')}:${String(writtenAt).padStart(15, '0')}`;

it('orders by event time, then by write order, as strings', () => {
  const ordered = [
    rowVersion(t - 1, 999_999),
    rowVersion(t, 1),
    rowVersion(t, 2),
    rowVersion(t, 10),
    rowVersion(t, 123_456_789),
    rowVersion(t + 1, 1),
  ];
  expect([...ordered].sort()).toEqual(ordered);
  expect(new Set(ordered).size).toBe(ordered.length);
});

it('puts every version of an earlier build first at an equal event time, and only then', () => {
  expect(rowVersion(t, 1) > legacy(t, 9_999_999_999_999)).toBe(true);
  expect(rowVersion(t, 1) < legacy(t + 1, 0)).toBe(true);
  expect(rowVersion(t, 1) > legacy(t - 1, 9_999_999_999_999)).toBe(true);
});

it('reads the write order back, and 0 from an earlier build', () => {
  expect(orderOfVersion(rowVersion(t, 42))).toBe(42);
  expect(orderOfVersion(rowVersion(t, 123_456_789_012))).toBe(123_456_789_012);
  expect(orderOfVersion(legacy(t, t + 5))).toBe(0);
});
