/**
 * Stored values as served: a value is served only as the type the view declares now. One of
 * another type (stored for an earlier view of the same name, by a write in flight while it was
 * deleted and created again with other types) is no value, never coerced into one.
 */
import { messageOfStoredValue, type StoredValue } from '../src/contract-mapping';
import { ValueType } from '../src/domain/feature-values';

it('serves a stored value of the declared type', () => {
  expect(messageOfStoredValue(ValueType.FloatVector, [1.5, -2, 0])).toEqual({
    kind: { $case: 'floatVectorValue', value: { values: [1.5, -2, 0] } },
  });
  expect(messageOfStoredValue(ValueType.StringList, ['a', ''])).toEqual({
    kind: { $case: 'stringListValue', value: { values: ['a', ''] } },
  });
  expect(messageOfStoredValue(ValueType.Double, 0.25)).toEqual({
    kind: { $case: 'doubleValue', value: 0.25 },
  });
  expect(messageOfStoredValue(ValueType.Int64, -42)).toEqual({
    kind: { $case: 'int64Value', value: -42 },
  });
});

it.each([
  ['a string list read as a vector', ValueType.FloatVector, ['a', 'b']],
  ['numeric strings read as a vector', ValueType.FloatVector, ['1.5', '2']],
  ['a vector read as a string list', ValueType.StringList, [1.5, 2]],
  ['a mixed list', ValueType.StringList, ['a', 1]],
  ['a string read as a double', ValueType.Double, '1'],
  ['a list read as a string', ValueType.String, ['a']],
  ['a number read as a bool', ValueType.Bool, 1],
  // A DOUBLE column read as INT64: encoding a fraction as an int64 throws, failing the response.
  ['a fraction read as an int64', ValueType.Int64, 0.75],
  ['a double past 2^53 read as an int64', ValueType.Int64, 2 ** 60],
])('serves no value for %s', (_, type, stored) => {
  // What storage may hold, whatever the types say: the values of an earlier view's writes.
  expect(messageOfStoredValue(type, stored as StoredValue)).toBeUndefined();
});
