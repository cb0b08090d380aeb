/**
 * Registry writes that depend on each other, at the same time: a feature view applied while its
 * entity is deleted, and the same definition applied many times at once, on one replica and on
 * two sharing a storage. One wins and the registry stays whole: never a view naming a deleted
 * entity (which survived restarts, could not be read or applied again, and let the entity come
 * back with another join key).
 */
import { status as GrpcCode } from '@grpc/grpc-js';
import { failureOf } from './feature-store-api';
import { FeatureStatus } from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import {
  FeatureRowRepository,
  rowId,
  rowVersion,
  type FeatureRowDocument,
} from '../src/store/feature-rows';
import { openRegistryRepository } from '../src/store/registry-repository';
import {
  eventually,
  startHarness,
  startReplicaPair,
  type RunningHarness,
  sharing,
} from './support/feature-store-harness';
import {
  applyUserStats,
  double,
  itemEntity,
  itemPlaysView,
  userEntity,
  userRow,
  users,
  userStatsView,
} from './support/fixtures';

/** Whether the registry `harness` serves is whole: every view's entities exist. */
async function expectWhole(harness: RunningHarness): Promise<void> {
  const entities = new Set(
    (await harness.client.listEntities({ pageSize: 1000, pageToken: '' })).entities.map(
      (e) => e.name,
    ),
  );
  const views = await harness.client.listFeatureViews({
    pageSize: 1000,
    pageToken: '',
    entity: '',
  });
  for (const view of views.featureViews) {
    for (const entity of view.entities) expect(entities).toContain(entity);
  }
}

/** Applies a view of entity `user` on `viewSide` while `entitySide` deletes `user`, `rounds` times. */
async function raceApplyAndDelete(
  viewSide: RunningHarness,
  entitySide: RunningHarness,
  rounds: number,
): Promise<{ viewsApplied: number; entitiesDeleted: number }> {
  let viewsApplied = 0;
  let entitiesDeleted = 0;
  for (let round = 0; round < rounds; round++) {
    await entitySide.client.applyEntity({ entity: userEntity, requestId: '' });
    const [applied, deleted] = await Promise.allSettled([
      viewSide.client.applyFeatureView({
        featureView: userStatsView(),
        requestId: '',
        validateOnly: false,
      }),
      entitySide.client.deleteEntity({ name: 'user', etag: '', requestId: '' }),
    ]);
    if (applied.status === 'fulfilled') viewsApplied++;
    if (deleted.status === 'fulfilled') entitiesDeleted++;
    // Exactly one wins: the view (then the entity is in use) or the deletion (then it is gone).
    expect([applied.status, deleted.status].sort()).toEqual(['fulfilled', 'rejected']);
    await expectWhole(viewSide);
    await expectWhole(entitySide);
    if (applied.status === 'fulfilled') {
      await viewSide.client.deleteFeatureView({ name: 'user_stats', etag: '', requestId: '' });
    }
  }
  return { viewsApplied, entitiesDeleted };
}

describe('registry writes at the same time on one replica', () => {
  let harness: RunningHarness;

  beforeEach(async () => {
    harness = await startHarness();
  });

  afterEach(async () => {
    await harness.stop();
  });

  it('never leave a view naming a deleted entity', async () => {
    const { viewsApplied, entitiesDeleted } = await raceApplyAndDelete(harness, harness, 10);
    expect(viewsApplied + entitiesDeleted).toBe(10);
  });

  it('apply one definition eight times at once as one change, without ABORTED', async () => {
    await harness.client.applyEntity({ entity: userEntity, requestId: '' });
    const creates = await Promise.all(
      Array.from({ length: 8 }, () =>
        harness.client.applyFeatureView({
          featureView: userStatsView(),
          requestId: '',
          validateOnly: false,
        }),
      ),
    );
    // One change: one etag, of version 1 (see etagOf).
    const createEtags = new Set(creates.map((c) => c.featureView?.etag));
    expect(createEtags.size).toBe(1);
    expect([...createEtags][0]).toMatch(/^1\./);
    const updates = await Promise.all(
      Array.from({ length: 8 }, () =>
        harness.client.applyFeatureView({
          featureView: userStatsView({ description: 'changed' }),
          requestId: '',
          validateOnly: false,
        }),
      ),
    );
    const updateEtags = new Set(updates.map((u) => u.featureView?.etag));
    expect(updateEtags.size).toBe(1);
    expect([...updateEtags][0]).toMatch(/^2\./);
  });
});

