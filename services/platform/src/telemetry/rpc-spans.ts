/**
 * Spans for gRPC calls, following the OpenTelemetry RPC semantic conventions: span name
 * `package.Service/Method`, `rpc.system=grpc`, `rpc.service`, `rpc.method`,
 * `rpc.grpc.status_code`. Server spans are ERROR only for codes that mean the server failed.
 */
import { status as GrpcCode } from '@grpc/grpc-js';
import { SpanKind, SpanStatusCode, trace, type Context, type Span } from '@opentelemetry/api';

const tracer = trace.getTracer('tandem.grpc');

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
  const { service, method } = parseMethodPath(path);
  return tracer.startSpan(
    `${service}/${method}`,
    {
      kind,
      attributes: { 'rpc.system': 'grpc', 'rpc.service': service, 'rpc.method': method },
    },
    parent,
  );
}

/** Ends a call's span with its status code; `error` is recorded for server faults only. */
export function endRpcSpan(span: Span, kind: SpanKind, code: GrpcCode, error?: unknown): void {
  span.setAttribute('rpc.grpc.status_code', code);
  const isFault = kind === SpanKind.SERVER ? SERVER_FAULTS.has(code) : code !== GrpcCode.OK;
  if (isFault) {
    if (error instanceof Error) span.recordException(error);
    span.setStatus({ code: SpanStatusCode.ERROR, message: GrpcCode[code] });
  }
  span.end();
}
