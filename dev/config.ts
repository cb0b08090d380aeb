/**
 * Configuration of `make dev`: every service's own configuration read from the same environment
 * (each on its default port), plus the launcher's settings.
 */
import { hostname } from 'node:os';
import { EnvReader } from '../services/platform/src/config';
import { readAssignmentConfig, type AssignmentConfig } from '../services/assignment/src/config';
import {
  readFeatureStoreConfig,
  type FeatureStoreConfig,
} from '../services/featurestore/src/config';

export interface DevConfig {
  readonly assignment: AssignmentConfig;
  readonly featurestore: FeatureStoreConfig;
  /** NATS to try when NATS_URL is unset; the in-process bus is used when it does not answer. */
  readonly localNatsUrl: string;
  /** Run the traffic simulator beside the services. */
  readonly simulate: boolean;
  /** Simulated requests per second. */
  readonly simulatedRate: number;
}

export function readDevConfig(env: NodeJS.ProcessEnv): DevConfig {
  const reader = new EnvReader(env);
  const config: DevConfig = {
    assignment: readAssignmentConfig(env, { replicaId: `dev-${hostname()}` }),
    featurestore: readFeatureStoreConfig(env),
    localNatsUrl: reader.string('TANDEM_DEV_NATS_URL', {
      default: 'nats://127.0.0.1:4222',
      description:
        'make dev: NATS to use when NATS_URL is unset and it answers; else the in-process bus',
    }),
    simulate: reader.boolean('TANDEM_DEV_SIMULATOR', {
      default: true,
      description: 'make dev: run the traffic simulator',
    }),
    simulatedRate: reader.integer('TANDEM_DEV_SIMULATOR_RATE', {
      default: 50,
      min: 1,
      max: 5000,
      description: 'make dev: simulated backend requests per second',
    }),
  };
  reader.finish();
  return config;
}
