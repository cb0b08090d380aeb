/**
 * Stream-sourced views end to end: OutcomeEvents published on the bus are aggregated and readable
 * at once, duplicates never count twice, late events are dropped and counted, and a restart
 * resumes from the checkpoint and the durable consumer without losing or double-counting events.
 * Run on the in-process bus and, when a server is available, on real NATS JetStream.
 */
import type { EventBus } from '../../platform/src/events/bus';
import { createInProcessBus } from '../../platform/src/events/in-process-bus';
import { connectNatsBus } from '../../platform/src/events/nats-bus';
import { describeWithNats, natsUrl, uniqueName } from '../../platform/test/support/integration';
import { withTimestampNanos } from '../../platform/test/support/timestamps';
import { StreamAggregation } from '../src/events/stream-aggregation';
import { OutcomeEvent } from '../../../gen/ts/tandem/events/v1/outcome_event';
import {
  AggregationState,
  FeatureStatus,
} from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import {
  eventually,
  startHarness,
  temporaryDataDir,
  type RunningHarness,
} from './support/feature-store-harness';
import { double, int, itemEntity, itemPlaysView, str, outcome } from './support/fixtures';

interface BusSetup {
  /** A bus for publishing test events. */
  publisher(): Promise<EventBus>;
  harnessOptions(): { sharedBus?: EventBus; natsUrl?: string; env?: Record<string, string> };
}

let eventName = 'play';

function play(
  itemId: string,
  unitId: string,
  seconds: number,
  eventTime = new Date(),
): OutcomeEvent {
  return outcome(itemId, unitId, { name: eventName, value: seconds, eventTime });
}

