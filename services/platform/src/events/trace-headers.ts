/**
 * W3C trace context in event headers, so a trace continues from producer to consumer.
 *
 * Both adapters keep headers as a plain `Record<string, string>` at this point (the NATS adapter
 * converts to and from `MsgHdrs` at its edge), so one carrier serves both. Only
 * `@opentelemetry/api` is used: with no SDK registered, inject and extract are no-ops.
 */
import {
  context,
  propagation,
  ROOT_CONTEXT,
  type Context,
  type TextMapGetter,
  type TextMapSetter,
} from '@opentelemetry/api';

type Headers = Record<string, string>;

const headerSetter: TextMapSetter<Headers> = {
  set(carrier, key, value) {
    carrier[key] = value;
  },
};

/**
 * Reads a header whatever its case: W3C names are lower case, but a producer outside Tandem (or a
 * proxy) may have canonicalised them to `Traceparent`.
 */
const headerGetter: TextMapGetter<Readonly<Headers>> = {
  keys(carrier) {
    return Object.keys(carrier);
  },
  get(carrier, key) {
    const exact = carrier[key];
    if (exact !== undefined) return exact;
    const lower = key.toLowerCase();
    const found = Object.keys(carrier).find((name) => name.toLowerCase() === lower);
    return found === undefined ? undefined : carrier[found];
  },
};

/** Adds `traceparent` (and `tracestate`) for `ctx` to `headers`, in place. */
export function injectTraceContext(headers: Headers, ctx: Context = context.active()): void {
  propagation.inject(ctx, headers, headerSetter);
}

/**
 * The context a consumer span should continue: the producer's, read from `headers`. It starts
 * from the root, not the active context, so an event without trace headers begins a new trace
 * instead of joining whatever happened to be active where the subscription was started.
 */
export function extractTraceContext(headers: Readonly<Headers>): Context {
  return propagation.extract(ROOT_CONTEXT, headers, headerGetter);
}
