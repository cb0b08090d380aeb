import { featureStoreApiSuite } from './feature-store-api';
import { startHarness } from './support/feature-store-harness';

describe('FeatureStore over gRPC on the embedded store', () => {
  featureStoreApiSuite(() => startHarness());
});
