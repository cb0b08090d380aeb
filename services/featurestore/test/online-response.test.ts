/**
 * The hand-written GetOnlineFeatures encoder against the generated one: for many random replies
 * (push and stream columns, every value shape and status, odd times, omitted event times), the
 * bytes are the generated encoder's bytes, and they decode to the same message. The client-side
 * decoder against the generated decoder: the same message for the same bytes, including bytes no
 * Tandem server writes (unknown fields, unpacked statuses, timestamps in other encodings); and
 * the plain-values decoder against the generated decoder's message with its values unwrapped.
 */
import { BinaryWriter } from '@bufbuild/protobuf/wire';
import fc from 'fast-check';
import {
  FeatureStatus as FeatureStatusMessage,
  FeatureStoreServiceService,
  GetOnlineFeaturesResponse,
} from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import type { FeatureValue as FeatureValueMessage } from '../../../gen/ts/tandem/featurestore/v1/value';
import { FeatureStatus, ValueType } from '../src/domain/feature-values';
import {
  decodeOnlineFeaturesPlain,
  decodeOnlineFeaturesResponse,
  FeatureStoreClientDefinition,
  FeatureStorePlainClientDefinition,
  type PlainFeatureValue,
  type PlainOnlineFeatures,
} from '../src/online-response-decoder';
import {
  encodeEventTimes,
  encodeFeatureNames,
  FeatureStoreServiceDefinition,
  OnlineFeaturesReply,
  type ReplyColumn,
} from '../src/online-response';

const time = fc.oneof(
  fc.constant(0),
  fc.integer({ min: 0, max: 4_102_444_800_000 }),
  fc.constant(1_767_225_600_000),
  fc.integer({ min: -100_000_000_000, max: -1 }),
  fc.double({ min: -1e12, max: 1e12, noNaN: true }),
);
const wholeTime = fc.oneof(fc.constant(0), fc.integer({ min: 0, max: 4_102_444_800_000 }));

const wireValue: fc.Arbitrary<FeatureValueMessage | null> = fc.oneof(
  fc.constant(null),
  fc.constant({ kind: undefined }),
  fc.double().map((value) => ({ kind: { $case: 'doubleValue' as const, value } })),
  fc
    .oneof(
      fc.integer({ min: 0, max: 1000 }),
      fc.maxSafeInteger(),
      fc.integer({ min: -1000, max: -1 }),
    )
    .map((value) => ({ kind: { $case: 'int64Value' as const, value } })),
  fc.string({ unit: 'grapheme', maxLength: 200 }).map((value) => ({
    kind: { $case: 'stringValue' as const, value },
  })),
  fc.boolean().map((value) => ({ kind: { $case: 'boolValue' as const, value } })),
  fc
    .array(fc.float({ noNaN: true }), { maxLength: 20 })
    .map((values) => ({ kind: { $case: 'floatVectorValue' as const, value: { values } } })),
  fc
    .array(fc.string(), { maxLength: 5 })
    .map((values) => ({ kind: { $case: 'stringListValue' as const, value: { values } } })),
);
const aggregate: fc.Arbitrary<number | string | null> = fc.oneof(
  fc.constant(null),
  fc.integer({ min: 0, max: 1_000_000 }),
  // Within the contract's int64 range (±(2^53 − 1)): an aggregate may be typed INT64, and the
  // generated decoder rightly refuses values beyond it.
  fc.double({ noNaN: true, min: -Number.MAX_SAFE_INTEGER, max: Number.MAX_SAFE_INTEGER }),
  fc.string({ maxLength: 30 }),
);
const status = fc.integer({ min: 0, max: 5 });

interface ViewSpec {
  readonly kind: 'push' | 'stream';
  readonly features: number;
  readonly types: ValueType[];
  readonly seed: number;
}

