/**
 * The stream aggregations' figures as metrics, read through a real OpenTelemetry metrics SDK
 * registered before the service starts: the counts GetAggregationStatus gives, per view, and
 * the counts of each view's consumer, which the event bus reports.
 */
import { OutcomeEvent } from '../../../gen/ts/tandem/events/v1/outcome_event';
import { createInProcessBus } from '../../platform/src/events/in-process-bus';
import { installTestMetrics, type TestMetrics } from '../../platform/test/support/metrics';
import { eventually, startHarness, type RunningHarness } from './support/feature-store-harness';
import { itemEntity, itemPlaysView, outcome } from './support/fixtures';

describe('the stream aggregation metrics', () => {
  const bus = createInProcessBus();
  const subject = 'tandem.events.v1.outcome.metered';
  let testMetrics: TestMetrics;
  let harness: RunningHarness;

  beforeAll(async () => {
    testMetrics = installTestMetrics();
    harness = await startHarness({ sharedBus: bus });
    await harness.client.applyEntity({ entity: itemEntity, requestId: '' });
    await harness.client.applyFeatureView({
      featureView: itemPlaysView('item_plays', subject),
      requestId: '',
      validateOnly: false,
    });
  });

  afterAll(async () => {
    await harness.stop();
    await testMetrics.shutdown();
  });

  it('counts events by view and outcome, and reports the processing delay', async () => {
    const publish = (event: OutcomeEvent) =>
      bus.publish(subject, OutcomeEvent, event, { eventId: event.eventId });
    await publish(outcome('i1', 'u1', { name: 'metered', value: 3 }));
    await publish(outcome('i1', 'u2', { name: 'metered', value: 4 }));
    // No item id: invalid for a view keyed by it.
    await publish(outcome('', 'u3', { name: 'metered', value: 5 }));
    await eventually(async () => {
      const points = await testMetrics.points('tandem.featurestore.aggregation.events');
      const counts = Object.fromEntries(
        points
          .filter((p) => p.attributes['tandem.feature_view'] === 'item_plays')
          .map((p): [string, unknown] => [String(p.attributes['tandem.outcome']), p.value]),
      );
      expect(counts).toEqual({ processed: 2, duplicate: 0, dropped_late: 0, dropped_invalid: 1 });
    });
    const delay = await testMetrics.points('tandem.featurestore.aggregation.delay');
    expect(delay.map((p) => p.attributes['tandem.feature_view'])).toEqual(['item_plays']);
    // Seconds: the events were made just before they were published here.
    expect(delay[0]?.value).toBeGreaterThanOrEqual(0);
    expect(delay[0]?.value).toBeLessThan(5);
  });

  it("reports each view's consumer under its durable, once, across the view applied again", async () => {
    const acked = async () => {
      const points = await testMetrics.points('tandem.events.consumer.acked');
      return points
        .filter((p) => p.attributes['tandem.durable'] === 'featurestore-item_plays-replica-a')
        .map((p) => [p.attributes['tandem.stream'], p.value]);
    };
    // The three events of the test above.
    await eventually(async () => {
      expect(await acked()).toEqual([['TANDEM_OUTCOMES', 3]]);
    });
    await harness.client.deleteFeatureView({ name: 'item_plays', etag: '', requestId: '' });
    await harness.client.applyFeatureView({
      featureView: itemPlaysView('item_plays', subject),
      requestId: '',
      validateOnly: false,
    });
    const event = outcome('i2', 'u4', { name: 'metered', value: 6 });
    await bus.publish(subject, OutcomeEvent, event, { eventId: event.eventId });
    // Created again, the view replays the stream into its new state: 4 events, reported by the
    // new consumer alone.
    await eventually(async () => {
      expect(await acked()).toEqual([['TANDEM_OUTCOMES', 4]]);
    });
    const dropped = await testMetrics.points('tandem.events.consumer.dropped');
    expect(
      dropped.filter((p) => p.attributes['tandem.durable'] === 'featurestore-item_plays-replica-a'),
    ).toHaveLength(1);
  });
});
