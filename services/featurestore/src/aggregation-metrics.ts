/**
 * The stream aggregations' progress as OpenTelemetry metrics, read when the SDK collects (the
 * same figures as GetAggregationStatus, for every stream view this replica aggregates):
 * `tandem.featurestore.aggregation.events` by `tandem.feature_view` and `tandem.outcome`
 * (`processed`, `duplicate`, `dropped_late`, `dropped_invalid`), `….pending` (events the view's
 * consumer has yet to take, as NATS counts them) and `….delay` (seconds from the last event's time
 * to its processing). Exported only when telemetry exports metrics.
 */
import { metrics, type BatchObservableResult } from '@opentelemetry/api';
import type { OnlineViews } from './online-views';

/** Reports the aggregations of `views` from now on; returns the function that stops it. */
export function observeAggregations(views: OnlineViews, connected: () => boolean): () => void {
  const meter = metrics.getMeter('tandem.featurestore');
  const events = meter.createObservableCounter('tandem.featurestore.aggregation.events', {
    description: 'Outcome events a stream view took, by what became of them',
    unit: '{event}',
  });
  const pending = meter.createObservableGauge('tandem.featurestore.aggregation.pending', {
    description: 'Events published on the view subject that its consumer has yet to take',
    unit: '{event}',
  });
  const delay = meter.createObservableGauge('tandem.featurestore.aggregation.delay', {
    description: "From the last processed event's time to its processing",
    unit: 's',
  });
  const observe = async (result: BatchObservableResult): Promise<void> => {
    const isConnected = connected();
    for (const name of views.streamViewNames()) {
      // A view deleted since it was listed is skipped.
      const status = await views.aggregationStatus(name, isConnected).catch(() => undefined);
      if (status === undefined) continue;
      const view = { 'tandem.feature_view': name };
      const outcomes = {
        processed: status.eventsProcessed,
        duplicate: status.eventsDuplicate,
        dropped_late: status.eventsDroppedLate,
        dropped_invalid: status.eventsDroppedInvalid,
      };
      for (const [outcome, count] of Object.entries(outcomes)) {
        result.observe(events, count, { ...view, 'tandem.outcome': outcome });
      }
      if (isConnected) result.observe(pending, status.pendingEvents, view);
      const processingDelay = status.processingDelay;
      if (processingDelay !== undefined) {
        result.observe(delay, processingDelay.seconds + processingDelay.nanos / 1e9, view);
      }
    }
  };
  const instruments = [events, pending, delay];
  meter.addBatchObservableCallback(observe, instruments);
  return () => {
    meter.removeBatchObservableCallback(observe, instruments);
  };
}
