/**
 * A store slowed or failed at exact points, for tests of what replicas do meanwhile: a write of
 * rows, of a change-log entry or of its sequence held until released, entries that fail, a scan
 * of checkpoints that waits to begin, a scan of rows that waits once it has read them (a slow
 * load), a scan that fails once (a blip), a write whose reply is lost after it was applied, writes
 * and reads of rows that fail, reads of the change log and registry that hang (a half-open
 * connection), or every call failing (a partition).
 */
import { UnavailableError } from '../../../platform/src/errors';
import type { Collection, DocumentStore } from '../../../platform/src/storage/collection';
import { eventually, sharing, startHarness } from './feature-store-harness';
import { applyUserStats } from './fixtures';

export interface StorageGates {
  /** The next write of rows (`upsertIfNewer` of `feature_rows`) waits for `releaseWrite`. */
  holdNextWrite: boolean;
  releaseWrite?: () => void;
  /** The next change-log entry stored (`insert` of `feature_changes`) waits for `releaseEntry`. */
  holdNextEntry: boolean;
  releaseEntry?: () => void;
  /** The next `count` change-log entries stored fail with UNAVAILABLE. */
  failEntries: number;
  /** The next change-log sequence taken (`increment` of `feature_changes`) waits for `releaseSequence`. */
  holdNextSequence: boolean;
  releaseSequence?: () => void;
  /** The next scan of rows reads them all, then waits for `releaseScan` to yield them. */
  holdNextScan: boolean;
  releaseScan?: () => void;
  /** The next scan of aggregation checkpoints waits for `releaseCheckpointScan` to begin. */
  holdNextCheckpointScan: boolean;
  releaseCheckpointScan?: () => void;
  /** The next scan of rows fails with UNAVAILABLE. */
  failNextScan: boolean;
  /** While set, every scan of rows fails with UNAVAILABLE; `failedScans` counts the failures. */
  failScans: boolean;
  failedScans: number;
  /**
   * The next write of rows is applied, then fails with UNAVAILABLE (a reply lost after the
   * commit, or a MongoDB bulk write that failed part-way).
   */
  loseNextWriteReply: boolean;
  /** While set, every write of rows fails with UNAVAILABLE, storing nothing. */
  failWrites: boolean;
  /** The next `count` reads of rows by id (`getMany` of `feature_rows`) fail with UNAVAILABLE. */
  failRowReads: number;
  /**
   * While set, reads of the change log (`list` of `feature_changes`) and of the registry (`scan`
   * of `entities`) wait, counted in `stalledReads`, until `releaseStalledReads` (a hung storage).
   */
  stallReads: boolean;
  stalledReads: number;
  releaseStalledReads(): void;
  /** Every call of every collection fails with UNAVAILABLE. */
  cutOff: boolean;
}

export function storageGates(): StorageGates {
  const stalled: (() => void)[] = [];
  const gates: StorageGates = {
    holdNextWrite: false,
    holdNextEntry: false,
    failEntries: 0,
    holdNextSequence: false,
    holdNextScan: false,
    holdNextCheckpointScan: false,
    failNextScan: false,
    failScans: false,
    failedScans: 0,
    loseNextWriteReply: false,
    failWrites: false,
    failRowReads: 0,
    stallReads: false,
    stalledReads: 0,
    releaseStalledReads() {
      gates.stallReads = false;
      for (const release of stalled.splice(0)) release();
    },
    cutOff: false,
  };
  stallers.set(gates, stalled);
  return gates;
}

/** The waits of each `storageGates()`'s stalled reads. */
const stallers = new WeakMap<StorageGates, (() => void)[]>();

