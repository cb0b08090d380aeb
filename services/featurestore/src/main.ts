/**
 * FeatureStore's entry point: telemetry → config → dependencies → load and register → serve.
 * Shutdown runs the same steps in reverse on SIGTERM/SIGINT.
 */
import { telemetry } from './telemetry';
import { bootstrap } from '../../platform/src/bootstrap';
import { exitBeforeStartup } from '../../platform/src/startup-failure';
import { readFeatureStoreConfig } from './config';
import { FeatureStoreServiceDefinition } from './online-response';
import { startFeatureStore } from './service';

async function main(): Promise<void> {
  const config = readFeatureStoreConfig(process.env);
  // Storage unreachable: NOT_SERVING (calls get UNAVAILABLE) until it answers.
  const runtime = await bootstrap(config.platform, {
    services: [FeatureStoreServiceDefinition],
    flushTelemetry: () => telemetry.shutdown(),
  });
  // In-flight calls may take the gRPC server's whole timeout; the last aggregation checkpoints
  // and closing the store need a little more (runtime.shutdownDeadlineMs allows for both).
  // Storage is open and aggregations may be checkpointing: a signal or a failure from here on
  // (also while views are still loading or backfilling) closes them rather than exit from under a
  // write.
  await runtime.shutdown.startUp(runtime.shutdownDeadlineMs, async () => {
    await startFeatureStore(runtime, config);
    const port = await runtime.serve();
    runtime.logger.info({ port }, 'featurestore serving');
  });
}

main().catch((error: unknown) => {
  exitBeforeStartup('featurestore', error);
});
