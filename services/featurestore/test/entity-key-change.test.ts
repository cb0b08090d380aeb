/**
 * A replica's registry reload reads entities, then views: not one snapshot. A view deleted, its
 * entity given another join key and the view applied again between those two reads leaves the
 * replica with the view applied again and the entity as it was. The next reload brings the entity
 * up to date; the view must then be served with the entity's join key as it is now, not with the
 * one it had when the view was loaded.
 */
import { status as GrpcCode } from '@grpc/grpc-js';
import type { Collection, DocumentStore } from '../../platform/src/storage/collection';
import { failureOf } from './feature-store-api';
import { eventually, sharing, startHarness } from './support/feature-store-harness';
import { double, str, userEntity, userRow, users, userStatsView } from './support/fixtures';

/** `store` whose `feature_views` scans wait, once armed, until released. */
function heldViewScans(store: DocumentStore) {
  const gate: { armed: boolean; held: boolean; release?: () => void } = {
    armed: false,
    held: false,
  };
  const wrapped: DocumentStore = {
    ...store,
    collection: async <T extends { readonly id: string }>(
      spec: Parameters<DocumentStore['collection']>[0],
    ): Promise<Collection<T>> => {
      const collection = await store.collection<T>(spec);
      if (spec.name !== 'feature_views') return collection;
      return new Proxy(collection, {
        get: (target, property) => {
          const value = Reflect.get(target, property) as unknown;
          if (typeof value !== 'function') return value;
          if (property !== 'scan') {
            return (...args: unknown[]) =>
              (value as (...a: unknown[]) => unknown).apply(target, args);
          }
          return (...args: Parameters<Collection<T>['scan']>) => {
            if (!gate.armed) return target.scan(...args);
            gate.armed = false;
            return (async function* () {
              gate.held = true;
              await new Promise<void>((resolve) => (gate.release = resolve));
              yield* target.scan(...args);
            })();
          };
        },
      });
    },
  };
  return { gate, wrapped };
}

it('serves a view applied again with its entity join key changed meanwhile by the key as it is now', async () => {
  const first = await startHarness({ replicaId: 'replica-a' });
  const { gate, wrapped } = heldViewScans(first.runtime.store);
  const second = await startHarness({
    replicaId: 'replica-b',
    wrapStore: () => sharing(wrapped)(),
  });
  try {
    const a = first.client;
    const b = second.client;
    await a.applyEntity({ entity: userEntity, requestId: '' });
    await a.applyFeatureView({ featureView: userStatsView(), requestId: '', validateOnly: false });
    await eventually(async () => {
      await b.getOnlineFeatures({
        features: ['user_stats:ctr'],
        entityRows: users('u1'),
        omitEventTimes: true,
      });
    });

    // B's next reload reads the entities, then waits before reading the views.
    gate.armed = true;
    await eventually(async () => {
      await Promise.resolve();
      expect(gate.held).toBe(true);
    });
    await a.deleteFeatureView({ name: 'user_stats', etag: '', requestId: '' });
    await a.applyEntity({ entity: { ...userEntity, joinKey: 'uid' }, requestId: '' });
    await a.applyFeatureView({ featureView: userStatsView(), requestId: '', validateOnly: false });
    await a.writeFeatures({
      featureView: 'user_stats',
      requestId: '',
      rows: [
        {
          ...userRow('u1', new Date(Date.now() - 1_000), { ctr: double(0.5) }),
          entityKey: { uid: str('u1') },
        },
      ],
    });
    gate.release?.();

    // Once B has reloaded again (the entity as it is now), it reads and writes by `uid`.
    await eventually(async () => {
      const read = await b.getOnlineFeatures({
        features: ['user_stats:ctr'],
        entityRows: { uid: { values: [str('u1')] } },
        omitEventTimes: true,
      });
      expect(read.columns[0]?.values).toEqual([double(0.5)]);
    }, 4_000);
    const written = await b.writeFeatures({
      featureView: 'user_stats',
      requestId: '',
      rows: [
        {
          ...userRow('u2', new Date(Date.now() - 1_000), { ctr: double(0.25) }),
          entityKey: { uid: str('u2') },
        },
      ],
    });
    expect(written.rowsWritten).toBe(1);
    const old = await failureOf(
      b.getOnlineFeatures({
        features: ['user_stats:ctr'],
        entityRows: users('u1'),
        omitEventTimes: true,
      }),
    );
    expect(old.code).toBe(GrpcCode.INVALID_ARGUMENT);
  } finally {
    await second.stop();
    await first.stop();
  }
});
