/**
 * A push-sourced view deleted and applied again starts empty on every replica sharing the storage:
 * one started afterwards does not replay the old view's change-log entries into the new one, and
 * one that was serving the old view drops its values even when both changes fell between two of
 * its registry reloads; the writes that find it changed share one reload.
 */
import { FeatureStatus } from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import { FeatureRegistry } from '../src/feature-registry';
import { FeatureRowRepository } from '../src/store/feature-rows';
import {
  eventually,
  startHarness,
  type RunningHarness,
  sharing,
} from './support/feature-store-harness';
import { applyUserStats, double, userEntity, userRow, users } from './support/fixtures';
import { overridingCollections } from '../../platform/test/support/wrapped-store';

describe('a push view deleted and applied again', () => {
  let first: RunningHarness;
  let second: RunningHarness | undefined;

  beforeEach(async () => {
    // Every change is made through this replica: it has no reason to reload (which would count
    // among the other replica's reloads below).
    first = await startHarness({
      replicaId: 'replica-a',
      env: { TANDEM_FEATURESTORE_REGISTRY_RELOAD_INTERVAL: '10m' },
    });
    await first.client.applyEntity({ entity: userEntity, requestId: '' });
    await applyUserStats(first.client);
    await first.client.writeFeatures({
      featureView: 'user_stats',
      rows: [userRow('u1', new Date(), { ctr: double(0.3) })],
      requestId: '',
    });
  });

  afterEach(async () => {
    await second?.stop();
    second = undefined;
    await first.stop();
  });

  /** Deletes user_stats, waits until storage holds none of its rows, and applies it again. */
  async function recreateUserStats(): Promise<void> {
    await first.client.deleteFeatureView({ name: 'user_stats', etag: '', requestId: '' });
    const rows = await FeatureRowRepository.open(first.runtime.store, 3_600_000);
    await eventually(async () => {
      for await (const row of rows.scanView('user_stats')) throw new Error(`${row.id} is left`);
    });
    await applyUserStats(first.client);
  }

  async function ctrOf(replica: RunningHarness, since: number) {
    const read = await replica.client.getOnlineFeatures({
      features: ['user_stats:ctr'],
      entityRows: users('u1', 'u2'),
      omitEventTimes: true,
    });
    // As of a sync after `since`: the change log has been read by then.
    expect(read.metadata?.asOf?.getTime()).toBeGreaterThan(since);
    return read.columns[0];
  }

  it('is not given the old values by the change log on a replica started afterwards', async () => {
    await recreateUserStats();
    await first.client.writeFeatures({
      featureView: 'user_stats',
      rows: [userRow('u2', new Date(), { ctr: double(0.5) })],
      requestId: '',
    });

    second = await startHarness({
      replicaId: 'replica-b',
      wrapStore: sharing(first.runtime.store),
    });
    const started = Date.now();
    const replica = second;
    const ctr = await eventually(() => ctrOf(replica, started));
    expect(ctr?.statuses).toEqual([
      FeatureStatus.FEATURE_STATUS_NOT_FOUND,
      FeatureStatus.FEATURE_STATUS_PRESENT,
    ]);
    expect(ctr?.values[1]).toEqual(double(0.5));
  });

  it('drops the old values on a replica that did not reload in between', async () => {
    second = await startHarness({
      replicaId: 'replica-b',
      wrapStore: sharing(first.runtime.store),
      env: { TANDEM_FEATURESTORE_REGISTRY_RELOAD_INTERVAL: '2s' },
    });
    const replica = second;
    expect((await ctrOf(replica, 0))?.values[0]).toEqual(double(0.3));

    await recreateUserStats();
    const recreated = Date.now();
    // Its next registry reload is up to 2 s away, then a reconcile and a sync.
    await eventually(async () => {
      expect((await ctrOf(replica, recreated))?.statuses[0]).toBe(
        FeatureStatus.FEATURE_STATUS_NOT_FOUND,
      );
    }, 8_000);
  });

  it('is reloaded once for many writes on a replica that did not reload in between', async () => {
    second = await startHarness({
      replicaId: 'replica-b',
      wrapStore: sharing(first.runtime.store),
      env: { TANDEM_FEATURESTORE_REGISTRY_RELOAD_INTERVAL: '10m' },
    });
    const replica = second;
    await recreateUserStats();
    // Each write finds storage's view newer than the replica's: they share a reload (a slow
    // one, as a big registry's in MongoDB).
    const { reload } = Object.getOwnPropertyDescriptors(FeatureRegistry.prototype);
    const reloads = jest
      .spyOn(FeatureRegistry.prototype, 'reload')
      .mockImplementation(async function (this: FeatureRegistry) {
        await new Promise((resolve) => setTimeout(resolve, 200));
        return (reload.value as () => Promise<void>).call(this);
      });
    try {
      const written = await Promise.all(
        Array.from({ length: 20 }, (_, i) =>
          replica.client.writeFeatures({
            featureView: 'user_stats',
            rows: [userRow(`u${i}`, new Date(), { ctr: double(0.5) })],
            requestId: '',
          }),
        ),
      );
      expect(written.map((w) => w.rowsWritten)).toEqual(Array(20).fill(1));
      expect(reloads.mock.calls.length).toBeLessThanOrEqual(2);
    } finally {
      reloads.mockRestore();
    }
  });
});

