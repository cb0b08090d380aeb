/**
 * Registry writes whose own storage call failed after it took effect (a timeout): the first call
 * fails with UNAVAILABLE, and its retry with the same `request_id` finds the change its first
 * call made and answers it ("a retry with the same id returns the first result"), rather than
 * NOT_FOUND for a delete or ABORTED for the etag an apply moved. A change another request made
 * is still refused. On the embedded store and on MongoDB.
 */
import { status as GrpcCode } from '@grpc/grpc-js';
import { UnavailableError } from '../../platform/src/errors';
import type { Collection, DocumentStore } from '../../platform/src/storage/collection';
import { describeWithMongo, mongodbUri } from '../../platform/test/support/integration';
import { FeatureRowRepository } from '../src/store/feature-rows';
import { failureOf } from './feature-store-api';
import {
  eventually,
  isolated,
  startHarness,
  type RunningHarness,
} from './support/feature-store-harness';
import { applyUserStats, double, userEntity, userRow, userStatsView } from './support/fixtures';

/** The collections a replica's store opened, by name (the first of each: the registry's). */
type Opened = Map<string, Collection<{ readonly id: string }>>;

/** A `wrapStore` that keeps in `opened` the collections the replica opens. */
function keeping(opened: Opened): (store: DocumentStore) => DocumentStore {
  return (store) => ({
    kind: store.kind,
    collection: async <T extends { readonly id: string }>(
      spec: Parameters<DocumentStore['collection']>[0],
    ): Promise<Collection<T>> => {
      const collection = await store.collection<T>(spec);
      if (!opened.has(spec.name)) opened.set(spec.name, collection);
      return collection;
    },
    ping: () => store.ping(),
    close: () => store.close(),
  });
}

type Starter = (wrapStore: (store: DocumentStore) => DocumentStore) => Promise<RunningHarness>;

