/**
 * LAST over an event field serves values of the feature's declared type only: a value of the other
 * type is skipped and counted as invalid, also when it comes from an older checkpoint.
 */
import { ValueType } from '../../src/domain/feature-values';
import { windowAggregationSpecs, type FeatureViewDefinition } from '../../src/domain/registry';
import {
  AggregationFunction,
  AggregationKey,
  WindowAggregator,
  type AggregatedValue,
} from '../../src/domain/window-aggregation';

const t0 = 1_700_000_000_000;
const minute = 60_000;

const itemMood: FeatureViewDefinition = {
  name: 'item_mood',
  description: '',
  owner: '',
  tags: {},
  entities: ['item'],
  features: [
    { name: 'level', valueType: ValueType.String, description: '', vectorLength: 0 },
    { name: 'score', valueType: ValueType.Double, description: '', vectorLength: 0 },
  ],
  ttlMs: 0,
  source: {
    kind: 'stream',
    subject: 'tandem.events.v1.outcome.mood',
    eventNames: [],
    key: AggregationKey.ItemId,
    aggregations: [
      {
        feature: 'level',
        function: AggregationFunction.Last,
        valueField: 'properties.level',
        windowMs: 60 * minute,
      },
      {
        feature: 'score',
        function: AggregationFunction.Last,
        valueField: 'properties.score',
        windowMs: 60 * minute,
      },
    ],
  },
};

const options = {
  aggregations: windowAggregationSpecs(itemMood),
  allowedLatenessMs: 60 * minute,
};

function mood(id: string, eventTime: number, level: AggregatedValue, score: AggregatedValue) {
  return { eventId: id, key: 'i1', eventTime, values: [level, score] };
}

describe('LAST of a typed feature', () => {
  it('resolves each aggregation with the type its feature declares', () => {
    expect(options.aggregations.map((a) => a.valueType)).toEqual([
      ValueType.String,
      ValueType.Double,
    ]);
  });

  it('skips a value of the other type and counts the event as invalid', () => {
    const aggregator = new WindowAggregator(options);
    expect(aggregator.ingest(mood('e1', t0, 7, 'high'), t0)).toBe('accepted');
    expect(aggregator.read(['i1'], t0).values).toEqual([null, null]);
    expect(aggregator.status().eventsDroppedInvalid).toBe(1);

    aggregator.ingest(mood('e2', t0 + 1, 'high', 7), t0 + 1);
    aggregator.ingest(mood('e3', t0 + 2, 8, 'low'), t0 + 2);
    expect(aggregator.read(['i1'], t0 + 2).values).toEqual(['high', 7]);
    expect(aggregator.status().eventsDroppedInvalid).toBe(2);
    expect(aggregator.status().eventsProcessed).toBe(3);
  });

  it('restores a checkpoint taken with the same aggregations listed in another order', () => {
    const aggregator = new WindowAggregator(options);
    aggregator.ingest(mood('e1', t0, 'high', 7), t0);
    aggregator.ingest(mood('e2', t0 + minute, 'low', 8), t0 + minute);
    const reordered = { ...options, aggregations: [...options.aggregations].reverse() };
    const restored = WindowAggregator.restore(reordered, aggregator.checkpoint());
    expect(restored.read(['i1'], t0 + minute).values).toEqual(
      [...aggregator.read(['i1'], t0 + minute).values].reverse(),
    );
    // Other definitions are still refused.
    const other = { ...options, aggregations: options.aggregations.slice(0, 1) };
    expect(() => WindowAggregator.restore(other, aggregator.checkpoint())).toThrow(
      /other aggregation definitions/,
    );
  });

  it('drops a mistyped value restored from a checkpoint taken before types were checked', () => {
    const untyped = new WindowAggregator({
      ...options,
      aggregations: options.aggregations.map(({ valueType: _, ...spec }) => spec),
    });
    untyped.ingest(mood('e1', t0, 'high', 7), t0);
    untyped.ingest(mood('e2', t0 + minute, 8, 'low'), t0 + minute);
    expect(untyped.read(['i1'], t0 + minute).values).toEqual([8, 'low']);

    const restored = WindowAggregator.restore(options, untyped.checkpoint());
    expect(restored.read(['i1'], t0 + minute).values).toEqual(['high', 7]);
  });
});
