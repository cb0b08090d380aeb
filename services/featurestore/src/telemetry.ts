/**
 * OpenTelemetry start-up, imported first by `main.ts` so the SDK is running before grpc-js and the
 * MongoDB driver are loaded.
 */
import {
  startTelemetry,
  wantsMetricExport,
  wantsTraceExport,
} from '../../platform/src/telemetry/sdk';

export const telemetry = startTelemetry({
  serviceName: 'tandem-featurestore',
  exportTraces: wantsTraceExport(process.env),
  exportMetrics: wantsMetricExport(process.env),
});
