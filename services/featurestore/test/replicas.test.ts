/**
 * Replicas sharing one storage: a write or a definition applied on one is served by the other
 * within one second, with no NATS involved (each replica syncs from storage).
 */
import { status as GrpcCode } from '@grpc/grpc-js';
import { FeatureStatus } from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import { ValueType } from '../../../gen/ts/tandem/featurestore/v1/value';
import { failureOf } from './feature-store-api';
import {
  eventually,
  sharing,
  startHarness,
  startReplicaPair,
  type RunningHarness,
} from './support/feature-store-harness';
import { gatedSecondReplica, gatedStore, storageGates, untilHeld } from './support/gated-store';
import { readFeatureStoreConfig } from '../src/config';
import {
  applyUserStats,
  double,
  userEntity,
  userRow,
  users,
  userStatsView,
} from './support/fixtures';

describe('FeatureStore replicas', () => {
  let first: RunningHarness;
  let second: RunningHarness;
  let pair: Awaited<ReturnType<typeof startReplicaPair>>;

  beforeEach(async () => {
    pair = await startReplicaPair();
    ({ first, second } = pair);
  });

  afterEach(async () => {
    await pair.stop();
  });

  it('serves a view applied on another replica within one second', async () => {
    // The promise is the intervals (pinned here); the waits below leave a loaded host room for
    // a reload (500 ms apart) or a sync (200 ms apart) and the calls around it.
    expect(readFeatureStoreConfig({}).registryReloadIntervalMs).toBe(500);
    expect(readFeatureStoreConfig({}).syncIntervalMs).toBe(200);
    await first.client.applyEntity({ entity: userEntity, requestId: '' });
    await first.client.applyFeatureView({
      featureView: userStatsView(),
      requestId: '',
      validateOnly: false,
    });
    await eventually(async () => {
      const listed = await second.client.listFeatureViews({
        pageSize: 0,
        pageToken: '',
        entity: '',
      });
      expect(listed.featureViews.map((v) => v.name)).toEqual(['user_stats']);
    }, 2_500);
  });

  it('serves a row written on another replica within one second', async () => {
    await first.client.applyEntity({ entity: userEntity, requestId: '' });
    await first.client.applyFeatureView({
      featureView: userStatsView(),
      requestId: '',
      validateOnly: false,
    });
    await eventually(() => second.client.getFeatureView({ name: 'user_stats' }), 3_000);
    await first.client.writeFeatures({
      featureView: 'user_stats',
      rows: [userRow('u1', new Date(), { ctr: double(0.3) })],
      requestId: '',
    });
    await eventually(async () => {
      const read = await second.client.getOnlineFeatures({
        features: ['user_stats:ctr'],
        entityRows: users('u1'),
        omitEventTimes: true,
      });
      expect(read.columns[0]?.statuses).toEqual([FeatureStatus.FEATURE_STATUS_PRESENT]);
      expect(read.columns[0]?.values).toEqual([double(0.3)]);
    }, 2_500);
  });

  it('checks a write against the view storage holds, not one deleted since the last reload', async () => {
    await applyUserStats(first.client);
    await eventually(() => second.client.getFeatureView({ name: 'user_stats' }), 3_000);
    // Deleted and applied again on the first replica with ctr an INT64: another view.
    await first.client.deleteFeatureView({ name: 'user_stats', etag: '', requestId: '' });
    const features = userStatsView().features.map((f) =>
      f.name === 'ctr' ? { ...f, valueType: ValueType.VALUE_TYPE_INT64 } : f,
    );
    await first.client.applyFeatureView({
      featureView: userStatsView({ features }),
      requestId: '',
      validateOnly: false,
    });
    // The second replica has not reloaded yet: a DOUBLE for ctr was right for the view it serves.
    const write = await failureOf(
      second.client.writeFeatures({
        featureView: 'user_stats',
        rows: [userRow('u1', new Date(), { ctr: double(0.75) })],
        requestId: '',
      }),
    );
    expect(write.code).toBe(GrpcCode.INVALID_ARGUMENT);
    for (const replica of [first, second]) {
      const read = await replica.client.getOnlineFeatures({
        features: ['user_stats:ctr'],
        entityRows: users('u1'),
        omitEventTimes: true,
      });
      expect(read.columns[0]?.statuses).toEqual([FeatureStatus.FEATURE_STATUS_NOT_FOUND]);
    }
  });

  it('serves a feature added on another replica with the values written right after', async () => {
    await applyUserStats(first.client);
    await eventually(() => second.client.getFeatureView({ name: 'user_stats' }), 3_000);
    const features = [
      ...userStatsView().features,
      { name: 'ctr_7d', valueType: ValueType.VALUE_TYPE_DOUBLE, description: '', vectorLength: 0 },
    ];
    await first.client.applyFeatureView({
      featureView: userStatsView({ features }),
      requestId: '',
      validateOnly: false,
    });
    // Backfilled at once, as a pipeline does: the second replica may sync the row before it
    // learns of the feature.
    await first.client.writeFeatures({
      featureView: 'user_stats',
      rows: [userRow('u1', new Date(), { ctr: double(0.5), ctr_7d: double(0.25) })],
      requestId: '',
    });
    await eventually(async () => {
      const read = await second.client.getOnlineFeatures({
        features: ['user_stats:ctr', 'user_stats:ctr_7d'],
        entityRows: users('u1'),
        omitEventTimes: true,
      });
      expect(read.columns.map((c) => [c.statuses[0], c.values[0]])).toEqual([
        [FeatureStatus.FEATURE_STATUS_PRESENT, double(0.5)],
        [FeatureStatus.FEATURE_STATUS_PRESENT, double(0.25)],
      ]);
    }, 2_000);
  });
});

