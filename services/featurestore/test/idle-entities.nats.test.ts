/**
 * A streaming view forgets the entities with no event within its longest window (or TTL): without
 * it, every entity ever seen stayed in memory and in every checkpoint (found by a helper's
 * adversarial tests; `forgetIdleKeys` was never called).
 */
import type { EventBus } from '../../platform/src/events/bus';
import { connectNatsBus } from '../../platform/src/events/nats-bus';
import { describeWithNats, natsUrl, uniqueName } from '../../platform/test/support/integration';
import { OutcomeEvent } from '../../../gen/ts/tandem/events/v1/outcome_event';
import { FeatureStatus } from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import { eventually, startHarness, type RunningHarness } from './support/feature-store-harness';
import { itemCountView, itemEntity, outcome, str } from './support/fixtures';

jest.setTimeout(60_000);

describeWithNats('a streaming view with idle entities', () => {
  let bus: EventBus;
  let harness: RunningHarness | undefined;

  beforeAll(async () => {
    bus = await connectNatsBus({ servers: natsUrl ?? '', name: 'idle-entities' });
  });

  afterAll(async () => {
    await harness?.stop();
    await bus.close();
  });

  it('forgets them once their window has passed, in memory and in the checkpoint', async () => {
    const name = uniqueName('idle')
      .toLowerCase()
      .replace(/[^a-z0-9_]/g, '_');
    const subject = `tandem.events.v1.outcome.${name}`;
    harness = await startHarness({ natsUrl: natsUrl ?? '', replicaId: uniqueName('r') });
    const { client } = harness;
    await client.applyEntity({ entity: itemEntity, requestId: '' });
    await client.applyFeatureView({
      featureView: itemCountView(name, subject, 2),
      requestId: '',
      validateOnly: false,
    });
    const ITEMS = 200;
    await Promise.all(
      Array.from({ length: ITEMS }, (_, i) => {
        const event = outcome(`item-${i}`, 'u', { name });
        return bus.publish(subject, OutcomeEvent, event, { eventId: event.eventId });
      }),
    );
    const read = (item: string) =>
      client.getOnlineFeatures({
        features: [`${name}:n`],
        entityRows: { item_id: { values: [str(item)] } },
        omitEventTimes: true,
      });
    await eventually(async () => {
      expect((await read('item-0')).columns[0]?.statuses).toEqual([
        FeatureStatus.FEATURE_STATUS_PRESENT,
      ]);
    });
    // Past the 2 s window, the entities are forgotten (looked for every 5 s at the shortest):
    // read as never seen, and gone from the checkpoint.
    await eventually(async () => {
      expect((await read('item-0')).columns[0]?.statuses).toEqual([
        FeatureStatus.FEATURE_STATUS_NOT_FOUND,
      ]);
    }, 20_000);
    const checkpoints = await harness.runtime.store.collection<{
      id: string;
      kind: string;
      data?: string;
      owner: string;
    }>({
      name: 'aggregation_checkpoints',
      indexes: [{ fields: ['owner'] }],
      expireAtField: 'expiresAt',
    });
    await eventually(async () => {
      let keys = 0;
      for await (const { doc } of checkpoints.scan()) {
        if (doc.kind === 'state' && doc.owner.startsWith(`${name}/`)) {
          keys += (JSON.parse(doc.data ?? '{"keys":[]}') as { keys: unknown[] }).keys.length;
        }
      }
      expect(keys).toBe(0);
    });
  });
});
