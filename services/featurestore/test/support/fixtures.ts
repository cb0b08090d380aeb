/** Definitions and values the FeatureStore tests share. */
import { randomUUID } from 'node:crypto';
import type { OutcomeEvent } from '../../../../gen/ts/tandem/events/v1/outcome_event';
import type { Entity } from '../../../../gen/ts/tandem/featurestore/v1/entity';
import {
  AggregationFunction,
  AggregationKey,
  type FeatureView,
} from '../../../../gen/ts/tandem/featurestore/v1/feature_view';
import type {
  FeatureRow,
  FeatureStoreServiceService,
} from '../../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import { ValueType, type FeatureValue } from '../../../../gen/ts/tandem/featurestore/v1/value';
import type { DeliveredEvent } from '../../../platform/src/events/bus';
import type { TypedClient } from '../../../platform/src/grpc/client';
import {
  AggregationFunction as WindowFunction,
  type WindowAggregatorOptions,
} from '../../src/domain/window-aggregation';

export const userEntity: Entity = {
  name: 'user',
  joinKey: 'user_id',
  valueType: ValueType.VALUE_TYPE_STRING,
  description: 'a listener',
  owner: 'team-home',
  etag: '',
};

export const itemEntity: Entity = {
  ...userEntity,
  name: 'item',
  joinKey: 'item_id',
  description: 'a track',
};

export function userStatsView(overrides: Partial<FeatureView> = {}): FeatureView {
  return {
    name: 'user_stats',
    description: 'per-user statistics',
    owner: 'team-home',
    tags: { team: 'home' },
    entities: ['user'],
    features: [
      { name: 'ctr', valueType: ValueType.VALUE_TYPE_DOUBLE, description: '', vectorLength: 0 },
      { name: 'plays', valueType: ValueType.VALUE_TYPE_INT64, description: '', vectorLength: 0 },
      { name: 'country', valueType: ValueType.VALUE_TYPE_STRING, description: '', vectorLength: 0 },
      { name: 'premium', valueType: ValueType.VALUE_TYPE_BOOL, description: '', vectorLength: 0 },
      {
        name: 'embedding',
        valueType: ValueType.VALUE_TYPE_FLOAT_VECTOR,
        description: '',
        vectorLength: 3,
      },
      {
        name: 'genres',
        valueType: ValueType.VALUE_TYPE_STRING_LIST,
        description: '',
        vectorLength: 0,
      },
    ],
    ttl: undefined,
    online: true,
    source: { $case: 'pushSource', value: {} },
    etag: '',
    ...overrides,
  };
}

/** A stream view `name` counting the events on `subject` per item (`n`) over a short window. */
export function itemCountView(name: string, subject: string, windowSeconds: number): FeatureView {
  return {
    name,
    description: '',
    owner: 'tests',
    tags: {},
    entities: ['item'],
    features: [
      { name: 'n', valueType: ValueType.VALUE_TYPE_INT64, description: '', vectorLength: 0 },
    ],
    ttl: undefined,
    online: true,
    source: {
      $case: 'streamSource',
      value: {
        subject,
        eventNames: [],
        key: AggregationKey.AGGREGATION_KEY_ITEM_ID,
        aggregations: [
          {
            feature: 'n',
            function: AggregationFunction.AGGREGATION_FUNCTION_COUNT,
            valueField: '',
            window: { seconds: windowSeconds, nanos: 0 },
            bucket: { seconds: 1, nanos: 0 },
          },
        ],
        allowedLateness: undefined,
      },
    },
    etag: '',
  };
}

export function itemPlaysView(
  name = 'item_plays',
  subject = 'tandem.events.v1.outcome.play',
): FeatureView {
  return {
    name,
    description: 'plays of each item',
    owner: 'team-home',
    tags: {},
    entities: ['item'],
    features: [
      { name: 'plays_1h', valueType: ValueType.VALUE_TYPE_INT64, description: '', vectorLength: 0 },
      {
        name: 'seconds_1h',
        valueType: ValueType.VALUE_TYPE_DOUBLE,
        description: '',
        vectorLength: 0,
      },
      {
        name: 'listeners_1h',
        valueType: ValueType.VALUE_TYPE_INT64,
        description: '',
        vectorLength: 0,
      },
    ],
    ttl: undefined,
    online: true,
    source: {
      $case: 'streamSource',
      value: {
        subject,
        eventNames: [],
        key: AggregationKey.AGGREGATION_KEY_ITEM_ID,
        aggregations: [
          {
            feature: 'plays_1h',
            function: AggregationFunction.AGGREGATION_FUNCTION_COUNT,
            valueField: '',
            window: { seconds: 3600, nanos: 0 },
            bucket: undefined,
          },
          {
            feature: 'seconds_1h',
            function: AggregationFunction.AGGREGATION_FUNCTION_SUM,
            valueField: 'value',
            window: { seconds: 3600, nanos: 0 },
            bucket: undefined,
          },
          {
            feature: 'listeners_1h',
            function: AggregationFunction.AGGREGATION_FUNCTION_DISTINCT_COUNT,
            valueField: 'unit.id',
            window: { seconds: 3600, nanos: 0 },
            bucket: undefined,
          },
        ],
        allowedLateness: undefined,
      },
    },
    etag: '',
  };
}

