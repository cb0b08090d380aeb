import { describeWithMongo, mongodbUri } from '../../platform/test/support/integration';
import { featureStoreApiSuite } from './feature-store-api';
import { isolated, startHarness } from './support/feature-store-harness';

describeWithMongo('FeatureStore over gRPC on MongoDB', () => {
  featureStoreApiSuite(() => startHarness({ mongodbUri: mongodbUri!, wrapStore: isolated }));
});
