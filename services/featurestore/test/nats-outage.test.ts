/**
 * A NATS outage, played with a nats-server of the test's own that it stops and starts again on
 * the same port and store: a stream-sourced view applied while NATS is down waits for it (PAUSED,
 * not FAILED) and starts consuming once it is back, losing none of the events.
 */
import { randomUUID } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import type { EventBus } from '../../platform/src/events/bus';
import { connectNatsBus } from '../../platform/src/events/nats-bus';
import { TestNatsServer } from '../../platform/test/support/nats-server';
import { OutcomeEvent } from '../../../gen/ts/tandem/events/v1/outcome_event';
import { AggregationState } from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import { eventually, startHarness, type RunningHarness } from './support/feature-store-harness';
import { int, itemEntity, itemPlaysView, str, outcome } from './support/fixtures';

const hasServer = spawnSync('nats-server', ['--version']).status === 0;
const describeWithServerBinary = hasServer ? describe : describe.skip;

const SUBJECT = 'tandem.events.v1.outcome.play';

/** Connects once the freshly spawned server listens (the bus then reconnects by itself). */
async function connectWhenUp(url: string): Promise<EventBus> {
  return eventually(
    () =>
      connectNatsBus({ servers: url, name: 'featurestore-outage-test', whenUnreachable: 'fail' }),
    15_000,
  );
}

/** Waits until the bus says it is connected, or not. */
async function untilConnected(bus: EventBus, connected: boolean): Promise<void> {
  await eventually(() => {
    expect(bus.isConnected()).toBe(connected);
    return Promise.resolve();
  }, 15_000);
}

describeWithServerBinary('FeatureStore through a NATS outage', () => {
  let server: TestNatsServer;
  let harness: RunningHarness | undefined;
  let publisher: EventBus | undefined;

  beforeEach(async () => {
    server = await TestNatsServer.create();
    server.start();
  });

  afterEach(async () => {
    await publisher?.close();
    publisher = undefined;
    await harness?.stop();
    harness = undefined;
    await server.dispose();
  });

  it('starts a stream view applied while NATS is down once NATS is back, losing no event', async () => {
    const bus = await connectWhenUp(server.url);
    publisher = bus;
    const h = await startHarness({ natsUrl: server.url });
    harness = h;
    await h.client.applyEntity({ entity: itemEntity, requestId: '' });
    // Stored before the view exists: counted all the same (a new view replays the stream).
    await bus.publish(SUBJECT, OutcomeEvent, outcome('i1', 'u1'), { eventId: randomUUID() });

    await server.stop();
    await untilConnected(h.runtime.bus, false);
    // Answers within the default deadline: applying a view does not wait for NATS.
    await h.client.applyFeatureView({
      featureView: itemPlaysView('item_plays', SUBJECT),
      requestId: '',
      validateOnly: false,
    });
    const paused = (await h.client.getAggregationStatus({ featureView: 'item_plays' })).status!;
    expect(paused.state).toBe(AggregationState.AGGREGATION_STATE_PAUSED);
    // The lag cannot be known without NATS: not read as "nothing pending".
    expect(paused).toMatchObject({ pendingEvents: 0, pendingEventsUnknown: true });

    server.start();
    await untilConnected(bus, true);
    for (const unit of ['u2', 'u3']) {
      await bus.publish(SUBJECT, OutcomeEvent, outcome('i1', unit), { eventId: randomUUID() });
    }
    await eventually(async () => {
      const read = await h.client.getOnlineFeatures({
        features: ['item_plays:plays_1h'],
        entityRows: { item_id: { values: [str('i1')] } },
        omitEventTimes: true,
      });
      expect(read.columns[0]?.values).toEqual([int(3)]);
      const status = (await h.client.getAggregationStatus({ featureView: 'item_plays' })).status!;
      expect(status.state).toBe(AggregationState.AGGREGATION_STATE_RUNNING);
    }, 20_000);
  }, 60_000);
});