describe('a FeatureStore replica a registry reload behind another', () => {
  it('takes a write of a feature just added on the other, rather than refuse it', async () => {
    const first = await startHarness({ replicaId: 'replica-a' });
    let second: RunningHarness | undefined;
    try {
      await first.client.applyEntity({ entity: userEntity, requestId: '' });
      await applyUserStats(first.client);
      second = await startHarness({
        replicaId: 'replica-b',
        wrapStore: sharing(first.runtime.store),
        env: { TANDEM_FEATURESTORE_REGISTRY_RELOAD_INTERVAL: '10m' },
      });
      const features = [
        ...userStatsView().features,
        { name: 'score', valueType: ValueType.VALUE_TYPE_DOUBLE, description: '', vectorLength: 0 },
      ];
      await first.client.applyFeatureView({
        featureView: userStatsView({ features }),
        requestId: '',
        validateOnly: false,
      });
      await expect(
        second.client.writeFeatures({
          featureView: 'user_stats',
          rows: [userRow('u1', new Date(), { score: double(1) })],
          requestId: '',
        }),
      ).resolves.toEqual({ rowsWritten: 1, rowsSkippedOlder: 0 });
      // A feature no version of the view has is still refused.
      const unknown = await failureOf(
        second.client.writeFeatures({
          featureView: 'user_stats',
          rows: [userRow('u1', new Date(), { nope: double(1) })],
          requestId: '',
        }),
      );
      expect(unknown.code).toBe(GrpcCode.INVALID_ARGUMENT);
    } finally {
      await second?.stop();
      await first.stop();
    }
  });

  it('takes a write to a view just applied on the other, rather than answer NOT_FOUND', async () => {
    const first = await startHarness({ replicaId: 'replica-a' });
    let second: RunningHarness | undefined;
    try {
      await first.client.applyEntity({ entity: userEntity, requestId: '' });
      second = await startHarness({
        replicaId: 'replica-b',
        wrapStore: sharing(first.runtime.store),
        env: { TANDEM_FEATURESTORE_REGISTRY_RELOAD_INTERVAL: '10m' },
      });
      await applyUserStats(first.client);
      await expect(
        second.client.writeFeatures({
          featureView: 'user_stats',
          rows: [userRow('u1', new Date(), { ctr: double(0.5) })],
          requestId: '',
        }),
      ).resolves.toEqual({ rowsWritten: 1, rowsSkippedOlder: 0 });
      const read = await second.client.getOnlineFeatures({
        features: ['user_stats:ctr'],
        entityRows: users('u1'),
        omitEventTimes: true,
      });
      expect(read.columns[0]?.values).toEqual([double(0.5)]);
      // A view storage does not hold either is still NOT_FOUND.
      const missing = await failureOf(
        second.client.writeFeatures({
          featureView: 'nowhere',
          rows: [userRow('u1', new Date(), { ctr: double(1) })],
          requestId: '',
        }),
      );
      expect(missing.code).toBe(GrpcCode.NOT_FOUND);
    } finally {
      await second?.stop();
      await first.stop();
    }
  });
});

