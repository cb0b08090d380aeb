/**
 * The Assignment service process: telemetry first (before grpc-js and mongodb load), then config,
 * dependencies (waiting for storage, NOT_SERVING, when it is unreachable), the service itself
 * (configuration loaded before serving), bind, SERVING. SIGTERM
 * runs the shutdown steps in reverse.
 */
import { telemetry } from './telemetry';
import { bootstrap } from '../../platform/src/bootstrap';
import { exitBeforeStartup } from '../../platform/src/startup-failure';
import { hostIdPart, readAssignmentConfig } from './config';
import { resolveServiceDefinition } from './handlers/resolve-response';
import { startAssignment } from './service';

async function main(): Promise<void> {
  const config = readAssignmentConfig(process.env, {
    replicaId: `${hostIdPart(40)}-${process.pid}`,
  });
  // Storage unreachable: NOT_SERVING (calls get UNAVAILABLE) until it answers.
  const runtime = await bootstrap(config.platform, {
    services: [resolveServiceDefinition],
    flushTelemetry: () => telemetry.shutdown(),
  });
  // Storage is open by now: a signal or a failure from here on closes it rather than exit from
  // under a write.
  await runtime.shutdown.startUp(runtime.shutdownDeadlineMs, async () => {
    await startAssignment(runtime, config);
    await runtime.serve();
  });
}

main().catch((error: unknown) => {
  exitBeforeStartup('assignment', error);
});