describe('registry writes at the same time on two replicas sharing a storage', () => {
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

  it('never leave a view naming a deleted entity', async () => {
    const { viewsApplied, entitiesDeleted } = await raceApplyAndDelete(first, second, 10);
    expect(viewsApplied + entitiesDeleted).toBe(10);
    // A view applied on one replica is in use on the other at once, before its next reload.
    await first.client.applyEntity({ entity: userEntity, requestId: '' });
    await first.client.applyFeatureView({
      featureView: userStatsView(),
      requestId: '',
      validateOnly: false,
    });
    const inUse = await failureOf(
      second.client.deleteEntity({ name: 'user', etag: '', requestId: '' }),
    );
    expect(inUse.code).toBe(GrpcCode.FAILED_PRECONDITION);
  });
});

describe('a view created under the name of a deleted one', () => {
  let harness: RunningHarness;

  beforeEach(async () => {
    harness = await startHarness();
  });

  afterEach(async () => {
    await harness.stop();
  });

  /** Applies user_stats, writes u1's ctr 0.5, and returns the stored record. */
  async function writtenRecord(rows: FeatureRowRepository): Promise<FeatureRowDocument> {
    await applyUserStats(harness.client);
    await harness.client.writeFeatures({
      featureView: 'user_stats',
      rows: [userRow('u1', new Date(), { ctr: double(0.5) })],
      requestId: '',
    });
    const written = await storedRecords(rows);
    expect(written).toHaveLength(1);
    return written[0] as FeatureRowDocument;
  }

  /** Deletes user_stats and waits until its values are gone from storage. */
  async function deleteUserStats(rows: FeatureRowRepository): Promise<void> {
    await harness.client.deleteFeatureView({ name: 'user_stats', etag: '', requestId: '' });
    // The deletion of its values runs in the background.
    await eventually(async () => {
      expect(await storedRecords(rows)).toEqual([]);
    });
  }

  /** The ctr of `ids` as served by `replica`: the statuses, and the value of the first. */
  async function ctrOf(replica: RunningHarness, ...ids: string[]) {
    const read = await replica.client.getOnlineFeatures({
      features: ['user_stats:ctr'],
      entityRows: users(...ids),
      omitEventTimes: true,
    });
    return [read.columns[0]?.statuses, read.columns[0]?.values[0]];
  }

  /** The ctr of `ids` as served by a replica started now on the same storage (loading the view). */
  async function ctrLoaded(...ids: string[]) {
    const other = await startHarness({
      replicaId: 'other',
      wrapStore: sharing(harness.runtime.store),
    });
    try {
      return await ctrOf(other, ...ids);
    } finally {
      await other.stop();
    }
  }

  /** Writes u1's ctr to the view of that name, at `eventTime`. */
  async function writeU1(eventTime: number, ctr: number) {
    return harness.client.writeFeatures({
      featureView: 'user_stats',
      rows: [userRow('u1', new Date(eventTime), { ctr: double(ctr) })],
      requestId: '',
    });
  }

  it('starts empty, even when values of the deleted one were stored after its deletion', async () => {
    const rows = await FeatureRowRepository.open(harness.runtime.store, 60_000);
    const written = await writtenRecord(rows);
    await deleteUserStats(rows);
    // Writes in flight during the deletion land late: one of this build, and one of an earlier
    // build (no registration, the id of then), which a load would take into the new view.
    const { registration, ...earlier } = written;
    expect(registration).toBeGreaterThan(0);
    await rows.write([written, { ...earlier, id: 'user_stats/u1' }]);

    await applyUserStats(harness.client);
    expect((await ctrOf(harness, 'u1'))[0]).toEqual([FeatureStatus.FEATURE_STATUS_NOT_FOUND]);
    expect(await storedRecords(rows)).toEqual([]);
  });

  it("keeps its values, and is loaded without the deleted one's, when a write of that one lands late", async () => {
    const rows = await FeatureRowRepository.open(harness.runtime.store, 60_000);
    const written = await writtenRecord(rows);
    await deleteUserStats(rows);
    await applyUserStats(harness.client);
    await writeU1(written.eventTime, 0.9);
    // Writes that checked the old view just before its deletion land now: u1's with a later
    // event time than the new view's, and u2's.
    const late = written.eventTime + 1;
    await rows.write([
      { ...written, eventTime: late, version: rowVersion(late, 1) },
      { ...written, id: rowId('user_stats', written.registration ?? 0, 'u2'), entityKey: 'u2' },
    ]);
    expect(await ctrLoaded('u1', 'u2')).toEqual([
      [FeatureStatus.FEATURE_STATUS_PRESENT, FeatureStatus.FEATURE_STATUS_NOT_FOUND],
      double(0.9),
    ]);
  });

  it("keeps its values' expiry when a re-timing of the deleted one runs late", async () => {
    const rows = await FeatureRowRepository.open(harness.runtime.store, 60_000);
    const written = await writtenRecord(rows);
    await deleteUserStats(rows);
    await applyUserStats(harness.client);
    await writeU1(written.eventTime, 0.9);
    const before = await storedRecords(rows);
    // A re-timing of the deleted view to another TTL, on a replica that had not seen it go.
    expect(await rows.restampExpiry('user_stats', written.registration ?? 0, 60_000)).toBe(0);
    expect(await storedRecords(rows)).toEqual(before);
  });

  it('is loaded with, and deleted with, values stored by earlier builds (no registration)', async () => {
    const rows = await FeatureRowRepository.open(harness.runtime.store, 60_000);
    const { registration, ...written } = await writtenRecord(rows);
    expect(registration).toBeGreaterThan(0);
    await deleteUserStats(rows);
    await applyUserStats(harness.client);
    // As an earlier build stored it: no registration, the id of then.
    await rows.write([{ ...written, id: 'user_stats/u1' }]);
    const present = FeatureStatus.FEATURE_STATUS_PRESENT;
    // Of the two records of u1, the one of the later event time is served.
    expect(await writeU1(written.eventTime - 1_000, 0.7)).toMatchObject({ rowsWritten: 1 });
    expect(await ctrLoaded('u1')).toEqual([[present], double(0.5)]);
    await writeU1(written.eventTime + 1, 0.9);
    expect(await ctrLoaded('u1')).toEqual([[present], double(0.9)]);
    await deleteUserStats(rows);
  });
});

