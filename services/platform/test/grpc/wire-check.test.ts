/**
 * Timestamps whose nanos lie outside [0, 999,999,999], which the generated decoder would add to
 * the seconds. The messages are written with bufbuild's own writer and the contracts' descriptor
 * set, so the bytes do not depend on the code under test.
 */
import { create, createFileRegistry, type DescMessage } from '@bufbuild/protobuf';
import {
  file_google_protobuf_timestamp,
  FileDescriptorProtoSchema,
  FieldDescriptorProto_Label,
  FieldDescriptorProto_Type,
} from '@bufbuild/protobuf/wkt';
import { BinaryWriter } from '@bufbuild/protobuf/wire';
import { ResolveRequest } from '../../../../gen/ts/tandem/assignment/v1/assignment_service';
import { requestMessage } from '../../src/grpc/descriptor-set';
import { requestCheck, timestampNanosCheck } from '../../src/grpc/wire-check';

/** A google.protobuf.Timestamp's bytes. */
function timestamp(seconds: bigint, nanos: number): Uint8Array {
  const writer = new BinaryWriter();
  if (seconds !== 0n) writer.uint32((1 << 3) | 0).int64(seconds);
  if (nanos !== 0) writer.uint32((2 << 3) | 0).int32(nanos);
  return writer.finish();
}

function messageOf(methodPath: string): DescMessage {
  const message = requestMessage(methodPath);
  if (message === undefined) throw new Error(`no request message for ${methodPath}`);
  return message;
}

const CREATE_EXPERIMENT = '/tandem.assignment.v1.AssignmentService/CreateExperiment';
const WRITE_FEATURES = '/tandem.featurestore.v1.FeatureStoreService/WriteFeatures';

/** A CreateExperimentRequest whose experiment has an id and a scheduled start (field 14). */
function createExperiment(start: Uint8Array): Uint8Array {
  const experiment = new BinaryWriter()
    .uint32((1 << 3) | 2)
    .string('exp-1')
    .uint32((14 << 3) | 2)
    .bytes(start)
    .finish();
  return new BinaryWriter()
    .uint32((1 << 3) | 2)
    .bytes(experiment)
    .uint32((2 << 3) | 2)
    .string('request-1')
    .finish();
}

/** A WriteFeaturesRequest with one row per event time (FeatureRow.event_time is field 3). */
function writeFeatures(eventTimes: readonly Uint8Array[]): Uint8Array {
  const writer = new BinaryWriter().uint32((1 << 3) | 2).string('user_stats');
  for (const eventTime of eventTimes) {
    const entityKey = new BinaryWriter()
      .uint32((1 << 3) | 2)
      .string('user_id')
      .uint32((2 << 3) | 2)
      .bytes(
        new BinaryWriter()
          .uint32((1 << 3) | 2)
          .string('u-1')
          .finish(),
      )
      .finish();
    const row = new BinaryWriter()
      .uint32((1 << 3) | 2)
      .bytes(entityKey)
      .uint32((3 << 3) | 2)
      .bytes(eventTime)
      .finish();
    writer.uint32((2 << 3) | 2).bytes(row);
  }
  return writer.finish();
}

