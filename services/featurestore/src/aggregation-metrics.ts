/**
 * The stream aggregations' progress as OpenTelemetry metrics, read when the SDK collects (the
 * figures GetAggregationStatus gives, for every stream view this replica aggregates):
 * `tandem.featurestore.aggregation.events` by `tandem.feature_view` and `tandem.outcome`
 * (`processed`, `duplicate`, `dropped_late`, `dropped_invalid`) and `….delay` (seconds from the
 * last processed event's time to its processing). Exported only when telemetry exports metrics.
 *
 * Not the consumer's pending count: asking NATS for it at each collection would make a scrape
 * wait on JetStream (seconds per view when it is slow), and while NATS is unreachable the last
 * value would be exported on, frozen. NATS's own monitoring reports it (`/jsz?consumers=true`).
 * The counts start from the checkpointed totals when a replica starts, and a view created again
 * starts them from zero, which metric backends read as a counter reset.
 */
import { metrics, type BatchObservableResult } from '@opentelemetry/api';
import type { OnlineViews } from './online-views';

/**
 * Reports the aggregations of `views` from now on; returns the function that stops it. A
 * service keeps it to the end, so the last export at shutdown still has the final counts.
 */
export function observeAggregations(views: Pick<OnlineViews, 'aggregationCounts'>): () => void {
  const meter = metrics.getMeter('tandem.featurestore');
  const events = meter.createObservableCounter('tandem.featurestore.aggregation.events', {
    description: 'Outcome events a stream view took, by what became of them',
    unit: '{event}',
  });
  const delay = meter.createObservableGauge('tandem.featurestore.aggregation.delay', {
    description: "From the last processed event's time to its processing",
    unit: 's',
  });
  const observe = (result: BatchObservableResult): void => {
    for (const counts of views.aggregationCounts()) {
      const view = { 'tandem.feature_view': counts.view };
      const outcomes = {
        processed: counts.processed,
        duplicate: counts.duplicate,
        dropped_late: counts.droppedLate,
        dropped_invalid: counts.droppedInvalid,
      };
      for (const [outcome, count] of Object.entries(outcomes)) {
        result.observe(events, count, { ...view, 'tandem.outcome': outcome });
      }
      if (counts.delayMs !== undefined) result.observe(delay, counts.delayMs / 1000, view);
    }
  };
  const instruments = [events, delay];
  meter.addBatchObservableCallback(observe, instruments);
  return () => {
    meter.removeBatchObservableCallback(observe, instruments);
  };
}
