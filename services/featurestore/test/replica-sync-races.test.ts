/**
 * Replicas that load a view's table from storage while rows are being written, here or on
 * another replica, serve every row once stored: a replica starting, a view gaining a feature, a
 * local write ending while its table is loaded, a write slower than the change log's gap wait,
 * a change-log entry stored after it, or failing after its rows were stored.
 * And a feature added to a big view does not hold up writes to others while it is filled in.
 * Storage is slowed at exact points (a write held, a scan that waits after reading).
 */
import { status as GrpcCode } from '@grpc/grpc-js';
import { ValueType } from '../../../gen/ts/tandem/featurestore/v1/value';
import { failureOf } from './feature-store-api';
import {
  eventually,
  sharing,
  startHarness,
  type RunningHarness,
} from './support/feature-store-harness';
import {
  gatedPair,
  gatedSecondReplica,
  gatedStore,
  storageGates,
  untilHeld,
  type StorageGates,
} from './support/gated-store';
import {
  applyUserStats,
  double,
  itemCountView,
  itemEntity,
  userRow,
  users,
  userStatsView,
} from './support/fixtures';
import { StreamAggregation } from '../src/events/stream-aggregation';
import { FeatureRowRepository } from '../src/store/feature-rows';

/** Whether `call` settles within `ms` (the scan it must not wait for is held meanwhile). */
async function doneWithin(call: Promise<unknown>, ms: number): Promise<'done' | 'waiting'> {
  let timer: NodeJS.Timeout | undefined;
  const waiting = new Promise<'waiting'>((resolve) => {
    timer = setTimeout(() => {
      resolve('waiting');
    }, ms);
  });
  try {
    return await Promise.race([call.then(() => 'done' as const), waiting]);
  } finally {
    clearTimeout(timer);
  }
}

async function ctrOf(replica: RunningHarness, user: string): Promise<unknown> {
  const read = await replica.client.getOnlineFeatures({
    features: ['user_stats:ctr'],
    entityRows: users(user),
    omitEventTimes: true,
  });
  return read.columns[0]?.values[0];
}

const ctr7d = {
  name: 'ctr_7d',
  valueType: ValueType.VALUE_TYPE_DOUBLE,
  description: '',
  vectorLength: 0,
};

/** Waits until `replica` serves u1's ctr = 0.5 (the held or failed write's). */
async function untilServed(replica: RunningHarness, ms: number): Promise<void> {
  await eventually(async () => {
    expect(await ctrOf(replica, 'u1')).toEqual(double(0.5));
  }, ms);
}

/** Writes `user`'s ctr through `replica`. */
function writeCtr(replica: RunningHarness, user = 'u1', ctr = 0.5) {
  return replica.client.writeFeatures({
    featureView: 'user_stats',
    rows: [userRow(user, new Date(), { ctr: double(ctr) })],
    requestId: '',
  });
}

/**
 * Starts writing u1's ctr = 0.5 through `replica` and waits until the row's write is held; the
 * call's answer is `writing` (in an object: a promise returned would be awaited with this one).
 */
async function heldWrite(gates: StorageGates, replica: RunningHarness) {
  gates.holdNextWrite = true;
  const writing = writeCtr(replica);
  await untilHeld(gates, 'write');
  return { writing };
}

/** Writes u2's ctr = 0.25 through `writer` and waits until `reader` serves it. */
async function writeLaterRow(writer: RunningHarness, reader: RunningHarness): Promise<void> {
  await writeCtr(writer, 'u2', 0.25);
  await eventually(async () => {
    expect(await ctrOf(reader, 'u2')).toEqual(double(0.25));
  }, 2_000);
}

it('a replica started while another replica writes serves the row once stored', async () => {
  const gates = storageGates();
  const first = await startHarness({
    replicaId: 'replica-a',
    wrapStore: (store) => gatedStore(store, gates),
  });
  let second: RunningHarness | undefined;
  try {
    await applyUserStats(first.client);
    // Its order is taken; the row is not stored yet.
    const { writing } = await heldWrite(gates, first);
    second = await startHarness({
      replicaId: 'replica-b',
      wrapStore: sharing(first.runtime.store),
    });
    gates.releaseWrite!();
    expect((await writing).rowsWritten).toBe(1);
    expect(await ctrOf(first, 'u1')).toEqual(double(0.5));
    await eventually(async () => {
      expect(await ctrOf(second!, 'u1')).toEqual(double(0.5));
    }, 3_000);
  } finally {
    await second?.stop();
    await first.stop();
  }
});

