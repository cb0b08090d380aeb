/**
 * An aggregation without state to resume replays the stream from its start rather than resuming
 * its durable consumer after events the state does not hold: a view deleted and applied again
 * under the same name (deleting removes its aggregation state and every replica's durable), or a
 * replica whose checkpoint is gone. Run on the in-process bus and on NATS JetStream; what is left
 * on the server, on NATS only.
 */
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import type { EventBus } from '../../platform/src/events/bus';
import { createInProcessBus } from '../../platform/src/events/in-process-bus';
import { connectNatsBus } from '../../platform/src/events/nats-bus';
import { describeWithNats, natsUrl, uniqueName } from '../../platform/test/support/integration';
import { OutcomeEvent } from '../../../gen/ts/tandem/events/v1/outcome_event';
import { FeatureStatus } from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import {
  eventually,
  startHarness,
  type RunningHarness,
  sharing,
} from './support/feature-store-harness';
import { int, itemEntity, itemPlaysView, str, outcome, userStatsView } from './support/fixtures';

const VIEW = 'item_plays';

async function playsOf(h: RunningHarness, item: string) {
  const read = await h.client.getOnlineFeatures({
    features: [`${VIEW}:plays_1h`],
    entityRows: { item_id: { values: [str(item)] } },
    omitEventTimes: true,
  });
  return read.columns[0];
}

interface BusSetup {
  publisher(): Promise<EventBus>;
  harnessOptions(): { sharedBus?: EventBus; natsUrl?: string; replicaId?: string };
}

function replaySuite(setup: BusSetup): void {
  let bus: EventBus;
  let harness: RunningHarness | undefined;
  /** A subject of its own, so events of other tests in a shared stream do not count here. */
  let name: string;

  beforeEach(async () => {
    bus = await setup.publisher();
    name = uniqueName('play').toLowerCase();
  });

  afterEach(async () => {
    await harness?.stop();
    harness = undefined;
    if (bus.kind === 'nats') await bus.close();
  });

  /** Applies the view, publishes three plays of i1 and waits until they are checkpointed. */
  async function applyAndPlay(h: RunningHarness): Promise<void> {
    await h.client.applyEntity({ entity: itemEntity, requestId: '' });
    await h.client.applyFeatureView({ featureView: view(), requestId: '', validateOnly: false });
    for (const unit of ['u1', 'u2', 'u3']) {
      const event = outcome('i1', unit, { name });
      await bus.publish(`tandem.events.v1.outcome.${name}`, OutcomeEvent, event, {
        eventId: event.eventId,
      });
    }
    await eventually(async () => {
      expect((await playsOf(h, 'i1'))?.values).toEqual([int(3)]);
      const status = (await h.client.getAggregationStatus({ featureView: VIEW })).status!;
      expect(status.lastCheckpointTime).toBeDefined();
      expect(status.pendingEvents).toBe(0);
    });
  }

  async function expectReplayed(h: RunningHarness): Promise<void> {
    await eventually(async () => {
      const plays = await playsOf(h, 'i1');
      expect(plays?.statuses).toEqual([FeatureStatus.FEATURE_STATUS_PRESENT]);
      expect(plays?.values).toEqual([int(3)]);
    });
    const status = (await h.client.getAggregationStatus({ featureView: VIEW })).status!;
    expect(status.eventsProcessed).toBe(3);
  }

  const view = () => itemPlaysView(VIEW, `tandem.events.v1.outcome.${name}`);

  it('replays the stream into a view deleted and applied again under the same name', async () => {
    const h = await startHarness(setup.harnessOptions());
    harness = h;
    await applyAndPlay(h);

    await h.client.deleteFeatureView({ name: VIEW, etag: '', requestId: '' });
    await h.client.applyFeatureView({ featureView: view(), requestId: '', validateOnly: false });

    await expectReplayed(h);
  });

  it('replays the stream into a replica whose checkpoint is gone', async () => {
    const options = setup.harnessOptions();
    const before = await startHarness(options);
    harness = before;
    await applyAndPlay(before);
    await before.stop();
    harness = undefined;

    // The same replica (and so the same durable) on empty storage.
    const h = await startHarness(options);
    harness = h;
    await h.client.applyEntity({ entity: itemEntity, requestId: '' });
    await h.client.applyFeatureView({ featureView: view(), requestId: '', validateOnly: false });

    await expectReplayed(h);
  });
}

describe('a deleted stream view on the in-process bus', () => {
  let shared: EventBus;
  replaySuite({
    publisher: () => {
      shared = createInProcessBus();
      return Promise.resolve(shared);
    },
    harnessOptions: () => ({ sharedBus: shared }),
  });
});