export const double = (value: number): FeatureValue => ({ kind: { $case: 'doubleValue', value } });
export const int = (value: number): FeatureValue => ({ kind: { $case: 'int64Value', value } });
export const str = (value: string): FeatureValue => ({ kind: { $case: 'stringValue', value } });
export const bool = (value: boolean): FeatureValue => ({ kind: { $case: 'boolValue', value } });
export const vector = (values: number[]): FeatureValue => ({
  kind: { $case: 'floatVectorValue', value: { values } },
});
export const list = (values: string[]): FeatureValue => ({
  kind: { $case: 'stringListValue', value: { values } },
});

export function userRow(
  userId: string,
  eventTime: Date,
  values: Record<string, FeatureValue>,
): FeatureRow {
  return { entityKey: { user_id: str(userId) }, values, eventTime };
}

/** The entity_rows of a read of these user ids. */
export function users(...ids: string[]) {
  return { user_id: { values: ids.map(str) } };
}

/** A `play` outcome of a user on an item now, with a fresh event id; `overrides` set the rest. */
export function outcome(
  itemId: string,
  unitId: string,
  overrides: Partial<OutcomeEvent> = {},
): OutcomeEvent {
  return {
    eventId: randomUUID(),
    eventTime: new Date(),
    name: 'play',
    unit: { id: unitId, type: 'user' },
    itemId,
    decisionId: '',
    value: 1,
    properties: undefined,
    source: 'test',
    surface: 'home',
    ...overrides,
  };
}

/** Applies the `user` entity and the `user_stats` view (with `overrides`) through `client`. */
export async function applyUserStats(
  client: TypedClient<typeof FeatureStoreServiceService>,
  overrides: Partial<FeatureView> = {},
): Promise<void> {
  await client.applyEntity({ entity: userEntity, requestId: '' });
  await client.applyFeatureView({
    featureView: userStatsView(overrides),
    requestId: '',
    validateOnly: false,
  });
}

/**
 * Aggregator options with one feature, plays in the last hour (minute buckets, 10 minutes of
 * allowed lateness), keeping at most `maxTrackedEventIds` seen ids when given.
 */
export function playsCountOptions(maxTrackedEventIds?: number): WindowAggregatorOptions {
  return {
    aggregations: [
      {
        feature: 'plays_1h',
        function: WindowFunction.Count,
        windowMs: 3_600_000,
        bucketMs: 60_000,
      },
    ],
    allowedLatenessMs: 600_000,
    ...(maxTrackedEventIds === undefined ? {} : { maxTrackedEventIds }),
  };
}

/**
 * A play of item-1 by user u at `time`, as a consumer receives it: stored in the stream at
 * `storedAt` (default `time`), delivered `deliveryCount` times (default 1), with `value`
 * (default 0).
 */
export function deliveredPlay(
  eventId: string,
  time: number,
  options: {
    readonly storedAt?: number;
    readonly deliveryCount?: number;
    readonly value?: number;
  } = {},
): DeliveredEvent<OutcomeEvent> {
  return {
    event: {
      eventId,
      eventTime: new Date(time),
      name: 'play',
      unit: { id: 'u', type: 'user' },
      itemId: 'item-1',
      decisionId: '',
      value: options.value ?? 0,
      properties: undefined,
      source: 'test',
      surface: 'home',
    },
    eventId,
    subject: 'tandem.events.v1.outcome.play',
    deliveryCount: options.deliveryCount ?? 1,
    streamSequence: 1,
    storedAt: new Date(options.storedAt ?? time),
    headers: {},
  };
}
