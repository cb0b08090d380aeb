/**
 * Replicas sharing one storage: a write or a definition applied on one is served by the other
 * within one second, with no NATS involved (each replica syncs from storage).
 */
import { status as GrpcCode } from '@grpc/grpc-js';
import { FeatureStatus } from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import { ValueType } from '../../../gen/ts/tandem/featurestore/v1/value';
import { failureOf } from './feature-store-api';
import { eventually, startReplicaPair, type RunningHarness } from './support/feature-store-harness';
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
    }, 1_000);
  });

  it('serves a row written on another replica within one second', async () => {
    await first.client.applyEntity({ entity: userEntity, requestId: '' });
    await first.client.applyFeatureView({
      featureView: userStatsView(),
      requestId: '',
      validateOnly: false,
    });
    await eventually(() => second.client.getFeatureView({ name: 'user_stats' }), 1_000);
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
    }, 1_000);
  });

  it('checks a write against the view storage holds, not one deleted since the last reload', async () => {
    await applyUserStats(first.client);
    await eventually(() => second.client.getFeatureView({ name: 'user_stats' }), 1_000);
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
});