describe('timestampNanosCheck', () => {
  const checkCreate = timestampNanosCheck(messageOf(CREATE_EXPERIMENT));
  const checkWrite = timestampNanosCheck(messageOf(WRITE_FEATURES));

  it('names a Timestamp with nanos past a second, or negative, by its field path', () => {
    expect(checkCreate).toBeDefined();
    for (const nanos of [1_000_000_000, 2_000_000_000, -1, -999_999_999]) {
      expect(checkCreate?.(createExperiment(timestamp(1_700_000_000n, nanos)))).toEqual([
        {
          field: 'experiment.scheduled_start_time',
          description: 'nanos must be in [0, 999,999,999] (a Timestamp)',
          reason: 'INVALID_TIMESTAMP',
        },
      ]);
    }
  });

  it('accepts nanos from 0 to 999,999,999, and Timestamps before 1970', () => {
    for (const nanos of [0, 1, 500_000_000, 999_999_999]) {
      expect(checkCreate?.(createExperiment(timestamp(1_700_000_000n, nanos)))).toEqual([]);
      expect(checkCreate?.(createExperiment(timestamp(-1n, nanos)))).toEqual([]);
    }
  });

  it('names each offending row of a list by its index, and only those', () => {
    const valid = timestamp(1_700_000_000n, 5);
    const invalid = timestamp(1_700_000_000n, 1_500_000_000);
    expect(
      checkWrite?.(writeFeatures([valid, invalid, valid, invalid]))?.map((v) => v.field),
    ).toEqual(['rows[1].event_time', 'rows[3].event_time']);
    expect(checkWrite?.(writeFeatures([valid, valid]))).toEqual([]);
  });

  it('reports at most twenty (a status has to fit in the trailers)', () => {
    const invalid = timestamp(1n, -5);
    const violations = checkWrite?.(writeFeatures(Array.from({ length: 50 }, () => invalid)));
    expect(violations).toHaveLength(20);
    expect(violations?.[19]?.field).toBe('rows[19].event_time');
  });

  it('has no check for a request no Timestamp can be in, so it costs nothing', () => {
    expect(timestampNanosCheck(messageOf('/tandem.assignment.v1.AssignmentService/Resolve'))).toBe(
      undefined,
    );
    expect(timestampNanosCheck(messageOf('/tandem.echo.v1.EchoService/Echo'))).toBe(undefined);
  });

  it('cannot check bytes that are not well-formed protobuf, though a lenient decoder takes some', () => {
    // An ApplyRequest {resolve_token: "tok", exposure_time: <Timestamp>} (fields 1 and 3).
    const apply = (exposureTime: Uint8Array, ...tail: number[]): Uint8Array =>
      Uint8Array.from([
        ...new BinaryWriter()
          .uint32((1 << 3) | 2)
          .string('tok')
          .uint32((3 << 3) | 2)
          .bytes(exposureTime)
          .finish(),
        ...tail,
      ]);
    const check = timestampNanosCheck(messageOf('/tandem.assignment.v1.AssignmentService/Apply'));
    const late = timestamp(1_700_000_000n, 1_500_000_000);
    expect(check?.(apply(late))?.map((v) => v.field)).toEqual(['exposure_time']);
    // Each of these the generated decoder (ts-proto over bufbuild's reader) takes, with nanos of
    // 1.5e9: a stray end-group tag after the message and a group closed by another field's end
    // tag (read as 1.5 s late); a Timestamp whose length ends inside its nanos varint (read as
    // 1.5 s past 1970).
    expect(check?.(apply(late, 0x0c))).toBeUndefined();
    expect(check?.(apply(late, 0x2b, 0x34))).toBeUndefined();
    const cut = new BinaryWriter()
      .uint32((1 << 3) | 2)
      .string('tok')
      .uint32((3 << 3) | 2)
      .uint32(2)
      .finish();
    const nanos = new BinaryWriter()
      .uint32((2 << 3) | 0)
      .int32(1_500_000_000)
      .finish();
    expect(check?.(Uint8Array.from([...cut, ...nanos]))).toBeUndefined();
    expect(check?.(Uint8Array.of(0x0a, 0x50, 0x01))).toBeUndefined();
    // Wire types 6 and 7 do not exist.
    expect(check?.(Uint8Array.of(0x0e))).toBeUndefined();
  });

  it('follows maps, naming an entry by its key', () => {
    // message Holder { map<string, Timestamp> times = 1; map<int64, Inner> inner = 2; }
    // message Inner { Timestamp at = 1; }
    const { OPTIONAL, REPEATED } = FieldDescriptorProto_Label;
    const { MESSAGE, STRING, INT64 } = FieldDescriptorProto_Type;
    /** A map's entry type: `key` of `keyType`, `value` of the message `valueTypeName`. */
    const mapEntry = (name: string, keyType: FieldDescriptorProto_Type, valueTypeName: string) => ({
      name,
      options: { mapEntry: true },
      field: [
        { name: 'key', number: 1, label: OPTIONAL, type: keyType, jsonName: 'key' },
        {
          name: 'value',
          number: 2,
          label: OPTIONAL,
          type: MESSAGE,
          typeName: valueTypeName,
          jsonName: 'value',
        },
      ],
    });
    const file = create(FileDescriptorProtoSchema, {
      name: 'test/holder.proto',
      package: 'test',
      syntax: 'proto3',
      dependency: ['google/protobuf/timestamp.proto'],
      messageType: [
        {
          name: 'Holder',
          field: [
            {
              name: 'times',
              number: 1,
              label: REPEATED,
              type: MESSAGE,
              typeName: '.test.Holder.TimesEntry',
              jsonName: 'times',
            },
            {
              name: 'inner',
              number: 2,
              label: REPEATED,
              type: MESSAGE,
              typeName: '.test.Holder.InnerEntry',
              jsonName: 'inner',
            },
          ],
          nestedType: [
            mapEntry('TimesEntry', STRING, '.google.protobuf.Timestamp'),
            mapEntry('InnerEntry', INT64, '.test.Inner'),
          ],
        },
        {
          name: 'Inner',
          field: [
            {
              name: 'at',
              number: 1,
              label: OPTIONAL,
              type: MESSAGE,
              typeName: '.google.protobuf.Timestamp',
              jsonName: 'at',
            },
          ],
        },
      ],
    });
    const registry = createFileRegistry(file, (name) =>
      name === 'google/protobuf/timestamp.proto' ? file_google_protobuf_timestamp : undefined,
    );
    const holder = registry.getMessage('test.Holder');
    if (holder === undefined) throw new Error('test.Holder not in the registry');
    const timesEntry = (key: string, value: Uint8Array): Uint8Array =>
      new BinaryWriter()
        .uint32((1 << 3) | 2)
        .string(key)
        .uint32((2 << 3) | 2)
        .bytes(value)
        .finish();
    const innerEntry = (key: bigint, at: Uint8Array): Uint8Array =>
      new BinaryWriter()
        .uint32((1 << 3) | 0)
        .int64(key)
        .uint32((2 << 3) | 2)
        .bytes(
          new BinaryWriter()
            .uint32((1 << 3) | 2)
            .bytes(at)
            .finish(),
        )
        .finish();
    const bytes = new BinaryWriter()
      .uint32((1 << 3) | 2)
      .bytes(timesEntry('ok', timestamp(10n, 1)))
      .uint32((1 << 3) | 2)
      .bytes(timesEntry('late', timestamp(10n, 1_000_000_000)))
      .uint32((2 << 3) | 2)
      .bytes(innerEntry(-7n, timestamp(10n, -3)))
      .uint32((2 << 3) | 2)
      .bytes(innerEntry(8n, timestamp(10n, 3)))
      .finish();
    expect(timestampNanosCheck(holder)?.(bytes)?.map((v) => v.field)).toEqual([
      'times.late',
      'inner.-7.at',
    ]);
  });
});

