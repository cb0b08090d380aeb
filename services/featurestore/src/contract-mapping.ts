/**
 * Translation between the `tandem.featurestore.v1` messages and the domain's plain definitions and
 * values. The domain depends on no generated code; this is the one place the two meet.
 */
import type { Duration } from '../../../gen/ts/google/protobuf/duration';
import { hasValidNanos } from '../../platform/src/grpc/well-known';
import type { Entity } from '../../../gen/ts/tandem/featurestore/v1/entity';
import {
  AggregationFunction as AggregationFunctionMessage,
  AggregationKey as AggregationKeyMessage,
  type FeatureView,
  type Aggregation as AggregationMessage,
} from '../../../gen/ts/tandem/featurestore/v1/feature_view';
import {
  ValueType as ValueTypeMessage,
  type FeatureValue as FeatureValueMessage,
} from '../../../gen/ts/tandem/featurestore/v1/value';
import { ValueType, type FeatureValue, type FieldViolation } from './domain/feature-values';
import { AggregationFunction, AggregationKey } from './domain/window-aggregation';
import type {
  AggregationDefinition,
  EntityDefinition,
  FeatureViewDefinition,
  FeatureViewSource,
} from './domain/registry';

// The domain's enums repeat the contract's numbers; these tables translate without casts.
const valueTypes = [
  [ValueTypeMessage.VALUE_TYPE_UNSPECIFIED, ValueType.Unspecified],
  [ValueTypeMessage.VALUE_TYPE_DOUBLE, ValueType.Double],
  [ValueTypeMessage.VALUE_TYPE_INT64, ValueType.Int64],
  [ValueTypeMessage.VALUE_TYPE_STRING, ValueType.String],
  [ValueTypeMessage.VALUE_TYPE_BOOL, ValueType.Bool],
  [ValueTypeMessage.VALUE_TYPE_FLOAT_VECTOR, ValueType.FloatVector],
  [ValueTypeMessage.VALUE_TYPE_STRING_LIST, ValueType.StringList],
] as const;
const functions = [
  [AggregationFunctionMessage.AGGREGATION_FUNCTION_UNSPECIFIED, AggregationFunction.Unspecified],
  [AggregationFunctionMessage.AGGREGATION_FUNCTION_COUNT, AggregationFunction.Count],
  [AggregationFunctionMessage.AGGREGATION_FUNCTION_SUM, AggregationFunction.Sum],
  [AggregationFunctionMessage.AGGREGATION_FUNCTION_MEAN, AggregationFunction.Mean],
  [AggregationFunctionMessage.AGGREGATION_FUNCTION_MIN, AggregationFunction.Min],
  [AggregationFunctionMessage.AGGREGATION_FUNCTION_MAX, AggregationFunction.Max],
  [AggregationFunctionMessage.AGGREGATION_FUNCTION_LAST, AggregationFunction.Last],
  [
    AggregationFunctionMessage.AGGREGATION_FUNCTION_DISTINCT_COUNT,
    AggregationFunction.DistinctCount,
  ],
] as const;
const keys = [
  [AggregationKeyMessage.AGGREGATION_KEY_UNSPECIFIED, AggregationKey.Unspecified],
  [AggregationKeyMessage.AGGREGATION_KEY_UNIT_ID, AggregationKey.UnitId],
  [AggregationKeyMessage.AGGREGATION_KEY_ITEM_ID, AggregationKey.ItemId],
] as const;

function toDomain<M, D>(table: readonly (readonly [M, D])[], value: M, unknown: D): D {
  return table.find(([message]) => message === value)?.[1] ?? unknown;
}
function toMessage<M, D>(table: readonly (readonly [M, D])[], value: D, unknown: M): M {
  return table.find(([, domain]) => domain === value)?.[0] ?? unknown;
}

export const domainValueType = (type: ValueTypeMessage): ValueType =>
  toDomain<ValueTypeMessage, ValueType>(valueTypes, type, ValueType.Unspecified);
export const messageValueType = (type: ValueType): ValueTypeMessage =>
  toMessage<ValueTypeMessage, ValueType>(valueTypes, type, ValueTypeMessage.VALUE_TYPE_UNSPECIFIED);

/** A Duration in ms (nanoseconds below a millisecond are dropped). */
export function durationMs(duration: Duration | undefined): number {
  if (duration === undefined) return 0;
  return duration.seconds * 1000 + Math.floor(duration.nanos / 1e6);
}

