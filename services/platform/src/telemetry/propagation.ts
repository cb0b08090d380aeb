/**
 * W3C trace-context propagation over gRPC metadata. The kit traces gRPC itself (in the handler
 * adapter and a client interceptor) rather than through `@opentelemetry/instrumentation-grpc`:
 * the spans are the same (OpenTelemetry RPC semantic conventions), but they work wherever the
 * kit runs — including under jest, whose module loader bypasses require hooks — and the kit
 * decides what is traced (health checks are not) and what goes on a span (never request data).
 */
import type { Metadata } from '@grpc/grpc-js';
import {
  context,
  propagation,
  type Context,
  type TextMapGetter,
  type TextMapSetter,
} from '@opentelemetry/api';

const metadataGetter: TextMapGetter<Metadata> = {
  keys: (carrier) => Object.keys(carrier.getMap()),
  get: (carrier, key) => {
    const values = carrier.get(key);
    if (values.length === 0) return undefined;
    return values.map((value) => (typeof value === 'string' ? value : value.toString('utf8')));
  },
};

const metadataSetter: TextMapSetter<Metadata> = {
  set: (carrier, key, value) => {
    carrier.set(key, value);
  },
};

/** Whether the caller sent any of the headers the global propagator reads (`traceparent`, …). */
export function carriesTraceContext(metadata: Metadata): boolean {
  for (const field of propagation.fields()) if (metadata.get(field).length > 0) return true;
  return false;
}

/** The trace context a caller sent in `traceparent` / `tracestate`. */
export function extractFromMetadata(metadata: Metadata): Context {
  return propagation.extract(context.active(), metadata, metadataGetter);
}

/** Writes the active (or given) trace context into outgoing metadata. */
export function injectIntoMetadata(metadata: Metadata, ctx: Context = context.active()): void {
  propagation.inject(ctx, metadata, metadataSetter);
}