describe('requestCheck and packed fields', () => {
  const check = requestCheck(messageOf(WRITE_FEATURES));
  const badTime = timestamp(1_700_000_000n, 1_500_000_000);
  const entry = (key: string, value: Uint8Array) =>
    new BinaryWriter()
      .uint32((1 << 3) | 2)
      .string(key)
      .uint32((2 << 3) | 2)
      .bytes(value)
      .finish();
  const stringValue = (s: string) =>
    new BinaryWriter()
      .uint32((3 << 3) | 2)
      .string(s)
      .finish();
  /** A WriteFeaturesRequest of one row with a vector value (`FloatVector.values`, packed). */
  const request = (packedFloats: Uint8Array, rowTail: Uint8Array) => {
    const vector = new BinaryWriter()
      .uint32((1 << 3) | 2)
      .bytes(packedFloats)
      .finish();
    const featureValue = new BinaryWriter()
      .uint32((5 << 3) | 2)
      .bytes(vector)
      .finish();
    const row = new BinaryWriter()
      .uint32((1 << 3) | 2)
      .bytes(entry('user_id', stringValue('u1')))
      .uint32((2 << 3) | 2)
      .bytes(entry('emb', featureValue))
      .raw(rowTail)
      .finish();
    return new BinaryWriter()
      .uint32((1 << 3) | 2)
      .string('user_stats')
      .uint32((2 << 3) | 2)
      .bytes(row)
      .finish();
  };

  it('takes packed elements that fill their field', () => {
    expect(check(request(new Uint8Array([0, 0, 128, 63, 0, 0, 0, 64]), new Uint8Array()))).toEqual(
      [],
    );
  });

  it('refuses a packed field of partial elements, which the decoder would read past', () => {
    // Behind a one-byte float field, in an unknown field the check skips, a Timestamp with bad
    // nanos: the decoder, reading a whole float, runs into it and reads it as the row's time.
    const smuggled = new BinaryWriter()
      .uint32((3 << 3) | 2)
      .bytes(badTime)
      .finish();
    const unknown = new BinaryWriter()
      .uint32((15 << 3) | 2)
      .bytes(new Uint8Array([0, ...smuggled]))
      .finish();
    expect(check(request(new Uint8Array([0]), unknown))).toBe(undefined);
    // A last varint cut short, in a packed enum list (ListExperiments' statuses).
    const list = requestCheck(messageOf('/tandem.assignment.v1.AssignmentService/ListExperiments'));
    const statuses = (packed: number[]) =>
      new BinaryWriter()
        .uint32((3 << 3) | 2)
        .bytes(new Uint8Array(packed))
        .finish();
    expect(list(statuses([1, 2]))).toEqual([]);
    expect(list(statuses([1, 0x82]))).toBe(undefined);
  });
});