/** The Durations of a view request whose nanos are not a Duration's (see `hasValidNanos`), by path. */
export function invalidDurations(view: FeatureView): FieldViolation[] {
  const durations: [string, Duration | undefined][] = [['ttl', view.ttl]];
  if (view.source?.$case === 'streamSource') {
    const stream = view.source.value;
    durations.push(['stream_source.allowed_lateness', stream.allowedLateness]);
    stream.aggregations.forEach((aggregation, i) => {
      durations.push([`stream_source.aggregations[${i}].window`, aggregation.window]);
      durations.push([`stream_source.aggregations[${i}].bucket`, aggregation.bucket]);
    });
  }
  const out: FieldViolation[] = [];
  for (const [field, duration] of durations) {
    if (duration === undefined) continue;
    if (!hasValidNanos(duration)) {
      out.push({
        field,
        description: "must be a Duration: nanos within ±999,999,999 and of the seconds' sign",
        reason: 'INVALID_DURATION',
      });
    } else if (duration.seconds === 0 && duration.nanos > 0 && duration.nanos < 1e6) {
      // Milliseconds are the resolution: it would be read as zero (for a TTL, no expiry).
      out.push({ field, description: 'must be zero or at least 1 ms', reason: 'OUT_OF_RANGE' });
    }
  }
  return out;
}

/** A Duration of `ms` milliseconds. */
export function durationOf(ms: number): Duration {
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
}

export function entityDefinitionOf(entity: Entity): EntityDefinition {
  return {
    name: entity.name,
    joinKey: entity.joinKey,
    valueType: domainValueType(entity.valueType),
    description: entity.description,
    owner: entity.owner,
  };
}

/** Output-only facts of a stored resource. */
export interface StoredFacts {
  readonly version: number;
  readonly createTime: Date;
  readonly updateTime: Date;
}

/**
 * The etag of a stored entity or feature view: its version and, in base 36, its creation time
 * (`3.lq2x1k3c`). The version alone starts again at 1 when a name is deleted and applied again,
 * and an etag read before would then be current for a resource its reader never saw.
 */
export function etagOf(facts: Pick<StoredFacts, 'version' | 'createTime'>): string {
  return `${facts.version}.${facts.createTime.getTime().toString(36)}`;
}

export function entityMessageOf(definition: EntityDefinition, facts: StoredFacts): Entity {
  return {
    name: definition.name,
    joinKey: definition.joinKey,
    valueType: messageValueType(definition.valueType),
    description: definition.description,
    owner: definition.owner,
    etag: etagOf(facts),
    createTime: facts.createTime,
    updateTime: facts.updateTime,
  };
}

function aggregationDefinitionOf(aggregation: AggregationMessage): AggregationDefinition {
  return {
    feature: aggregation.feature,
    function: toDomain<AggregationFunctionMessage, AggregationFunction>(
      functions,
      aggregation.function,
      AggregationFunction.Unspecified,
    ),
    valueField: aggregation.valueField,
    windowMs: durationMs(aggregation.window),
    bucketMs: durationMs(aggregation.bucket),
  };
}

export function featureViewDefinitionOf(view: FeatureView): FeatureViewDefinition {
  let source: FeatureViewSource | undefined;
  if (view.source?.$case === 'pushSource') source = { kind: 'push' };
  else if (view.source?.$case === 'streamSource') {
    const stream = view.source.value;
    source = {
      kind: 'stream',
      subject: stream.subject,
      eventNames: [...stream.eventNames],
      key: toDomain<AggregationKeyMessage, AggregationKey>(
        keys,
        stream.key,
        AggregationKey.Unspecified,
      ),
      aggregations: stream.aggregations.map(aggregationDefinitionOf),
      allowedLatenessMs: durationMs(stream.allowedLateness),
    };
  }
  return {
    name: view.name,
    description: view.description,
    owner: view.owner,
    tags: { ...view.tags },
    entities: [...view.entities],
    features: view.features.map((f) => ({
      name: f.name,
      valueType: domainValueType(f.valueType),
      description: f.description,
      vectorLength: f.vectorLength,
    })),
    ttlMs: durationMs(view.ttl),
    ...(view.online === undefined ? {} : { online: view.online }),
    source,
  };
}

