/**
 * GetOnlineFeatures over gRPC with features of several views interleaved: the columns and
 * `metadata.feature_names` follow the request's order, `view:*` expanded where it stands, each
 * column with its own view's values, statuses and event times.
 */
import { FeatureStatus } from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import { ValueType } from '../../../gen/ts/tandem/featurestore/v1/value';
import { startHarness, type RunningHarness } from './support/feature-store-harness';
import { double, int, str, userEntity, userRow, userStatsView } from './support/fixtures';

const accountEntity = { ...userEntity, name: 'account', joinKey: 'account_id' };

const acctStatsView = userStatsView({
  name: 'acct_stats',
  entities: ['account'],
  features: [
    { name: 'x', valueType: ValueType.VALUE_TYPE_DOUBLE, description: '', vectorLength: 0 },
    { name: 'tier', valueType: ValueType.VALUE_TYPE_STRING, description: '', vectorLength: 0 },
  ],
});

describe('GetOnlineFeatures across views', () => {
  let harness: RunningHarness;
  const userTime = new Date(Date.now() - 20_000);
  const accountTime = new Date(Date.now() - 10_000);
  const entityRows = {
    user_id: { values: [str('u1'), str('u2')] },
    account_id: { values: [str('a1'), str('a2')] },
  };

  beforeAll(async () => {
    harness = await startHarness();
    const { client } = harness;
    await client.applyEntity({ entity: userEntity, requestId: '' });
    await client.applyEntity({ entity: accountEntity, requestId: '' });
    await client.applyFeatureView({
      featureView: userStatsView(),
      requestId: '',
      validateOnly: false,
    });
    await client.applyFeatureView({
      featureView: acctStatsView,
      requestId: '',
      validateOnly: false,
    });
    await client.writeFeatures({
      featureView: 'user_stats',
      rows: [
        userRow('u1', userTime, { ctr: double(0.5), plays: int(7) }),
        userRow('u2', userTime, { ctr: double(0.25), plays: int(3) }),
      ],
      requestId: '',
    });
    await client.writeFeatures({
      featureView: 'acct_stats',
      rows: [
        {
          entityKey: { account_id: str('a1') },
          values: { x: double(1.5), tier: str('gold') },
          eventTime: accountTime,
        },
      ],
      requestId: '',
    });
  });

  afterAll(async () => {
    await harness.stop();
  });

  it('answers features of interleaved views in the order they were asked for', async () => {
    // Twice: the second read is answered from the kept read plan.
    for (let i = 0; i < 2; i++) {
      const read = await harness.client.getOnlineFeatures({
        features: ['user_stats:ctr', 'acct_stats:x', 'user_stats:plays'],
        entityRows,
        omitEventTimes: false,
      });
      expect(read.metadata?.featureNames).toEqual([
        'user_stats:ctr',
        'acct_stats:x',
        'user_stats:plays',
      ]);
      const [ctr, x, plays] = read.columns;
      expect(read.columns).toHaveLength(3);
      expect(ctr?.values).toEqual([double(0.5), double(0.25)]);
      expect(x?.values).toEqual([double(1.5), { kind: undefined }]);
      expect(x?.statuses).toEqual([
        FeatureStatus.FEATURE_STATUS_PRESENT,
        FeatureStatus.FEATURE_STATUS_NOT_FOUND,
      ]);
      expect(plays?.values).toEqual([int(7), int(3)]);
      expect(ctr?.eventTimes[0]?.getTime()).toBe(userTime.getTime());
      expect(x?.eventTimes[0]?.getTime()).toBe(accountTime.getTime());
      expect(plays?.eventTimes[1]?.getTime()).toBe(userTime.getTime());
    }
  });

  it('expands view:* in place, between features of another view', async () => {
    const read = await harness.client.getOnlineFeatures({
      features: ['user_stats:plays', 'acct_stats:*', 'user_stats:ctr'],
      entityRows,
      omitEventTimes: true,
    });
    expect(read.metadata?.featureNames).toEqual([
      'user_stats:plays',
      'acct_stats:x',
      'acct_stats:tier',
      'user_stats:ctr',
    ]);
    expect(read.columns.map((column) => column.values[0])).toEqual([
      int(7),
      double(1.5),
      str('gold'),
      double(0.5),
    ]);
  });
});