describe('requestCheck and google.protobuf.Value', () => {
  const check = requestCheck(messageOf(CREATE_EXPERIMENT));
  const resolve = requestCheck(messageOf('/tandem.assignment.v1.AssignmentService/Resolve'));
  const delimited = (field: number, bytes: Uint8Array) =>
    new BinaryWriter()
      .uint32((field << 3) | 2)
      .bytes(bytes)
      .finish();
  /** A Struct entry (`fields`, field 1): `key`, and `value` when given (field 2). */
  const entry = (key: string, value?: Uint8Array) => {
    const writer = new BinaryWriter().uint32((1 << 3) | 2).string(key);
    if (value !== undefined) writer.uint32((2 << 3) | 2).bytes(value);
    return delimited(1, writer.finish());
  };
  const concat = (...parts: Uint8Array[]) => Uint8Array.from(Buffer.concat(parts));
  const NONE = new Uint8Array();
  const kinds = {
    null: new BinaryWriter()
      .uint32((1 << 3) | 0)
      .int32(0)
      .finish(),
    number: new BinaryWriter()
      .uint32((2 << 3) | 1)
      .double(1.5)
      .finish(),
    string: new BinaryWriter()
      .uint32((3 << 3) | 2)
      .string('SE')
      .finish(),
    bool: new BinaryWriter()
      .uint32((4 << 3) | 0)
      .bool(false)
      .finish(),
    struct: delimited(5, NONE),
    list: delimited(6, NONE),
  };
  /** A Value holding a list (field 6) of `items` (ListValue.values, field 1). */
  const list = (...items: Uint8Array[]) =>
    delimited(6, concat(...items.map((i) => delimited(1, i))));
  /** A CreateExperimentRequest with `condition` (field 9) and a variant's `payload` (7, then 4). */
  const request = (condition: Uint8Array, payload: Uint8Array = NONE) =>
    delimited(
      1,
      concat(
        new BinaryWriter()
          .uint32((1 << 3) | 2)
          .string('exp-1')
          .finish(),
        delimited(9, condition),
        delimited(7, delimited(4, payload)),
      ),
    );
  const fieldReasons = (violations: { field: string; reason?: string }[] | undefined) =>
    violations?.map((v) => [v.field, v.reason]);

  it('takes every kind, and empty Structs and lists', () => {
    const condition = concat(
      ...Object.entries(kinds).map(([key, value]) => entry(key, value)),
      entry('nested', delimited(5, entry('in', list(kinds.string, kinds.number)))),
    );
    expect(check(request(condition, entry('button', kinds.string)))).toEqual([]);
    expect(check(request(NONE))).toEqual([]);
  });

  it('names a Value without a kind by its path: a Struct entry, an entry without value', () => {
    const condition = concat(
      entry('country', NONE),
      entry('app', delimited(5, entry('$in', list(kinds.string, NONE)))),
      entry('plan'),
    );
    expect(fieldReasons(check(request(condition, entry('button', NONE))))).toEqual([
      ['experiment.condition.country', 'NO_VALUE'],
      ['experiment.condition.plan', 'NO_VALUE'],
      ['experiment.variants[0].payload.button', 'NO_VALUE'],
    ]);
    expect(fieldReasons(resolve(delimited(2, entry('tier', NONE))))).toEqual([
      ['attributes.tier', 'NO_VALUE'],
    ]);
  });

  it("takes a list item without a kind, which the decoder reads as null: ts-proto's encoding of an undefined item", () => {
    const bytes = ResolveRequest.encode(
      ResolveRequest.fromPartial({
        unit: { type: 'user', id: 'u1' },
        attributes: { country: 'SE', segments: ['a', undefined, 'b'] },
      }),
    ).finish();
    expect(resolve(bytes)).toEqual([]);
    expect(ResolveRequest.decode(bytes).attributes).toEqual({
      country: 'SE',
      segments: ['a', undefined, 'b'],
    });
  });

  it('counts a kind of the wrong wire type, which the decoder skips, as none', () => {
    const numberAsVarint = new BinaryWriter()
      .uint32((2 << 3) | 0)
      .int32(3)
      .finish();
    const unknownOnly = new BinaryWriter()
      .uint32((9 << 3) | 0)
      .int32(1)
      .finish();
    expect(
      fieldReasons(check(request(concat(entry('n', numberAsVarint), entry('u', unknownOnly))))),
    ).toEqual([
      ['experiment.condition.n', 'NO_VALUE'],
      ['experiment.condition.u', 'NO_VALUE'],
    ]);
  });

  it('names a string in a Struct by its keys, as the handlers do', () => {
    const bad = delimited(3, new Uint8Array([0xff]));
    expect(
      fieldReasons(check(request(entry('app', delimited(5, entry('os', list(bad))))))),
    ).toEqual([['experiment.condition.app.os[0]', 'INVALID_UTF8']]);
  });
});