/** Waits while `gates.stallReads` is set (see {@link StorageGates.stallReads}). */
async function unlessStalled(gates: StorageGates): Promise<void> {
  if (!gates.stallReads) return;
  gates.stalledReads++;
  await new Promise<void>((resolve) => stallers.get(gates)?.push(resolve));
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
      const sequences = spec.name === 'sequences';
      const checkpoints = spec.name === 'aggregation_checkpoints';
      const entities = spec.name === 'entities';
      const checkpointScan = (where?: Parameters<Collection<T>['scan']>[0]) => {
        if (!gates.holdNextCheckpointScan) return collection.scan(where);
        gates.holdNextCheckpointScan = false;
        return (async function* () {
          await new Promise<void>((resolve) => (gates.releaseCheckpointScan = resolve));
          yield* collection.scan(where);
        })();
      };
      const increment: Collection<T>['increment'] = async (id, deltas) => {
        if (id === 'feature_changes' && gates.holdNextSequence) {
          gates.holdNextSequence = false;
          await new Promise<void>((resolve) => (gates.releaseSequence = resolve));
        }
        return collection.increment(id, deltas);
      };
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
        if (gates.failWrites) throw new UnavailableError('storage is unreachable (an outage)');
        if (gates.holdNextWrite) {
          gates.holdNextWrite = false;
          await new Promise<void>((resolve) => (gates.releaseWrite = resolve));
        }
        const outcomes = await collection.upsertIfNewer(docs, field);
        if (gates.loseNextWriteReply) {
          gates.loseNextWriteReply = false;
          throw new UnavailableError('storage did not answer (the write was applied)');
        }
        return outcomes;
      };
      const getMany: Collection<T>['getMany'] = async (ids) => {
        if (gates.failRowReads > 0) {
          gates.failRowReads--;
          throw new UnavailableError('storage is unreachable (a blip)');
        }
        return collection.getMany(ids);
      };
      const scan = (where?: Parameters<Collection<T>['scan']>[0]): AsyncIterable<never> => {
        if (gates.failNextScan || gates.failScans) {
          gates.failNextScan = false;
          gates.failedScans++;
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
      const list: Collection<T>['list'] = async (options) => {
        await unlessStalled(gates);
        return collection.list(options);
      };
      const entityScan = (where?: Parameters<Collection<T>['scan']>[0]) =>
        (async function* () {
          await unlessStalled(gates);
          yield* collection.scan(where);
        })();
      return new Proxy(collection, {
        get: (target, property) => {
          const value = Reflect.get(target, property) as unknown;
          if (typeof value !== 'function') return value;
          if (rows && property === 'upsertIfNewer') return guarded(upsertIfNewer);
          if (rows && property === 'scan') return guarded(scan);
          if (rows && property === 'getMany') return guarded(getMany);
          if (changes && property === 'insert') return guarded(insert);
          if (sequences && property === 'increment') return guarded(increment);
          if (checkpoints && property === 'scan') return guarded(checkpointScan);
          if (changes && property === 'list') return guarded(list);
          if (entities && property === 'scan') return guarded(entityScan);
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

/** Waits until the call held by `gates` has reached its gate. */
export async function untilHeld(
  gates: StorageGates,
  what: 'write' | 'entry' | 'sequence' | 'scan' | 'checkpointScan',
  timeoutMs = 2_000,
): Promise<void> {
  const release = {
    write: 'releaseWrite',
    entry: 'releaseEntry',
    sequence: 'releaseSequence',
    scan: 'releaseScan',
    checkpointScan: 'releaseCheckpointScan',
  } as const;
  await eventually(async () => {
    await Promise.resolve();
    expect(gates[release[what]]).toBeDefined();
  }, timeoutMs);
}

/**
 * Two replicas sharing storage, the second's gated, both serving user_stats (applied through
 * the first).
 */
export async function gatedSecondReplica(env: Readonly<Record<string, string>> = {}) {
  const gates = storageGates();
  const first = await startHarness({ replicaId: 'replica-a', env });
  const second = await startHarness({
    replicaId: 'replica-b',
    env,
    wrapStore: () => gatedStore(sharing(first.runtime.store)(), gates),
  });
  await applyUserStats(first.client);
  await eventually(() => second.client.getFeatureView({ name: 'user_stats' }), 2_000);
  return { gates, first, second };
}

/** Two replicas sharing storage, the first's gated, both serving user_stats. */
export async function gatedPair() {
  const gates = storageGates();
  const first = await startHarness({
    replicaId: 'replica-a',
    wrapStore: (store) => gatedStore(store, gates),
  });
  const second = await startHarness({
    replicaId: 'replica-b',
    wrapStore: sharing(first.runtime.store),
  });
  await applyUserStats(first.client);
  // The second replica's registry reload is 500 ms apart.
  await eventually(() => second.client.getFeatureView({ name: 'user_stats' }), 3_000);
  return {
    gates,
    first,
    second,
    stop: async () => {
      await second.stop();
      await first.stop();
    },
  };
}