/** Applies user_stats on `replica` (its entity too) and writes u1's ctr 0.3, 5 s ago. */
async function withOldRow(replica: RunningHarness): Promise<() => Promise<unknown>> {
  const apply = () => applyUserStats(replica.client);
  await apply();
  await replica.client.writeFeatures({
    featureView: 'user_stats',
    rows: [userRow('u1', new Date(Date.now() - 5_000), { ctr: double(0.3) })],
    requestId: '',
  });
  return apply;
}

/** Writes u1's ctr 0.9, now, to the view applied again. */
async function writeNewRow(replica: RunningHarness): Promise<void> {
  await replica.client.writeFeatures({
    featureView: 'user_stats',
    rows: [userRow('u1', new Date(), { ctr: double(0.9) })],
    requestId: '',
  });
}

/**
 * Expects a replica started now (reading the view from storage, once the old view's deletion has
 * had time to run) to serve u1's new row.
 */
async function expectNewRowStored(first: RunningHarness): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, 500));
  const second = await startHarness({
    replicaId: 'replica-b',
    wrapStore: sharing(first.runtime.store),
  });
  try {
    const read = await second.client.getOnlineFeatures({
      features: ['user_stats:ctr'],
      entityRows: users('u1'),
      omitEventTimes: true,
    });
    expect([read.columns[0]?.statuses, read.columns[0]?.values]).toEqual([
      [FeatureStatus.FEATURE_STATUS_PRESENT],
      [double(0.9)],
    ]);
  } finally {
    await second.stop();
  }
}

describe('a push view applied again while its old values are still being deleted', () => {
  it.each([
    ['the replica that deleted it', false],
    ['another replica', true],
  ])('on %s keeps the rows written to it when that deletion goes on', async (_, elsewhere) => {
    // The old view's background deletion is held (a big view on a slow storage).
    let release = (): void => undefined;
    const held = new Promise<void>((resolve) => (release = resolve));
    let holdNext = false;
    let heldDone = (): void => undefined;
    const deletionDone = new Promise<void>((resolve) => (heldDone = resolve));
    const first = await startHarness({
      replicaId: 'replica-a',
      wrapStore: (store) =>
        overridingCollections(store, (collection, spec) =>
          spec.name === 'feature_rows'
            ? {
                deleteWhere: async (where) => {
                  if (!holdNext) return collection.deleteWhere(where);
                  holdNext = false;
                  await held;
                  const deleted = await collection.deleteWhere(where);
                  heldDone();
                  return deleted;
                },
              }
            : {},
        ),
    });
    const second = elsewhere
      ? await startHarness({ replicaId: 'replica-b', wrapStore: sharing(first.runtime.store) })
      : first;
    try {
      await withOldRow(first);
      holdNext = true;
      await first.client.deleteFeatureView({ name: 'user_stats', etag: '', requestId: '' });
      expect(holdNext).toBe(false);
      // Applied again and written to while that deletion is under way.
      await applyUserStats(second.client);
      await writeNewRow(second);
      release();
      await deletionDone;
      await expectNewRowStored(first);
    } finally {
      release();
      if (second !== first) await second.stop();
      await first.stop();
    }
  });
});

describe('a push view applied again while its DeleteFeatureView is still answering', () => {
  it('keeps the rows written to it: the old values go before it is created', async () => {
    // The delete holds after the view left the registry, before it answers (storage slow).
    let release = (): void => undefined;
    const held = new Promise<void>((resolve) => (release = resolve));
    let entered = (): void => undefined;
    const inDelete = new Promise<void>((resolve) => (entered = resolve));
    const first = await startHarness({
      wrapStore: (store) =>
        overridingCollections(store, (collection, spec) =>
          spec.name === 'expiry_retiming'
            ? {
                delete: async (id: string, expected?: number) => {
                  entered();
                  await held;
                  return collection.delete(id, expected);
                },
              }
            : {},
        ),
    });
    try {
      const apply = await withOldRow(first);
      const deleting = first.client.deleteFeatureView({
        name: 'user_stats',
        etag: '',
        requestId: '',
      });
      await inDelete;
      await apply();
      await writeNewRow(first);
      release();
      await deleting;
      await expectNewRowStored(first);
    } finally {
      release();
      await first.stop();
    }
  });
});
