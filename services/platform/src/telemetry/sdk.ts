/**
 * OpenTelemetry start-up. A service's `main.ts` imports its `telemetry.ts` first, which calls
 * `startTelemetry` before grpc-js, mongodb or http are loaded, so the MongoDB driver
 * instrumentation can patch the driver. gRPC and NATS spans come from the kit itself
 * (`rpc-spans.ts`, the event bus), which needs no patching.
 *
 * Export is configured by the standard variables (`OTEL_TRACES_EXPORTER`,
 * `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_TRACES_SAMPLER`, …). When
 * none names an exporter, spans are not exported, but trace context still propagates across
 * gRPC and NATS so a traced caller's trace continues through Tandem.
 */
import { MongoDBInstrumentation } from '@opentelemetry/instrumentation-mongodb';
import { NodeSDK } from '@opentelemetry/sdk-node';

export interface TelemetryOptions {
  readonly serviceName: string;
  /** Export spans through the exporter the OTEL_* variables configure. */
  readonly exportTraces: boolean;
}

export interface Telemetry {
  /** Flushes pending spans and stops the SDK. */
  shutdown(): Promise<void>;
}

/** True when the standard OTEL_* variables ask for span export. */
export function wantsTraceExport(env: Readonly<Record<string, string | undefined>>): boolean {
  const exporter = env.OTEL_TRACES_EXPORTER?.trim();
  if (exporter === 'none') return false;
  return Boolean(
    exporter ?? env.OTEL_EXPORTER_OTLP_ENDPOINT ?? env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT,
  );
}

/** Starts the SDK (context manager, W3C propagator, exporter when asked for, Mongo instrumentation). */
export function startTelemetry(options: TelemetryOptions): Telemetry {
  const sdk = new NodeSDK({
    serviceName: options.serviceName,
    instrumentations: [new MongoDBInstrumentation({ enhancedDatabaseReporting: false })],
    // An empty list registers no tracer provider: nothing is recorded or exported.
    ...(options.exportTraces ? {} : { spanProcessors: [] }),
  });
  sdk.start();
  return { shutdown: () => sdk.shutdown() };
}
