/**
 * Exceptions on spans, causes included. An error a caller is shown says only which dependency
 * failed (storage, NATS); what the dependency said, which names hosts, ports and paths, is its
 * `cause`, and the span is where an operator looks for it. Spans are exported (to a collector,
 * often a hosted backend), so what they record loses the credentials of any URL in it, as logged
 * errors do (`logging.ts`).
 */
import type { Exception, Span } from '@opentelemetry/api';
import { causeChain } from '../errors';
import { withoutUrlCredentials } from '../logging';

/**
 * `error` as a span records it: its class name as `exception.type` (the SDK would take a
 * TandemError's numeric gRPC `code` instead), its message and stack without URL credentials.
 */
function exceptionOf(error: Error): Exception {
  return {
    name: error.name,
    message: withoutUrlCredentials(error.message),
    ...(error.stack === undefined ? {} : { stack: withoutUrlCredentials(error.stack) }),
  };
}

/** Records `error` as an `exception` event, then each of its causes (`causeChain`) as one more. */
export function recordExceptionWithCauses(span: Span, error: Error): void {
  for (const e of causeChain(error)) span.recordException(exceptionOf(e));
}

/** An error's message as a span's status description: without URL credentials. */
export function statusMessageOf(error: unknown): string {
  return withoutUrlCredentials(error instanceof Error ? error.message : String(error));
}
