/**
 * The field paths reported for a request the generated decoder refuses: 64-bit integers beyond
 * ±(2^53 − 1), found by decoding the bytes again from the contracts' descriptor set. The requests
 * are written with bufbuild's own writer, so the bytes do not depend on the code under test.
 */
import { BinaryWriter } from '@bufbuild/protobuf/wire';
import {
  mayHoldReservedMapKey,
  reservedMapKeys,
  undecodableFields,
} from '../../src/grpc/undecodable-fields';

const TOO_BIG = 2n ** 60n;
const SAFE = 2n ** 53n - 1n;

/** A `tandem.featurestore.v1.FeatureValue` holding an int64. */
function int64Value(value: bigint): Uint8Array {
  return new BinaryWriter()
    .uint32((2 << 3) | 0)
    .int64(value)
    .finish();
}

/** A `RepeatedValue` (field 1: repeated FeatureValue). */
function repeated(values: readonly Uint8Array[]): Uint8Array {
  const writer = new BinaryWriter();
  for (const value of values) writer.uint32((1 << 3) | 2).bytes(value);
  return writer.finish();
}

/** A `GetOnlineFeaturesRequest` with one feature and one entity-row column. */
function onlineRequest(joinKey: string, values: readonly Uint8Array[]): Uint8Array {
  const entry = new BinaryWriter()
    .uint32((1 << 3) | 2)
    .string(joinKey)
    .uint32((2 << 3) | 2)
    .bytes(repeated(values))
    .finish();
  return new BinaryWriter()
    .uint32((1 << 3) | 2)
    .string('user_stats:*')
    .uint32((2 << 3) | 2)
    .bytes(entry)
    .finish();
}

const GET_ONLINE = '/tandem.featurestore.v1.FeatureStoreService/GetOnlineFeatures';
const ECHO = '/tandem.echo.v1.EchoService/Echo';

describe('undecodableFields', () => {
  it('names a nested message field: the seconds of a Duration', () => {
    const duration = new BinaryWriter()
      .uint32((1 << 3) | 0)
      .int64(-TOO_BIG)
      .finish();
    const request = new BinaryWriter()
      .uint32((3 << 3) | 2)
      .bytes(duration)
      .finish();
    const violations = undecodableFields(ECHO, request);
    expect(violations.map((v) => [v.field, v.reason])).toEqual([['delay.seconds', 'OUT_OF_RANGE']]);
    expect(violations[0]?.description).toContain('9007199254740991');
  });

  it('names every offending entry of a map of lists, and only those', () => {
    const request = onlineRequest('user_id', [
      int64Value(1n),
      int64Value(TOO_BIG),
      int64Value(SAFE),
      int64Value(-SAFE - 1n),
    ]);
    expect(undecodableFields(GET_ONLINE, request).map((v) => [v.field, v.reason])).toEqual([
      ['entity_rows.user_id.values[1].int64_value', 'OUT_OF_RANGE'],
      ['entity_rows.user_id.values[3].int64_value', 'OUT_OF_RANGE'],
    ]);
  });

  it('reports at most twenty, even from one long list (a status has to fit in the trailers)', () => {
    // RegisterModelRequest.header.model.inputs[0].shape: a packed repeated int64.
    const shape = new BinaryWriter();
    for (let i = 0; i < 1_000; i++) shape.int64(TOO_BIG);
    const input = new BinaryWriter()
      .uint32((4 << 3) | 2)
      .bytes(shape.finish())
      .finish();
    const model = new BinaryWriter()
      .uint32((5 << 3) | 2)
      .bytes(input)
      .finish();
    const header = new BinaryWriter()
      .uint32((1 << 3) | 2)
      .bytes(model)
      .finish();
    const request = new BinaryWriter()
      .uint32((1 << 3) | 2)
      .bytes(header)
      .finish();
    const violations = undecodableFields('/tandem.ranker.v1.RankerService/RegisterModel', request);
    expect(violations).toHaveLength(20);
    expect(violations[0]?.field).toBe('header.model.inputs[0].shape[0]');
  });

  it('finds nothing in a request the generated decoder holds, or in bytes that are no message', () => {
    expect(undecodableFields(GET_ONLINE, onlineRequest('user_id', [int64Value(SAFE)]))).toEqual([]);
    expect(undecodableFields(ECHO, Uint8Array.from([0x0a, 0x05, 0x78]))).toEqual([]);
  });

  it('finds nothing for a method outside the contracts', () => {
    expect(undecodableFields('/other.v1.Service/Method', int64Value(TOO_BIG))).toEqual([]);
    expect(undecodableFields('not a path', int64Value(TOO_BIG))).toEqual([]);
  });
});

describe('reservedMapKeys', () => {
  it('names a map entry keyed __proto__, which a decoded object would lose', () => {
    const request = Buffer.from(onlineRequest('__proto__', [int64Value(1n)]));
    expect(mayHoldReservedMapKey(request)).toBe(true);
    expect(reservedMapKeys(GET_ONLINE, request)?.map((v) => [v.field, v.reason])).toEqual([
      ['entity_rows.__proto__', 'RESERVED_KEY'],
    ]);
  });

  it('cannot tell for bytes only the generated decoder takes, which are then refused', () => {
    // The string field `features` sent as a varint: the generated decoder skips it, the
    // descriptor set's refuses the message, so the __proto__ entry cannot be found.
    const request = Buffer.concat([
      onlineRequest('__proto__', [int64Value(1n)]),
      new BinaryWriter()
        .uint32((1 << 3) | 0)
        .uint32(5)
        .finish(),
    ]);
    expect(reservedMapKeys(GET_ONLINE, request)).toBeUndefined();
    expect(reservedMapKeys('/other.v1.Service/Method', request)).toEqual([]);
  });

  it('finds nothing in a request without one, and the byte search skips it', () => {
    const request = Buffer.from(onlineRequest('user_id', [int64Value(1n)]));
    expect(mayHoldReservedMapKey(request)).toBe(false);
    expect(reservedMapKeys(GET_ONLINE, request)).toEqual([]);
    // `__proto__` in a value (the same length, so the bytes stay a message): nothing refused.
    const asValue = Buffer.from(
      Buffer.from(onlineRequest('user_id', []))
        .toString('latin1')
        .replace('user_stats:*', '__proto__s:*'),
      'latin1',
    );
    expect(mayHoldReservedMapKey(asValue)).toBe(true);
    expect(reservedMapKeys(GET_ONLINE, asValue)).toEqual([]);
  });
});
