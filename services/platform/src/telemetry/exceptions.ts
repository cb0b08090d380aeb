/**
 * Exceptions on spans, causes included. An error a caller is shown says only which dependency
 * failed (storage, NATS); what the dependency said, which names hosts, ports and paths, is its
 * `cause`, and the span is where an operator looks for it.
 */
import type { Span } from '@opentelemetry/api';
import { causeChain } from '../errors';

/** Records `error` as an `exception` event, then each of its causes (`causeChain`) as one more. */
export function recordExceptionWithCauses(span: Span, error: Error): void {
  for (const e of causeChain(error)) span.recordException(e);
}
