/**
 * Deletes this replica's durable consumer of a stream-sourced view once the view is gone, deleted
 * here or on another replica, as DeleteFeatureView promises: left behind, it would keep its place
 * in the stream for nothing. Called once the views have been reconciled, so the view's aggregation
 * has stopped (a running subscription would declare its durable again).
 */
import type { EventBus } from '../../../platform/src/events/bus';
import type { Logger } from '../../../platform/src/logging';
import type { FeatureViewDefinition } from '../domain/registry';
import type { Registered } from '../feature-registry';
import { aggregationDurable } from './stream-aggregation';

export interface AggregationDurablesParts {
  readonly bus: EventBus;
  readonly stream: string;
  readonly replicaId: string;
  readonly logger: Logger;
}

type Views = ReadonlyMap<string, Registered<FeatureViewDefinition>>;

function streamViewNames(views: Views): Set<string> {
  const names = new Set<string>();
  for (const [name, registered] of views) {
    if (registered.definition.source?.kind === 'stream') names.add(name);
  }
  return names;
}

export class AggregationDurables {
  private streamViews: Set<string>;
  private deleting: Promise<void> = Promise.resolve();

  /** `views`: the views served now, whose durables may exist. */
  constructor(
    private readonly parts: AggregationDurablesParts,
    views: Views,
  ) {
    this.streamViews = streamViewNames(views);
  }

  /**
   * Deletes the durables of the stream-sourced views seen before and not in `views`; resolves once
   * every deletion asked for so far has ended. A failed deletion is logged, not thrown: the view
   * is gone either way, and applied again it starts afresh (see StreamAggregation).
   */
  deleteRetired(views: Views): Promise<void> {
    const retired = [...this.streamViews].filter(
      (name) => views.get(name)?.definition.source?.kind !== 'stream',
    );
    this.streamViews = streamViewNames(views);
    this.deleting = Promise.all([this.deleting, ...retired.map((name) => this.delete(name))]).then(
      () => undefined,
    );
    return this.deleting;
  }

  private async delete(view: string): Promise<void> {
    const { bus, stream, replicaId, logger } = this.parts;
    const durable = aggregationDurable(view, replicaId);
    try {
      await bus.deleteConsumer?.(stream, durable);
    } catch (error) {
      logger.warn({ err: error, view, durable }, 'aggregation consumer of a deleted view remains');
    }
  }
}