function writeRetriesSuite(start: Starter): void {
  let harness: RunningHarness;
  let opened: Opened;

  beforeEach(async () => {
    opened = new Map();
    harness = await start(keeping(opened));
  });

  afterEach(async () => {
    jest.restoreAllMocks();
    await harness.stop();
  });

  function collection(name: string): Collection<{ readonly id: string }> {
    const found = opened.get(name);
    if (found === undefined) throw new Error(`collection ${name} was not opened`);
    return found;
  }

  /**
   * Makes the next `write` of `of` take effect and then fail, as a storage call whose answer is
   * lost does.
   */
  function failAfterEffect(
    write: 'insert' | 'replace' | 'delete',
    of: 'feature_views' | 'entities',
  ): void {
    const target = collection(of);
    const call = target[write].bind(target) as (...args: unknown[]) => Promise<unknown>;
    jest.spyOn(target, write).mockImplementationOnce(async (...args: unknown[]) => {
      await call(...args);
      throw new UnavailableError('storage did not answer in time');
    });
  }

  /** Makes the next `delete` of `of` fail before taking effect. */
  function failBeforeEffect(of: 'feature_views' | 'entities'): void {
    jest
      .spyOn(collection(of), 'delete')
      .mockRejectedValueOnce(new UnavailableError('storage is unreachable'));
  }

  const etagOfView = async () =>
    (await harness.client.getFeatureView({ name: 'user_stats' })).featureView?.etag ?? '';

  const deleteView = (requestId: string, etag = '') =>
    harness.client.deleteFeatureView({ name: 'user_stats', etag, requestId });

  const applyView = (description: string, requestId: string, etag = '') =>
    harness.client.applyFeatureView({
      featureView: userStatsView({ description, etag }),
      requestId,
      validateOnly: false,
    });

  it('answers the retry of a DeleteFeatureView as done, not NOT_FOUND, and deletes its values', async () => {
    await applyUserStats(harness.client);
    await harness.client.writeFeatures({
      featureView: 'user_stats',
      rows: [userRow('u1', new Date(), { ctr: double(0.5) })],
      requestId: '',
    });
    const rows = collection('feature_rows');
    expect(await rows.count({ view: 'user_stats' })).toBe(1);
    failAfterEffect('delete', 'feature_views');
    expect((await failureOf(deleteView('delete-view'))).code).toBe(GrpcCode.UNAVAILABLE);

    expect(await deleteView('delete-view')).toEqual({});
    expect(await deleteView('delete-view')).toEqual({});
    // What the first call left undone is done: its values go.
    await eventually(async () => {
      expect(await rows.count({ view: 'user_stats' })).toBe(0);
    });
    expect((await failureOf(deleteView('delete-view-again'))).code).toBe(GrpcCode.NOT_FOUND);
  });

  it('answers the retry of a DeleteEntity as done, not NOT_FOUND', async () => {
    await harness.client.applyEntity({ entity: userEntity, requestId: '' });
    const remove = (requestId: string) =>
      harness.client.deleteEntity({ name: 'user', etag: '', requestId });
    failAfterEffect('delete', 'entities');
    expect((await failureOf(remove('delete-user'))).code).toBe(GrpcCode.UNAVAILABLE);

    expect(await remove('delete-user')).toEqual({});
    expect((await failureOf(remove('delete-user-again'))).code).toBe(GrpcCode.NOT_FOUND);
  });

  it('answers the retry of an ApplyFeatureView with an etag with what it stored, not ABORTED', async () => {
    await applyUserStats(harness.client);
    const etag = await etagOfView();
    failAfterEffect('replace', 'feature_views');
    expect((await failureOf(applyView('renamed', 'rename', etag))).code).toBe(GrpcCode.UNAVAILABLE);

    const retried = await applyView('renamed', 'rename', etag);
    expect(retried.changed).toBe(true);
    expect(retried.featureView).toMatchObject({ description: 'renamed' });
    expect(retried.featureView?.etag).toMatch(/^2\./);
    expect(await applyView('renamed', 'rename', etag)).toEqual(retried);
    // Sent with the same stale etag by another request, it is refused.
    expect((await failureOf(applyView('renamed', 'rename-2', etag))).code).toBe(GrpcCode.ABORTED);
  });

  it('answers the retry of an ApplyEntity with an etag with what it stored, not ABORTED', async () => {
    const created = await harness.client.applyEntity({ entity: userEntity, requestId: '' });
    const apply = (description: string, requestId: string) =>
      harness.client.applyEntity({
        entity: { ...userEntity, description, etag: created.entity?.etag ?? '' },
        requestId,
      });
    failAfterEffect('replace', 'entities');
    expect((await failureOf(apply('a listener, renamed', 'rename'))).code).toBe(
      GrpcCode.UNAVAILABLE,
    );

    const retried = await apply('a listener, renamed', 'rename');
    expect(retried.changed).toBe(true);
    expect(retried.entity).toMatchObject({ description: 'a listener, renamed' });
    expect(retried.entity?.etag).toMatch(/^2\./);
    expect((await failureOf(apply('a listener, renamed', 'rename-2'))).code).toBe(GrpcCode.ABORTED);
  });

  it('answers the retry of an ApplyFeatureView without an etag as the change it made', async () => {
    await applyUserStats(harness.client);
    failAfterEffect('replace', 'feature_views');
    expect((await failureOf(applyView('renamed', 'rename'))).code).toBe(GrpcCode.UNAVAILABLE);

    // Found unchanged, it is still the change this request made.
    const retried = await applyView('renamed', 'rename');
    expect(retried.changed).toBe(true);
    expect(retried.featureView?.etag).toMatch(/^2\./);
    expect((await applyView('renamed', 'rename-2')).changed).toBe(false);
  });

  it('answers the retry of a delete as done when the view was applied again since', async () => {
    await applyUserStats(harness.client);
    const etag = await etagOfView();
    failAfterEffect('delete', 'feature_views');
    expect((await failureOf(deleteView('delete-view', etag))).code).toBe(GrpcCode.UNAVAILABLE);
    await applyView('applied again', 'apply-again');

    // Refused by the new view's etag, it is its first call's deletion all the same.
    expect(await deleteView('delete-view', etag)).toEqual({});
    const kept = await harness.client.getFeatureView({ name: 'user_stats' });
    expect(kept.featureView?.description).toBe('applied again');
  });

  it.each([
    { how: 'with an etag', withEtag: true },
    { how: 'without one', withEtag: false },
  ])(
    're-times the stored records to the TTL a retried change set $how, though the registry has loaded it since',
    async ({ withEtag }) => {
      const MINUTE = 60_000;
      const ttl = (hours: number) => ({ seconds: hours * 3600, nanos: 0 });
      const applyTtl = (hours: number, requestId: string, etag = '') =>
        harness.client.applyFeatureView({
          featureView: userStatsView({ ttl: ttl(hours), etag }),
          requestId,
          validateOnly: false,
        });
      await applyUserStats(harness.client);
      await applyTtl(1, '');
      const eventTime = Date.now() - 50 * MINUTE;
      await harness.client.writeFeatures({
        featureView: 'user_stats',
        rows: [userRow('u1', new Date(eventTime), { ctr: double(0.4) })],
        requestId: '',
      });
      const rows = await FeatureRowRepository.open(harness.runtime.store, 3_600_000);
      const expiries = async (): Promise<(number | undefined)[]> => {
        const found: (number | undefined)[] = [];
        for await (const row of rows.scanView('user_stats')) found.push(row.expiresAt?.getTime());
        return found;
      };
      expect(await expiries()).toEqual([eventTime + 60 * MINUTE]);
      const etag = withEtag ? await etagOfView() : '';
      failAfterEffect('replace', 'feature_views');
      expect((await failureOf(applyTtl(2, 'longer-ttl', etag))).code).toBe(GrpcCode.UNAVAILABLE);
      // The registry reloads the stored change: this replica's view has the new TTL already.
      await eventually(async () => {
        expect(
          (await harness.client.getFeatureView({ name: 'user_stats' })).featureView?.ttl,
        ).toEqual(ttl(2));
      });

      expect((await applyTtl(2, 'longer-ttl', etag)).changed).toBe(true);
      // Under the old TTL, storage would drop the record in ten minutes, while reads serve it
      // for seventy.
      await eventually(async () => {
        expect(await expiries()).toEqual([eventTime + 120 * MINUTE]);
      });
    },
  );

  it('answers the retry of a delete without an etag as done, and leaves the view applied again since', async () => {
    await applyUserStats(harness.client);
    failAfterEffect('delete', 'feature_views');
    expect((await failureOf(deleteView('delete-view'))).code).toBe(GrpcCode.UNAVAILABLE);
    await applyView('applied again', 'apply-again');

    // Nothing refuses it (no etag), and deleting again would delete another request's view.
    expect(await deleteView('delete-view')).toEqual({});
    const kept = await harness.client.getFeatureView({ name: 'user_stats' });
    expect(kept.featureView?.description).toBe('applied again');
  });

  it('answers UNAVAILABLE, to be retried, when reading what the first call stored fails', async () => {
    await applyUserStats(harness.client);
    failAfterEffect('delete', 'feature_views');
    expect((await failureOf(deleteView('delete-view'))).code).toBe(GrpcCode.UNAVAILABLE);
    // The retry is refused by the deletion made, and cannot read whose it is: not final.
    jest
      .spyOn(collection('deletion_stamps'), 'get')
      .mockRejectedValueOnce(new UnavailableError('storage is unreachable'));
    expect((await failureOf(deleteView('delete-view'))).code).toBe(GrpcCode.UNAVAILABLE);

    expect(await deleteView('delete-view')).toEqual({});
  });

  it.each([
    ['with', 'second-write'],
    ['without', ''],
  ])(
    'refuses the retry when another write, %s a request_id, changed the view since',
    async (_how, secondRequestId) => {
      await applyUserStats(harness.client);
      const etag = await etagOfView();
      failAfterEffect('replace', 'feature_views');
      expect((await failureOf(applyView('first', 'first-write', etag))).code).toBe(
        GrpcCode.UNAVAILABLE,
      );
      // Another write changes it before the retry: the first write's change is not what is
      // stored.
      await applyView('second', secondRequestId);

      expect((await failureOf(applyView('first', 'first-write', etag))).code).toBe(
        GrpcCode.ABORTED,
      );
    },
  );

  it('refuses the retry of an ApplyEntity when another write changed the entity since', async () => {
    const created = await harness.client.applyEntity({ entity: userEntity, requestId: '' });
    const apply = (description: string, requestId: string, etag = created.entity?.etag ?? '') =>
      harness.client.applyEntity({ entity: { ...userEntity, description, etag }, requestId });
    failAfterEffect('replace', 'entities');
    expect((await failureOf(apply('first', 'first-write'))).code).toBe(GrpcCode.UNAVAILABLE);
    await apply('second', '', '');

    expect((await failureOf(apply('first', 'first-write'))).code).toBe(GrpcCode.ABORTED);
  });

  it('refuses the retry of a delete that failed before the view went', async () => {
    await applyUserStats(harness.client);
    const etag = await etagOfView();
    // Its deletion counted and stamped, the view itself not deleted.
    failBeforeEffect('feature_views');
    expect((await failureOf(deleteView('delete-view', etag))).code).toBe(GrpcCode.UNAVAILABLE);
    // Changed meanwhile: the retry's etag is stale, and the view is still there.
    await applyView('changed', '');

    expect((await failureOf(deleteView('delete-view', etag))).code).toBe(GrpcCode.ABORTED);
    const kept = await harness.client.getFeatureView({ name: 'user_stats' });
    expect(kept.featureView?.description).toBe('changed');
  });

  it('refuses the retry of a delete when another deleted the resource since', async () => {
    await harness.client.applyEntity({ entity: userEntity, requestId: '' });
    const remove = (requestId: string) =>
      harness.client.deleteEntity({ name: 'user', etag: '', requestId });
    failBeforeEffect('entities');
    expect((await failureOf(remove('delete-user'))).code).toBe(GrpcCode.UNAVAILABLE);
    // Deleted by a request without a request_id.
    await remove('');

    expect((await failureOf(remove('delete-user'))).code).toBe(GrpcCode.NOT_FOUND);
  });

  it('refuses the retry of a delete when the view was deleted again since', async () => {
    await applyUserStats(harness.client);
    failAfterEffect('delete', 'feature_views');
    expect((await failureOf(deleteView('delete-view'))).code).toBe(GrpcCode.UNAVAILABLE);
    // Applied again and deleted again by other requests: the last deletion is not the retry's.
    await applyView('applied again', 'apply-again');
    await deleteView('delete-again');

    expect((await failureOf(deleteView('delete-view'))).code).toBe(GrpcCode.NOT_FOUND);
  });
}

