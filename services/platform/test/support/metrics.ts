/**
 * A real OpenTelemetry metrics SDK for tests: a meter provider registered globally, as the
 * services' start-up registers one, whose reader collects on demand.
 */
import { metrics } from '@opentelemetry/api';
import {
  MeterProvider,
  MetricReader,
  type DataPoint,
  type MetricData,
} from '@opentelemetry/sdk-metrics';
import { resetRpcMetrics } from '../../src/telemetry/rpc-metrics';

class OnDemandReader extends MetricReader {
  protected onForceFlush(): Promise<void> {
    return Promise.resolve();
  }

  protected onShutdown(): Promise<void> {
    return Promise.resolve();
  }
}

export interface TestMetrics {
  /** The data points of the metric `name` collected now (none when it has none). */
  points(name: string): Promise<DataPoint<unknown>[]>;
  /** Unregisters the SDK so other suites start clean. */
  shutdown(): Promise<void>;
}

export function installTestMetrics(): TestMetrics {
  const reader = new OnDemandReader();
  const provider = new MeterProvider({ readers: [reader] });
  metrics.setGlobalMeterProvider(provider);
  resetRpcMetrics();
  return {
    async points(name) {
      const { resourceMetrics } = await reader.collect();
      const found: MetricData[] = resourceMetrics.scopeMetrics.flatMap((scope) =>
        scope.metrics.filter((metric) => metric.descriptor.name === name),
      );
      return found.flatMap((metric) => metric.dataPoints as DataPoint<unknown>[]);
    },
    async shutdown() {
      await provider.shutdown();
      metrics.disable();
      resetRpcMetrics();
    },
  };
}
