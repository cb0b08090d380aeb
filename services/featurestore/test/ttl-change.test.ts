/**
 * A view's TTL changed on a live view: the stored records follow it, so that storage keeps (or
 * drops) them as long as replicas serve them, and a replica started later loads the same records.
 */
import { FeatureStatus } from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import { openStore } from '../../platform/src/storage/open-store';
import { retimingChange, type RetimingMarker } from '../src/expiry-retiming';
import { FeatureRowRepository } from '../src/store/feature-rows';
import { openRegistryRepository } from '../src/store/registry-repository';
import type {
  Collection,
  CollectionSpec,
  DocumentStore,
} from '../../platform/src/storage/collection';
import {
  eventually,
  sharing,
  startHarness,
  type RunningHarness,
} from './support/feature-store-harness';
import { double, userEntity, userRow, users, userStatsView } from './support/fixtures';
import { gatedSecondReplica } from './support/gated-store';

const MINUTE = 60_000;
/**
 * Re-timing runs start two seconds after the change (`SETTLE_MS`), then take their time: a few
 * seconds for these thousand records, several times that on a loaded host (two CI runs sharing
 * its two cores once took more than 15 s). Below the tests' own 30 s.
 */
const RUN_TIMEOUT_MS = 25_000;

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
    }, RUN_TIMEOUT_MS);
    await apply(undefined);
    await eventually(async () => {
      expect(await storedExpiry()).toEqual([undefined]);
    }, RUN_TIMEOUT_MS);
  });

  it('does not bring back, on a longer TTL, a record storage already dropped by the old one', async () => {
    await apply(60);
    // Past the one-minute TTL when written: storage drops it, the table holds it until its sweep.
    await harness.client.writeFeatures({
      featureView: 'user_stats',
      rows: [userRow('u1', new Date(Date.now() - 2 * MINUTE), { ctr: double(0.4) })],
      requestId: '',
    });
    await apply(3600);
    const later = await startHarness({
      replicaId: 'replica-b',
      wrapStore: sharing(harness.runtime.store),
    });
    try {
      // The same key under the same TTL reads the same on both: storage has no record of it.
      expect(await statusOfU1(later)).toBe(FeatureStatus.FEATURE_STATUS_NOT_FOUND);
      expect(await statusOfU1(harness)).toBe(FeatureStatus.FEATURE_STATUS_NOT_FOUND);
    } finally {
      await later.stop();
    }
  });

  it('keeps, on a longer TTL, a record whose old expiry comes just after the change, on every replica', async () => {
    await apply(60);
    // Under the one-minute TTL, storage drops it 1.5 s from now: before a re-timing that waits
    // for other replicas' runs to settle (2 s) would reach it.
    await harness.client.writeFeatures({
      featureView: 'user_stats',
      rows: [userRow('u1', new Date(Date.now() - MINUTE + 1_500), { ctr: double(0.4) })],
      requestId: '',
    });
    await apply(3600);
    await new Promise((resolve) => setTimeout(resolve, 2_500));
    const later = await startHarness({
      replicaId: 'replica-b',
      wrapStore: sharing(harness.runtime.store),
    });
    try {
      for (const replica of [harness, later]) {
        const column = await ctrOfU1(replica);
        expect(column?.statuses[0]).toBe(FeatureStatus.FEATURE_STATUS_PRESENT);
        expect(column?.values[0]).toEqual(double(0.4));
      }
    } finally {
      await later.stop();
    }
  });

  it("keeps it too on a replica that sees the longer TTL after the record's old expiry", async () => {
    const { gates, first, second } = await gatedSecondReplica();
    const applyTtl = (seconds: number) =>
      first.client.applyFeatureView({
        featureView: userStatsView({ ttl: { seconds, nanos: 0 } }),
        requestId: '',
        validateOnly: false,
      });
    try {
      await applyTtl(60);
      await eventually(async () => {
        const seen = await second.client.getFeatureView({ name: 'user_stats' });
        expect(seen.featureView?.ttl?.seconds).toBe(60);
      });
      const oldExpiry = Date.now() + 3_000;
      await first.client.writeFeatures({
        featureView: 'user_stats',
        rows: [userRow('u1', new Date(oldExpiry - MINUTE), { ctr: double(0.4) })],
        requestId: '',
      });
      await eventually(async () => {
        expect(await statusOfU1(second)).toBe(FeatureStatus.FEATURE_STATUS_PRESENT);
      });
      // The second replica hears of the longer TTL only after the old one has passed (a reload
      // under way when its reads stall is let finish first).
      gates.stallReads = true;
      await new Promise((resolve) => setTimeout(resolve, 700));
      await applyTtl(3600);
      await new Promise((resolve) => setTimeout(resolve, oldExpiry + 500 - Date.now()));
      expect(await statusOfU1(second)).toBe(FeatureStatus.FEATURE_STATUS_EXPIRED);
      gates.releaseStalledReads();
      await eventually(async () => {
        expect(await statusOfU1(second)).toBe(FeatureStatus.FEATURE_STATUS_PRESENT);
      });
      expect(await statusOfU1(first)).toBe(FeatureStatus.FEATURE_STATUS_PRESENT);
    } finally {
      gates.releaseStalledReads();
      await second.stop();
      await first.stop();
    }
  });

  it('re-times first, by key, records of this build and of earlier builds (no registration)', async () => {
    await apply(60);
    const eventTime = Date.now() - 30_000;
    await harness.client.writeFeatures({
      featureView: 'user_stats',
      rows: [userRow('u1', new Date(eventTime), { ctr: double(0.4) })],
      requestId: '',
    });
    const rows = await FeatureRowRepository.open(harness.runtime.store, 3_600_000);
    const [current] = await collectRows(rows);
    const { registration, ...earlier } = current!;
    // As an earlier build stored u2: the id of then, no registration.
    await rows.write([{ ...earlier, id: 'user_stats/u2' }]);
    expect(await rows.restampExpiryOf('user_stats', registration!, 3_600_000, ['u1', 'u2'])).toBe(
      2,
    );
    expect((await collectRows(rows)).map((row) => row.expiresAt?.getTime())).toEqual([
      eventTime + 3_600_000,
      eventTime + 3_600_000,
    ]);
  });

  it('resumes at the next start a re-timing that a stopped replica left unfinished', async () => {
    await apply(3600);
    const eventTime = Date.now() - 10 * MINUTE;
    await harness.client.writeFeatures({
      featureView: 'user_stats',
      rows: Array.from({ length: 200 }, (_, i) =>
        userRow(`u${i}`, new Date(eventTime), { ctr: double(0.4) }),
      ),
      requestId: '',
    });
    await harness.stop();

    // What a replica stopped right after a TTL change leaves: the view under its new TTL, its
    // records under the old one, and the re-timing's marker.
    const store = await openStore({ service: 'featurestore', dataDir: harness.dataDir });
    try {
      const registry = await openRegistryRepository(store);
      const stored = await registry.featureViews.get('user_stats');
      if (stored === undefined) throw new Error('the view is not stored');
      const view = stored.doc;
      await registry.featureViews.replace(
        { ...view, definition: { ...view.definition, ttlMs: 120 * MINUTE } },
        stored.version,
      );
      const markers = await store.collection<RetimingMarker>({ name: 'expiry_retiming' });
      await markers.insert({
        id: 'user_stats',
        ttlMs: 120 * MINUTE,
        registration: new Date(view.createTime).getTime(),
      });
      // And one for a view that is gone: dropped, not run.
      await markers.insert({ id: 'gone', ttlMs: MINUTE, registration: 1 });
    } finally {
      await store.close();
    }

    harness = await startHarness({ dataDir: harness.dataDir, replicaId: 'replica-b' });
    await eventually(async () => {
      const expiries = await storedExpiry();
      expect(expiries).toHaveLength(200);
      expect(new Set(expiries)).toEqual(new Set([eventTime + 120 * MINUTE]));
    }, RUN_TIMEOUT_MS);
    const markers = await harness.runtime.store.collection<RetimingMarker>({
      name: 'expiry_retiming',
    });
    await eventually(async () => {
      expect(await markers.count()).toBe(0);
    }, RUN_TIMEOUT_MS);
  });

  it('ends with the last of two quick TTL changes, the first one stopping', async () => {
    await apply(3600);
    const eventTime = Date.now() - 10 * MINUTE;
    for (let from = 0; from < 1_000; from += 500) {
      await harness.client.writeFeatures({
        featureView: 'user_stats',
        rows: Array.from({ length: 500 }, (_, i) =>
          userRow(`u${from + i}`, new Date(eventTime), { ctr: double(0.4) }),
        ),
        requestId: '',
      });
    }
    await apply(2 * 3600);
    await apply(3 * 3600);
    await eventually(async () => {
      const expiries = await storedExpiry();
      expect(expiries).toHaveLength(1_000);
      expect(new Set(expiries)).toEqual(new Set([eventTime + 180 * MINUTE]));
    }, RUN_TIMEOUT_MS);
    // Settled: nothing re-times them afterwards.
    await new Promise((resolve) => setTimeout(resolve, 500));
    expect(new Set(await storedExpiry())).toEqual(new Set([eventTime + 180 * MINUTE]));
  });

  it('ends with a TTL changed on another replica: the run there for the earlier TTL stops', async () => {
    await apply(3600);
    const eventTime = Date.now() - 10 * MINUTE;
    const ROWS = 1_000;
    for (let from = 0; from < ROWS; from += 500) {
      await harness.client.writeFeatures({
        featureView: 'user_stats',
        rows: Array.from({ length: 500 }, (_, i) =>
          userRow(`u${from + i}`, new Date(eventTime), { ctr: double(0.4) }),
        ),
        requestId: '',
      });
    }
    // A second replica on the same storage whose record writes are slow (a loaded replica), so
    // its run for the earlier TTL would still be going when the later run has finished.
    const slow = slowRecordWrites(sharing(harness.runtime.store)(), 5);
    const other = await startHarness({ replicaId: 'replica-slow', wrapStore: () => slow.store });
    try {
      await other.client.applyFeatureView({
        featureView: userStatsView({ ttl: { seconds: 2 * 3600, nanos: 0 } }),
        requestId: '',
        validateOnly: false,
      });
      // Let its run get going, then change the TTL again on the first replica.
      await eventually(() => {
        expect(slow.writes()).toBeGreaterThan(20);
        return Promise.resolve();
      }, RUN_TIMEOUT_MS);
      await apply(3 * 3600);
      await eventually(async () => {
        expect(new Set(await storedExpiry())).toEqual(new Set([eventTime + 180 * MINUTE]));
      }, RUN_TIMEOUT_MS);
      // Once the slow replica has stopped writing (without the check, its run goes on for
      // seconds, overwriting records with the two-hour expiry), every record keeps the last TTL.
      await quiet(slow.writes, 1_000);
      expect(slow.writes()).toBeLessThan(ROWS);
      const expiries = await storedExpiry();
      expect(expiries).toHaveLength(ROWS);
      expect(new Set(expiries)).toEqual(new Set([eventTime + 180 * MINUTE]));
    } finally {
      await other.stop();
    }
  }, 60_000);

  it('keeps the marker of the later of two changes applied at once, whichever write lands last', async () => {
    await apply(3600);
    // A replica whose marker write for the two-hour TTL is slow: it lands after the marker of the
    // three-hour change applied while it was under way.
    let letGo = (): void => undefined;
    const released = new Promise<void>((resolve) => {
      letGo = resolve;
    });
    const slow = slowMarkerWrite(sharing(harness.runtime.store)(), 2 * 3600_000, released);
    const other = await startHarness({ replicaId: 'replica-b', wrapStore: () => slow.store });
    const applyThere = (hours: number) =>
      other.client.applyFeatureView({
        featureView: userStatsView({ ttl: { seconds: hours * 3600, nanos: 0 } }),
        requestId: '',
        validateOnly: false,
      });
    try {
      const earlier = applyThere(2);
      await slow.started;
      await applyThere(3);
      letGo();
      await earlier;
      // The runs wait two seconds before they start: the marker is there to read meanwhile. A
      // restart now resumes the three-hour run; with the two-hour marker it would drop it.
      const markers = await harness.runtime.store.collection<RetimingMarker>({
        name: 'expiry_retiming',
      });
      expect((await markers.get('user_stats'))?.doc).toMatchObject({ ttlMs: 3 * 3600_000 });
      await eventually(async () => {
        expect(await markers.count()).toBe(0);
      }, RUN_TIMEOUT_MS);
    } finally {
      await other.stop();
    }
  });

  it('replaces a marker left by an earlier registration of the view, even one that sorts later', async () => {
    await apply(3600);
    const eventTime = Date.now() - 10 * MINUTE;
    await harness.client.writeFeatures({
      featureView: 'user_stats',
      rows: [userRow('u1', new Date(eventTime), { ctr: double(0.4) })],
      requestId: '',
    });
    // Left by the view's previous registration, created by a replica whose clock ran a day ahead.
    const markers = await harness.runtime.store.collection<RetimingMarker>({
      name: 'expiry_retiming',
    });
    const ahead = Date.now() + 24 * 3_600_000;
    await markers.insert({
      id: 'user_stats',
      ttlMs: MINUTE,
      registration: ahead,
      change: retimingChange(ahead, 7),
    });
    await apply(2 * 3600);
    expect((await markers.get('user_stats'))?.doc).toMatchObject({ ttlMs: 2 * 3_600_000 });
    await eventually(async () => {
      expect(await storedExpiry()).toEqual([eventTime + 120 * MINUTE]);
      expect(await markers.count()).toBe(0);
    }, RUN_TIMEOUT_MS);
  });
});