function streamingSuite(setup: BusSetup): void {
  let bus: EventBus;
  let dataDir: string;
  let harness: RunningHarness | undefined;
  const view = 'item_plays';

  beforeEach(async () => {
    bus = await setup.publisher();
    // A subject of its own, so events of other tests left in a shared stream do not count here.
    eventName = uniqueName('play').toLowerCase();
    dataDir = temporaryDataDir();
  });

  afterEach(async () => {
    await harness?.stop();
    harness = undefined;
    if (bus.kind === 'nats') await bus.close();
  });

  async function start(): Promise<RunningHarness> {
    harness = await startHarness({ dataDir, ...setup.harnessOptions() });
    return harness;
  }

  async function publish(event: OutcomeEvent, messageId = event.eventId): Promise<void> {
    await bus.publish(`tandem.events.v1.outcome.${eventName}`, OutcomeEvent, event, {
      eventId: messageId,
    });
  }

  /** Applies the `item` entity and the stream view on this test's subject. */
  async function applyItemPlays(h: RunningHarness): Promise<void> {
    await h.client.applyEntity({ entity: itemEntity, requestId: '' });
    await h.client.applyFeatureView({
      featureView: itemPlaysView(view, `tandem.events.v1.outcome.${eventName}`),
      requestId: '',
      validateOnly: false,
    });
  }

  /** Publishes `bytes` as they are on the view's subject. */
  async function publishBytes(bytes: Uint8Array, eventId: string): Promise<void> {
    await bus.publish(
      `tandem.events.v1.outcome.${eventName}`,
      { encode: () => ({ finish: () => bytes }), decode: () => 0 },
      0,
      { eventId },
    );
  }

  /** Publishes `event` with its event time's nanos set to `nanos` (and `trailing` bytes after). */
  async function publishWithNanos(
    event: OutcomeEvent,
    nanos: number,
    trailing: number[] = [],
  ): Promise<void> {
    await publishBytes(
      withTimestampNanos(
        'tandem.events.v1.OutcomeEvent',
        OutcomeEvent.encode(event).finish(),
        'event_time',
        nanos,
        trailing,
      ),
      event.eventId,
    );
  }

  /** Publishes bytes that are no OutcomeEvent on the view's subject. */
  async function publishUndecodable(): Promise<void> {
    await publishBytes(Uint8Array.from([0xff, 0xff, 0xff]), uniqueName('garbage'));
  }

  async function readItems(h: RunningHarness, ...items: string[]) {
    const read = await h.client.getOnlineFeatures({
      features: [`${view}:*`],
      entityRows: { item_id: { values: items.map(str) } },
      omitEventTimes: false,
    });
    return read.columns;
  }

  it('makes published events readable at once, counting duplicates and late events apart', async () => {
    const h = await start();
    await applyItemPlays(h);
    const first = play('i1', 'u1', 30);
    await publish(first);
    await publish(play('i1', 'u2', 10));
    await publish(play('i2', 'u1', 5));
    // The same event published again under another message id: the stream stores it twice.
    await publish(first, `${first.eventId}-again`);
    await publish(play('i1', 'u3', 99, new Date(Date.now() - 2 * 3_600_000)));
    await publish({ ...play('', 'u1', 1) });
    // Invalid too: no event id (each copy published again would count again), or one too long.
    const anonymous = { ...play('i2', 'u9', 1), eventId: '' };
    await publish(anonymous, 'message-1');
    await publish(anonymous, 'message-2');
    await publish({ ...play('i2', 'u9', 1), eventId: 'e'.repeat(129) });
    // And bytes that are no OutcomeEvent at all (terminated by the bus, counted all the same),
    // or whose event time has nanos out of range (decoded, it would be up to 2 s off).
    await publishUndecodable();
    await publishWithNanos(play('i3', 'u1', 7), 1_200_000_000);
    // So is one whose bad nanos come with a stray end-group tag after the message: the generated
    // decoder would take it (1.2 s late), and the bytes are not protobuf the check can read.
    await publishWithNanos(play('i3', 'u2', 8), 1_200_000_000, [0x0c]);
    await eventually(async () => {
      const status = (await h.client.getAggregationStatus({ featureView: view })).status!;
      expect(status.eventsDuplicate).toBe(1);
      expect(status.eventsDroppedLate).toBe(1);
      expect(status.eventsDroppedInvalid).toBe(7);
      expect(status.eventsProcessed).toBe(3);
    });
    const [plays, seconds, listeners] = await readItems(h, 'i1', 'i2', 'i3');
    expect(plays?.values).toEqual([int(2), int(1), { kind: undefined }]);
    expect(plays?.statuses[2]).toBe(FeatureStatus.FEATURE_STATUS_NOT_FOUND);
    expect(seconds?.values.slice(0, 2)).toEqual([double(40), double(5)]);
    expect(listeners?.values.slice(0, 2)).toEqual([int(2), int(1)]);
    await eventually(async () => {
      const status = (await h.client.getAggregationStatus({ featureView: view })).status!;
      expect(status.lastCheckpointTime).toBeDefined();
      expect(status.pendingEvents).toBe(0);
      expect(status.pendingEventsUnknown).toBe(false);
    });
    // NATS reachable but its answer about the consumer lost: the lag is unknown, not 0 pending.
    const pending = jest
      .spyOn(StreamAggregation.prototype, 'pending')
      .mockRejectedValue(new Error('consumer info timed out'));
    try {
      const status = (await h.client.getAggregationStatus({ featureView: view })).status!;
      expect(pending).toHaveBeenCalled();
      expect(status).toMatchObject({
        state: AggregationState.AGGREGATION_STATE_RUNNING,
        pendingEvents: 0,
        pendingEventsUnknown: true,
      });
    } finally {
      pending.mockRestore();
    }
  });

  it('resumes after a restart from its checkpoint without losing or double-counting', async () => {
    let h = await start();
    await applyItemPlays(h);
    const before = Array.from({ length: 20 }, (_, i) => play('i1', `u${i}`, 1));
    for (const event of before) await publish(event);
    await eventually(async () => {
      expect((await readItems(h, 'i1'))[0]?.values).toEqual([int(20)]);
    });
    await h.stop();
    harness = undefined;
    // Published while the service is down, plus a redelivery of an already counted event.
    for (let i = 0; i < 10; i++) await publish(play('i1', `v${i}`, 1));
    await publish(before[0]!, `${before[0]!.eventId}-retry`);
    h = await start();
    await eventually(async () => {
      expect((await readItems(h, 'i1'))[0]?.values).toEqual([int(30)]);
    });
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect((await readItems(h, 'i1'))[0]?.values).toEqual([int(30)]);
    const status = (await h.client.getAggregationStatus({ featureView: view })).status!;
    expect(status.eventsProcessed).toBe(30);
    expect(status.eventsDuplicate).toBe(1);
  });

  it('measures an event id in characters, not UTF-16 code units', async () => {
    // OutcomeEvent allows 128 characters: 128 emoji (256 code units) are taken, 129 invalid.
    const h = await start();
    await applyItemPlays(h);
    const withId = (unitId: string, eventId: string) =>
      outcome('i1', unitId, { name: eventName, value: 1, eventId });
    await publish(withId('u1', '🎵'.repeat(128)), uniqueName('m'));
    await publish(withId('u2', '🎵'.repeat(129)), uniqueName('m'));
    await eventually(async () => {
      const status = (await h.client.getAggregationStatus({ featureView: view })).status!;
      expect(status.eventsDroppedInvalid).toBe(1);
      expect(status.eventsProcessed).toBe(1);
    });
  });

  it('still counts an undecodable event as invalid after a restart, when it came last', async () => {
    let h = await start();
    await applyItemPlays(h);
    await publish(play('i1', 'u1', 1));
    await eventually(async () => {
      const status = (await h.client.getAggregationStatus({ featureView: view })).status!;
      expect(status.eventsProcessed).toBe(1);
      expect(status.pendingEvents).toBe(0);
    });
    await publishUndecodable();
    await eventually(async () => {
      const status = (await h.client.getAggregationStatus({ featureView: view })).status!;
      expect(status.eventsDroppedInvalid).toBe(1);
    });
    await h.stop();
    harness = undefined;
    h = await start();
    await eventually(async () => {
      const status = (await h.client.getAggregationStatus({ featureView: view })).status!;
      expect(status.eventsProcessed).toBe(1);
      expect(status.eventsDroppedInvalid).toBe(1);
    });
  });
}

describe('streaming aggregation on the in-process bus', () => {
  let shared: EventBus;
  streamingSuite({
    publisher: () => {
      shared = createInProcessBus();
      return Promise.resolve(shared);
    },
    harnessOptions: () => ({ sharedBus: shared }),
  });
});

describeWithNats('streaming aggregation on NATS JetStream', () => {
  streamingSuite({
    publisher: async () => {
      const publisher = await connectNatsBus({ servers: natsUrl!, name: 'featurestore-test' });
      return publisher;
    },
    harnessOptions: () => ({
      natsUrl: natsUrl!,
      replicaId: uniqueName('r'),
    }),
  });
});