export function featureViewMessageOf(
  definition: FeatureViewDefinition,
  facts: StoredFacts | undefined,
): FeatureView {
  const source = definition.source;
  return {
    name: definition.name,
    description: definition.description,
    owner: definition.owner,
    tags: { ...definition.tags },
    entities: [...definition.entities],
    features: definition.features.map((f) => ({
      name: f.name,
      valueType: messageValueType(f.valueType),
      description: f.description,
      vectorLength: f.vectorLength,
    })),
    ttl: definition.ttlMs > 0 ? durationOf(definition.ttlMs) : undefined,
    online: definition.online ?? true,
    source:
      source === undefined
        ? undefined
        : source.kind === 'push'
          ? { $case: 'pushSource', value: {} }
          : {
              $case: 'streamSource',
              value: {
                subject: source.subject,
                eventNames: [...source.eventNames],
                key: toMessage<AggregationKeyMessage, AggregationKey>(
                  keys,
                  source.key,
                  AggregationKeyMessage.AGGREGATION_KEY_UNSPECIFIED,
                ),
                aggregations: source.aggregations.map((a) => ({
                  feature: a.feature,
                  function: toMessage<AggregationFunctionMessage, AggregationFunction>(
                    functions,
                    a.function,
                    AggregationFunctionMessage.AGGREGATION_FUNCTION_UNSPECIFIED,
                  ),
                  valueField: a.valueField,
                  window: durationOf(a.windowMs),
                  bucket: (a.bucketMs ?? 0) > 0 ? durationOf(a.bucketMs ?? 0) : undefined,
                })),
                allowedLateness:
                  (source.allowedLatenessMs ?? 0) > 0
                    ? durationOf(source.allowedLatenessMs ?? 0)
                    : undefined,
              },
            },
    etag: facts === undefined ? '' : etagOf(facts),
    createTime: facts?.createTime,
    updateTime: facts?.updateTime,
  };
}

/** The domain value of a wire value; null when it has no kind. */
export function domainValueOf(value: FeatureValueMessage | undefined): FeatureValue | null {
  const kind = value?.kind;
  if (kind === undefined) return null;
  switch (kind.$case) {
    case 'doubleValue':
      return { kind: 'double', value: kind.value };
    case 'int64Value':
      return { kind: 'int64', value: kind.value };
    case 'stringValue':
      return { kind: 'string', value: kind.value };
    case 'boolValue':
      return { kind: 'bool', value: kind.value };
    case 'floatVectorValue':
      return { kind: 'floatVector', value: kind.value.values };
    case 'stringListValue':
      return { kind: 'stringList', value: kind.value.values };
  }
}

/**
 * A feature value as stored in a document: the bare JSON value, since the feature's declared
 * type says how to read it back. Null is an absent value.
 */
export type StoredValue = number | string | boolean | number[] | string[] | null;

export function storedValueOf(value: FeatureValueMessage | undefined): StoredValue {
  const kind = value?.kind;
  if (kind === undefined) return null;
  switch (kind.$case) {
    case 'floatVectorValue':
      return [...kind.value.values];
    case 'stringListValue':
      return [...kind.value.values];
    default:
      return kind.value;
  }
}

/** The wire value of a stored value of `type`; undefined for null or a value of another shape. */
export function messageOfStoredValue(
  type: ValueType,
  value: StoredValue | undefined,
): FeatureValueMessage | undefined {
  if (value === null || value === undefined) return undefined;
  switch (type) {
    case ValueType.Double:
      return typeof value === 'number' ? { kind: { $case: 'doubleValue', value } } : undefined;
    // A fraction (a DOUBLE stored for an earlier view of the same name) is no INT64: encoded, it
    // would fail the whole response.
    case ValueType.Int64:
      return Number.isSafeInteger(value)
        ? { kind: { $case: 'int64Value', value: value as number } }
        : undefined;
    case ValueType.String:
      return typeof value === 'string' ? { kind: { $case: 'stringValue', value } } : undefined;
    case ValueType.Bool:
      return typeof value === 'boolean' ? { kind: { $case: 'boolValue', value } } : undefined;
    // Elements of another type (a value stored for an earlier view of the same name that had
    // another type) make it no value of this one, as for the scalar types: never coerced.
    case ValueType.FloatVector:
      return Array.isArray(value) && value.every((v) => typeof v === 'number')
        ? { kind: { $case: 'floatVectorValue', value: { values: value } } }
        : undefined;
    case ValueType.StringList:
      return Array.isArray(value) && value.every((v) => typeof v === 'string')
        ? { kind: { $case: 'stringListValue', value: { values: value } } }
        : undefined;
    default:
      return undefined;
  }
}

/** The wire value of an aggregate of a feature of `type`. */
export function messageOfAggregate(
  type: ValueType,
  value: number | string | null,
): FeatureValueMessage | undefined {
  if (value === null) return undefined;
  if (typeof value === 'string') return { kind: { $case: 'stringValue', value } };
  if (type === ValueType.Int64) return { kind: { $case: 'int64Value', value } };
  return { kind: { $case: 'doubleValue', value } };
}

/** A stored time (a Date, or epoch milliseconds for an absent one) as a Date. */
export function dateOf(value: Date | number): Date {
  return value instanceof Date ? value : new Date(value);
}
