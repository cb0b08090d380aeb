/**
 * Stream views over a real NATS, as found by a helper's adversarial tests:
 * - applying one again with only its description, owner, tags or TTL changed keeps its
 *   aggregation serving (it used to be stopped and restarted, and reads failed with NOT_FOUND
 *   until its checkpoint was restored), and reordering its features keeps each its values;
 * - one forgets the entities with no event within its longest window (or TTL): every entity
 *   ever seen stayed in memory and in every checkpoint (`forgetIdleKeys` was never called).
 */
import { jetstreamManager } from '@nats-io/jetstream';
import { connect, nanos } from '@nats-io/transport-node';
import type { EventBus } from '../../platform/src/events/bus';
import { OUTCOME_STREAM } from '../../platform/src/events/streams';
import { aggregationDurable } from '../src/events/stream-aggregation';
import { connectNatsBus } from '../../platform/src/events/nats-bus';
import { describeWithNats, natsUrl, uniqueName } from '../../platform/test/support/integration';
import { OutcomeEvent } from '../../../gen/ts/tandem/events/v1/outcome_event';
import {
  AggregationFunction,
  type FeatureView,
} from '../../../gen/ts/tandem/featurestore/v1/feature_view';
import { FeatureStatus } from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import { ValueType } from '../../../gen/ts/tandem/featurestore/v1/value';
import { eventually, startHarness, type RunningHarness } from './support/feature-store-harness';
import { itemCountView, itemEntity, outcome, str } from './support/fixtures';

jest.setTimeout(60_000);

