/**
 * The configuration repository: layers, experiments, holdouts and bandit allocations, plus the
 * global configuration version every change bumps. Writes go to storage first and bump the
 * version after, so a replica that reads version v (then scans) sees every write up to v.
 * Optimistic concurrency is the storage port's: the etag is the stored version, and a stale one
 * fails the write with ABORTED.
 */
import { randomBytes } from 'node:crypto';
import { AlreadyExistsError } from '../../../platform/src/errors';
import type { Collection, DocumentStore } from '../../../platform/src/storage/collection';
import { DeletionStamps, StampingCollection } from '../../../platform/src/storage/write-stamps';
import { WriteLease, type HeldLease } from '../../../platform/src/storage/write-lease';
import type {
  AllocationDocument,
  AllocationHistoryDocument,
  ExperimentDocument,
  HoldoutDocument,
  LayerDocument,
  Stored,
} from './documents';

interface CounterDocument {
  readonly id: string;
  readonly value: number;
}

interface SecretDocument {
  readonly id: string;
  readonly secret: string;
}

/**
 * The id of an experiment or holdout that served and was deleted. Such an id is never given out
 * again: sticky assignments and once-a-day exposure ids are keyed by it, and Analysis would mix
 * two experiments under one name.
 */
interface RetiredIdDocument {
  /** `<kind>/<resource id>`. */
  readonly id: string;
  /** Milliseconds since the epoch. */
  readonly retireTime: number;
}

/** The kinds of resource whose ids are retired on delete. */
export type RetiredKind = 'experiment' | 'holdout';

/** The kinds of resource whose etags must not repeat across deletions. */
export type ResourceKind = 'layer' | 'experiment' | 'holdout' | 'allocation';

/**
 * How long a deletion's stamp is kept unless told (the default of
 * `TANDEM_ASSIGNMENT_REQUEST_ID_TTL`; see `ConfigurationStore.open`).
 */
const DELETION_STAMP_TTL_MS = 86_400_000;

const WRITE_LEASE_ID = 'configuration-writes';

const VERSION_ID = 'configuration';
const TOKEN_SECRET_ID = 'resolve-token';

/** Everything configured, read at one configuration version. */
export interface ConfigurationRecords {
  readonly version: number;
  readonly layers: readonly Stored<LayerDocument>[];
  readonly experiments: readonly Stored<ExperimentDocument>[];
  readonly holdouts: readonly Stored<HoldoutDocument>[];
  readonly allocations: readonly Stored<AllocationDocument>[];
}

export class ConfigurationStore {
  private constructor(
    readonly layers: Collection<LayerDocument>,
    readonly experiments: Collection<ExperimentDocument>,
    readonly holdouts: Collection<HoldoutDocument>,
    readonly allocations: Collection<AllocationDocument>,
    /**
     * Every allocation stored for a BANDIT experiment, by experiment and sequence, each kept for
     * `ALLOCATION_HISTORY_TTL_MS` (also after its experiment is deleted: such entries are not
     * served by GetAllocation, and expire). Written after the allocation itself,
     * under the same write lease; never read by Resolve or the configuration reload.
     */
    readonly allocationHistory: Collection<AllocationHistoryDocument>,
    private readonly counters: Collection<CounterDocument>,
    private readonly secrets: Collection<SecretDocument>,
    private readonly writeLease: WriteLease,
    private readonly retiredIds: Collection<RetiredIdDocument>,
    /**
     * Deletions counted per `<kind>/<resource id>`: a resource created again under an id is its
     * next incarnation, whose etags differ from every earlier one's (see `etagOf`); and stamped,
     * for a retry of a delete that took effect (see `recoverWrite`).
     */
    private readonly deletions: DeletionStamps,
  ) {}

  /**
   * Opens (and creates) the collections. Throws `UnavailableError` when storage is down.
   * `deletionStampTtlMs`: how long a `request_id` is remembered; a deletion's stamp lasts as long
   * (a request sent again after that is a new one).
   */
  static async open(
    store: DocumentStore,
    deletionStampTtlMs = DELETION_STAMP_TTL_MS,
  ): Promise<ConfigurationStore> {
    return new ConfigurationStore(
      new StampingCollection(await store.collection<LayerDocument>({ name: 'layers' })),
      new StampingCollection(await store.collection<ExperimentDocument>({ name: 'experiments' })),
      new StampingCollection(await store.collection<HoldoutDocument>({ name: 'holdouts' })),
      new StampingCollection(await store.collection<AllocationDocument>({ name: 'allocations' })),
      await store.collection<AllocationHistoryDocument>({
        name: 'allocation_history',
        expireAtField: 'expiresAt',
      }),
      await store.collection<CounterDocument>({ name: 'counters' }),
      await store.collection<SecretDocument>({ name: 'secrets' }),
      await WriteLease.open(store, WRITE_LEASE_ID, {
        what: 'the configuration',
        reason: 'CONFIGURATION_WRITE_IN_PROGRESS',
      }),
      await store.collection<RetiredIdDocument>({ name: 'retired_ids' }),
      await DeletionStamps.open(store, deletionStampTtlMs),
    );
  }

