/**
 * The hand-written GetOnlineFeatures encoder against the generated one: for many random replies
 * (push and stream columns, every value shape and status, odd times, omitted event times), the
 * bytes are the generated encoder's bytes, and they decode to the same message.
 */
import fc from 'fast-check';
import {
  FeatureStoreServiceService,
  GetOnlineFeaturesResponse,
} from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import type { FeatureValue as FeatureValueMessage } from '../../../gen/ts/tandem/featurestore/v1/value';
import { FeatureStatus, ValueType } from '../src/domain/feature-values';
import {
  encodeEventTimes,
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
    names: fc.array(fc.string({ unit: 'grapheme', maxLength: 12 }), {
      minLength: 12,
      maxLength: 12,
    }),
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
