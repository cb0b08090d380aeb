/**
 * A stream aggregation whose checkpoint cannot be restored (taken with its features in another
 * order) rebuilds from the stream, and discards that checkpoint: its seen ids, restored after a
 * restart during the rebuild, made the events not yet replayed count as duplicates (found by a
 * helper's review). And a batch that makes a checkpoint due at once is acked by it (it waited
 * for the round after, which no event might start). Runs the real aggregation and checkpoints on
 * the embedded store, with a bus double that hands batches to the aggregation as a replay would.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { OutcomeEvent } from '../../../gen/ts/tandem/events/v1/outcome_event';
import type { BatchHandler, DeliveredEvent, EventBus } from '../../platform/src/events/bus';
import { createLogger } from '../../platform/src/logging';
import { UnavailableError } from '../../platform/src/errors';
import type { DocumentStore } from '../../platform/src/storage/collection';
import { openEmbeddedStore } from '../../platform/src/storage/embedded-store';
import { guardedStore } from '../../platform/test/support/wrapped-store';
import { ValueType } from '../src/domain/feature-values';
import type { FeatureViewDefinition } from '../src/domain/registry';
import { AggregationFunction, AggregationKey } from '../src/domain/window-aggregation';
import { StreamAggregation } from '../src/events/stream-aggregation';
import { AggregationCheckpoints } from '../src/store/aggregation-checkpoints';
import { deliveredPlay } from './support/fixtures';

function view(order: readonly string[]): FeatureViewDefinition {
  return {
    name: 'plays',
    description: '',
    owner: '',
    tags: {},
    entities: ['item'],
    ttlMs: 0,
    features: order.map((name) => ({
      name,
      valueType: name === 'n' ? ValueType.Int64 : ValueType.Double,
      description: '',
      vectorLength: 0,
    })),
    source: {
      kind: 'stream',
      subject: 'tandem.events.v1.outcome.play',
      eventNames: [],
      key: AggregationKey.ItemId,
      aggregations: [
        { feature: 'n', function: AggregationFunction.Count, valueField: '', windowMs: 600_000 },
        { feature: 's', function: AggregationFunction.Sum, valueField: 'value', windowMs: 600_000 },
      ],
    },
  };
}

const logger = createLogger({ service: 'featurestore', level: 'silent' });

/** A bus that hands the batches a test passes to `handler()` to the aggregation subscribed. */
function busDouble(): { bus: EventBus; handler: () => BatchHandler<OutcomeEvent> } {
  let subscribed: BatchHandler<OutcomeEvent> | undefined;
  const bus = {
    kind: 'in-process',
    isConnected: () => true,
    subscribeBatches: (_spec: unknown, batches: BatchHandler<OutcomeEvent>) => {
      subscribed = batches;
      return Promise.resolve({ stop: () => Promise.resolve(), stats: () => ({ poison: 0 }) });
    },
    deleteConsumer: () => Promise.resolve(true),
  } as unknown as EventBus;
  const handler = () => {
    if (!subscribed) throw new Error('not subscribed');
    return subscribed;
  };
  return { bus, handler };
}

/** A play of item-1 (value 2) at `time`, stored in the stream at `storedAt`. */
function deliveredAt(eventId: string, time: number, storedAt = time): DeliveredEvent<OutcomeEvent> {
  return deliveredPlay(eventId, time, { storedAt, value: 2 });
}

let dir: string;
let store: DocumentStore;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'tandem-aggregation-'));
  store = await openEmbeddedStore({ path: dir });
});

afterAll(async () => {
  await store.close();
  rmSync(dir, { recursive: true, force: true });
});

/**
 * Starts an aggregation of `view(order)` subscribed to `bus`, checkpointed as `replica` in
 * `checkpointStore` (the test file's store by default), and waits for its subscription.
 */