it('a replica loading a view again (feature added) while another writes serves the row', async () => {
  const { gates, first, second, stop } = await gatedPair();
  try {
    const { writing } = await heldWrite(gates, first);
    // The second replica adds a feature, which it fills in from storage.
    await second.client.applyFeatureView({
      featureView: userStatsView({ features: [...userStatsView().features, ctr7d] }),
      requestId: '',
      validateOnly: false,
    });
    await eventually(
      () =>
        second.client.getOnlineFeatures({
          features: ['user_stats:ctr_7d'],
          entityRows: users('u1'),
          omitEventTimes: true,
        }),
      2_000,
    );
    gates.releaseWrite!();
    expect((await writing).rowsWritten).toBe(1);
    await untilServed(second, 3_000);
  } finally {
    await stop();
  }
});

it('a local write that completes while its view is read again from storage is served', async () => {
  const gates = storageGates();
  const harness = await startHarness({ wrapStore: (store) => gatedStore(store, gates) });
  try {
    await applyUserStats(harness.client);
    const { writing } = await heldWrite(gates, harness);
    // A feature added: its records are read again; the scan has read storage (without the row).
    gates.holdNextScan = true;
    const applying = harness.client.applyFeatureView({
      featureView: userStatsView({ features: [...userStatsView().features, ctr7d] }),
      requestId: '',
      validateOnly: false,
    });
    await untilHeld(gates, 'scan');
    // The write ends while the load is still running: the new table is not served yet.
    gates.releaseWrite!();
    expect((await writing).rowsWritten).toBe(1);
    gates.releaseScan!();
    await applying;
    await eventually(
      () =>
        harness.client.getOnlineFeatures({
          features: ['user_stats:ctr_7d'],
          entityRows: users('u1'),
          omitEventTimes: true,
        }),
      2_000,
    );
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    expect(await ctrOf(harness, 'u1')).toEqual(double(0.5));
  } finally {
    await harness.stop();
  }
});

it('a write slower than the change-log gap wait is still synced by other replicas', async () => {
  const { gates, first, second, stop } = await gatedPair();
  try {
    // A slow write (a primary election, a 10,000-row batch), its order taken first.
    const { writing } = await heldWrite(gates, first);
    // Another write, after it, goes through at once.
    await writeLaterRow(first, second);
    // The client's 5 s deadline passes; the server goes on with the write.
    const outcome = writing.catch((error: unknown) => error);
    await new Promise((resolve) => setTimeout(resolve, 6_500));
    gates.releaseWrite!();
    await outcome;
    // Stored, and served by the replica that wrote it.
    await untilServed(first, 2_000);
    await untilServed(second, 3_000);
  } finally {
    await stop();
  }
}, 30_000);

it('a change-log entry stored after the gap wait is still applied by other replicas', async () => {
  const { gates, first, second, stop } = await gatedPair();
  try {
    // A write whose rows are stored and whose sequence is taken, its writer then stalled before
    // storing the entry (a primary election between the two).
    gates.holdNextEntry = true;
    const writing = writeCtr(first).catch((error: unknown) => error);
    await untilHeld(gates, 'entry');
    // A later write lands after the gap: the second replica applies it and, once the gap wait
    // is over, follows the log past the missing entry.
    const lookedFor = jest.spyOn(FeatureRowRepository.prototype, 'changesAmong');
    try {
      await writeLaterRow(first, second);
      // Passed over (the replicas look for it by id): applied late, not by following the log.
      // After the gap wait (5 s), then a sync tick.
      await eventually(() => {
        expect(lookedFor).toHaveBeenCalled();
        return Promise.resolve();
      }, 15_000);
    } finally {
      lookedFor.mockRestore();
    }
    expect(await ctrOf(second, 'u1')).not.toEqual(double(0.5));
    gates.releaseEntry!();
    await writing;
    await untilServed(second, 3_000);
  } finally {
    await stop();
  }
}, 30_000);