describeWithNats('stream views', () => {
  let bus: EventBus;
  let harness: RunningHarness | undefined;
  const replicaId = uniqueName('r');

  beforeAll(async () => {
    bus = await connectNatsBus({ servers: natsUrl ?? '', name: 'stream-view-update' });
  });

  afterAll(async () => {
    await harness?.stop();
    await bus.close();
  });

  /**
   * A view name and subject of this test's own (events of other tests stay in the shared
   * stream), on the shared harness (started by the first test), with the item entity applied.
   */
  async function onFreshSubject(prefix: string) {
    const name = uniqueName(prefix)
      .toLowerCase()
      .replace(/[^a-z0-9_]/g, '_');
    harness ??= await startHarness({ natsUrl: natsUrl ?? '', replicaId });
    const { client } = harness;
    await client.applyEntity({ entity: itemEntity, requestId: '' });
    return { name, subject: `tandem.events.v1.outcome.${name}`, client, running: harness };
  }

  it('keeps serving reads while its description and TTL change, and applies the TTL at once', async () => {
    const { name, subject, client } = await onFreshSubject('upd');
    await client.applyFeatureView({
      featureView: itemCountView(name, subject, 2),
      requestId: '',
      validateOnly: false,
    });
    const publish = async (count: number) => {
      for (let i = 0; i < count; i++) {
        const event = outcome('item-0', 'u', { name });
        await bus.publish(subject, OutcomeEvent, event, { eventId: event.eventId });
      }
    };
    const read = async () =>
      (
        await client.getOnlineFeatures({
          features: [`${name}:n`],
          entityRows: { item_id: { values: [str('item-0')] } },
          omitEventTimes: true,
        })
      ).columns[0];
    const processed = async () =>
      (await client.getAggregationStatus({ featureView: name })).status?.eventsProcessed;
    await publish(10);
    await eventually(async () => {
      expect(await processed()).toBe(10);
    });

    const problems: string[] = [];
    const reading = { on: true };
    const reader = (async () => {
      while (reading.on) {
        try {
          const status = (await read())?.statuses[0];
          if (status !== FeatureStatus.FEATURE_STATUS_PRESENT) problems.push(`status ${status}`);
        } catch (error) {
          problems.push((error as Error).message);
        }
      }
    })();
    for (let k = 0; k < 5; k++) {
      const current = (await client.getFeatureView({ name })).featureView;
      if (!current) throw new Error('the view is gone');
      await client.applyFeatureView({
        featureView: { ...current, description: `take ${k}`, ttl: { seconds: 3600 + k, nanos: 0 } },
        requestId: '',
        validateOnly: false,
      });
      await publish(2);
    }
    reading.on = false;
    await reader;
    expect(problems).toEqual([]);
    // The aggregation went on: every event counted once.
    await eventually(async () => {
      expect(await processed()).toBe(20);
    });

    // Past the 2 s window the count reads 0, PRESENT under the hour-long TTL; a TTL shorter than
    // the time since the last event makes it EXPIRED at once.
    await new Promise((resolve) => setTimeout(resolve, 2_500));
    expect((await read())?.statuses).toEqual([FeatureStatus.FEATURE_STATUS_PRESENT]);
    const current = (await client.getFeatureView({ name })).featureView;
    if (!current) throw new Error('the view is gone');
    await client.applyFeatureView({
      featureView: { ...current, ttl: { seconds: 2, nanos: 0 } },
      requestId: '',
      validateOnly: false,
    });
    expect((await read())?.statuses).toEqual([FeatureStatus.FEATURE_STATUS_EXPIRED]);
  });
  it("declares each replica's durable to be deleted once unconsumed for as long as the stream keeps events", async () => {
    const { name, subject, client } = await onFreshSubject('idle');
    await client.applyFeatureView({
      featureView: itemCountView(name, subject, 2),
      requestId: '',
      validateOnly: false,
    });
    const connection = await connect({ servers: natsUrl ?? '' });
    try {
      const manager = await jetstreamManager(connection);
      await eventually(async () => {
        const { config } = await manager.consumers.info(
          OUTCOME_STREAM.name,
          aggregationDurable(name, replicaId),
        );
        // A week, in nanoseconds: what the stream keeps.
        expect(config.inactive_threshold).toBe(nanos(7 * 24 * 3_600_000));
      });
    } finally {
      await connection.close();
    }
  });

  it('serves each feature its own values after its features are reordered', async () => {
    const { name, subject, client } = await onFreshSubject('reorder');
    const base = itemCountView(name, subject, 2);
    if (base.source?.$case !== 'streamSource') throw new Error('not a stream view');
    const count = base.source.value.aggregations[0];
    if (!count) throw new Error('no aggregation');
    const view: FeatureView = {
      ...base,
      features: [
        ...base.features,
        { name: 's', valueType: ValueType.VALUE_TYPE_DOUBLE, description: '', vectorLength: 0 },
      ],
      source: {
        $case: 'streamSource',
        value: {
          ...base.source.value,
          aggregations: [
            { ...count, window: { seconds: 600, nanos: 0 } },
            {
              ...count,
              feature: 's',
              function: AggregationFunction.AGGREGATION_FUNCTION_SUM,
              valueField: 'value',
              window: { seconds: 600, nanos: 0 },
            },
          ],
        },
      },
    };
    await client.applyFeatureView({ featureView: view, requestId: '', validateOnly: false });
    for (let i = 0; i < 4; i++) {
      const event = outcome('item-0', 'u', { name, value: 2.5 });
      await bus.publish(subject, OutcomeEvent, event, { eventId: event.eventId });
    }
    const read = async () =>
      (
        await client.getOnlineFeatures({
          features: [`${name}:n`, `${name}:s`],
          entityRows: { item_id: { values: [str('item-0')] } },
          omitEventTimes: true,
        })
      ).columns.map((column) => column.values[0]?.kind);
    const expected = [
      { $case: 'int64Value', value: 4 },
      { $case: 'doubleValue', value: 10 },
    ];
    await eventually(async () => {
      expect(await read()).toEqual(expected);
    });
    const current = (await client.getFeatureView({ name })).featureView;
    if (!current) throw new Error('the view is gone');
    await client.applyFeatureView({
      featureView: { ...current, features: [...current.features].reverse() },
      requestId: '',
      validateOnly: false,
    });
    await eventually(async () => {
      expect(await read()).toEqual(expected);
    });
    expect(
      (await client.getFeatureView({ name })).featureView?.features.map((f) => f.name),
    ).toEqual(['s', 'n']);
  });

  it('forgets entities once their window has passed, in memory and in the checkpoint', async () => {
    const { name, subject, client, running } = await onFreshSubject('idle');
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
    const checkpoints = await running.runtime.store.collection<{
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
