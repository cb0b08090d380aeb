/**
 * A view's load from storage (minutes for a big view) holds up nothing but that view: the sync of
 * other replicas' writes goes on meanwhile, for every view, and what it brings for the view being
 * loaded reaches the loaded table; another view applied meanwhile is loaded beside it; and two
 * loads of one view (a reconcile's, the reload after an outage) run one after the other.
 * A load is held with a scan that waits once it has read storage.
 */
import { OutcomeEvent } from '../../../gen/ts/tandem/events/v1/outcome_event';
import { FeatureStatus } from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import { createInProcessBus } from '../../platform/src/events/in-process-bus';
import { OnlineViews } from '../src/online-views';
import { FeatureRowRepository } from '../src/store/feature-rows';
import {
  eventually,
  startHarness,
  within,
  type RunningHarness,
} from './support/feature-store-harness';
import { gatedSecondReplica, gatedStore, storageGates, untilHeld } from './support/gated-store';
import {
  applyUserStats,
  double,
  itemCountView,
  itemEntity,
  outcome,
  str,
  userEntity,
  userRow,
  users,
  userStatsView,
} from './support/fixtures';

/** Collects the replicas' OnlineViews as their syncs run; `restore` puts the method back. */
function captureViews(): { readonly instances: Set<OnlineViews>; readonly restore: () => void } {
  const instances = new Set<OnlineViews>();
  const { syncChanges } = Object.getOwnPropertyDescriptors(OnlineViews.prototype);
  const original = syncChanges.value as (this: OnlineViews) => Promise<void>;
  const spy = jest.spyOn(OnlineViews.prototype, 'syncChanges').mockImplementation(function (
    this: OnlineViews,
  ) {
    instances.add(this);
    return original.call(this);
  });
  return {
    instances,
    restore: () => {
      spy.mockRestore();
    },
  };
}

function applyView(replica: RunningHarness, name: string) {
  return replica.client.applyFeatureView({
    featureView: userStatsView({ name }),
    requestId: '',
    validateOnly: false,
  });
}

/** Writes `ctr` of `user` to `view` through `replica`, with an event time `ageMs` ago. */
function writeCtr(replica: RunningHarness, view: string, user: string, ctr: number, ageMs = 0) {
  return replica.client.writeFeatures({
    featureView: view,
    rows: [userRow(user, new Date(Date.now() - ageMs), { ctr: double(ctr) })],
    requestId: '',
  });
}

/** The ctr values `replica` serves for `ids` in `view`. */
async function ctrsOf(replica: RunningHarness, view: string, ...ids: string[]) {
  const read = await replica.client.getOnlineFeatures({
    features: [`${view}:ctr`],
    entityRows: users(...ids),
    omitEventTimes: true,
  });
  return read.columns[0]?.values;
}

it('serves rows another replica writes to other views while a big view loads', async () => {
  const { gates, first, second } = await gatedSecondReplica();
  try {
    // The second replica loads big_stats; its scan has read storage and waits (a big view).
    gates.holdNextScan = true;
    await applyView(first, 'big_stats');
    await untilHeld(gates, 'scan', 5_000);
    await writeCtr(first, 'user_stats', 'u1', 0.5);
    // Within a couple of syncs (200 ms apart), not after the load.
    await eventually(async () => {
      expect(await ctrsOf(second, 'user_stats', 'u1')).toEqual([double(0.5)]);
    }, 1_500);
  } finally {
    gates.releaseScan?.();
    await second.stop();
    await first.stop();
  }
});

it('loses none of the rows written to a view while it loads, and keeps the newest', async () => {
  const { gates, first, second } = await gatedSecondReplica();
  let own: Promise<unknown> = Promise.resolve();
  try {
    gates.holdNextScan = true;
    await applyView(first, 'big_stats');
    await untilHeld(gates, 'scan', 5_000);
    // Written once the held scan has read storage: the table loaded has them from the sync only.
    await writeCtr(first, 'big_stats', 'u1', 0.1, 2_000);
    await writeCtr(first, 'big_stats', 'u2', 0.2, 2_000);
    await writeCtr(first, 'big_stats', 'u1', 0.9, 1_000);
    // Older than the one stored: skipped by storage, and by the table loaded.
    expect((await writeCtr(first, 'big_stats', 'u2', 0.05, 5_000)).rowsSkippedOlder).toBe(1);
    // This replica's own writes wait for the load; one is older than the other replica's.
    own = Promise.all([
      writeCtr(second, 'big_stats', 'u1', 0.3, 4_000),
      writeCtr(second, 'big_stats', 'u3', 0.7, 1_000),
    ]);
    const ownWrites = own.catch((error: unknown) => error);
    // A later write to another view served: the sync has passed the entries above meanwhile.
    await writeCtr(first, 'user_stats', 'u9', 0.4);
    await eventually(async () => {
      expect(await ctrsOf(second, 'user_stats', 'u9')).toEqual([double(0.4)]);
    }, 1_500);
    gates.releaseScan!();
    expect(await ownWrites).toEqual([
      { rowsWritten: 0, rowsSkippedOlder: 1 },
      { rowsWritten: 1, rowsSkippedOlder: 0 },
    ]);
    await eventually(async () => {
      expect(await ctrsOf(second, 'big_stats', 'u1', 'u2', 'u3')).toEqual([
        double(0.9),
        double(0.2),
        double(0.7),
      ]);
    }, 2_000);
    // Not undone by a later sync.
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(await ctrsOf(second, 'big_stats', 'u1', 'u2', 'u3')).toEqual([
      double(0.9),
      double(0.2),
      double(0.7),
    ]);
  } finally {
    gates.releaseScan?.();
    await own.catch(() => undefined);
    await second.stop();
    await first.stop();
  }
});

