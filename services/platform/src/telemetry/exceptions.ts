/**
 * Exceptions on spans, causes included. An error a caller is shown says only which dependency
 * failed (storage, NATS); what the dependency said, which names hosts, ports and paths, is its
 * `cause`, and the span is where an operator looks for it.
 */
import type { Span } from '@opentelemetry/api';

/** Causes recorded beyond the error itself: enough for a wrapped driver error, bounded. */
const MAX_CAUSES = 3;

/**
 * Records `error` as an `exception` event, then each of its causes (that are errors) as one more,
 * outermost first.
 */
export function recordExceptionWithCauses(span: Span, error: Error): void {
  const seen = new Set<unknown>();
  let current: unknown = error;
  for (let depth = 0; depth <= MAX_CAUSES; depth++) {
    if (!(current instanceof Error) || seen.has(current)) return;
    seen.add(current);
    span.recordException(current);
    current = current.cause;
  }
}
