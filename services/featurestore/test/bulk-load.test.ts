/**
 * Bulk loading a push view of 1,000,000 entities into a running deployment: the loader holds one
 * batch at a time whatever the input's size, reports progress after each, and a replica serving
 * the view picks the rows up from the change log. The rows come from a generator, so the test
 * sees how far ahead of storage the loader ever read.
 */
import type { FeatureRow } from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import { FeatureStatus } from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import { InvalidArgumentError } from '../../platform/src/errors';
import { dateOf } from '../src/contract-mapping';
import { ValueType } from '../src/domain/feature-values';
import { bulkLoad, type BulkLoadProgress } from '../src/store/bulk-load';
import { FeatureRowRepository } from '../src/store/feature-rows';
import { openRegistryRepository } from '../src/store/registry-repository';
import { eventually, startHarness, type RunningHarness } from './support/feature-store-harness';
import { applyUserStats, double, userRow, users } from './support/fixtures';

const ENTITIES = 1_000_000;
const BATCH = 1_000;

/** The bulk-load target of user_stats as `harness`'s storage holds it. */
async function loadTarget(harness: RunningHarness) {
  const registry = await openRegistryRepository(harness.runtime.store);
  const stored = (await registry.featureViews.get('user_stats'))?.doc;
  if (stored === undefined) throw new Error('user_stats is not registered');
  return {
    view: stored.definition,
    createTime: dateOf(stored.createTime),
    keyColumns: [{ joinKey: 'user_id', valueType: ValueType.String }],
    rows: await FeatureRowRepository.open(harness.runtime.store, 3_600_000),
    batchSize: BATCH,
    storedRegistration: () => registry.viewRegistration('user_stats'),
  };
}

describe('bulk loading a push view', () => {
  let harness: RunningHarness;

  beforeAll(async () => {
    harness = await startHarness({ replicaId: 'replica-a' });
    await applyUserStats(harness.client);
  });

  afterAll(async () => {
    await harness.stop();
  });

  const target = () => loadTarget(harness);

  it(`loads ${ENTITIES.toLocaleString('en')} entities one batch at a time, visible to a running replica`, async () => {
    const eventTime = new Date();
    let generated = 0;
    let mostAhead = 0;
    const reports: BulkLoadProgress[] = [];
    function* rows(): Iterable<FeatureRow> {
      for (let i = 0; i < ENTITIES; i++) {
        generated++;
        mostAhead = Math.max(mostAhead, generated - (reports.at(-1)?.rowsWritten ?? 0));
        yield userRow(`u${i}`, eventTime, { ctr: double(i / ENTITIES) });
      }
    }

    const done = await bulkLoad(await target(), rows(), (progress) => reports.push(progress));

    expect(done).toEqual({ rowsRead: ENTITIES, rowsWritten: ENTITIES, rowsSkippedOlder: 0 });
    // Never more than the batch being stored in memory.
    expect(mostAhead).toBeLessThanOrEqual(BATCH);
    expect(reports).toHaveLength(ENTITIES / BATCH);
    expect(reports.every((r, i) => r.rowsWritten === (i + 1) * BATCH)).toBe(true);

    await eventually(async () => {
      const read = await harness.client.getOnlineFeatures({
        features: ['user_stats:ctr'],
        entityRows: users('u0', 'u500000', `u${ENTITIES - 1}`),
        omitEventTimes: true,
      });
      expect(read.columns[0]?.statuses).toEqual(
        Array(3).fill(FeatureStatus.FEATURE_STATUS_PRESENT),
      );
      expect(read.columns[0]?.values).toEqual([
        double(0),
        double(0.5),
        double((ENTITIES - 1) / ENTITIES),
      ]);
    });
  }, 300_000);

  it('skips rows older than those stored, and names the row of a bad value', async () => {
    // Older than the rows the first test stored at its start, however long that test took (a
    // minute before now was not, when loading the million rows took longer than that).
    const older = new Date(Date.now() - 24 * 3_600_000);
    function* stale(): Iterable<FeatureRow> {
      for (let i = 0; i < 10; i++) yield userRow(`u${i}`, older, { ctr: double(1) });
    }
    await expect(bulkLoad(await target(), stale(), () => undefined)).resolves.toEqual({
      rowsRead: 10,
      rowsWritten: 0,
      rowsSkippedOlder: 10,
    });

    function* bad(): Iterable<FeatureRow> {
      for (let i = 0; i < 1_500; i++) {
        yield userRow(`v${i}`, new Date(), {
          ctr: i === 1_200 ? { kind: { $case: 'stringValue', value: 'high' } } : double(i),
        });
      }
    }
    const failed = await bulkLoad(await target(), bad(), () => undefined).then(
      () => undefined,
      (error: unknown) => error,
    );
    expect(failed).toBeInstanceOf(InvalidArgumentError);
    const fields = (failed as InvalidArgumentError).violations.map((v) => v.field);
    expect(fields).toHaveLength(1);
    expect(fields[0]).toMatch(/^rows\[1200\]/);
  });
});

describe('a bulk load across a re-creation of its view', () => {
  it('stops at its next batch once the view was deleted and applied again', async () => {
    const harness = await startHarness({ replicaId: 'replica-b' });
    try {
      await applyUserStats(harness.client);
      const load = await loadTarget(harness);
      const batches: BulkLoadProgress[] = [];
      async function* rows(): AsyncIterable<FeatureRow> {
        for (let i = 0; i < 3 * BATCH; i++) {
          if (i === BATCH) {
            // Between two batches, the view is deleted and applied again under its name.
            await harness.client.deleteFeatureView({ name: 'user_stats', etag: '', requestId: '' });
            await applyUserStats(harness.client);
          }
          yield userRow(`w${i}`, new Date(), { ctr: double(0.1) });
        }
      }
      await expect(bulkLoad(load, rows(), (p) => batches.push(p))).rejects.toMatchObject({
        reason: 'FEATURE_VIEW_CHANGED',
      });
      // The first batch was stored for the old view; nothing for the new one.
      expect(batches.map((p) => p.rowsWritten)).toEqual([BATCH]);
      const read = await harness.client.getOnlineFeatures({
        features: ['user_stats:ctr'],
        entityRows: users('w0', `w${BATCH}`),
        omitEventTimes: true,
      });
      expect(read.columns[0]?.statuses).toEqual([
        FeatureStatus.FEATURE_STATUS_NOT_FOUND,
        FeatureStatus.FEATURE_STATUS_NOT_FOUND,
      ]);
    } finally {
      await harness.stop();
    }
  });
});
