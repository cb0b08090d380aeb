/**
 * Where entity and feature-view definitions are stored: one document per resource, its version
 * rendered as the etag. Replicas hold the whole registry in memory and reload it from here.
 */
import type {
  Collection,
  DocumentStore,
  Versioned,
} from '../../../platform/src/storage/collection';
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
}

export interface RegistryRepository {
  readonly entities: Collection<EntityDocument>;
  readonly featureViews: Collection<FeatureViewDocument>;
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

export async function openRegistryRepository(store: DocumentStore): Promise<RegistryRepository> {
  const entities = await store.collection<EntityDocument>({ name: 'entities' });
  const featureViews = await store.collection<FeatureViewDocument>({ name: 'feature_views' });
  return {
    entities,
    featureViews,
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
