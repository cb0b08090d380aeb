/**
 * A checkpoint write slower than the ack wait the aggregation asks the bus for (max(30 s, 20 ×
 * interval)). Each batch waits for the round holding it; were it given up on at the ack wait, it
 * would be delivered again (a rewind on NATS) and wait for the round after the next, as slow,
 * write, and so on: nothing ever acknowledged, the view taking no new events while it reports
 * RUNNING. A batch whose checkpoint is under way tells the bus it is still working instead, which
 * starts its ack wait again. Storage that fails still hands batches back. Runs the real
 * aggregation and the bus's own `runBatchHandler` (which applies the ack wait) under fake timers.
 */
import type { OutcomeEvent } from '../../../gen/ts/tandem/events/v1/outcome_event';
import { UnavailableError } from '../../platform/src/errors';
import type { BatchConsumerSpec, BatchHandler, EventBus } from '../../platform/src/events/bus';
import { runBatchHandler } from '../../platform/src/events/delivery';
import { consumerSettings } from '../../platform/src/events/event-settings';
import { createLogger } from '../../platform/src/logging';
import { ValueType } from '../src/domain/feature-values';
import type { FeatureViewDefinition } from '../src/domain/registry';
import { AggregationFunction, AggregationKey } from '../src/domain/window-aggregation';
import { StreamAggregation } from '../src/events/stream-aggregation';
import type { CheckpointWriter } from '../src/store/aggregation-checkpoints';
import { deliveredPlay } from './support/fixtures';

const view: FeatureViewDefinition = {
  name: 'plays',
  description: '',
  owner: '',
  tags: {},
  entities: ['item'],
  ttlMs: 0,
  features: [{ name: 'n', valueType: ValueType.Int64, description: '', vectorLength: 0 }],
  source: {
    kind: 'stream',
    subject: 'tandem.events.v1.outcome.play',
    eventNames: [],
    key: AggregationKey.ItemId,
    aggregations: [
      { feature: 'n', function: AggregationFunction.Count, valueField: '', windowMs: 3_600_000 },
    ],
  },
};

beforeEach(() => jest.useFakeTimers());
afterEach(() => jest.useRealTimers());

/** How the MongoDB store fails while its server cannot be reached. */
const storageUnavailable = (): Error =>
  new UnavailableError('storage is unavailable; retry with backoff', {
    cause: new Error('connect ECONNREFUSED 10.0.0.5:27017'),
  });

/**
 * A checkpoint store whose writes take `writeMs`, then settle as `outcome` says, failing with
 * `failure()`.
 */
function slowCheckpoints(
  writeMs: number,
  outcome: () => 'written' | 'failed',
  failure: () => Error = storageUnavailable,
): CheckpointWriter {
  return {
    restore: () => Promise.resolve(undefined),
    write: () =>
      new Promise<Date>((resolve, reject) =>
        setTimeout(() => {
          if (outcome() === 'written') resolve(new Date());
          else reject(failure());
        }, writeMs),
      ),
    discardUnusable: () => Promise.resolve(),
    delete: () => Promise.resolve(),
  } as unknown as CheckpointWriter;
}

/**
 * Starts the aggregation on a bus that runs each batch as the real adapters do (ack wait
 * included) and delivers a batch again, at once, when its handler overran or failed.
 */