it('consecutive missing change-log entries are passed over after one gap wait', async () => {
  const { gates, first, second, stop } = await gatedPair();
  const follows = jest.spyOn(FeatureRowRepository.prototype, 'changesAfter');
  try {
    const base = await (
      await FeatureRowRepository.open(first.runtime.store, 3_600_000)
    ).lastSequence();
    // One blip: three writes' entries refused; announced again later, after the gap.
    gates.failEntries = 3;
    for (const user of ['u1', 'u2', 'u3']) await failureOf(writeCtr(first, user, 0.5));
    await eventually(async () => {
      for (const user of ['u1', 'u2', 'u3']) {
        expect(await ctrOf(second, user)).toEqual(double(0.5));
      }
    }, 5_000);
    // The three sequences were all missing from the start: one wait (5 s, then a sync tick of
    // each replica) passes them all. Under 10 s, so two waits in a row would still fail it.
    await eventually(() => {
      const positions = follows.mock.calls.slice(-4).map(([sequence]) => sequence);
      expect(Math.min(...positions)).toBeGreaterThanOrEqual(base + 3);
      return Promise.resolve();
    }, 9_500);
  } finally {
    follows.mockRestore();
    await stop();
  }
}, 30_000);

it('rows stored when their change-log entry fails are announced once storage takes it', async () => {
  const { gates, first, second, stop } = await gatedPair();
  try {
    // Storage fails right after the rows are stored: for the entry, then for its first retry.
    gates.failEntries = 2;
    const write = await failureOf(writeCtr(first));
    expect(write.code).toBe(GrpcCode.UNAVAILABLE);
    // Served as storage holds it, by the replica that wrote it and, once announced, the other.
    expect(await ctrOf(first, 'u1')).toEqual(double(0.5));
    await untilServed(second, 5_000);
    expect(gates.failEntries).toBe(0);
  } finally {
    await stop();
  }
});

it("a late announcement does not put a deleted view's rows into the view applied again", async () => {
  const { gates, first, second, stop } = await gatedPair();
  try {
    gates.failEntries = 1;
    await failureOf(writeCtr(first));
    // The announcement finds the view as it was, then stalls taking its sequence; meanwhile the
    // view is deleted and applied again, and the other replica serves the new, empty one.
    gates.holdNextSequence = true;
    await untilHeld(gates, 'sequence');
    const before = (await second.client.getFeatureView({ name: 'user_stats' })).featureView!.etag;
    await second.client.deleteFeatureView({ name: 'user_stats', etag: '', requestId: '' });
    await applyUserStats(second.client);
    await eventually(async () => {
      const now = await second.client.getFeatureView({ name: 'user_stats' });
      expect(now.featureView!.etag).not.toBe(before);
      expect(await ctrOf(second, 'u1')).toEqual({ kind: undefined });
    }, 3_000);
    gates.releaseSequence!();
    await new Promise((resolve) => setTimeout(resolve, 1_500));
    expect(await ctrOf(second, 'u1')).toEqual({ kind: undefined });
    expect(await ctrOf(first, 'u1')).toEqual({ kind: undefined });
  } finally {
    gates.releaseSequence?.();
    await stop();
  }
}, 30_000);

it('a write to another view does not wait for a feature added to a big view to load', async () => {
  const gates = storageGates();
  const harness = await startHarness({ wrapStore: (store) => gatedStore(store, gates) });
  try {
    await applyUserStats(harness.client);
    await harness.client.applyFeatureView({
      featureView: userStatsView({ name: 'other_stats' }),
      requestId: '',
      validateOnly: false,
    });
    // A feature added to user_stats: its records are read again (a big view takes a while).
    gates.holdNextScan = true;
    const applying = harness.client
      .applyFeatureView({
        featureView: userStatsView({ features: [...userStatsView().features, ctr7d] }),
        requestId: '',
        validateOnly: false,
      })
      .catch((error: unknown) => error);
    await untilHeld(gates, 'scan');
    const write = harness.client.writeFeatures({
      featureView: 'other_stats',
      rows: [userRow('u1', new Date(), { ctr: double(0.5) })],
      requestId: '',
    });
    const outcome = await doneWithin(write, 2_000);
    gates.releaseScan!();
    await applying;
    expect(outcome).toBe('done');
  } finally {
    await harness.stop();
  }
});