/**
 * `store` with the re-timing marker write for `ttlMs` held until `released`; `started` resolves
 * when that write begins.
 */
function slowMarkerWrite(
  store: DocumentStore,
  ttlMs: number,
  released: Promise<void>,
): { store: DocumentStore; started: Promise<void> } {
  let begin = (): void => undefined;
  const started = new Promise<void>((resolve) => {
    begin = resolve;
  });
  const delayed = async (docs: readonly RetimingMarker[]): Promise<void> => {
    if (docs.some((doc) => doc.ttlMs === ttlMs)) {
      begin();
      await released;
    }
  };
  const slowed: DocumentStore = {
    ...store,
    collection: async <T extends { readonly id: string }>(spec: CollectionSpec) => {
      const collection = await store.collection<T>(spec);
      if (spec.name !== 'expiry_retiming') return collection;
      const markers = collection as unknown as Collection<RetimingMarker>;
      const upsert: Collection<RetimingMarker>['upsert'] = async (doc) => {
        await delayed([doc]);
        return markers.upsert(doc);
      };
      const upsertIfNewer: Collection<RetimingMarker>['upsertIfNewer'] = async (docs, field) => {
        await delayed(docs);
        return markers.upsertIfNewer(docs, field);
      };
      const replaced: Record<string | symbol, unknown> = { upsert, upsertIfNewer };
      return new Proxy(collection, {
        get: (target, property): unknown => {
          if (property in replaced) return replaced[property];
          const value: unknown = Reflect.get(target, property, target);
          return typeof value === 'function' ? (value as () => unknown).bind(target) : value;
        },
      });
    },
  };
  return { store: slowed, started };
}

