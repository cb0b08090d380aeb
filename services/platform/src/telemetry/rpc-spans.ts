/**
 * Spans for gRPC calls, following the OpenTelemetry RPC semantic conventions: span name
 * `package.Service/Method`, `rpc.system=grpc`, `rpc.service`, `rpc.method`,
 * `rpc.grpc.status_code`. Server spans are ERROR only for codes that mean the server failed.
 */
import { status as GrpcCode } from '@grpc/grpc-js';
import {
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Context,
  type Span,
} from '@opentelemetry/api';
import { recordExceptionWithCauses } from './exceptions';

const tracer = trace.getTracer('tandem.grpc');

/** How often {@link tracingRecords} looks again (a provider may be registered after start-up). */
const PROBE_INTERVAL_MS = 1000;
let probedAt = -Infinity;
let providerRegistered = false;

/**
 * Whether a tracer provider is registered, so spans may be recorded. Without one every span is a
 * non-recording placeholder, and a call that brings no trace context has nothing to propagate:
 * the kit then skips its span and context work, which on a busy server cost a fifth of a bare
 * echo call's CPU. The API has no query for it, but only a registered provider gives a new root
 * span a valid trace id (sampled or not); the probe is never ended, so never exported.
 */
export function tracingRecords(): boolean {
  const now = Date.now();
  if (now - probedAt >= PROBE_INTERVAL_MS) {
    probedAt = now;
    providerRegistered = trace.isSpanContextValid(
      tracer.startSpan('tandem.tracing-probe', {}, ROOT_CONTEXT).spanContext(),
    );
  }
  return providerRegistered;
}

/** Codes that mean the server failed, not the caller (OpenTelemetry RPC conventions). */
const SERVER_FAULTS = new Set<GrpcCode>([
  GrpcCode.UNKNOWN,
  GrpcCode.DEADLINE_EXCEEDED,
  GrpcCode.UNIMPLEMENTED,
  GrpcCode.INTERNAL,
  GrpcCode.UNAVAILABLE,
  GrpcCode.DATA_LOSS,
]);

/** Splits `/tandem.echo.v1.EchoService/Echo` into service and method. */
export function parseMethodPath(path: string): { service: string; method: string } {
  const [, service = '', method = ''] = path.split('/');
  return { service, method };
}

/** Starts the span of a call; `kind` is SERVER in the adapter and CLIENT in the interceptor. */
export function startRpcSpan(path: string, kind: SpanKind, parent: Context): Span {
  return rpcSpanStarter(path, kind)(parent);
}

/** {@link startRpcSpan} for one method, with its span name and attributes made once. */
export function rpcSpanStarter(path: string, kind: SpanKind): (parent: Context) => Span {
  const { service, method } = parseMethodPath(path);
  const name = `${service}/${method}`;
  const attributes: Attributes = Object.freeze({
    'rpc.system': 'grpc',
    'rpc.service': service,
    'rpc.method': method,
  });
  // The SDK copies the attributes it records, so one frozen object serves every call.
  return (parent) => tracer.startSpan(name, { kind, attributes }, parent);
}

/**
 * Ends a call's span with its status code; `error` is recorded for server faults only, with its
 * causes: the caller's message leaves out what a dependency said, the span keeps it.
 */
export function endRpcSpan(span: Span, kind: SpanKind, code: GrpcCode, error?: unknown): void {
  span.setAttribute('rpc.grpc.status_code', code);
  const isFault = kind === SpanKind.SERVER ? SERVER_FAULTS.has(code) : code !== GrpcCode.OK;
  if (isFault) {
    if (error instanceof Error) recordExceptionWithCauses(span, error);
    span.setStatus({ code: SpanStatusCode.ERROR, message: GrpcCode[code] });
  }
  span.end();
}