it('serves a view applied while another view is still loading, before that load ends', async () => {
  const gates = storageGates();
  const harness = await startHarness({ wrapStore: (store) => gatedStore(store, gates) });
  let applyingBig: Promise<unknown> = Promise.resolve();
  try {
    await applyUserStats(harness.client);
    gates.holdNextScan = true;
    applyingBig = applyView(harness, 'big_stats').catch((error: unknown) => error);
    await untilHeld(gates, 'scan');
    // Applied, written and read while big_stats still loads.
    expect(await within(applyView(harness, 'small_stats'), 5_000)).toMatchObject({
      changed: true,
    });
    expect(await within(writeCtr(harness, 'small_stats', 'u1', 0.5), 5_000)).toEqual({
      rowsWritten: 1,
      rowsSkippedOlder: 0,
    });
    expect(await ctrsOf(harness, 'small_stats', 'u1')).toEqual([double(0.5)]);
    expect(gates.releaseScan).toBeDefined(); // still held
    gates.releaseScan!();
    await applyingBig;
    expect(await ctrsOf(harness, 'big_stats', 'u1')).toEqual([{ kind: undefined }]);
  } finally {
    gates.releaseScan?.();
    await applyingBig;
    await harness.stop();
  }
});

it('loads a view applied again after its reload after an outage, and other views meanwhile', async () => {
  // Per repository (one per replica) and view: the scans running, and the most at once.
  const running = new Map<string, number>();
  let mostAtOnce = 0;
  const repositories = new WeakMap<object, number>();
  const { scanView } = Object.getOwnPropertyDescriptors(FeatureRowRepository.prototype);
  const scan = scanView.value as FeatureRowRepository['scanView'];
  const scans = jest.spyOn(FeatureRowRepository.prototype, 'scanView').mockImplementation(function (
    this: FeatureRowRepository,
    view,
    registration,
  ) {
    if (!repositories.has(this)) repositories.set(this, Math.random());
    const key = `${repositories.get(this)}/${view}`;
    const rows = scan.call(this, view, registration);
    return (async function* () {
      running.set(key, (running.get(key) ?? 0) + 1);
      mostAtOnce = Math.max(mostAtOnce, running.get(key) ?? 0);
      try {
        yield* rows;
      } finally {
        running.set(key, (running.get(key) ?? 1) - 1);
      }
    })();
  });
  // Half the shortest retention allowed (10 s) without a sync: the push views are loaded again.
  const { gates, first, second } = await gatedSecondReplica({
    TANDEM_FEATURESTORE_CHANGE_LOG_RETENTION: '10s',
  });
  try {
    await writeCtr(first, 'user_stats', 'u1', 0.1, 5_000);
    await eventually(async () => {
      expect(await ctrsOf(second, 'user_stats', 'u1')).toEqual([double(0.1)]);
    }, 2_000);
    gates.cutOff = true;
    await new Promise((resolve) => setTimeout(resolve, 6_000));
    // The reload's load of user_stats reads storage, then waits.
    gates.holdNextScan = true;
    gates.cutOff = false;
    await untilHeld(gates, 'scan', 8_000);
    // Meanwhile user_stats is deleted and applied again (another view, loaded anew), and another
    // view applied.
    await first.client.deleteFeatureView({ name: 'user_stats', etag: '', requestId: '' });
    await applyUserStats(first.client);
    await writeCtr(first, 'user_stats', 'u2', 0.9);
    await applyView(first, 'other_stats');
    // The other view is served beside the reload, which still holds the old user_stats.
    const servedBeside = eventually(async () => {
      expect(await ctrsOf(second, 'other_stats', 'u1')).toEqual([{ kind: undefined }]);
    }, 5_000);
    expect(
      await within(
        servedBeside.then(() => 'served'),
        6_000,
      ),
    ).toBe('served');
    expect(await within(writeCtr(second, 'other_stats', 'u1', 0.5), 5_000)).toMatchObject({
      rowsWritten: 1,
    });
    expect(await ctrsOf(second, 'other_stats', 'u1')).toEqual([double(0.5)]);
    gates.releaseScan!();
    // The view applied again, loaded after the reload's load of the old one: its row only.
    await eventually(async () => {
      expect(await ctrsOf(second, 'user_stats', 'u1', 'u2')).toEqual([
        { kind: undefined },
        double(0.9),
      ]);
    }, 5_000);
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(await ctrsOf(second, 'user_stats', 'u1', 'u2')).toEqual([
      { kind: undefined },
      double(0.9),
    ]);
    expect(mostAtOnce).toBe(1);
  } finally {
    gates.cutOff = false;
    gates.releaseScan?.();
    scans.mockRestore();
    await second.stop();
    await first.stop();
  }
}, 40_000);

