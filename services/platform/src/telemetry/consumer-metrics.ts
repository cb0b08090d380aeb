/**
 * Subscriptions' counts as OpenTelemetry metrics, read when the SDK collects (nothing is done per
 * event): the counters `tandem.events.consumer.acked`, `….retried`, `….dropped` and `….poison`,
 * each with `tandem.stream` and `tandem.durable` naming the durable consumer. Both bus adapters
 * register every subscription they start and unregister it once it has stopped. Exported only when
 * telemetry exports metrics (see `sdk.ts`).
 *
 * `dropped` is the one to alert on: each is an event given up on for good, its handler having
 * failed `maxDeliver` times (or its delivery count having reached 3 × `maxDeliver`), so its effect
 * is lost unless someone replays it from the log line. `retried` rises with any transient failure
 * (a dependency down, a handler overrunning its ack wait) and heals by itself; `poison` counts
 * events the consumer's codec could not decode (a producer's bug, terminated at once and logged).
 * `acked` counts deliveries, so an event redelivered after a lost acknowledgement counts again.
 *
 * Durable names are bounded by configuration: fixed names, one per replica
 * (`assignment-config-<replica>`), one per stream feature view and replica
 * (`featurestore-<view>-<replica>`), never one per request. FeatureStore's aggregation reports
 * its consumer's poison events in `tandem.featurestore.aggregation.events` as `dropped_invalid`
 * too: do not add the two up.
 *
 * Subscriptions of one durable running at once in a process are reported together, as their
 * sum: the SDK cannot take two observations of the same attributes. One that stops while another
 * goes on leaves its counts in the sum; once the last one stops the durable is no longer
 * observed, and one subscribing again starts from zero, which backends read as a counter reset
 * (as a FeatureStore view deleted and created again does). With cumulative temporality (OTLP's
 * default, and Prometheus's only one) the SDK keeps exporting a stopped durable's last counts for
 * the life of the process: one series per deleted stream view and replica. Counts made between
 * the last collection and a subscription's stop are not exported.
 */
import { metrics, type BatchObservableResult, type ObservableCounter } from '@opentelemetry/api';
import type { SubscriptionStats } from '../events/bus';

/** What is observed of a subscription. */
export interface ObservedSubscription {
  stats(): SubscriptionStats;
}

const NONE: SubscriptionStats = { acked: 0, retried: 0, dropped: 0, poison: 0 };

function plus(a: SubscriptionStats, b: SubscriptionStats): SubscriptionStats {
  return {
    acked: a.acked + b.acked,
    retried: a.retried + b.retried,
    dropped: a.dropped + b.dropped,
    poison: a.poison + b.poison,
  };
}

/** The subscriptions of one durable, reported by one callback as long as one of them runs. */
class ObservedDurable {
  readonly live = new Set<ObservedSubscription>();
  /** The final counts of those that stopped while another went on. */
  retired = NONE;
  private readonly meter = metrics.getMeter('tandem.events');
  private readonly instruments: ObservableCounter[];
  private readonly observe: (result: BatchObservableResult) => void;

  constructor(stream: string, durable: string) {
    const meter = this.meter;
    const acked = meter.createObservableCounter('tandem.events.consumer.acked', {
      description: 'Deliveries whose handler succeeded, so the event was acknowledged',
      unit: '{event}',
    });
    const retried = meter.createObservableCounter('tandem.events.consumer.retried', {
      description: 'Deliveries whose handler failed or overran the ack wait; the event comes again',
      unit: '{event}',
    });
    const dropped = meter.createObservableCounter('tandem.events.consumer.dropped', {
      description:
        'Events given up on after their last allowed delivery failed (maxDeliver): their effect is lost',
      unit: '{event}',
    });
    const poison = meter.createObservableCounter('tandem.events.consumer.poison', {
      description: "Events the consumer's codec could not decode, terminated at once",
      unit: '{event}',
    });
    const attributes = { 'tandem.stream': stream, 'tandem.durable': durable };
    this.observe = (result) => {
      let stats = this.retired;
      for (const subscription of this.live) stats = plus(stats, subscription.stats());
      result.observe(acked, stats.acked, attributes);
      result.observe(retried, stats.retried, attributes);
      result.observe(dropped, stats.dropped, attributes);
      result.observe(poison, stats.poison, attributes);
    };
    this.instruments = [acked, retried, dropped, poison];
    meter.addBatchObservableCallback(this.observe, this.instruments);
  }

  unregister(): void {
    this.meter.removeBatchObservableCallback(this.observe, this.instruments);
  }
}

/** By stream and durable (see `durableKey`). */
const observed = new Map<string, ObservedDurable>();

function durableKey(stream: string, durable: string): string {
  return JSON.stringify([stream, durable]);
}

/**
 * Reports `subscription`'s stats under its stream and durable from now on; returns the function
 * that stops it, which the adapter calls once the subscription has stopped (calling it again does
 * nothing).
 */
export function observeSubscription(
  consumer: { readonly stream: string; readonly durable: string },
  subscription: ObservedSubscription,
): () => void {
  const key = durableKey(consumer.stream, consumer.durable);
  let entry = observed.get(key);
  if (entry === undefined) {
    entry = new ObservedDurable(consumer.stream, consumer.durable);
    observed.set(key, entry);
  }
  const reported = entry;
  reported.live.add(subscription);
  return () => {
    if (!reported.live.delete(subscription)) return;
    if (reported.live.size > 0) {
      reported.retired = plus(reported.retired, subscription.stats());
      return;
    }
    reported.unregister();
    observed.delete(key);
  };
}
