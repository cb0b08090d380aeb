/**
 * A compatible change to a push view (a feature added, a TTL changed) replaces no table: it is
 * served at once, not after a load of another view queued before it (a big view applied, or
 * applied again), which can take minutes; nor is it undone by a reload of every table after an
 * outage, which runs outside that queue.
 */
import { status as GrpcCode } from '@grpc/grpc-js';
import { FeatureStatus } from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import { ValueType } from '../../../gen/ts/tandem/featurestore/v1/value';
import { failureOf } from './feature-store-api';
import { eventually, startHarness, within } from './support/feature-store-harness';
import { gatedSecondReplica, gatedStore, storageGates, untilHeld } from './support/gated-store';
import { applyUserStats, double, userRow, users, userStatsView } from './support/fixtures';

const ctr7d = {
  name: 'ctr_7d',
  valueType: ValueType.VALUE_TYPE_DOUBLE,
  description: '',
  vectorLength: 0,
};

it('serves a feature added to a view while another view is still loading', async () => {
  const gates = storageGates();
  const harness = await startHarness({ wrapStore: (store) => gatedStore(store, gates) });
  const { client } = harness;
  let applyingBig: Promise<unknown> = Promise.resolve();
  try {
    await applyUserStats(client);
    // Another view applied: its records are read (a big view takes minutes).
    gates.holdNextScan = true;
    applyingBig = client
      .applyFeatureView({
        featureView: userStatsView({ name: 'big_stats' }),
        requestId: '',
        validateOnly: false,
      })
      .catch((error: unknown) => error);
    await untilHeld(gates, 'scan');
    const applying = client
      .applyFeatureView({
        featureView: userStatsView({ features: [...userStatsView().features, ctr7d] }),
        requestId: '',
        validateOnly: false,
      })
      .catch((error: unknown) => error);
    // Applied and answered at once.
    expect(await within(applying, 10_000)).toMatchObject({ changed: true });
    const view = await client.getFeatureView({ name: 'user_stats' });
    expect(view.featureView?.features.map((f) => f.name)).toContain('ctr_7d');

    const write = client.writeFeatures({
      featureView: 'user_stats',
      requestId: '',
      rows: [
        userRow('u1', new Date(Date.now() - 1_000), { ctr: double(0.5), ctr_7d: double(0.7) }),
      ],
    });
    expect(await within(write, 10_000)).toEqual({ rowsWritten: 1, rowsSkippedOlder: 0 });
    const read = await client
      .getOnlineFeatures({
        features: ['user_stats:ctr_7d'],
        entityRows: users('u1'),
        omitEventTimes: true,
      })
      .catch((error: unknown) => failureOf(Promise.reject(error as Error)));
    expect('code' in read ? GrpcCode[read.code] : read.columns[0]?.statuses).toEqual([
      FeatureStatus.FEATURE_STATUS_PRESENT,
    ]);
  } finally {
    gates.releaseScan?.();
    await applyingBig;
    await harness.stop();
  }
});

it('keeps serving a feature added while the tables are reloaded after an outage', async () => {
  const { gates, first, second } = await gatedSecondReplica({
    TANDEM_FEATURESTORE_CHANGE_LOG_RETENTION: '10s',
  });
  const readCtr7d = () =>
    second.client.getOnlineFeatures({
      features: ['user_stats:ctr_7d'],
      entityRows: users('u1'),
      omitEventTimes: true,
    });
  try {
    await first.client.applyFeatureView({
      featureView: userStatsView({ name: 'other_stats' }),
      requestId: '',
      validateOnly: false,
    });
    await eventually(() =>
      second.client.getOnlineFeatures({
        features: ['other_stats:ctr'],
        entityRows: users('u1'),
        omitEventTimes: true,
      }),
    );
    // Cut off past the change log's retention: the second replica reloads every table.
    gates.cutOff = true;
    await new Promise((resolve) => setTimeout(resolve, 6_000));
    gates.holdNextScan = true;
    gates.cutOff = false;
    await untilHeld(gates, 'scan', 10_000); // the reload's load of user_stats
    await first.client.applyFeatureView({
      featureView: userStatsView({ features: [...userStatsView().features, ctr7d] }),
      requestId: '',
      validateOnly: false,
    });
    await eventually(readCtr7d, 5_000); // served at once, on the table being replaced
    const release = gates.releaseScan;
    gates.releaseScan = undefined;
    gates.holdNextScan = true; // then holds the reload's load of other_stats
    release?.();
    await untilHeld(gates, 'scan', 5_000);
    // user_stats is reloaded, other_stats still loading: the feature is still served.
    const read = await readCtr7d().catch((error: unknown) =>
      failureOf(Promise.reject(error as Error)),
    );
    expect('code' in read ? GrpcCode[read.code] : 'served').toBe('served');
  } finally {
    gates.releaseScan?.();
    await second.stop();
    await first.stop();
  }
}, 60_000);