async function startAggregation(
  bus: EventBus,
  replica: string,
  settings: {
    readonly order?: readonly string[];
    readonly checkpointIntervalMs: number;
    readonly inFlight: number;
    readonly checkpointStore?: DocumentStore;
  },
): Promise<StreamAggregation> {
  const aggregation = new StreamAggregation({
    view: view(settings.order ?? ['n', 's']),
    bus,
    checkpoints: (await AggregationCheckpoints.open(settings.checkpointStore ?? store)).forOwner(
      'plays',
      replica,
      { logger },
    ),
    logger,
    stream: 'TANDEM_OUTCOMES',
    durable: `plays-${replica}`,
    checkpointIntervalMs: settings.checkpointIntervalMs,
    inFlight: settings.inFlight,
  });
  await aggregation.start();
  await new Promise((resolve) => setTimeout(resolve, 2 * settings.checkpointIntervalMs));
  return aggregation;
}

describe('a stream aggregation restarted while it rebuilds from the stream', () => {
  it('counts the events it had not replayed yet, after its features were reordered', async () => {
    const { bus, handler } = busDouble();
    const now = Date.now();
    const delivered = (eventId: string) => deliveredAt(eventId, now);
    const start = async (order: readonly string[]) => {
      const aggregation = await startAggregation(bus, 'replica-0', {
        order,
        checkpointIntervalMs: 10,
        inFlight: 100,
      });
      return { aggregation, handle: handler() };
    };

    const first = await start(['n', 's']);
    await first.handle([delivered('e1'), delivered('e2'), delivered('e3')]);
    await first.aggregation.stop();
    // Reordered: the checkpoint is unusable, and the stream is replayed; a restart after e1.
    const reordered = await start(['s', 'n']);
    await reordered.handle([delivered('e1')]);
    await reordered.aggregation.stop();
    const resumed = await start(['s', 'n']);
    await resumed.handle([delivered('e2'), delivered('e3')]);
    const read = resumed.aggregation.read(['item-1'], Date.now());
    await resumed.aggregation.stop();
    expect(read.values[read.features.indexOf('n')]).toBe(3);
    expect(read.values[read.features.indexOf('s')]).toBe(6);
  });
});

describe('a batch that makes a checkpoint due at once', () => {
  it('is acked by that checkpoint, and a replay ending with it is caught up', async () => {
    const { bus, handler } = busDouble();
    const aggregation = await startAggregation(bus, 'replica-1', {
      checkpointIntervalMs: 20,
      inFlight: 10,
    });
    try {
      // The stream's backlog, stored a minute ago, in one batch of 6: over half the 10 events
      // JetStream hands out unacked, so a checkpoint is written at once. Nothing comes after.
      const stored = Date.now() - 60_000;
      const ids = ['a', 'b', 'c', 'd', 'e', 'f'];
      const acked = handler()(ids.map((id) => deliveredAt(id, Date.now(), stored)));
      let outcome = 'waiting';
      void acked.then(() => (outcome = 'acked'));
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(outcome).toBe('acked');
      // Idle a second after the replay with nothing waiting for a checkpoint: caught up.
      await new Promise((resolve) => setTimeout(resolve, 1_000));
      expect(aggregation.progress(true).phase).toBe('running');
    } finally {
      await aggregation.stop();
    }
  });
});

describe('a stream aggregation whose checkpoints fail', () => {
  it('hands a batch back for a later delivery instead of holding it until storage returns', async () => {
    const storage = { down: false };
    const { bus, handler } = busDouble();
    const aggregation = await startAggregation(bus, 'replica-2', {
      checkpointIntervalMs: 20,
      inFlight: 1_000,
      checkpointStore: guardedStore(store, () => {
        if (storage.down) throw new UnavailableError('storage is unreachable');
      }),
    });
    try {
      storage.down = true;
      const now = Date.now();
      const batch = ['a', 'b', 'c'].map((id) => deliveredAt(id, now));
      // Not acked (no checkpoint holds the events), but not held either: an outage of an hour
      // would otherwise hold every delivery of every batch in memory.
      let outcome = 'waiting';
      handler()(batch).then(
        () => (outcome = 'acked'),
        () => (outcome = 'handed back'),
      );
      await new Promise((resolve) => setTimeout(resolve, 3_000));
      expect(outcome).toBe('handed back');
      // Storage returns; the batch, delivered again, is acked and counted once.
      storage.down = false;
      await handler()(batch.map((delivered) => ({ ...delivered, deliveryCount: 2 })));
      expect(aggregation.read(['item-1'], Date.now()).values[0]).toBe(3);
    } finally {
      await aggregation.stop();
    }
  });
});
