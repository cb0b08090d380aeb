/**
 * A stream-sourced view's LAST of an event property is served as the feature's declared type: an
 * event whose property has the other type is counted as invalid and not served.
 */
import type { EventBus } from '../../platform/src/events/bus';
import { createInProcessBus } from '../../platform/src/events/in-process-bus';
import { OutcomeEvent } from '../../../gen/ts/tandem/events/v1/outcome_event';
import {
  AggregationFunction,
  AggregationKey,
  type FeatureView,
} from '../../../gen/ts/tandem/featurestore/v1/feature_view';
import { FeatureStatus } from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import { ValueType } from '../../../gen/ts/tandem/featurestore/v1/value';
import { eventually, startHarness, type RunningHarness } from './support/feature-store-harness';
import { double, itemEntity, str, outcome } from './support/fixtures';

const subject = 'tandem.events.v1.outcome.mood';

const itemMoodView: FeatureView = {
  name: 'item_mood',
  description: '',
  owner: 'team-home',
  tags: {},
  entities: ['item'],
  features: [
    { name: 'level', valueType: ValueType.VALUE_TYPE_STRING, description: '', vectorLength: 0 },
    { name: 'score', valueType: ValueType.VALUE_TYPE_DOUBLE, description: '', vectorLength: 0 },
  ],
  ttl: undefined,
  online: true,
  source: {
    $case: 'streamSource',
    value: {
      subject,
      eventNames: [],
      key: AggregationKey.AGGREGATION_KEY_ITEM_ID,
      aggregations: ['level', 'score'].map((feature) => ({
        feature,
        function: AggregationFunction.AGGREGATION_FUNCTION_LAST,
        valueField: `properties.${feature}`,
        window: { seconds: 3600, nanos: 0 },
        bucket: undefined,
      })),
      allowedLateness: undefined,
    },
  },
  etag: '',
};

describe('LAST of an event property on a stream-sourced view', () => {
  let bus: EventBus;
  let harness: RunningHarness;

  beforeEach(async () => {
    bus = createInProcessBus();
    harness = await startHarness({ sharedBus: bus });
    await harness.client.applyEntity({ entity: itemEntity, requestId: '' });
    await harness.client.applyFeatureView({
      featureView: itemMoodView,
      requestId: '',
      validateOnly: false,
    });
  });

  afterEach(async () => {
    await harness.stop();
  });

  const publish = (event: OutcomeEvent) =>
    bus.publish(subject, OutcomeEvent, event, { eventId: event.eventId });

  it('serves the declared type and counts a property of the other type as invalid', async () => {
    await publish(
      outcome('i1', 'u1', {
        name: 'mood',
        value: undefined,
        properties: { level: 7, score: 'high' },
      }),
    );
    await publish(
      outcome('i2', 'u1', {
        name: 'mood',
        value: undefined,
        properties: { level: 'high', score: 7 },
      }),
    );
    await eventually(async () => {
      const status = (await harness.client.getAggregationStatus({ featureView: 'item_mood' }))
        .status!;
      expect(status.eventsProcessed).toBe(2);
      expect(status.eventsDroppedInvalid).toBe(1);
    });
    const read = await harness.client.getOnlineFeatures({
      features: ['item_mood:*'],
      entityRows: { item_id: { values: [str('i1'), str('i2')] } },
      omitEventTimes: true,
    });
    const [level, score] = read.columns;
    expect(level?.values).toEqual([{ kind: undefined }, str('high')]);
    expect(score?.values).toEqual([{ kind: undefined }, double(7)]);
    expect(level?.statuses[0]).toBe(FeatureStatus.FEATURE_STATUS_NULL_VALUE);
    expect(score?.statuses[0]).toBe(FeatureStatus.FEATURE_STATUS_NULL_VALUE);
  });
});
