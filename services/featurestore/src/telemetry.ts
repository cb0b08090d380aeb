/**
 * OpenTelemetry start-up, imported first by `main.ts` so the SDK is running before grpc-js and the
 * MongoDB driver are loaded.
 */
import {
  serviceNameOf,
  startTelemetry,
  wantsMetricExport,
  wantsTraceExport,
} from '../../platform/src/telemetry/sdk';

export const telemetry = startTelemetry({
  serviceName: serviceNameOf(process.env, 'tandem-featurestore'),
  exportTraces: wantsTraceExport(process.env),
  exportMetrics: wantsMetricExport(process.env),
});
