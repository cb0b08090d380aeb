import { ValueType } from '../../src/domain/feature-values';
import {
  checkViewEntities,
  diffEntity,
  diffFeatureView,
  validateEntity,
  validateFeatureView,
  windowAggregationSpecs,
  type EntityDefinition,
  type FeatureViewDefinition,
  type StreamSource,
} from '../../src/domain/registry';
import { AggregationFunction, AggregationKey } from '../../src/domain/window-aggregation';

const hour = 3_600_000;

const user: EntityDefinition = {
  name: 'user',
  joinKey: 'user_id',
  valueType: ValueType.String,
  description: 'a listener',
  owner: 'home-team',
};
const item: EntityDefinition = { ...user, name: 'item', joinKey: 'item_id' };

const userStats: FeatureViewDefinition = {
  name: 'user_stats',
  description: 'per-user engagement',
  owner: 'home-team',
  tags: { team: 'home' },
  entities: ['user'],
  features: [
    { name: 'ctr', valueType: ValueType.Double, description: '', vectorLength: 0 },
    { name: 'embedding', valueType: ValueType.FloatVector, description: '', vectorLength: 64 },
  ],
  ttlMs: 24 * hour,
  source: { kind: 'push' },
};

const playsSource: StreamSource = {
  kind: 'stream',
  subject: 'tandem.events.v1.outcome.play',
  eventNames: [],
  key: AggregationKey.ItemId,
  aggregations: [
    { feature: 'plays_1h', function: AggregationFunction.Count, valueField: '', windowMs: hour },
    {
      feature: 'seconds_1d',
      function: AggregationFunction.Sum,
      valueField: 'properties.watch_seconds',
      windowMs: 24 * hour,
      bucketMs: hour,
    },
  ],
};

const itemPlays: FeatureViewDefinition = {
  name: 'item_plays',
  description: '',
  owner: '',
  tags: {},
  entities: ['item'],
  features: [
    { name: 'plays_1h', valueType: ValueType.Int64, description: '', vectorLength: 0 },
    { name: 'seconds_1d', valueType: ValueType.Double, description: '', vectorLength: 0 },
  ],
  ttlMs: 0,
  source: playsSource,
};

