/**
 * Benchmark server: FeatureStore as in production (its own process, embedded store in a temp
 * dir, NATS when NATS_URL is set), started as `main.ts` does: telemetry first, then the same
 * `startFeatureStore`.
 */
// Telemetry first, as main.ts starts it (OpenTelemetry SDK; spans exported only when OTEL_* ask).
import { telemetry } from '../../services/featurestore/src/telemetry';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bootstrap } from '../../services/platform/src/bootstrap';
import { readFeatureStoreConfig } from '../../services/featurestore/src/config';
import { startFeatureStore } from '../../services/featurestore/src/service';
import { serveBenchmarkProcess } from './server-process';

async function main(): Promise<void> {
  const config = readFeatureStoreConfig({
    ...process.env,
    TANDEM_FEATURESTORE_PORT: '0',
    TANDEM_GRPC_HOST: '127.0.0.1',
    TANDEM_DATA_DIR:
      process.env.TANDEM_DATA_DIR ?? mkdtempSync(join(tmpdir(), 'bench-featurestore-')),
    LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn',
  });
  const runtime = await bootstrap(config.platform, { flushTelemetry: () => telemetry.shutdown() });
  await startFeatureStore(runtime, config);
  serveBenchmarkProcess(await runtime.serve(), runtime.shutdown);
}

void main();