describeWithNats('a deleted stream view on NATS JetStream', () => {
  replaySuite({
    publisher: () => connectNatsBus({ servers: natsUrl!, name: 'featurestore-test' }),
    harnessOptions: () => ({ natsUrl: natsUrl!, replicaId: uniqueName('r') }),
  });

  describe('with two replicas', () => {
    let admin: NatsConnection;
    let manager: JetStreamManager;
    let first: RunningHarness;
    let second: RunningHarness;
    const firstReplica = uniqueName('a');

    beforeEach(async () => {
      admin = await connect({ servers: natsUrl! });
      manager = await jetstreamManager(admin);
      first = await startHarness({ natsUrl: natsUrl!, replicaId: firstReplica });
      second = await startHarness({
        natsUrl: natsUrl!,
        replicaId: uniqueName('b'),
        wrapStore: sharing(first.runtime.store),
      });
    });

    afterEach(async () => {
      await second.stop();
      await first.stop();
      await admin.drain();
    });

    async function durablesOf(view: string): Promise<string[]> {
      const names: string[] = [];
      for await (const consumer of manager.consumers.list('TANDEM_OUTCOMES')) {
        if (consumer.name.startsWith(`featurestore-${view}-`)) names.push(consumer.name);
      }
      return names.sort();
    }

    it('deletes the durable consumer of every replica', async () => {
      const view = uniqueName('plays').toLowerCase();
      await first.client.applyEntity({ entity: itemEntity, requestId: '' });
      await first.client.applyFeatureView({
        featureView: itemPlaysView(view, `tandem.events.v1.outcome.${view}`),
        requestId: '',
        validateOnly: false,
      });
      await eventually(async () => {
        expect(await durablesOf(view)).toHaveLength(2);
      });

      await first.client.deleteFeatureView({ name: view, etag: '', requestId: '' });

      // The replica that deleted the view has deleted its durable before answering.
      expect(await durablesOf(view)).not.toContain(`featurestore-${view}-${firstReplica}`);
      await eventually(async () => {
        expect(await durablesOf(view)).toEqual([]);
      });
    });

    /** The ids of every checkpoint document of `view`, on every replica. */
    async function checkpointsOf(view: string): Promise<string[]> {
      const documents = await first.runtime.store.collection<{ id: string; owner: string }>({
        name: 'aggregation_checkpoints',
        indexes: [{ fields: ['owner'] }],
        expireAtField: 'expiresAt',
      });
      const ids: string[] = [];
      for await (const { doc } of documents.scan()) {
        if (doc.owner.startsWith(`${view}/`)) ids.push(doc.id);
      }
      return ids;
    }

    it.each([
      ['deleted', false],
      ['replaced by a push view of its name', true],
    ])(
      'leaves no checkpoint or durable of any replica when %s while events flow',
      async (_, replaced) => {
        const view = uniqueName('plays')
          .toLowerCase()
          .replace(/[^a-z0-9_]/g, '_');
        const subject = `tandem.events.v1.outcome.${view}`;
        const publisher = await connectNatsBus({ servers: natsUrl!, name: 'featurestore-test' });
        const flowing = { on: true };
        let publishing: Promise<void> | undefined;
        try {
          await first.client.applyEntity({ entity: itemEntity, requestId: '' });
          await first.client.applyFeatureView({
            featureView: itemPlaysView(view, subject),
            requestId: '',
            validateOnly: false,
          });
          await eventually(async () => {
            expect(await durablesOf(view)).toHaveLength(2);
          });
          publishing = (async () => {
            while (flowing.on) {
              const event = outcome('i1', 'u1', { name: view });
              await publisher.publish(subject, OutcomeEvent, event, { eventId: event.eventId });
              await new Promise((resolve) => setTimeout(resolve, 5));
            }
          })();
          // Both replicas aggregate (and so checkpoint) before the view goes.
          await eventually(async () => {
            for (const replica of [first, second]) {
              const { status } = await replica.client.getAggregationStatus({ featureView: view });
              expect(status?.eventsProcessed).toBeGreaterThan(0);
            }
          });
          await first.client.deleteFeatureView({ name: view, etag: '', requestId: '' });
          if (replaced) {
            await first.client.applyFeatureView({
              featureView: userStatsView({ name: view, entities: ['item'] }),
              requestId: '',
              validateOnly: false,
            });
          }
          await eventually(async () => {
            expect(await durablesOf(view)).toEqual([]);
            expect(await checkpointsOf(view)).toEqual([]);
          });
          // And none comes back (a last checkpoint of a replica stopping its aggregation).
          await new Promise((resolve) => setTimeout(resolve, 1_000));
          expect(await checkpointsOf(view)).toEqual([]);
        } finally {
          flowing.on = false;
          await publishing;
          await publisher.close();
        }
      },
    );
  });
});
