import type { DocumentStore } from '../../platform/src/storage/collection';
import { describeWithMongo, mongodbUri } from '../../platform/test/support/integration';
import { featureStoreApiSuite } from './feature-store-api';
import { startHarness } from './support/feature-store-harness';

/** Gives each test its own collections in the service's database. */
function isolated(store: DocumentStore): DocumentStore {
  const prefix = `t${Math.random().toString(36).slice(2, 8)}`;
  return {
    kind: store.kind,
    collection: (spec) => store.collection({ ...spec, name: `${prefix}_${spec.name}` }),
    ping: () => store.ping(),
    close: () => store.close(),
  };
}

describeWithMongo('FeatureStore over gRPC on MongoDB', () => {
  featureStoreApiSuite(() => startHarness({ mongodbUri: mongodbUri!, wrapStore: isolated }));
});
