/**
 * Loaded first by `main.ts`, before grpc-js and the MongoDB driver, so instrumentation can patch
 * them. Spans and metrics are exported only when the standard OTEL_* variables ask for it.
 */
import {
  serviceNameOf,
  startTelemetry,
  wantsMetricExport,
  wantsTraceExport,
} from '../../platform/src/telemetry/sdk';

export const telemetry = startTelemetry({
  serviceName: serviceNameOf(process.env, 'tandem-assignment'),
  exportTraces: wantsTraceExport(process.env),
  exportMetrics: wantsMetricExport(process.env),
});
