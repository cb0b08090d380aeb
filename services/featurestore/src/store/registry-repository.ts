/**
 * Where entity and feature-view definitions are stored: one document per resource, its version
 * rendered as the etag. Replicas hold the whole registry in memory and reload it from here.
 * Writes of a `request_id` carry its stamp, and deletions are counted and stamped, for the retry
 * of a write whose storage call failed after it took effect (see `write-stamps.ts`).
 */
import type {
  Collection,
  DocumentStore,
  Versioned,
} from '../../../platform/src/storage/collection';
import { DeletionStamps, StampingCollection } from '../../../platform/src/storage/write-stamps';
import { dateOf } from '../contract-mapping';
import type { EntityDefinition, FeatureViewDefinition } from '../domain/registry';

export interface EntityDocument {
  readonly id: string;
  readonly definition: EntityDefinition;
  readonly createTime: Date;
  readonly updateTime: Date;
}

export interface FeatureViewDocument {
  readonly id: string;
  readonly definition: FeatureViewDefinition;
  readonly createTime: Date;
  readonly updateTime: Date;
  /**
   * The TTL (ms) before the change that stored this version, when that change was of the TTL:
   * what its stored records are re-timed from, also by a retry of that change answered after
   * its first call stored it and failed (see `ApplyFeatureView` in `handlers.ts`). Absent when
   * the change left the TTL alone.
   */
  readonly ttlChangedFrom?: number;
}

/** The kinds of registry resource. */
export type RegistryKind = 'entity' | 'feature_view';

/**
 * How long a deletion's stamp is kept unless told (the default of
 * `TANDEM_FEATURESTORE_REQUEST_ID_RETENTION`; see `openRegistryRepository`).
 */
const DELETION_STAMP_TTL_MS = 86_400_000;

export interface RegistryRepository {
  readonly entities: Collection<EntityDocument>;
  readonly featureViews: Collection<FeatureViewDocument>;
  /**
   * Counts a deletion of the entity or view `name` of `registration` (its creation time, ms),
   * stamped by the request running it. Call it before deleting the document.
   */
  recordDeletion(kind: RegistryKind, name: string, registration: number): Promise<void>;
  /**
   * The registration (creation time, ms) the last deletion counted for `name` removed, when the
   * request of `stamp` made it; undefined otherwise. Counted before the document went: whether it
   * did is told by what is stored.
   */
  lastDeletedBy(kind: RegistryKind, name: string, stamp: string): Promise<number | undefined>;
  /**
   * The creation time (ms) of the feature view `name` as stored now: which registration of the
   * name it is (a view deleted and applied again is another one); undefined when none is stored.
   */
  viewRegistration(name: string): Promise<number | undefined>;
  /** Every stored definition, for a (re)load. */
  loadAll(): Promise<{
    entities: Versioned<EntityDocument>[];
    featureViews: Versioned<FeatureViewDocument>[];
  }>;
}

/**
 * `deletionStampTtlMs`: how long a `request_id` is remembered (see `RequestResults`). A deletion's
 * stamp lasts as long: a request sent again after that is a new one, to be run, not recognised
 * by a deletion made long ago.
 */
export async function openRegistryRepository(
  store: DocumentStore,
  deletionStampTtlMs = DELETION_STAMP_TTL_MS,
): Promise<RegistryRepository> {
  const entities = new StampingCollection(
    await store.collection<EntityDocument>({ name: 'entities' }),
  );
  const featureViews = new StampingCollection(
    await store.collection<FeatureViewDocument>({ name: 'feature_views' }),
  );
  const deletions = await DeletionStamps.open(store, deletionStampTtlMs);
  return {
    entities,
    featureViews,
    recordDeletion(kind, name, registration) {
      return deletions.record(`${kind}/${name}`, String(registration));
    },
    async lastDeletedBy(kind, name, stamp) {
      const last = await deletions.lastBy(`${kind}/${name}`, stamp);
      return last?.removed === undefined ? undefined : Number(last.removed);
    },
    async viewRegistration(name) {
      const stored = await featureViews.get(name);
      return stored === undefined ? undefined : dateOf(stored.doc.createTime).getTime();
    },
    async loadAll() {
      const loadedEntities: Versioned<EntityDocument>[] = [];
      for await (const entity of entities.scan()) loadedEntities.push(entity);
      const loadedViews: Versioned<FeatureViewDocument>[] = [];
      for await (const view of featureViews.scan()) loadedViews.push(view);
      return { entities: loadedEntities, featureViews: loadedViews };
    },
  };
}