describe('validateFeatureView', () => {
  it('accepts well-formed push and stream views', () => {
    expect(validateFeatureView(userStats)).toEqual([]);
    expect(validateFeatureView(itemPlays)).toEqual([]);
  });

  it('reports every problem at once, each with its field path and reason', () => {
    const broken: FeatureViewDefinition = {
      ...userStats,
      name: 'User Stats',
      entities: [],
      features: [
        { name: 'ctr', valueType: ValueType.Double, description: '', vectorLength: 0 },
        { name: 'ctr', valueType: ValueType.Unspecified, description: '', vectorLength: 3 },
      ],
      ttlMs: -1,
      source: undefined,
    };
    expect(validateFeatureView(broken).map((v) => [v.field, v.reason])).toEqual([
      ['name', 'INVALID_NAME'],
      ['entities', 'REQUIRED'],
      ['features[1].name', 'DUPLICATE_FEATURE'],
      ['features[1].value_type', 'REQUIRED'],
      ['features[1].vector_length', 'MUST_BE_UNSET'],
      ['ttl', 'OUT_OF_RANGE'],
      ['source', 'REQUIRED'],
    ]);
  });

  it('refuses an entity name no entity can have as a bad request, not as a missing entity', () => {
    const named = { ...userStats, entities: ['', 'User!', 'user'] };
    expect(validateFeatureView(named).map((v) => [v.field, v.reason])).toEqual([
      ['entities[0]', 'INVALID_NAME'],
      ['entities[1]', 'INVALID_NAME'],
    ]);
  });

  it('checks stream sources: subject, key, aggregation types, windows, buckets, lateness and TTL', () => {
    const broken: FeatureViewDefinition = {
      ...itemPlays,
      entities: ['item', 'user'],
      ttlMs: hour,
      features: [
        ...itemPlays.features,
        { name: 'orphan', valueType: ValueType.Int64, description: '', vectorLength: 0 },
      ],
      source: {
        ...playsSource,
        subject: 'tandem.events.v1.exposure',
        key: AggregationKey.Unspecified,
        allowedLatenessMs: 48 * hour,
        aggregations: [
          {
            feature: 'plays_1h',
            function: AggregationFunction.Sum,
            valueField: 'value',
            windowMs: hour,
          },
          {
            feature: 'seconds_1d',
            function: AggregationFunction.Count,
            valueField: 'value',
            windowMs: 24 * hour,
            bucketMs: 7 * 60_000,
          },
        ],
      },
    };
    expect(validateFeatureView(broken).map((v) => [v.field, v.reason])).toEqual([
      ['entities', 'ONE_ENTITY_REQUIRED'],
      ['stream_source.subject', 'INVALID_SUBJECT'],
      ['stream_source.key', 'REQUIRED'],
      ['stream_source.aggregations[0].feature', 'WRONG_VALUE_TYPE'],
      ['stream_source.aggregations[1].feature', 'WRONG_VALUE_TYPE'],
      ['stream_source.aggregations[1].value_field', 'MUST_BE_UNSET'],
      ['stream_source.aggregations[1].window', 'NOT_A_MULTIPLE'],
      ['features[2]', 'NOT_AGGREGATED'],
      ['stream_source.allowed_lateness', 'OUT_OF_RANGE'],
      ['ttl', 'OUT_OF_RANGE'],
    ]);
  });

  it('reads only OutcomeEvent fields, and takes one event name (or a wildcard) as the subject', () => {
    const withSum = (valueField: string): FeatureViewDefinition => ({
      ...itemPlays,
      source: {
        ...playsSource,
        aggregations: [
          playsSource.aggregations[0]!,
          { ...playsSource.aggregations[1]!, valueField },
        ],
      },
    });
    for (const field of ['value', 'properties.watch_seconds', 'properties.a.b-c']) {
      expect(validateFeatureView(withSum(field))).toEqual([]);
    }
    // Each would make every event invalid: no such field, or not a value of it.
    for (const field of ['foo', 'unit.foo', 'constructor', 'to_string', 'value.x', 'properties']) {
      expect(validateFeatureView(withSum(field)).map((v) => [v.field, v.reason])).toEqual([
        ['stream_source.aggregations[1].value_field', 'INVALID_PATH'],
      ]);
    }
    // Every OutcomeEvent field but `value` is a string: no number to sum, and LAST of one is a
    // string (properties may hold either, so they are not judged).
    const withFunction = (
      fn: AggregationFunction,
      valueField: string,
      valueType: ValueType,
    ): FeatureViewDefinition => ({
      ...itemPlays,
      features: itemPlays.features.map((f) => (f.name === 'seconds_1d' ? { ...f, valueType } : f)),
      source: {
        ...playsSource,
        aggregations: [
          playsSource.aggregations[0]!,
          { ...playsSource.aggregations[1]!, function: fn, valueField },
        ],
      },
    });
    const { Sum, Mean, Min, Max, Last, DistinctCount } = AggregationFunction;
    for (const fn of [Sum, Mean, Min, Max]) {
      for (const field of ['item_id', 'unit.id', 'unit.type', 'name', 'surface']) {
        expect(
          validateFeatureView(withFunction(fn, field, ValueType.Double)).map((v) => [
            v.field,
            v.reason,
          ]),
        ).toEqual([['stream_source.aggregations[1].value_field', 'VALUE_FIELD_TYPE']]);
      }
    }
    expect(
      validateFeatureView(withFunction(Last, 'item_id', ValueType.Double)).map((v) => v.reason),
    ).toEqual(['VALUE_FIELD_TYPE']);
    for (const ok of [
      withFunction(Last, 'item_id', ValueType.String),
      withFunction(Last, 'properties.genre', ValueType.String),
      withFunction(Last, 'properties.rating', ValueType.Double),
      withFunction(DistinctCount, 'unit.id', ValueType.Int64),
      withFunction(Max, 'value', ValueType.Double),
    ]) {
      expect(validateFeatureView(ok)).toEqual([]);
    }
    const subject = (s: string): FeatureViewDefinition => ({
      ...itemPlays,
      source: { ...playsSource, subject: s },
    });
    for (const ok of ['play', '*', '>']) {
      expect(validateFeatureView(subject(`tandem.events.v1.outcome.${ok}`))).toEqual([]);
    }
    for (const never of ['a.b.c', 'play.>', '*.play']) {
      expect(
        validateFeatureView(subject(`tandem.events.v1.outcome.${never}`)).map((v) => v.field),
      ).toEqual(['stream_source.subject']);
    }
  });

  it('refuses a negative bucket rather than taking the default for it', () => {
    const negative: FeatureViewDefinition = {
      ...itemPlays,
      source: {
        ...playsSource,
        aggregations: [
          playsSource.aggregations[0]!,
          { ...playsSource.aggregations[1]!, bucketMs: -hour },
        ],
      },
    };
    expect(validateFeatureView(negative).map((v) => [v.field, v.reason])).toEqual([
      ['stream_source.aggregations[1].bucket', 'OUT_OF_RANGE'],
    ]);
  });

  it('asks for an explicit bucket when window / 60 is under one second', () => {
    const short: FeatureViewDefinition = {
      ...itemPlays,
      features: [itemPlays.features[0]!],
      source: {
        ...playsSource,
        aggregations: [
          {
            feature: 'plays_1h',
            function: AggregationFunction.Count,
            valueField: '',
            windowMs: 30_000,
          },
        ],
      },
    };
    expect(validateFeatureView(short)).toEqual([
      {
        field: 'stream_source.aggregations[0].bucket',
        description: 'the default (window / 60) is under 1s or not whole ms: set bucket explicitly',
        reason: 'OUT_OF_RANGE',
      },
    ]);
  });

  it('resolves aggregation specs in feature order with default buckets and feature types', () => {
    expect(windowAggregationSpecs(itemPlays)).toEqual([
      {
        feature: 'plays_1h',
        function: AggregationFunction.Count,
        windowMs: hour,
        bucketMs: 60_000,
        valueType: ValueType.Int64,
      },
      {
        feature: 'seconds_1d',
        function: AggregationFunction.Sum,
        windowMs: 24 * hour,
        bucketMs: hour,
        valueType: ValueType.Double,
      },
    ]);
  });
});