  /**
   * Takes the lease that makes configuration writes one at a time across every replica sharing
   * this storage, waiting up to `waitMs` for another holder to release it; returns its release.
   * A lease not released (its holder died) is taken over once `ttlMs` has passed since it was
   * taken. Throws `AbortedError` when it could not be had in time.
   */
  acquireWriteLease(
    holder: string,
    options: { readonly ttlMs: number; readonly waitMs: number },
  ): Promise<HeldLease> {
    return this.writeLease.acquire(holder, options);
  }

  /** Whether the write lease is left past its time (see `WriteLease.abandoned`). */
  writeLeaseAbandoned(): Promise<boolean> {
    return this.writeLease.abandoned();
  }

  /**
   * Records that `id` served and is being deleted, so that it is never created again. Call it
   * before deleting the resource: a crash in between leaves both, and the delete can be retried.
   */
  async retire(kind: RetiredKind, id: string): Promise<void> {
    await this.retiredIds.upsert({ id: `${kind}/${id}`, retireTime: Date.now() });
  }

  /**
   * Counts a deletion of `id`. Call it before deleting the resource: a crash in between only
   * makes the next incarnation's number skip one.
   */
  recordDeletion(kind: ResourceKind, id: string): Promise<void> {
    return this.deletions.record(`${kind}/${id}`);
  }

  /**
   * Whether the last deletion counted for `id` was made by the request of `stamp` (see
   * `Stamped`): stamped by it, and no deletion counted since.
   */
  async lastDeletedBy(kind: ResourceKind, id: string, stamp: string): Promise<boolean> {
    return (await this.deletions.lastBy(`${kind}/${id}`, stamp)) !== undefined;
  }

  /** The incarnation a resource created now under `id` is: 1, plus one per earlier deletion. */
  async incarnationOf(kind: ResourceKind, id: string): Promise<number> {
    return 1 + (await this.deletions.count(`${kind}/${id}`));
  }

  /** Whether `id` belonged to a resource that served and was deleted. */
  async isRetired(kind: RetiredKind, id: string): Promise<boolean> {
    return (await this.retiredIds.get(`${kind}/${id}`)) !== undefined;
  }

  /** The stored configuration version; 0 before the first change. */
  async version(): Promise<number> {
    return (await this.counters.get(VERSION_ID))?.doc.value ?? 0;
  }

  /** Bumps the configuration version after a change and returns the new one. */
  async bumpVersion(): Promise<number> {
    return (await this.counters.increment(VERSION_ID, { value: 1 })).doc.value;
  }

  /** Reads everything: the version first, so the data read is at least that recent. */
  async readAll(): Promise<ConfigurationRecords> {
    const version = await this.version();
    const [layers, experiments, holdouts, allocations] = await Promise.all([
      collect(this.layers),
      collect(this.experiments),
      collect(this.holdouts),
      collect(this.allocations),
    ]);
    return { version, layers, experiments, holdouts, allocations };
  }

  /**
   * The resolve-token key kept in storage: created once by whichever replica asks first, so every
   * replica sharing the storage signs and verifies with the same key.
   */
  async tokenSecret(): Promise<string> {
    const existing = await this.secrets.get(TOKEN_SECRET_ID);
    if (existing) return existing.doc.secret;
    try {
      const created = await this.secrets.insert({
        id: TOKEN_SECRET_ID,
        secret: randomBytes(32).toString('base64url'),
      });
      return created.doc.secret;
    } catch (error) {
      if (!(error instanceof AlreadyExistsError)) throw error;
      const raced = await this.secrets.get(TOKEN_SECRET_ID);
      if (!raced) throw error;
      return raced.doc.secret;
    }
  }
}

async function collect<T extends { readonly id: string }>(
  collection: Collection<T>,
): Promise<Stored<T>[]> {
  const all: Stored<T>[] = [];
  for await (const item of collection.scan()) all.push(item);
  return all;
}
