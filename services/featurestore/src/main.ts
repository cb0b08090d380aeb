/**
 * FeatureStore's entry point: telemetry → config → dependencies → load and register → serve.
 * Shutdown runs the same steps in reverse on SIGTERM/SIGINT.
 */
import { telemetry } from './telemetry';
import { bootstrap } from '../../platform/src/bootstrap';
import { readFeatureStoreConfig } from './config';
import { startFeatureStore } from './service';

async function main(): Promise<void> {
  const config = readFeatureStoreConfig(process.env);
  const runtime = await bootstrap(config.platform);
  runtime.shutdown.addFinal('telemetry', () => telemetry.shutdown());
  // In-flight calls may take the gRPC server's whole timeout; the last aggregation checkpoints
  // and closing the store need a little more.
  const deadlineMs = config.platform.grpc.shutdownTimeoutMs + 5_000;
  // Storage is open and aggregations may be checkpointing: a signal or a failure from here on
  // (also while views are still loading or backfilling) closes them rather than exit from under a
  // write.
  await runtime.shutdown.startUp(deadlineMs, async () => {
    await startFeatureStore(runtime, config);
    const port = await runtime.serve();
    runtime.logger.info({ port }, 'featurestore serving');
  });
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
