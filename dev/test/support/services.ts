import { readAssignmentConfig } from '../../../services/assignment/src/config';
import { startAssignment } from '../../../services/assignment/src/service';
import { readFeatureStoreConfig } from '../../../services/featurestore/src/config';
import { startFeatureStore } from '../../../services/featurestore/src/service';
import { bootstrap } from '../../../services/platform/src/bootstrap';
import { createInProcessBus } from '../../../services/platform/src/events/in-process-bus';

/** Assignment and FeatureStore as `make dev` runs them, on free ports of 127.0.0.1. */
export interface DevServices {
  readonly assignmentPort: number;
  readonly featurestorePort: number;
  shutdown(): Promise<void>;
}

/**
 * Starts both services in this process on embedded storage under `dataDir`, sharing an in-process
 * bus, as `make dev` does without NATS.
 */
export async function startDevServices(dataDir: string): Promise<DevServices> {
  const env = {
    TANDEM_DATA_DIR: dataDir,
    TANDEM_GRPC_HOST: '127.0.0.1',
    TANDEM_ASSIGNMENT_PORT: '0',
    TANDEM_FEATURESTORE_PORT: '0',
    LOG_LEVEL: 'silent',
  };
  const bus = createInProcessBus();
  const assignmentConfig = readAssignmentConfig(env, { replicaId: 'dev-test' });
  const assignment = await bootstrap(assignmentConfig.platform, { sharedBus: bus });
  await startAssignment(assignment, assignmentConfig);
  const assignmentPort = await assignment.serve();
  const featurestoreConfig = readFeatureStoreConfig(env);
  const featurestore = await bootstrap(featurestoreConfig.platform, { sharedBus: bus });
  await startFeatureStore(featurestore, featurestoreConfig);
  const featurestorePort = await featurestore.serve();
  return {
    assignmentPort,
    featurestorePort,
    async shutdown() {
      for (const runtime of [assignment, featurestore]) await runtime.shutdown.run(5000);
    },
  };
}