async function started(checkpoints: CheckpointWriter): Promise<{
  aggregation: StreamAggregation;
  outcomes: string[];
  deliver: (ids: string[]) => void;
}> {
  const outcomes: string[] = [];
  let deliver: (ids: string[]) => void = () => undefined;
  const bus = {
    kind: 'in-process',
    isConnected: () => true,
    deleteConsumer: () => Promise.resolve(true),
    subscribeBatches: (
      spec: BatchConsumerSpec<OutcomeEvent>,
      handler: BatchHandler<OutcomeEvent>,
    ) => {
      const settings = consumerSettings(spec);
      deliver = (ids) => {
        const run = async (count: number): Promise<void> => {
          const now = Date.now();
          const outcome = await runBatchHandler(
            settings,
            handler,
            ids.map((id) => deliveredPlay(id, now, { deliveryCount: count })),
          );
          outcomes.push(outcome.kind);
          if (outcome.kind !== 'handled') void run(count + 1);
        };
        void run(1);
      };
      return Promise.resolve({
        stop: () => Promise.resolve(),
        stats: () => ({ acked: 0, retried: 0, dropped: 0, poison: 0 }),
      });
    },
  } as unknown as EventBus;
  const aggregation = new StreamAggregation({
    view,
    bus,
    checkpoints,
    logger: createLogger({ service: 'featurestore', level: 'silent' }),
    stream: 'TANDEM_OUTCOMES',
    durable: 'plays-r0',
    checkpointIntervalMs: 250,
    inFlight: 20_000,
  });
  await aggregation.start();
  await jest.advanceTimersByTimeAsync(10);
  return {
    aggregation,
    outcomes,
    deliver: (ids) => {
      deliver(ids);
    },
  };
}

it('acknowledges a batch eventually when each checkpoint write takes longer than the ack wait', async () => {
  // 40 s per write (a large state on a busy MongoDB); the ack wait is 30 s.
  const { aggregation, outcomes, deliver } = await started(
    slowCheckpoints(40_000, () => 'written'),
  );
  deliver(['a', 'b', 'c']);
  await jest.advanceTimersByTimeAsync(35_000);
  // Past the ack wait, its checkpoint under way: still waited for, and said so.
  expect(outcomes).toEqual([]);
  expect(aggregation.progress(true)).toMatchObject({
    phase: 'running',
    message: expect.stringContaining('checkpoint write under way for 34 s') as unknown,
  });
  // Ten minutes of slow checkpoints: fifteen of them written.
  await jest.advanceTimersByTimeAsync(10 * 60_000);
  expect(aggregation.read(['item-1'], Date.now()).values[0]).toBe(3); // counted once
  expect(outcomes).toEqual(['handled']); // delivered once, acknowledged after the first write
  // Later batches too: each waits for at most two slow writes.
  deliver(['d']);
  await jest.advanceTimersByTimeAsync(81_000);
  expect(outcomes).toEqual(['handled', 'handled']);
  expect(aggregation.read(['item-1'], Date.now()).values[0]).toBe(4);
  await aggregation.stop(false);
});

it('still hands a batch back when the slow write fails', async () => {
  let failing = true;
  const { aggregation, outcomes, deliver } = await started(
    slowCheckpoints(40_000, () => (failing ? 'failed' : 'written')),
  );
  deliver(['a', 'b']);
  await jest.advanceTimersByTimeAsync(35_000);
  expect(outcomes).toEqual([]); // kept while the write is under way
  await jest.advanceTimersByTimeAsync(20_000);
  // The write failed at 40 s: the batch is handed back (delivered again), not kept alive.
  expect(outcomes[0]).toBe('failed');
  expect(aggregation.progress(true).message).toContain(
    'checkpoint failed: storage is unavailable; retry with backoff',
  );
  failing = false;
  await jest.advanceTimersByTimeAsync(5 * 60_000);
  expect(outcomes).toContain('handled');
  expect(aggregation.read(['item-1'], Date.now()).values[0]).toBe(2); // redeliveries not counted
  await aggregation.stop(false);
});

it("reports a failed checkpoint to callers without what storage said, as a call's error would", async () => {
  // An error no adapter mapped (the embedded store's disk full): its message names paths.
  const diskFull = (): Error =>
    new Error("ENOSPC: no space left on device, write '/var/lib/tandem/featurestore/data.mdb'");
  let failing = true;
  const { aggregation, deliver } = await started(
    slowCheckpoints(1_000, () => (failing ? 'failed' : 'written'), diskFull),
  );
  deliver(['a']);
  await jest.advanceTimersByTimeAsync(5_000);
  const { message } = aggregation.progress(true);
  expect(message).toContain('checkpoint failed: internal error');
  expect(message).not.toMatch(/ENOSPC|\/var\/lib/);
  failing = false;
  await jest.advanceTimersByTimeAsync(60_000);
  await aggregation.stop(false);
});
