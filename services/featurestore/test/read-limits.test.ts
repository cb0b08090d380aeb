/** The cap on rows × features of one read, set low to be reached with a few rows. */
import { failureOf } from './feature-store-api';
import { startHarness, type RunningHarness } from './support/feature-store-harness';
import { applyUserStats, users } from './support/fixtures';

describe('a read over the values-per-read limit', () => {
  let harness: RunningHarness;

  beforeAll(async () => {
    harness = await startHarness({ env: { TANDEM_FEATURESTORE_MAX_VALUES_PER_READ: '10' } });
    await applyUserStats(harness.client);
  });

  afterAll(async () => {
    await harness.stop();
  });

  it('is refused with LIMIT_EXCEEDED on features, and one within it is served', async () => {
    // user_stats has six features: two rows are 12 values, one row 6.
    const over = await failureOf(
      harness.client.getOnlineFeatures({
        features: ['user_stats:*'],
        entityRows: users('u1', 'u2'),
        omitEventTimes: false,
      }),
    );
    expect(over.violations.map((v) => [v.field, v.reason])).toEqual([
      ['features', 'LIMIT_EXCEEDED'],
    ]);
    const within = await harness.client.getOnlineFeatures({
      features: ['user_stats:*'],
      entityRows: users('u1'),
      omitEventTimes: false,
    });
    expect(within.columns).toHaveLength(6);
  });
});