it('a refill of a feature added, retried after another was added, leaves the newer one', async () => {
  const gates = storageGates();
  const harness = await startHarness({ wrapStore: (store) => gatedStore(store, gates) });
  const ctr30d = async () =>
    (
      await harness.client.getOnlineFeatures({
        features: ['user_stats:ctr_30d'],
        entityRows: users('u1'),
        omitEventTimes: true,
      })
    ).columns[0]?.values[0];
  try {
    await applyUserStats(harness.client);
    const base = userStatsView().features;
    // ctr_7d added; its refill's scan fails once (a blip) and is tried again in 5 s.
    gates.failNextScan = true;
    await harness.client.applyFeatureView({
      featureView: userStatsView({ features: [...base, ctr7d] }),
      requestId: '',
      validateOnly: false,
    });
    // ctr_30d added right after, and written.
    await harness.client.applyFeatureView({
      featureView: userStatsView({ features: [...base, ctr7d, { ...ctr7d, name: 'ctr_30d' }] }),
      requestId: '',
      validateOnly: false,
    });
    await harness.client.writeFeatures({
      featureView: 'user_stats',
      rows: [userRow('u1', new Date(), { ctr: double(0.5), ctr_30d: double(0.9) })],
      requestId: '',
    });
    expect(await ctr30d()).toEqual(double(0.9));
    // Past the first refill's retry, which would write the record without ctr_30d.
    await new Promise((resolve) => setTimeout(resolve, 6_000));
    expect(await ctr30d()).toEqual(double(0.9));
  } finally {
    await harness.stop();
  }
}, 20_000);

it('writes do not wait for the reload after a long outage when the registry changes', async () => {
  // Half the shortest retention allowed (10 s) without a sync: the push views are loaded again.
  const { gates, first, second } = await gatedSecondReplica({
    TANDEM_FEATURESTORE_CHANGE_LOG_RETENTION: '10s',
  });
  try {
    await holdReloadAfterOutage(gates);
    // A registry change queues a reconcile behind the reload.
    await applyOtherStats(first);
    await eventually(() => second.client.getFeatureView({ name: 'other_stats' }), 2_000);
    const write = writeCtr(second);
    const outcome = await doneWithin(write, 2_000);
    gates.releaseScan!();
    expect(outcome).toBe('done');
    // And the row is served once the reload is done.
    await untilServed(second, 3_000);
  } finally {
    await second.stop();
    await first.stop();
  }
}, 30_000);

/**
 * Runs `hold` (which leaves a scan of `replica`'s held), then expects `replica` to stop within
 * 8 s: within its shutdown deadline (10 s), not after the scan (held until the end). Its views
 * alone wait 2 s for the reads still running (STOP_WAIT_FOR_READS_MS). Stops `others` last.
 */
async function stopsWhileScanHeld(
  gates: StorageGates,
  replica: RunningHarness,
  others: readonly RunningHarness[],
  hold: () => Promise<void>,
): Promise<void> {
  let stopped = false;
  try {
    await hold();
    expect(await doneWithin(replica.stop(), 8_000)).toBe('done');
    stopped = true;
  } finally {
    gates.releaseScan?.();
    if (!stopped) await replica.stop();
    for (const other of others) await other.stop();
  }
}

/** Cuts storage off past half the change log's retention, then holds the reload's scan. */
async function holdReloadAfterOutage(gates: StorageGates): Promise<void> {
  gates.cutOff = true;
  await new Promise((resolve) => setTimeout(resolve, 6_000));
  // The reload's scan reads, then hangs (a cursor that never answers).
  gates.holdNextScan = true;
  gates.cutOff = false;
  // The reload failed during the outage, so its next try waits (1 s doubling) and then for the
  // next sync tick: up to ~3 s after storage returns, more on a loaded host.
  await untilHeld(gates, 'scan', 8_000);
}

it('a replica stopping while it loads its views again after a long outage stops', async () => {
  const env = { TANDEM_FEATURESTORE_CHANGE_LOG_RETENTION: '10s' };
  const gates = storageGates();
  const harness = await startHarness({ env, wrapStore: (store) => gatedStore(store, gates) });
  await stopsWhileScanHeld(gates, harness, [], async () => {
    await applyUserStats(harness.client);
    await holdReloadAfterOutage(gates);
  });
}, 40_000);

/** A view applied on `replica`, which the other replica's reconcile then loads. */
async function applyOtherStats(replica: RunningHarness): Promise<void> {
  await replica.client.applyFeatureView({
    featureView: userStatsView({ name: 'other_stats' }),
    requestId: '',
    validateOnly: false,
  });
}