const reply = fc
  .record({
    rowCount: fc.integer({ min: 0, max: 12 }),
    views: fc.array(
      fc.record({
        kind: fc.constantFrom<'push' | 'stream'>('push', 'stream'),
        features: fc.integer({ min: 1, max: 4 }),
        types: fc.array(fc.constantFrom(ValueType.Int64, ValueType.Double, ValueType.String), {
          minLength: 4,
          maxLength: 4,
        }),
        seed: fc.nat(),
      }),
      { minLength: 0, maxLength: 3 },
    ),
    omitEventTimes: fc.boolean(),
    readTime: wholeTime,
    asOf: fc.oneof(wholeTime, time),
    // ASCII names (what views have: the client decoder reads them directly) and any others.
    names: fc.array(
      fc.oneof(fc.string({ maxLength: 12 }), fc.string({ unit: 'grapheme', maxLength: 12 })),
      {
        minLength: 12,
        maxLength: 12,
      },
    ),
  })
  .chain((shape) =>
    fc
      .tuple(
        ...shape.views.map((view: ViewSpec) =>
          fc.record({
            values: fc.array<unknown>(view.kind === 'push' ? wireValue : aggregate, {
              minLength: shape.rowCount * view.features,
              maxLength: shape.rowCount * view.features,
            }),
            statuses: fc.array(status, {
              minLength: shape.rowCount * view.features,
              maxLength: shape.rowCount * view.features,
            }),
            eventTimes: fc.array(time, { minLength: shape.rowCount, maxLength: shape.rowCount }),
          }),
        ),
      )
      .map((data) => {
        const columns: ReplyColumn[] = [];
        const names: string[] = [];
        shape.views.forEach((view, v) => {
          const { values, statuses, eventTimes } = data[v]!;
          const times = Float64Array.from(eventTimes);
          const encoded = shape.omitEventTimes
            ? undefined
            : encodeEventTimes(times, shape.rowCount);
          for (let f = 0; f < view.features; f++) {
            names.push(shape.names[columns.length % shape.names.length]!);
            columns.push({
              values,
              statuses: Uint8Array.from(statuses),
              base: f * shape.rowCount,
              ...(view.kind === 'stream' ? { aggregateType: view.types[f]! } : {}),
              eventTimes: shape.omitEventTimes ? undefined : times,
              encodedEventTimes: encoded,
            });
          }
        });
        return new OnlineFeaturesReply(names, shape.readTime, shape.asOf, shape.rowCount, columns);
      }),
  );

describe('the GetOnlineFeatures encoder', () => {
  it('writes the generated encoder’s bytes for random replies', () => {
    fc.assert(
      fc.property(reply, (r) => {
        let slow: Buffer;
        try {
          slow = Buffer.from(GetOnlineFeaturesResponse.encode(r.toMessage()).finish());
        } catch {
          // A value the generated encoder refuses (a fractional int64): so does the fast one.
          expect(() => r.encode()).toThrow();
          return;
        }
        const fast = r.encode();
        expect(GetOnlineFeaturesResponse.decode(fast)).toEqual(
          GetOnlineFeaturesResponse.decode(slow),
        );
        expect(fast.equals(slow)).toBe(true);
        // The same reply with its feature names encoded beforehand, as repeated reads send them.
        const withNames = new OnlineFeaturesReply(
          r.featureNames,
          r.readTime,
          r.asOf,
          r.rowCount,
          r.columns,
          encodeFeatureNames(r.featureNames),
        );
        expect(withNames.encode().equals(slow)).toBe(true);
      }),
      { numRuns: 2_000 },
    );
  });

  it('encodes a typical push read: doubles, statuses and shared event times', () => {
    const rowCount = 3;
    const values: (FeatureValueMessage | null)[] = [
      { kind: { $case: 'doubleValue', value: 0.5 } },
      null,
      { kind: { $case: 'doubleValue', value: -2 } },
    ];
    const times = Float64Array.from([1_767_225_600_123, 0, 1_767_225_600_123]);
    const r = new OnlineFeaturesReply(['v:f'], 1_767_225_601_000, 1_767_225_600_900, rowCount, [
      {
        values,
        statuses: Uint8Array.from([FeatureStatus.Present, FeatureStatus.NotFound, 3]),
        base: 0,
        eventTimes: times,
        encodedEventTimes: encodeEventTimes(times, rowCount),
      },
    ]);
    const decoded = GetOnlineFeaturesResponse.decode(r.encode());
    expect(decoded).toEqual(r.toMessage());
    expect(decoded.columns[0]?.eventTimes[1]).toEqual(new Date(0));
  });

  it('serializes a reply or a plain message through the registered definition', () => {
    const r = new OnlineFeaturesReply(['v:f'], 1000, 1000, 0, []);
    const method = FeatureStoreServiceDefinition.getOnlineFeatures;
    expect(method.path).toBe(FeatureStoreServiceService.getOnlineFeatures.path);
    expect(method.responseSerialize(r)).toEqual(method.responseSerialize(r.toMessage()));
  });
});

