/**
 * OpenTelemetry start-up. A service's `main.ts` imports its `telemetry.ts` first, which calls
 * `startTelemetry` before grpc-js, mongodb or http are loaded, so the MongoDB driver
 * instrumentation can patch the driver. gRPC and NATS spans come from the kit itself
 * (`rpc-spans.ts`, the event bus), which needs no patching.
 *
 * Export is configured by the standard variables (`OTEL_TRACES_EXPORTER`, `OTEL_METRICS_EXPORTER`,
 * `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_TRACES_SAMPLER`, …). When
 * none names an exporter, nothing is exported (the SDK's own default would send metrics to
 * `localhost:4318` every minute), but trace context still propagates across gRPC and NATS so a
 * traced caller's trace continues through Tandem. Logs are pino's JSON on stdout, not OTel's.
 */
import { MongoDBInstrumentation } from '@opentelemetry/instrumentation-mongodb';
import { NodeSDK } from '@opentelemetry/sdk-node';

export interface TelemetryOptions {
  readonly serviceName: string;
  /** Export spans through the exporter the OTEL_* variables configure. */
  readonly exportTraces: boolean;
  /** Export metrics through the exporter (or Prometheus endpoint) the OTEL_* variables configure. */
  readonly exportMetrics: boolean;
}

export interface Telemetry {
  /** Flushes pending spans and stops the SDK. */
  shutdown(): Promise<void>;
}

/**
 * Whether the OTEL_* variables ask for a signal's export: an exporter named in `exporter` (not
 * `none`), or an OTLP endpoint for every signal or for this one. A blank variable is an unset
 * one: a blank endpoint would be the SDK's default, localhost:4318.
 */
function wantsExport(
  exporter: string | undefined,
  signalEndpoint: string | undefined,
  env: Readonly<Record<string, string | undefined>>,
): boolean {
  const exporters = (exporter ?? '')
    .split(',')
    .map((name) => name.trim())
    .filter((name) => name !== '');
  if (exporters.includes('none')) return false;
  const endpoint = [signalEndpoint, env.OTEL_EXPORTER_OTLP_ENDPOINT].some(
    (value) => (value ?? '').trim() !== '',
  );
  return exporters.length > 0 || endpoint;
}

/** True when the standard OTEL_* variables ask for span export. */
export function wantsTraceExport(env: Readonly<Record<string, string | undefined>>): boolean {
  return wantsExport(env.OTEL_TRACES_EXPORTER, env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, env);
}

/**
 * True when the standard OTEL_* variables ask for metric export: an exporter named
 * (`otlp`, `prometheus`, `console`), or an OTLP endpoint for every signal or for metrics.
 */
export function wantsMetricExport(env: Readonly<Record<string, string | undefined>>): boolean {
  if (env.OTEL_SDK_DISABLED?.trim().toLowerCase() === 'true') return false;
  return wantsExport(env.OTEL_METRICS_EXPORTER, env.OTEL_EXPORTER_OTLP_METRICS_ENDPOINT, env);
}

/**
 * The service name spans and metrics carry: `OTEL_SERVICE_NAME`, else a `service.name` in
 * `OTEL_RESOURCE_ATTRIBUTES` (percent-encoded, as that variable's values are), else `fallback`.
 * The SDK lets a name given in code override both, so the variables are read here: an SRE
 * naming a canary `tandem-assignment-canary` expects its traces under that name.
 */
export function serviceNameOf(
  env: Readonly<Record<string, string | undefined>>,
  fallback: string,
): string {
  const named = env.OTEL_SERVICE_NAME?.trim();
  if (named) return named;
  for (const pair of (env.OTEL_RESOURCE_ATTRIBUTES ?? '').split(',')) {
    const at = pair.indexOf('=');
    if (at < 0 || pair.slice(0, at).trim() !== 'service.name') continue;
    const value = pair.slice(at + 1).trim();
    try {
      const decoded = decodeURIComponent(value);
      if (decoded !== '') return decoded;
    } catch {
      // Not percent-encoded as the variable's values must be: the SDK ignores it too.
    }
  }
  return fallback;
}

/** Starts the SDK (context manager, W3C propagator, exporters when asked for, Mongo instrumentation). */
export function startTelemetry(options: TelemetryOptions): Telemetry {
  const sdk = new NodeSDK({
    serviceName: options.serviceName,
    instrumentations: [new MongoDBInstrumentation({ enhancedDatabaseReporting: false })],
    // An empty list registers no tracer provider: nothing is recorded or exported.
    ...(options.exportTraces ? {} : { spanProcessors: [] }),
    // No readers registers no meter provider: instruments are no-ops and nothing is sent.
    ...(options.exportMetrics ? {} : { metricReaders: [] }),
    // Nothing in Tandem writes OpenTelemetry log records (logs are pino's, on stdout).
    logRecordProcessors: [],
  });
  sdk.start();
  return { shutdown: () => sdk.shutdown() };
}