it('a replica stopping while a reconcile waits behind a hung reload stops', async () => {
  const { gates, first, second } = await gatedSecondReplica({
    TANDEM_FEATURESTORE_CHANGE_LOG_RETENTION: '10s',
  });
  await stopsWhileScanHeld(gates, second, [first], async () => {
    // The reload after the outage hangs; a registry change queues a reconcile behind it.
    await holdReloadAfterOutage(gates);
    await applyOtherStats(first);
    await eventually(() => second.client.getFeatureView({ name: 'other_stats' }), 2_000);
  });
}, 40_000);

it('a replica stopping while its reconcile loads a view from a hung scan stops', async () => {
  const { gates, first, second } = await gatedSecondReplica();
  await stopsWhileScanHeld(gates, second, [first], async () => {
    gates.holdNextScan = true;
    await applyOtherStats(first);
    await untilHeld(gates, 'scan');
  });
}, 30_000);

it('a write waiting for its view to load when the replica stops is answered once it loads', async () => {
  const { gates, first, second } = await gatedSecondReplica();
  let stopped = false;
  try {
    gates.holdNextScan = true;
    await applyOtherStats(first);
    await untilHeld(gates, 'scan', 5_000);
    // The write waits for the reconcile loading other_stats (the view is not served yet).
    const write = second.client.writeFeatures({
      featureView: 'other_stats',
      rows: [userRow('u1', new Date(), { ctr: double(0.5) })],
      requestId: '',
    });
    await new Promise((resolve) => setTimeout(resolve, 200));
    // Shutdown begins: the server drains (the write is in flight) before the views stop.
    const stopping = second.runtime.shutdown.run(10_000);
    await new Promise((resolve) => setTimeout(resolve, 300));
    gates.releaseScan!();
    await expect(write).resolves.toMatchObject({ rowsWritten: 1 });
    await stopping;
    stopped = true;
  } finally {
    gates.releaseScan?.();
    if (!stopped) await second.runtime.shutdown.run(10_000);
    await second.stop();
    await first.stop();
  }
}, 30_000);

it('a replica stopping while it retires deleted stream views takes no checkpoint of them', async () => {
  const gates = storageGates();
  const first = await startHarness({ replicaId: 'replica-a' });
  const second = await startHarness({
    replicaId: 'replica-b',
    env: { TANDEM_FEATURESTORE_REGISTRY_RELOAD_INTERVAL: '2s' },
    wrapStore: () => gatedStore(sharing(first.runtime.store)(), gates),
  });
  const stops = jest.spyOn(StreamAggregation.prototype, 'stop');
  const retires = jest.spyOn(StreamAggregation.prototype, 'retire');
  let stopped = false;
  try {
    await first.client.applyEntity({ entity: itemEntity, requestId: '' });
    for (const name of ['s1', 's2']) {
      await first.client.applyFeatureView({
        featureView: itemCountView(name, `tandem.events.v1.outcome.${name}`, 60),
        requestId: '',
        validateOnly: false,
      });
    }
    await eventually(async () => {
      await second.client.getAggregationStatus({ featureView: 's1' });
      await second.client.getAggregationStatus({ featureView: 's2' });
    }, 8_000);
    // Both deleted between two registry reloads of the second replica: one reconcile retires
    // both, and its first retirement stalls in storage (deleting the checkpoints).
    gates.holdNextCheckpointScan = true;
    await first.client.deleteFeatureView({ name: 's1', etag: '', requestId: '' });
    await first.client.deleteFeatureView({ name: 's2', etag: '', requestId: '' });
    await untilHeld(gates, 'checkpointScan', 6_000);
    const [stopsBefore, retiresBefore] = [stops.mock.calls.length, retires.mock.calls.length];
    await second.stop();
    stopped = true;
    const [stopsAtStop, retiresAtStop] = [stops.mock.calls.length, retires.mock.calls.length];
    gates.releaseCheckpointScan!();
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    // The deleted view not yet retired is stopped without a last checkpoint, and nothing of
    // the reconcile runs once stop has returned.
    expect(stops.mock.calls.slice(stopsBefore)).toEqual([[false]]);
    expect(retires.mock.calls.length).toBe(retiresBefore);
    expect([stops.mock.calls.length, retires.mock.calls.length]).toEqual([
      stopsAtStop,
      retiresAtStop,
    ]);
  } finally {
    gates.releaseCheckpointScan?.();
    stops.mockRestore();
    retires.mockRestore();
    if (!stopped) await second.stop();
    await first.stop();
  }
}, 40_000);
