/**
 * A view the registry holds but this replica has not loaded yet (its load under way, or failed
 * because storage did not answer) exists: reads and writes of it are UNAVAILABLE, to be retried,
 * not NOT_FOUND, which tells a client the view does not exist.
 */
import { status as GrpcCode } from '@grpc/grpc-js';
import { ValueType } from '../../../gen/ts/tandem/featurestore/v1/value';
import { failureOf } from './feature-store-api';
import { eventually } from './support/feature-store-harness';
import { gatedSecondReplica, untilHeld } from './support/gated-store';
import { double, str, userStatsView } from './support/fixtures';

const accountEntity = {
  name: 'account',
  joinKey: 'account_id',
  valueType: ValueType.VALUE_TYPE_STRING,
  description: '',
  owner: '',
  etag: '',
};
const acctStats = userStatsView({
  name: 'acct_stats',
  entities: ['account'],
  features: [
    { name: 'x', valueType: ValueType.VALUE_TYPE_DOUBLE, description: '', vectorLength: 0 },
  ],
});
const read = {
  features: ['acct_stats:x'],
  entityRows: { account_id: { values: [str('a1')] } },
  omitEventTimes: true,
};
const write = {
  featureView: 'acct_stats',
  requestId: '',
  rows: [
    {
      entityKey: { account_id: str('a1') },
      values: { x: double(1.5) },
      eventTime: new Date(Date.now() - 1_000),
    },
  ],
};

it('answers UNAVAILABLE, not NOT_FOUND, for a view it is still loading', async () => {
  const { gates, first, second } = await gatedSecondReplica();
  try {
    await first.client.applyEntity({ entity: accountEntity, requestId: '' });
    gates.holdNextScan = true;
    await first.client.applyFeatureView({
      featureView: acctStats,
      requestId: '',
      validateOnly: false,
    });
    await untilHeld(gates, 'scan', 3_000);
    // The view exists on this replica's registry...
    expect((await second.client.getFeatureView({ name: 'acct_stats' })).featureView?.name).toBe(
      'acct_stats',
    );
    // ...and reading it is to be tried again, not refused as a view that does not exist.
    expect((await failureOf(second.client.getOnlineFeatures(read))).code).toBe(
      GrpcCode.UNAVAILABLE,
    );
    gates.releaseScan!();
    await eventually(async () => {
      const answer = await second.client.getOnlineFeatures(read);
      expect(answer.columns).toHaveLength(1);
    });
  } finally {
    await second.stop();
    await first.stop();
  }
});

it('answers UNAVAILABLE, not NOT_FOUND, for a view whose load failed', async () => {
  const { gates, first, second } = await gatedSecondReplica();
  try {
    await first.client.applyEntity({ entity: accountEntity, requestId: '' });
    gates.failScans = true;
    await first.client.applyFeatureView({
      featureView: acctStats,
      requestId: '',
      validateOnly: false,
    });
    // The second replica's load of the view failed (and fails again at each retry).
    await eventually(async () => {
      await Promise.resolve();
      expect(gates.failedScans).toBeGreaterThan(0);
    }, 3_000);
    expect((await second.client.getFeatureView({ name: 'acct_stats' })).featureView?.name).toBe(
      'acct_stats',
    );
    expect((await failureOf(second.client.writeFeatures(write))).code).toBe(GrpcCode.UNAVAILABLE);
    expect((await failureOf(second.client.getOnlineFeatures(read))).code).toBe(
      GrpcCode.UNAVAILABLE,
    );
    gates.failScans = false;
    // Loaded at the next retry (backing off from 0.5 s).
    await eventually(async () => {
      expect((await second.client.writeFeatures(write)).rowsWritten).toBe(1);
    }, 15_000);
  } finally {
    await second.stop();
    await first.stop();
  }
});