describe('checkViewEntities', () => {
  it('lists missing entities and join-key and type conflicts separately', () => {
    const entities = new Map([
      ['user', user],
      ['listener', { ...user, name: 'listener' }],
      ['track', { ...item, name: 'track', valueType: ValueType.Int64 }],
    ]);
    expect(
      checkViewEntities({ ...userStats, entities: ['user', 'listener', 'ghost'] }, entities),
    ).toEqual({
      missing: ['ghost'],
      violations: [
        {
          field: 'entities[1]',
          description: 'join key user_id is also the join key of entity user',
          reason: 'DUPLICATE_JOIN_KEY',
        },
      ],
    });
    expect(
      checkViewEntities({ ...itemPlays, entities: ['track'] }, entities).violations,
    ).toHaveLength(1);
  });
});

describe('diffFeatureView', () => {
  it('says an identical definition is unchanged, so apply keeps the etag', () => {
    expect(diffFeatureView(userStats, { ...userStats, tags: { team: 'home' } })).toEqual({
      kind: 'unchanged',
    });
    expect(diffFeatureView(itemPlays, { ...itemPlays, online: true })).toEqual({
      kind: 'unchanged',
    });
  });

  it('accepts metadata, TTL, online and new features on a push view as compatible', () => {
    const proposed: FeatureViewDefinition = {
      ...userStats,
      description: 'new words',
      ttlMs: hour,
      online: false,
      features: [
        ...userStats.features,
        { name: 'skips', valueType: ValueType.Int64, description: '', vectorLength: 0 },
      ],
    };
    expect(diffFeatureView(userStats, proposed)).toEqual({
      kind: 'compatible',
      changes: ['features.skips', 'description', 'ttl', 'online'],
    });
  });

  it('refuses a type change, a vector length change, a removed feature and new entities, with reasons', () => {
    const proposed: FeatureViewDefinition = {
      ...userStats,
      entities: ['user', 'item'],
      features: [{ name: 'ctr', valueType: ValueType.Int64, description: '', vectorLength: 0 }],
    };
    expect(diffFeatureView(userStats, proposed)).toEqual({
      kind: 'incompatible',
      changes: [
        { subject: 'entities', description: 'the entities cannot change (user → user, item)' },
        {
          subject: 'features.ctr.value_type',
          description: 'the type cannot change (VALUE_TYPE_DOUBLE → VALUE_TYPE_INT64)',
        },
        { subject: 'features.embedding', description: 'feature embedding cannot be removed' },
      ],
    });
    const resized: FeatureViewDefinition = {
      ...userStats,
      features: [userStats.features[0]!, { ...userStats.features[1]!, vectorLength: 128 }],
    };
    const diff = diffFeatureView(userStats, resized);
    expect(diff.kind === 'incompatible' && diff.changes.map((c) => c.subject)).toEqual([
      'features.embedding.vector_length',
    ]);
  });

  it('refuses switching sources and any change to a stream source', () => {
    const switched = diffFeatureView(userStats, { ...userStats, source: playsSource });
    expect(switched.kind === 'incompatible' && switched.changes[0]?.subject).toBe('source');

    const changed: FeatureViewDefinition = {
      ...itemPlays,
      source: {
        ...playsSource,
        aggregations: [
          { ...playsSource.aggregations[0]!, windowMs: 2 * hour },
          { ...playsSource.aggregations[1]!, function: AggregationFunction.Mean },
        ],
      },
    };
    const diff = diffFeatureView(itemPlays, changed);
    expect(diff.kind).toBe('incompatible');
    expect(diff.kind === 'incompatible' && diff.changes.map((c) => c.subject)).toEqual([
      'stream_source.aggregations.plays_1h.window',
      'stream_source.aggregations.plays_1h.bucket',
      'stream_source.aggregations.seconds_1d.function',
    ]);
    expect(diff.kind === 'incompatible' && diff.changes[2]?.description).toMatch(
      /SUM → MEAN.*new view/i,
    );
  });

  it('treats a default bucket and the same bucket given explicitly as the same definition', () => {
    const explicit: FeatureViewDefinition = {
      ...itemPlays,
      source: {
        ...playsSource,
        aggregations: [
          { ...playsSource.aggregations[0]!, bucketMs: 60_000 },
          playsSource.aggregations[1]!,
        ],
      },
    };
    expect(diffFeatureView(itemPlays, explicit).kind).not.toBe('incompatible');
  });

  it('reads event names as a set: order and repeats change nothing, another name does', () => {
    const named = (...eventNames: string[]): FeatureViewDefinition => ({
      ...itemPlays,
      source: { ...playsSource, eventNames },
    });
    expect(diffFeatureView(named('play', 'skip'), named('skip', 'play', 'play')).kind).toBe(
      'unchanged',
    );
    expect(diffFeatureView(named('play', 'skip'), named('play', 'stop')).kind).toBe('incompatible');
  });
});