describe('the GetOnlineFeatures client decoder', () => {
  /** Dates as their time, so that two invalid dates (NaN) compare equal. */
  function comparable(response: GetOnlineFeaturesResponse | PlainOnlineFeatures): unknown {
    const time = (d: Date | undefined) => (d === undefined ? d : { date: d.getTime() });
    return {
      ...response,
      metadata: response.metadata && {
        ...response.metadata,
        readTime: time(response.metadata.readTime),
        asOf: time(response.metadata.asOf),
      },
      columns: response.columns.map((c) => ({
        ...c,
        eventTimes: c.eventTimes.map((d) => ({ date: d instanceof Date ? d.getTime() : d })),
      })),
    };
  }

  /**
   * The generated decoder's message with each value unwrapped and each Date as its time, as the
   * plain form documents them.
   */
  function plainOf(response: GetOnlineFeaturesResponse): PlainOnlineFeatures {
    const plain = (value: FeatureValueMessage): PlainFeatureValue => {
      const kind = value.kind;
      if (kind === undefined) return undefined;
      if (kind.$case === 'floatVectorValue' || kind.$case === 'stringListValue') {
        return kind.value.values;
      }
      return kind.value;
    };
    return {
      metadata: response.metadata,
      columns: response.columns.map((c) => ({
        ...c,
        values: c.values.map(plain),
        eventTimes: c.eventTimes.map((d) => d.getTime()),
      })),
    };
  }

  /** Both decoders' results (and the plain decoder's), or that all of them threw. */
  function expectSameDecoding(bytes: Uint8Array): void {
    let expected: GetOnlineFeaturesResponse;
    try {
      expected = GetOnlineFeaturesResponse.decode(bytes);
    } catch {
      expect(() => decodeOnlineFeaturesResponse(bytes)).toThrow();
      expect(() => decodeOnlineFeaturesPlain(bytes)).toThrow();
      return;
    }
    expect(comparable(decodeOnlineFeaturesResponse(bytes))).toStrictEqual(comparable(expected));
    expect(comparable(decodeOnlineFeaturesPlain(bytes))).toStrictEqual(
      comparable(plainOf(expected)),
    );
  }

  it('reads plain values: numbers, strings, booleans, arrays, and undefined for a row without one', () => {
    const bytes = GetOnlineFeaturesResponse.encode({
      metadata: { featureNames: ['v:a', 'v:b'], readTime: new Date(1_000), asOf: new Date(900) },
      columns: [
        {
          values: [
            { kind: { $case: 'doubleValue', value: 0.5 } },
            { kind: undefined },
            { kind: { $case: 'int64Value', value: 7 } },
          ],
          statuses: [
            FeatureStatusMessage.FEATURE_STATUS_PRESENT,
            FeatureStatusMessage.FEATURE_STATUS_NOT_FOUND,
            FeatureStatusMessage.FEATURE_STATUS_PRESENT,
          ],
          eventTimes: [new Date(1_767_225_600_123), new Date(0), new Date(1_767_225_600_123)],
        },
        {
          values: [
            { kind: { $case: 'floatVectorValue', value: { values: [1, 2.5] } } },
            { kind: { $case: 'stringListValue', value: { values: ['x', 'y'] } } },
            { kind: { $case: 'boolValue', value: true } },
          ],
          statuses: [
            FeatureStatusMessage.FEATURE_STATUS_PRESENT,
            FeatureStatusMessage.FEATURE_STATUS_PRESENT,
            FeatureStatusMessage.FEATURE_STATUS_PRESENT,
          ],
          eventTimes: [],
        },
      ],
    }).finish();
    const plain = decodeOnlineFeaturesPlain(bytes);
    expect(plain.columns.map((c) => c.values)).toStrictEqual([
      [0.5, undefined, 7],
      [[1, 2.5], ['x', 'y'], true],
    ]);
    expect(plain.columns[0]?.eventTimes).toStrictEqual([1_767_225_600_123, 0, 1_767_225_600_123]);
    expect(plain.metadata?.asOf).toEqual(new Date(900));
  });

  it('decodes random replies exactly as the generated decoder does', () => {
    fc.assert(
      fc.property(reply, (r) => {
        let bytes: Buffer;
        try {
          bytes = r.encode();
        } catch {
          return; // a value the encoders refuse (see above)
        }
        expectSameDecoding(bytes);
      }),
      { numRuns: 2_000 },
    );
  });

  /** A column written field by field, as another implementation might. */
  function column(write: (w: BinaryWriter) => void): Uint8Array {
    const w = new BinaryWriter();
    w.uint32(18).fork();
    write(w);
    w.join();
    return w.finish();
  }

  const timestamp = fc.record({
    order: fc.constantFrom('seconds first', 'nanos first', 'seconds only', 'nanos only', 'empty'),
    seconds: fc.oneof(
      fc.integer({ min: 0, max: 4_102_444_800 }),
      fc.integer({ min: -100_000_000_000, max: -1 }),
      fc.constantFrom(2 ** 49 - 1, 2 ** 49, Number.MAX_SAFE_INTEGER),
    ),
    nanos: fc.oneof(
      fc.integer({ min: 0, max: 999_999_999 }),
      fc.constantFrom(2 ** 28, 2 ** 31 - 1, 2 ** 31, 2 ** 32 + 5, -1),
    ),
  });

  /** Nanos as a varint, also beyond int32 (which only a foreign writer would send). */
  function writeNanos(w: BinaryWriter, nanos: number): void {
    w.uint32(16);
    if (nanos >= 2 ** 31) w.uint64(nanos);
    else w.int32(nanos);
  }

  it('reads timestamps in any field order and size, and unpacked statuses and unknown fields, as the generated decoder does', () => {
    fc.assert(
      fc.property(
        fc.array(timestamp, { maxLength: 6 }),
        fc.array(fc.integer({ min: -2, max: 6 }), { maxLength: 6 }),
        fc.boolean(),
        fc.double(),
        (times, statuses, unknownFields, value) => {
          const bytes = column((w) => {
            if (unknownFields) w.uint32(7 << 3).uint64(12345);
            w.uint32(10).fork().uint32(9).double(value).join();
            w.uint32(10).fork().uint32(16).int64(-3).join();
            for (const status of statuses) w.uint32(16).int32(status);
            for (const t of times) {
              w.uint32(26).fork();
              if (t.order === 'nanos first') writeNanos(w, t.nanos);
              if (
                t.order === 'seconds first' ||
                t.order === 'nanos first' ||
                t.order === 'seconds only'
              )
                w.uint32(8).int64(t.seconds);
              if (t.order === 'seconds first' || t.order === 'nanos only') writeNanos(w, t.nanos);
              if (unknownFields) w.uint32((9 << 3) | 2).string('ignored');
              w.join();
            }
            if (unknownFields) w.uint32((15 << 3) | 5).fixed32(7);
          });
          expectSameDecoding(bytes);
        },
      ),
      { numRuns: 1_000 },
    );
  });

  it('reads metadata written field by field (any names, times, unknown fields, an end-group) as the generated decoder does', () => {
    const field = fc.oneof(
      fc
        .oneof(fc.string({ maxLength: 20 }), fc.string({ unit: 'grapheme', maxLength: 6 }))
        .map((name) => ({ kind: 'name' as const, name })),
      fc.record({ kind: fc.constantFrom('readTime' as const, 'asOf' as const), time: timestamp }),
      fc.constantFrom(
        { kind: 'unknown' as const },
        { kind: 'wrong wire type' as const },
        { kind: 'end group' as const },
      ),
    );
    fc.assert(
      fc.property(fc.array(field, { maxLength: 8 }), (fields) => {
        const w = new BinaryWriter();
        w.uint32(10).fork();
        for (const f of fields) {
          if (f.kind === 'name') w.uint32(10).string(f.name);
          else if (f.kind === 'unknown') w.uint32((9 << 3) | 2).string('ignored');
          else if (f.kind === 'wrong wire type') w.uint32(8).uint32(3);
          else if (f.kind === 'end group') w.uint32(12);
          else {
            const t = f.time;
            w.uint32(f.kind === 'readTime' ? 18 : 26).fork();
            if (t.order === 'nanos first') writeNanos(w, t.nanos);
            if (t.order !== 'nanos only' && t.order !== 'empty') w.uint32(8).int64(t.seconds);
            if (t.order === 'seconds first' || t.order === 'nanos only') writeNanos(w, t.nanos);
            w.join();
          }
        }
        w.join();
        w.uint32(18).fork().uint32(16).int32(1).join();
        expectSameDecoding(w.finish());
      }),
      { numRuns: 1_000 },
    );
  });

  it('decodes metadata whose last name is cut off, or whose field runs past its end, as the generated decoder does', () => {
    // Cut inside the last feature name: the generated decoder refuses it.
    expectSameDecoding(Buffer.from('0a110a0f76696577733a636c6963', 'hex'));
    // A name, then a time, whose length runs past the metadata's end: the generated decoder reads
    // on into the response's next bytes.
    expectSameDecoding(Buffer.from('0a020a021200', 'hex'));
    expectSameDecoding(Buffer.from('0a0212020805', 'hex'));
  });

  it('refuses truncated responses, as the generated decoder does', () => {
    const full = GetOnlineFeaturesResponse.encode({
      metadata: { featureNames: ['v:f'], readTime: new Date(1_767_225_601_000), asOf: undefined },
      columns: [
        {
          values: [{ kind: { $case: 'doubleValue', value: 0.25 } }],
          statuses: [FeatureStatusMessage.FEATURE_STATUS_PRESENT],
          eventTimes: [new Date(1_767_225_600_123)],
        },
      ],
    }).finish();
    for (let length = 1; length < full.length; length++) {
      expectSameDecoding(full.subarray(0, length));
    }
  });

  /** A response of one column, as the generated encoder writes it. */
  const oneColumn = (column: GetOnlineFeaturesResponse['columns'][number]): Buffer =>
    Buffer.from(
      GetOnlineFeaturesResponse.encode({ metadata: undefined, columns: [column] }).finish(),
    );

  it('is what the plain client definition deserializes GetOnlineFeatures with', () => {
    const method = FeatureStorePlainClientDefinition.getOnlineFeatures;
    expect(method.path).toBe(FeatureStoreServiceService.getOnlineFeatures.path);
    const bytes = oneColumn({
      values: [{ kind: { $case: 'doubleValue', value: 3 } }],
      statuses: [FeatureStatusMessage.FEATURE_STATUS_PRESENT],
      eventTimes: [],
    });
    expect(method.responseDeserialize(bytes).columns[0]?.values).toStrictEqual([3]);
  });

  it('is what the client definition deserializes GetOnlineFeatures with', () => {
    const method = FeatureStoreClientDefinition.getOnlineFeatures;
    expect(method.path).toBe(FeatureStoreServiceService.getOnlineFeatures.path);
    const bytes = oneColumn({
      values: [],
      statuses: [FeatureStatusMessage.FEATURE_STATUS_NOT_FOUND],
      eventTimes: [new Date(0)],
    });
    expect(method.responseDeserialize(bytes)).toStrictEqual(
      GetOnlineFeaturesResponse.decode(bytes),
    );
  });
});
