/**
 * Benchmark server: the Assignment service started as `main.ts` does (telemetry → bootstrap →
 * startAssignment → serve) on an embedded store in a temporary directory and the in-process bus, seeded with
 * `experiments` running experiments spread over `layers` layers, all on surface `home`, each with
 * a targeting condition. Usage: node assignment-server.js [experiments] [layers]
 */
// Telemetry first, as main.ts starts it (OpenTelemetry SDK; spans exported only when OTEL_* ask).
import { telemetry } from '../../services/assignment/src/telemetry';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { bootstrap } from '../../services/platform/src/bootstrap';
import { readAssignmentConfig } from '../../services/assignment/src/config';
import { AllocationMode, ExperimentStatus } from '../../services/assignment/src/domain';
import { startAssignment } from '../../services/assignment/src/service';
import { ConfigurationStore } from '../../services/assignment/src/store/configuration-store';
import type { ExperimentDocument } from '../../services/assignment/src/store/documents';
import { serveBenchmarkProcess } from './server-process';

/** A handful of distinct conditions, as real configurations share a few targeting rules. */
const CONDITIONS = [
  { country: { $in: ['SE', 'NO', 'DK'] } },
  { 'app.version': { $gte: 10 } },
  { country: { $ne: 'US' }, platform: 'ios' },
  { $or: [{ tier: 'premium' }, { 'app.version': { $gt: 20 } }] },
  { platform: { $in: ['ios', 'android'] } },
];

export function benchmarkExperiment(
  index: number,
  layers: number,
  perLayer: number,
): ExperimentDocument {
  const layer = index % layers;
  const slot = Math.floor(index / layers);
  const now = Date.now();
  return {
    id: `exp-${String(index).padStart(4, '0')}`,
    description: '',
    owner: 'bench',
    tags: [],
    unitType: 'user',
    surfaces: ['home'],
    variants: [
      { key: 'control', description: '', weight: 0.5, payloadJson: '' },
      {
        key: 'treatment',
        description: '',
        weight: 0.5,
        payloadJson: JSON.stringify({ policy: `p${index}` }),
      },
    ],
    coverage: null,
    conditionJson: JSON.stringify(CONDITIONS[index % CONDITIONS.length]),
    layerId: `layer-${layer}`,
    layerRange: { start: slot / perLayer, end: (slot + 1) / perLayer },
    hashVersion: 2,
    seed: `exp-${index}`,
    scheduledStartTime: null,
    scheduledEndTime: null,
    status: ExperimentStatus.RUNNING,
    allocationMode: AllocationMode.FIXED,
    minArmShare: null,
    sticky: false,
    stickyTtlMs: null,
    conclusion: null,
    startTime: now,
    stopTime: null,
    createTime: now,
    updateTime: now,
  };
}

async function main(): Promise<void> {
  const experiments = Number(process.argv[2] ?? 1000);
  const layers = Number(process.argv[3] ?? 50);
  const perLayer = Math.ceil(experiments / layers);
  const config = readAssignmentConfig(
    {
      TANDEM_GRPC_HOST: '127.0.0.1',
      TANDEM_ASSIGNMENT_PORT: '0',
      TANDEM_DATA_DIR: mkdtempSync(join(tmpdir(), 'tandem-bench-assignment-')),
      LOG_LEVEL: 'warn',
    },
    { replicaId: `bench-${process.pid}` },
  );
  const runtime = await bootstrap(config.platform, { flushTelemetry: () => telemetry.shutdown() });
  const store = await ConfigurationStore.open(runtime.store);
  const now = Date.now();
  for (let l = 0; l < layers; l++) {
    await store.layers.insert({
      id: `layer-${l}`,
      description: '',
      owner: 'bench',
      tags: [],
      createTime: now,
      updateTime: now,
    });
  }
  for (let i = 0; i < experiments; i++)
    await store.experiments.insert(benchmarkExperiment(i, layers, perLayer));
  await store.bumpVersion();
  await startAssignment(runtime, config);
  serveBenchmarkProcess(await runtime.serve(), runtime.shutdown);
}

void main();