describe('a registry write whose storage call failed after it took effect, on the embedded store', () => {
  writeRetriesSuite((wrapStore) => startHarness({ wrapStore }));
});

describeWithMongo(
  'a registry write whose storage call failed after it took effect, on MongoDB',
  () => {
    writeRetriesSuite((wrapStore) =>
      startHarness({ mongodbUri: mongodbUri!, wrapStore: (store) => wrapStore(isolated(store)) }),
    );
  },
);

describe('a delete sent again after its request_id is forgotten', () => {
  it('is a new request: it deletes the view created again since', async () => {
    const harness = await startHarness({
      env: { TANDEM_FEATURESTORE_REQUEST_ID_RETENTION: '1s' },
    });
    try {
      await applyUserStats(harness.client);
      const remove = () =>
        harness.client.deleteFeatureView({ name: 'user_stats', etag: '', requestId: 'cleanup' });
      expect(await remove()).toEqual({});
      await applyUserStats(harness.client);
      // Past the retention, neither the response nor the deletion's stamp answers for it.
      await new Promise((resolve) => setTimeout(resolve, 1_200));

      expect(await remove()).toEqual({});
      expect((await failureOf(harness.client.getFeatureView({ name: 'user_stats' }))).code).toBe(
        GrpcCode.NOT_FOUND,
      );
    } finally {
      await harness.stop();
    }
  });
});