it("applies a stream view's shorter TTL to reads at once while another view loads", async () => {
  const bus = createInProcessBus();
  const gates = storageGates();
  const replica = await startHarness({ sharedBus: bus, wrapStore: (s) => gatedStore(s, gates) });
  try {
    const { client } = replica;
    const subject = 'tandem.events.v1.outcome.play';
    await client.applyEntity({ entity: itemEntity, requestId: '' });
    await client.applyEntity({ entity: userEntity, requestId: '' });
    const view = { ...itemCountView('item_n', subject, 1), ttl: { seconds: 3600, nanos: 0 } };
    await client.applyFeatureView({ featureView: view, requestId: '', validateOnly: false });
    const event = outcome('i1', 'u1');
    await bus.publish(subject, OutcomeEvent, event, { eventId: event.eventId });
    const status = async () =>
      (
        await client.getOnlineFeatures({
          features: ['item_n:n'],
          entityRows: { item_id: { values: [str('i1')] } },
          omitEventTimes: true,
        })
      ).columns[0]?.statuses[0];
    await eventually(async () => {
      expect(await status()).toBe(FeatureStatus.FEATURE_STATUS_PRESENT);
    });
    // A push view whose load takes a while (its scan held), then the TTL cut to a second.
    gates.holdNextScan = true;
    const pushApplied = applyView(replica, 'user_stats');
    await untilHeld(gates, 'scan', 5_000);
    const shortened = await within(
      client.applyFeatureView({
        featureView: { ...view, ttl: { seconds: 1, nanos: 0 } },
        requestId: '',
        validateOnly: false,
      }),
      5_000,
    );
    expect(shortened).not.toBe('waiting');
    // The event is over a second old by now, or soon: EXPIRED, with the push view still loading.
    await eventually(async () => {
      expect(await status()).toBe(FeatureStatus.FEATURE_STATUS_EXPIRED);
    }, 5_000);
    gates.releaseScan?.();
    await pushApplied;
  } finally {
    gates.releaseScan?.();
    await replica.stop();
  }
});

it('keeps one row per key of what the sync brings a view while it loads, not one per write', async () => {
  // Both replicas' views: the one loading big_stats holds what is staged.
  const { instances, restore } = captureViews();
  const { gates, first, second } = await gatedSecondReplica();
  try {
    gates.holdNextScan = true;
    await applyView(first, 'big_stats');
    await untilHeld(gates, 'scan', 5_000);
    for (let i = 1; i <= 50; i++) await writeCtr(first, 'big_stats', 'u1', i / 100, 60_000 - i);
    await writeCtr(first, 'big_stats', 'u2', 0.5);
    const staged = () =>
      [...instances]
        .map((views) => views['duringLoad'].get('big_stats')?.synced.size)
        .find((size) => size !== undefined);
    await eventually(() => {
      expect(staged()).toBe(2);
      return Promise.resolve();
    }, 2_000);
    gates.releaseScan!();
    await eventually(async () => {
      expect(await ctrsOf(second, 'big_stats', 'u1', 'u2')).toEqual([double(0.5), double(0.5)]);
    }, 2_000);
  } finally {
    gates.releaseScan?.();
    restore();
    await second.stop();
    await first.stop();
  }
});

it('forgets the failed load of a view deleted since, so the retry wait starts over', async () => {
  const { instances, restore } = captureViews();
  const gates = storageGates();
  const harness = await startHarness({ wrapStore: (store) => gatedStore(store, gates) });
  try {
    const { client } = harness;
    await applyUserStats(harness.client);
    gates.failScans = true;
    await applyView(harness, 'broken').catch(() => undefined);
    const views = await eventually(() => {
      const [first] = [...instances];
      if (first === undefined) throw new Error('no sync ran yet');
      return Promise.resolve(first);
    });
    await eventually(() => {
      expect(views['failedLoads'].has('broken')).toBe(true);
      return Promise.resolve();
    });
    const current = await client.getFeatureView({ name: 'broken' });
    await client.deleteFeatureView({
      name: 'broken',
      etag: current.featureView?.etag ?? '',
      requestId: '',
    });
    gates.failScans = false;
    await eventually(() => {
      expect([...views['failedLoads']]).toEqual([]);
      expect(views['retryReconcileMs']).toBe(0);
      return Promise.resolve();
    }, 5_000);
  } finally {
    restore();
    await harness.stop();
  }
});