/** Every stored record of user_stats, whichever view of the name it was written for. */
async function storedRecords(rows: FeatureRowRepository): Promise<FeatureRowDocument[]> {
  const found: FeatureRowDocument[] = [];
  for await (const row of rows.scanView('user_stats')) found.push(row);
  return found;
}

describe('a definition stored before a limit it breaks', () => {
  let harness: RunningHarness;

  beforeEach(async () => {
    harness = await startHarness();
  });

  afterEach(async () => {
    await harness.stop();
  });

  it('is applied again unchanged, as declarative clients do, and changed only within it', async () => {
    await applyUserStats(harness.client);
    // As stored before owners had a limit and TTLs a ceiling of 100 years.
    const repository = await openRegistryRepository(harness.runtime.store);
    const owner = 'o'.repeat(300);
    const ttlMs = 200 * 365 * 86_400_000;
    const entity = await repository.entities.get('user');
    const view = await repository.featureViews.get('user_stats');
    if (entity === undefined || view === undefined) throw new Error('not stored');
    await repository.entities.replace(
      { ...entity.doc, definition: { ...entity.doc.definition, owner } },
      entity.version,
    );
    await repository.featureViews.replace(
      { ...view.doc, definition: { ...view.doc.definition, owner, ttlMs } },
      view.version,
    );
    const ttl = { seconds: ttlMs / 1000, nanos: 0 };

    const sameEntity = await harness.client.applyEntity({
      entity: { ...userEntity, owner },
      requestId: '',
    });
    expect(sameEntity.entity?.owner).toBe(owner);
    const sameView = await harness.client.applyFeatureView({
      featureView: userStatsView({ owner, ttl }),
      requestId: '',
      validateOnly: false,
    });
    expect(sameView.featureView?.ttl).toEqual(ttl);
    const described = await harness.client.applyFeatureView({
      featureView: userStatsView({ owner, ttl, description: 'still editable' }),
      requestId: '',
      validateOnly: false,
    });
    expect(described.featureView?.description).toBe('still editable');
    // A new owner or TTL must keep to today's limits.
    const longer = await failureOf(
      harness.client.applyEntity({ entity: { ...userEntity, owner: `${owner}!` }, requestId: '' }),
    );
    expect(longer.violations.map((v) => [v.field, v.reason])).toEqual([
      ['entity.owner', 'TOO_LONG'],
    ]);
  });

  it.each([
    ['a value field OutcomeEvent lacks', 'foo', 'INVALID_PATH'],
    ['a string field summed as a number', 'item_id', 'VALUE_FIELD_TYPE'],
    ['a value field over 256 characters', `properties.${'x'.repeat(300)}`, 'TOO_LONG'],
  ])('is a stream view stored with %s, applied again unchanged', async (_, field, reason) => {
    await harness.client.applyEntity({ entity: itemEntity, requestId: '' });
    const subject = 'tandem.events.v1.outcome.play';
    await harness.client.applyFeatureView({
      featureView: itemPlaysView('old_plays', subject),
      requestId: '',
      validateOnly: false,
    });
    // As stored before value fields were checked against OutcomeEvent (a stream source never
    // changes, so it could not be brought within the rule).
    const repository = await openRegistryRepository(harness.runtime.store);
    const stored = await repository.featureViews.get('old_plays');
    if (stored === undefined || stored.doc.definition.source?.kind !== 'stream') {
      throw new Error('not stored');
    }
    const source = stored.doc.definition.source;
    const legacy = {
      ...source,
      eventNames: ['play', 'skip'],
      aggregations: source.aggregations.map((a) =>
        a.valueField === '' ? a : { ...a, valueField: field },
      ),
    };
    await repository.featureViews.replace(
      { ...stored.doc, definition: { ...stored.doc.definition, source: legacy } },
      stored.version,
    );
    const view = itemPlaysView('old_plays', subject);
    const asStored = {
      ...view,
      source:
        view.source?.$case === 'streamSource'
          ? {
              $case: 'streamSource' as const,
              value: {
                ...view.source.value,
                // The same names as stored, as a set: order and repeats change nothing.
                eventNames: ['skip', 'play', 'play'],
                aggregations: view.source.value.aggregations.map((a) =>
                  a.valueField === '' ? a : { ...a, valueField: field },
                ),
              },
            }
          : view.source,
    };
    const again = await harness.client.applyFeatureView({
      featureView: asStored,
      requestId: '',
      validateOnly: false,
    });
    expect(again.featureView?.name).toBe('old_plays');
    // A new view may not.
    const fresh = await failureOf(
      harness.client.applyFeatureView({
        featureView: { ...asStored, name: 'new_plays' },
        requestId: '',
        validateOnly: false,
      }),
    );
    expect(fresh.violations.map((v) => v.reason)).toContain(reason);
  });
});
