/**
 * A stream-sourced view takes an event whose `event_id` is at most 128 characters, as
 * OutcomeEvent allows, however many UTF-16 code units they take (an emoji takes two), and drops
 * as invalid one over 128 characters.
 */
import type { EventBus } from '../../platform/src/events/bus';
import { createInProcessBus } from '../../platform/src/events/in-process-bus';
import { OutcomeEvent } from '../../../gen/ts/tandem/events/v1/outcome_event';
import { eventually, startHarness, type RunningHarness } from './support/feature-store-harness';
import { int, itemEntity, itemPlaysView, str, outcome } from './support/fixtures';

const subject = 'tandem.events.v1.outcome.play';

describe('the event id of an event aggregated by a stream-sourced view', () => {
  let bus: EventBus;
  let harness: RunningHarness;

  beforeEach(async () => {
    bus = createInProcessBus();
    harness = await startHarness({ sharedBus: bus });
    await harness.client.applyEntity({ entity: itemEntity, requestId: '' });
    await harness.client.applyFeatureView({
      featureView: itemPlaysView('item_plays', subject),
      requestId: '',
      validateOnly: false,
    });
  });

  afterEach(async () => {
    await harness.stop();
  });

  const publish = (event: OutcomeEvent) =>
    bus.publish(subject, OutcomeEvent, event, { eventId: event.eventId });

  it('is measured in characters, not UTF-16 code units', async () => {
    // 128 characters, 256 code units: taken. 129 characters: invalid.
    await publish(outcome('i1', 'u1', { eventId: '🎵'.repeat(128) }));
    await publish(outcome('i1', 'u2', { eventId: '🎵'.repeat(129) }));
    await eventually(async () => {
      const status = (await harness.client.getAggregationStatus({ featureView: 'item_plays' }))
        .status!;
      expect(status.eventsDroppedInvalid).toBe(1);
      expect(status.eventsProcessed).toBe(1);
    });
    const read = await harness.client.getOnlineFeatures({
      features: ['item_plays:plays_1h'],
      entityRows: { item_id: { values: [str('i1')] } },
      omitEventTimes: true,
    });
    expect(read.columns[0]?.values).toEqual([int(1)]);
  });
});
