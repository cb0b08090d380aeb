/**
 * The Assignment service process: telemetry first (before grpc-js and mongodb load), then config,
 * dependencies, the service itself (configuration loaded before serving), bind, SERVING. SIGTERM
 * runs the shutdown steps in reverse.
 */
import { telemetry } from './telemetry';
import { hostname } from 'node:os';
import { bootstrap } from '../../platform/src/bootstrap';
import { readAssignmentConfig } from './config';
import { startAssignment } from './service';

async function main(): Promise<void> {
  const config = readAssignmentConfig(process.env, {
    replicaId: `${hostname()
      .replace(/[^A-Za-z0-9_-]/g, '-')
      .slice(0, 40)}-${process.pid}`,
  });
  const runtime = await bootstrap(config.platform);
  runtime.shutdown.addFinal('telemetry', () => telemetry.shutdown());
  const deadlineMs = config.platform.grpc.shutdownTimeoutMs + 5000;
  // Storage is open by now: a signal or a failure from here on closes it rather than exit from
  // under a write.
  await runtime.shutdown.startUp(deadlineMs, async () => {
    await startAssignment(runtime, config);
    await runtime.serve();
  });
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
