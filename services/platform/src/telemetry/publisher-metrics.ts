/**
 * A buffered publisher's counts as OpenTelemetry metrics, read when the SDK collects (nothing is
 * done per event): `tandem.events.publisher.queued` (events waiting, as a gauge) and the counters
 * `….published`, `….dropped` and `….failed_attempts`, each with `tandem.publisher` naming the
 * publisher (`exposures`). Exported only when telemetry exports metrics (see `sdk.ts`).
 */
import { metrics, type BatchObservableResult } from '@opentelemetry/api';
import type { BufferedPublisherStats } from '../events/buffered-publisher';

/**
 * Reports `publisher`'s stats under `name` from now on; returns the function that stops it. A
 * service keeps it to the end, so the last export at shutdown has what closing it dropped.
 */
export function observePublisher(
  name: string,
  publisher: { stats(): BufferedPublisherStats },
): () => void {
  const meter = metrics.getMeter('tandem.events');
  const queued = meter.createObservableGauge('tandem.events.publisher.queued', {
    description: 'Events waiting to be published (NATS unreachable, or a backlog being sent)',
    unit: '{event}',
  });
  const published = meter.createObservableCounter('tandem.events.publisher.published', {
    description: 'Events the stream acknowledged',
    unit: '{event}',
  });
  const dropped = meter.createObservableCounter('tandem.events.publisher.dropped', {
    description: 'Events given up on: buffer full, publisher closed, not encodable or refused',
    unit: '{event}',
  });
  const failedAttempts = meter.createObservableCounter('tandem.events.publisher.failed_attempts', {
    description: 'Publish attempts that failed and were retried',
    unit: '{attempt}',
  });
  const spooled = meter.createObservableCounter('tandem.events.publisher.spooled', {
    description:
      'Events still queued when the publisher closed, kept in storage for the next start',
    unit: '{event}',
  });
  const restored = meter.createObservableCounter('tandem.events.publisher.restored', {
    description: 'Events taken from storage at start, kept by a publisher that closed',
    unit: '{event}',
  });
  const attributes = { 'tandem.publisher': name };
  const observe = (result: BatchObservableResult): void => {
    const stats = publisher.stats();
    result.observe(queued, stats.queued, attributes);
    result.observe(published, stats.published, attributes);
    result.observe(dropped, stats.dropped, attributes);
    result.observe(failedAttempts, stats.failedAttempts, attributes);
    result.observe(spooled, stats.spooled, attributes);
    result.observe(restored, stats.restored, attributes);
  };
  const instruments = [queued, published, dropped, failedAttempts, spooled, restored];
  meter.addBatchObservableCallback(observe, instruments);
  return () => {
    meter.removeBatchObservableCallback(observe, instruments);
  };
}
