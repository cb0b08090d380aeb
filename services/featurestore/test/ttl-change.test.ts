/**
 * A view's TTL changed on a live view: the stored records follow it, so that storage keeps (or
 * drops) them as long as replicas serve them, and a replica started later loads the same records.
 */
import { FeatureRowRepository } from '../src/store/feature-rows';
import { eventually, startHarness, type RunningHarness } from './support/feature-store-harness';
import { double, userEntity, userRow, userStatsView } from './support/fixtures';

const MINUTE = 60_000;

describe('a push view whose TTL changes', () => {
  let harness: RunningHarness;

  beforeEach(async () => {
    harness = await startHarness({ replicaId: 'replica-a' });
    await harness.client.applyEntity({ entity: userEntity, requestId: '' });
  });

  afterEach(async () => {
    await harness.stop();
  });

  const apply = (ttlSeconds: number | undefined) =>
    harness.client.applyFeatureView({
      featureView: userStatsView({
        ttl: ttlSeconds === undefined ? undefined : { seconds: ttlSeconds, nanos: 0 },
      }),
      requestId: '',
      validateOnly: false,
    });

  async function storedExpiry(): Promise<(number | undefined)[]> {
    const rows = await FeatureRowRepository.open(harness.runtime.store, 3_600_000);
    const expiries: (number | undefined)[] = [];
    for await (const row of rows.scanView('user_stats')) expiries.push(row.expiresAt?.getTime());
    return expiries;
  }

  it('re-times stored records to a longer TTL, and to none', async () => {
    await apply(3600);
    // Written 50 minutes after the event: storage would drop it 10 minutes from now.
    const eventTime = Date.now() - 50 * MINUTE;
    await harness.client.writeFeatures({
      featureView: 'user_stats',
      rows: [userRow('u1', new Date(eventTime), { ctr: double(0.4) })],
      requestId: '',
    });
    expect(await storedExpiry()).toEqual([eventTime + 60 * MINUTE]);

    await apply(2 * 3600);
    await eventually(async () => {
      expect(await storedExpiry()).toEqual([eventTime + 120 * MINUTE]);
    });
    await apply(undefined);
    await eventually(async () => {
      expect(await storedExpiry()).toEqual([undefined]);
    });
  });
});