/** `store` with every record write (`replace` in `feature_rows`) delayed by `delayMs`, counted. */
function slowRecordWrites(
  store: DocumentStore,
  delayMs: number,
): { store: DocumentStore; writes: () => number } {
  let writes = 0;
  const slowed: DocumentStore = {
    ...store,
    collection: async <T extends { readonly id: string }>(spec: CollectionSpec) => {
      const collection = await store.collection<T>(spec);
      if (spec.name !== 'feature_rows') return collection;
      const replace: Collection<T>['replace'] = async (doc, version) => {
        await new Promise((resolve) => setTimeout(resolve, delayMs));
        writes++;
        return collection.replace(doc, version);
      };
      // A proxy, not a spread: the store's collections keep their methods on a prototype.
      return new Proxy(collection, {
        get: (target, property): unknown => {
          if (property === 'replace') return replace;
          const value: unknown = Reflect.get(target, property, target);
          return typeof value === 'function' ? (value as () => unknown).bind(target) : value;
        },
      });
    },
  };
  return { store: slowed, writes: () => writes };
}

/** Resolves once `count()` has not changed for `forMs`. */
async function quiet(count: () => number, forMs: number): Promise<void> {
  let last = count();
  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, forMs));
    const now = count();
    if (now === last) return;
    last = now;
  }
}

async function collectRows(rows: FeatureRowRepository) {
  const found = [];
  for await (const row of rows.scanView('user_stats')) found.push(row);
  return found;
}

/** u1's `user_stats:ctr` as `replica` serves it. */
async function ctrOfU1(replica: RunningHarness) {
  const read = await replica.client.getOnlineFeatures({
    features: ['user_stats:ctr'],
    entityRows: users('u1'),
    omitEventTimes: true,
  });
  return read.columns[0];
}

/** The status of u1's `user_stats:ctr` on `replica`. */
async function statusOfU1(replica: RunningHarness) {
  return (await ctrOfU1(replica))?.statuses[0];
}