describe('FeatureStore replicas writing one event time', () => {
  it('keep the later write, as storage does, whatever their clocks say', async () => {
    const pair = await startReplicaPair();
    const { first, second } = pair;
    try {
      await applyUserStats(first.client);
      await eventually(() => second.client.getFeatureView({ name: 'user_stats' }), 3_000);
      const at = new Date(Date.now() - 60_000);
      await first.client.writeFeatures({
        featureView: 'user_stats',
        rows: [userRow('u1', at, { ctr: double(0.1) })],
        requestId: '',
      });
      // The correction, on the other replica, whose clock is 50 ms behind the first's.
      const real = Date.now.bind(Date);
      const behind = jest.spyOn(Date, 'now').mockImplementation(() => real() - 50);
      try {
        const written = await second.client.writeFeatures({
          featureView: 'user_stats',
          rows: [userRow('u1', at, { ctr: double(0.9) })],
          requestId: '',
        });
        expect(written).toEqual({ rowsWritten: 1, rowsSkippedOlder: 0 });
      } finally {
        behind.mockRestore();
      }
      for (const replica of [first, second]) {
        await eventually(async () => {
          const read = await replica.client.getOnlineFeatures({
            features: ['user_stats:ctr'],
            entityRows: users('u1'),
            omitEventTimes: true,
          });
          expect(read.columns[0]?.values).toEqual([double(0.9)]);
        }, 1_000);
      }
      // And they stay so once both have synced what the other wrote.
      await new Promise((resolve) => setTimeout(resolve, 500));
      for (const replica of [first, second]) {
        const read = await replica.client.getOnlineFeatures({
          features: ['user_stats:ctr'],
          entityRows: users('u1'),
          omitEventTimes: true,
        });
        expect(read.columns[0]?.values).toEqual([double(0.9)]);
      }
    } finally {
      await pair.stop();
    }
  });
});

describe('a FeatureStore replica whose load of a view fails once', () => {
  it('loads it again once storage answers, rather than leave it unserved', async () => {
    const first = await startHarness({ replicaId: 'replica-a' });
    const gates = storageGates();
    const second = await startHarness({
      replicaId: 'replica-b',
      wrapStore: () => gatedStore(sharing(first.runtime.store)(), gates),
    });
    try {
      gates.failNextScan = true;
      await applyUserStats(first.client);
      await first.client.writeFeatures({
        featureView: 'user_stats',
        rows: [userRow('u1', new Date(), { ctr: double(0.5) })],
        requestId: '',
      });
      await eventually(async () => {
        expect(gates.failNextScan).toBe(false);
        const read = await second.client.getOnlineFeatures({
          features: ['user_stats:ctr'],
          entityRows: users('u1'),
          omitEventTimes: true,
        });
        expect(read.columns[0]?.values).toEqual([double(0.5)]);
      }, 3_000);
    } finally {
      await second.stop();
      await first.stop();
    }
  });
});

describe('a FeatureStore replica cut off from storage for longer than the change log is kept', () => {
  it('loads its push-sourced views again once storage answers, with what was written meanwhile', async () => {
    // The shortest retention allowed (10 s) keeps the test short; the default is one hour.
    const { gates, first, second } = await gatedSecondReplica({
      TANDEM_FEATURESTORE_CHANGE_LOG_RETENTION: '10s',
    });
    try {
      gates.cutOff = true;
      await first.client.writeFeatures({
        featureView: 'user_stats',
        rows: [userRow('u1', new Date(), { ctr: double(0.5) })],
        requestId: '',
      });
      // Past the retention: the entry of that write is gone from the change log.
      await new Promise((resolve) => setTimeout(resolve, 11_000));
      gates.holdNextScan = true;
      gates.cutOff = false;
      // The reload failed all through the outage (tried at 5, 6, 8 and 12 s: 1 s doubling), so
      // its next try can be ~2 s away, or, when the 12 s one fell just before storage returned,
      // 8 s more (then a sync tick).
      // While the view is loaded again, past its scan, a write on this replica itself.
      await untilHeld(gates, 'scan', 12_000);
      await second.client.writeFeatures({
        featureView: 'user_stats',
        rows: [userRow('u2', new Date(), { ctr: double(0.7) })],
        requestId: '',
      });
      gates.releaseScan!();
      await eventually(async () => {
        const read = await second.client.getOnlineFeatures({
          features: ['user_stats:ctr'],
          entityRows: users('u1', 'u2'),
          omitEventTimes: true,
        });
        expect(read.columns[0]?.values).toEqual([double(0.5), double(0.7)]);
        const { readTime, asOf } = read.metadata!;
        expect(readTime!.getTime() - asOf!.getTime()).toBeLessThan(1_000);
      }, 2_000);
    } finally {
      gates.cutOff = false;
      await second.stop();
      await first.stop();
    }
  }, 45_000);
});