describe('entities', () => {
  it('validates names, join keys and key types', () => {
    expect(validateEntity(user)).toEqual([]);
    expect(
      validateEntity({
        ...user,
        name: '9lives',
        joinKey: 'user-id',
        valueType: ValueType.Double,
      }).map((v) => [v.field, v.reason]),
    ).toEqual([
      ['name', 'INVALID_NAME'],
      ['join_key', 'INVALID_NAME'],
      ['value_type', 'UNSUPPORTED_VALUE_TYPE'],
    ]);
  });

  it('counts text limits in characters (code points), not UTF-16 units', () => {
    const emoji = '\u{1F3B5}'; // one character, two UTF-16 units
    expect(emoji.length).toBe(2);
    const described = (n: number) => validateEntity({ ...user, description: emoji.repeat(n) });
    expect(described(1_024)).toEqual([]);
    expect(described(1_025).map((v) => [v.field, v.reason])).toEqual([['description', 'TOO_LONG']]);
    const owned = (n: number) => validateEntity({ ...user, owner: emoji.repeat(n) });
    expect(owned(256)).toEqual([]);
    expect(owned(257).map((v) => v.field)).toEqual(['owner']);
    const tagged = (n: number) =>
      validateFeatureView({ ...userStats, tags: { team: emoji.repeat(n) } });
    expect(tagged(256)).toEqual([]);
    expect(tagged(257).map((v) => v.field)).toEqual(['tags.team']);
    // A lone surrogate is a character of its own.
    expect(validateEntity({ ...user, description: '\ud83c'.repeat(1_025) })).toHaveLength(1);
  });

  it('refuses changing the join key of a referenced entity and allows it otherwise', () => {
    const proposed = { ...user, joinKey: 'listener_id' };
    expect(diffEntity(user, proposed, ['user_stats'])).toEqual({
      kind: 'incompatible',
      changes: [
        {
          subject: 'join_key',
          description: 'the entity is referenced by feature views user_stats',
        },
      ],
    });
    expect(diffEntity(user, proposed, [])).toEqual({ kind: 'compatible', changes: ['join_key'] });
    expect(diffEntity(user, { ...user }, ['user_stats'])).toEqual({ kind: 'unchanged' });
  });
});
