/**
 * Configuration of `make dev`: every service's own configuration read from the same environment
 * (each on its default port), plus the launcher's settings.
 */
import { hostname } from 'node:os';
import { ConfigError, EnvReader } from '../services/platform/src/config';
import { serverUrlProblems } from '../services/platform/src/events/server-urls';
import {
  hostIdPart,
  readAssignmentConfig,
  type AssignmentConfig,
} from '../services/assignment/src/config';
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

/**
 * Reads every service's configuration and the launcher's, throwing one `ConfigError` with every
 * problem of all of them (a shared variable's once).
 */
export function readDevConfig(env: NodeJS.ProcessEnv, host = hostname()): DevConfig {
  const problems = new Set<string>();
  const collect = <T>(read: () => T): T | undefined => {
    try {
      return read();
    } catch (error) {
      if (!(error instanceof ConfigError)) throw error;
      error.problems.forEach((problem) => problems.add(problem));
      return undefined;
    }
  };
  const assignment = collect(() =>
    readAssignmentConfig(env, { replicaId: `dev-${hostIdPart(60, host)}` }),
  );
  const featurestore = collect(() => readFeatureStoreConfig(env));
  const launcher = collect(() => readLauncherConfig(env));
  if (!assignment || !featurestore || !launcher) throw new ConfigError([...problems]);
  return { assignment, featurestore, ...launcher };
}

function readLauncherConfig(
  env: NodeJS.ProcessEnv,
): Pick<DevConfig, 'localNatsUrl' | 'simulate' | 'simulatedRate'> {
  const reader = new EnvReader(env);
  const config = {
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
  for (const problem of serverUrlProblems(config.localNatsUrl)) {
    reader.problem(`TANDEM_DEV_NATS_URL: ${problem}`);
  }
  reader.finish();
  return config;
}
