/**
 * A store slowed or failed at exact points, for tests of what replicas do meanwhile: a write of
 * rows or of a change-log entry held until released, change-log entries that fail, a scan of rows that waits once it has read them (a slow load), a
 * scan that fails once (a blip), or every call failing (a partition).
 */
import { UnavailableError } from '../../../platform/src/errors';
import type { Collection, DocumentStore } from '../../../platform/src/storage/collection';
import { eventually } from './feature-store-harness';

export interface StorageGates {
  /** The next write of rows (`upsertIfNewer` of `feature_rows`) waits for `releaseWrite`. */
  holdNextWrite: boolean;
  releaseWrite?: () => void;
  /** The next change-log entry stored (`insert` of `feature_changes`) waits for `releaseEntry`. */
  holdNextEntry: boolean;
  releaseEntry?: () => void;
  /** The next `count` change-log entries stored fail with UNAVAILABLE. */
  failEntries: number;
  /** The next scan of rows reads them all, then waits for `releaseScan` to yield them. */
  holdNextScan: boolean;
  releaseScan?: () => void;
  /** The next scan of rows fails with UNAVAILABLE. */
  failNextScan: boolean;
  /** Every call of every collection fails with UNAVAILABLE. */
  cutOff: boolean;
}

export function storageGates(): StorageGates {
  return {
    holdNextWrite: false,
    holdNextEntry: false,
    failEntries: 0,
    holdNextScan: false,
    failNextScan: false,
    cutOff: false,
  };
}

/** `store` with `gates` applied. */
export function gatedStore(store: DocumentStore, gates: StorageGates): DocumentStore {
  return {
    ...store,
    collection: async <T extends { readonly id: string }>(
      spec: Parameters<DocumentStore['collection']>[0],
    ): Promise<Collection<T>> => {
      const collection = await store.collection<T>(spec);
      const rows = spec.name === 'feature_rows';
      const changes = spec.name === 'feature_changes';
      const insert: Collection<T>['insert'] = async (doc) => {
        if (gates.failEntries > 0) {
          gates.failEntries--;
          throw new UnavailableError('storage is unreachable (a blip)');
        }
        if (gates.holdNextEntry) {
          gates.holdNextEntry = false;
          await new Promise<void>((resolve) => (gates.releaseEntry = resolve));
        }
        return collection.insert(doc);
      };
      const upsertIfNewer: Collection<T>['upsertIfNewer'] = async (docs, field) => {
        if (gates.holdNextWrite) {
          gates.holdNextWrite = false;
          await new Promise<void>((resolve) => (gates.releaseWrite = resolve));
        }
        return collection.upsertIfNewer(docs, field);
      };
      const scan = (where?: Parameters<Collection<T>['scan']>[0]): AsyncIterable<never> => {
        if (gates.failNextScan) {
          gates.failNextScan = false;
          throw new UnavailableError('storage is unreachable (a blip)');
        }
        if (!gates.holdNextScan) return collection.scan(where) as AsyncIterable<never>;
        gates.holdNextScan = false;
        return (async function* () {
          const read = [];
          for await (const item of collection.scan(where)) read.push(item);
          await new Promise<void>((resolve) => (gates.releaseScan = resolve));
          yield* read;
        })() as AsyncIterable<never>;
      };
      return new Proxy(collection, {
        get: (target, property) => {
          const value = Reflect.get(target, property) as unknown;
          if (typeof value !== 'function') return value;
          if (rows && property === 'upsertIfNewer') return guarded(upsertIfNewer);
          if (rows && property === 'scan') return guarded(scan);
          if (changes && property === 'insert') return guarded(insert);
          return guarded((...args: unknown[]) =>
            (value as (...a: unknown[]) => unknown).apply(target, args),
          );
        },
      });
    },
  };

  function guarded<F extends (...args: never[]) => unknown>(call: F): F {
    return ((...args: Parameters<F>) => {
      if (gates.cutOff) throw new UnavailableError('storage is unreachable (a partition)');
      return call(...args);
    }) as F;
  }
}

/** Waits until the write, entry or scan held by `gates` has reached its gate. */
export async function untilHeld(
  gates: StorageGates,
  what: 'write' | 'entry' | 'scan',
): Promise<void> {
  const release = { write: 'releaseWrite', entry: 'releaseEntry', scan: 'releaseScan' } as const;
  await eventually(async () => {
    await Promise.resolve();
    expect(gates[release[what]]).toBeDefined();
  }, 2_000);
}
