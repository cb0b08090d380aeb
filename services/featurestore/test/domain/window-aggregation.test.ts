import fc from 'fast-check';

import { FeatureStatus, type FeatureColumns } from '../../src/domain/feature-values';
import {
  AggregationFunction as Fn,
  compileValueField,
  WindowAggregator,
  type AggregatedValue,
  type AggregationEvent,
  type WindowAggregationSpec,
  type WindowAggregatorOptions,
} from '../../src/domain/window-aggregation';

const second = 1_000;

// ---------------------------------------------------------------------------------------------
// The brute-force reference: keeps every accepted event and recomputes each aggregate from
// scratch at read time, with the bucket semantics of feature_view.proto (a read at t covers the
// buckets floor(t/B) − W/B + 1 … floor(t/B)). It shares no code with the implementation.
// ---------------------------------------------------------------------------------------------

interface ReferenceEvent extends AggregationEvent {
  readonly arrival: number;
}

class ReferenceAggregator {
  private clock = -Infinity;
  /** The latest accepted event time, capped at when it was stored (the clock when unknown). */
  private progress = -Infinity;
  private arrivals = 0;
  private readonly accepted: ReferenceEvent[] = [];
  private readonly seen = new Set<string>();
  /** Events late by the clock alone: they count in no window but set their key's event time. */
  private readonly touched: { readonly key: string; readonly eventTime: number }[] = [];
  late = 0;
  duplicate = 0;
  invalid = 0;

  constructor(private readonly options: WindowAggregatorOptions) {}

  ingest(event: AggregationEvent, now: number): void {
    this.clock = Math.max(this.clock, now);
    // Late: behind the stream's progress by more than the lateness, or behind the clock by more
    // than the longest window (feature_view.proto, StreamSource.allowed_lateness).
    const longest = Math.max(
      this.options.allowedLatenessMs,
      ...this.options.aggregations.map((spec) => spec.windowMs),
    );
    const lateBefore = Math.max(
      this.progress - this.options.allowedLatenessMs,
      this.clock - longest,
    );
    if (event.eventTime < lateBefore) {
      this.late++;
      // Late by the clock alone: it moves the progress and, within the TTL, is still its key's
      // newest event (feature_view.proto).
      if (event.eventTime >= this.progress - this.options.allowedLatenessMs) {
        const storedAt = typeof event.storedAt === 'function' ? event.storedAt() : event.storedAt;
        this.progress = Math.max(this.progress, Math.min(event.eventTime, storedAt ?? this.clock));
        if (event.eventTime >= this.clock - (this.options.ttlMs ?? 0)) {
          this.touched.push({ key: event.key, eventTime: event.eventTime });
        }
      }
      return;
    }
    const storedAt = typeof event.storedAt === 'function' ? event.storedAt() : event.storedAt;
    // A duplicate moves the progress too: a copy published again is stored later.
    this.progress = Math.max(this.progress, Math.min(event.eventTime, storedAt ?? this.clock));
    if (this.seen.has(event.eventId)) {
      this.duplicate++;
      return;
    }
    this.seen.add(event.eventId);
    this.accepted.push({ ...event, arrival: ++this.arrivals });
    if (this.options.aggregations.some((spec, i) => !validFor(spec.function, event.values[i]))) {
      this.invalid++;
    }
  }

  read(keys: readonly string[], now: number): FeatureColumns<AggregatedValue> {
    this.clock = Math.max(this.clock, now);
    const specs = this.options.aggregations;
    const rowCount = keys.length;
    const values = new Array<AggregatedValue | null>(rowCount * specs.length).fill(null);
    const statuses = new Uint8Array(rowCount * specs.length);
    const eventTimes = new Float64Array(rowCount);
    keys.forEach((key, row) => {
      const events = this.accepted.filter((e) => e.key === key);
      const times = [...events, ...this.touched.filter((e) => e.key === key)].map(
        (e) => e.eventTime,
      );
      if (times.length === 0) {
        specs.forEach((_, f) => (statuses[f * rowCount + row] = FeatureStatus.NotFound));
        return;
      }
      const newest = Math.max(...times);
      eventTimes[row] = newest;
      const ttl = this.options.ttlMs ?? 0;
      if (ttl > 0 && newest + ttl < this.clock) {
        specs.forEach((_, f) => (statuses[f * rowCount + row] = FeatureStatus.Expired));
        return;
      }
      specs.forEach((spec, f) => {
        const value = referenceValue(spec, f, events, this.clock);
        values[f * rowCount + row] = value;
        statuses[f * rowCount + row] =
          value === null ? FeatureStatus.NullValue : FeatureStatus.Present;
      });
    });
    return { rowCount, features: specs.map((s) => s.feature), values, statuses, eventTimes };
  }
}

function validFor(fn: Fn, value: AggregatedValue | undefined): boolean {
  if (fn === Fn.Count) return true;
  const finite = typeof value === 'number' && Number.isFinite(value);
  if (fn === Fn.Last || fn === Fn.DistinctCount) return finite || typeof value === 'string';
  return finite;
}

function referenceValue(
  spec: WindowAggregationSpec,
  f: number,
  events: readonly ReferenceEvent[],
  now: number,
): AggregatedValue | null {
  const current = Math.floor(now / spec.bucketMs);
  const oldest = current - spec.windowMs / spec.bucketMs + 1;
  const inWindow = events.filter((e) => {
    const bucket = Math.floor(e.eventTime / spec.bucketMs);
    return bucket >= oldest && bucket <= current && validFor(spec.function, e.values[f]);
  });
  const numbers = inWindow.map((e) => e.values[f] as number);
  switch (spec.function) {
    case Fn.Count:
      return inWindow.length;
    case Fn.Sum:
      return numbers.reduce((a, b) => a + b, 0);
    case Fn.Mean:
      return numbers.length === 0 ? null : numbers.reduce((a, b) => a + b, 0) / numbers.length;
    case Fn.Min:
      return numbers.length === 0 ? null : Math.min(...numbers);
    case Fn.Max:
      return numbers.length === 0 ? null : Math.max(...numbers);
    case Fn.Last: {
      let best: ReferenceEvent | undefined;
      for (const e of inWindow) {
        if (
          best === undefined ||
          e.eventTime > best.eventTime ||
          (e.eventTime === best.eventTime && e.arrival > best.arrival)
        ) {
          best = e;
        }
      }
      return best === undefined ? null : (best.values[f] as AggregatedValue);
    }
    case Fn.DistinctCount:
      return new Set(inWindow.map((e) => e.values[f])).size;
    default:
      return null;
  }
}

// ---------------------------------------------------------------------------------------------
// Random operation streams.
// ---------------------------------------------------------------------------------------------

const windows = [
  { windowMs: 10 * second, bucketMs: 1 * second },
  { windowMs: 60 * second, bucketMs: 5 * second },
  { windowMs: 30 * second, bucketMs: 30 * second },
] as const;

/** Each function over `value`, plus LAST and DISTINCT_COUNT over `tag`, for every window. */
const fields = [
  [Fn.Count, 'value'],
  [Fn.Sum, 'value'],
  [Fn.Mean, 'value'],
  [Fn.Min, 'value'],
  [Fn.Max, 'value'],
  [Fn.Last, 'value'],
  [Fn.DistinctCount, 'value'],
  [Fn.Last, 'tag'],
  [Fn.DistinctCount, 'tag'],
] as const;

const specs: WindowAggregationSpec[] = windows.flatMap((w, wi) =>
  fields.map(([fn, field], fi) => ({ feature: `a${wi}_${fi}_${field}`, function: fn, ...w })),
);

function options(ttlMs: number): WindowAggregatorOptions {
  return { aggregations: specs, allowedLatenessMs: 40 * second, ttlMs };
}

const keys = ['k0', 'k1', 'k2', 'k3', 'never-seen'];

type Operation =
  | {
      readonly kind: 'event';
      readonly dt: number;
      readonly key: number;
      readonly age: number;
      readonly value: number | string | undefined;
      readonly tag: string;
      /** How long before `now` the stream stored it; unset: the aggregator's clock stands in. */
      readonly storedAgo: number | undefined;
      /** Whether its stored time is given as a function (read only when needed). */
      readonly lazy: boolean;
    }
  | { readonly kind: 'redeliver'; readonly dt: number; readonly pick: number }
  | { readonly kind: 'twin'; readonly value: number; readonly tag: string }
  | { readonly kind: 'read'; readonly dt: number; readonly keys: readonly string[] };

const operation: fc.Arbitrary<Operation> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      kind: fc.constant('event' as const),
      dt: fc.integer({ min: 0, max: 2_500 }),
      key: fc.integer({ min: 0, max: 3 }),
      // Mostly recent, some out of order within the lateness, some too late, some ahead.
      age: fc.oneof(
        fc.integer({ min: 0, max: 3_000 }),
        fc.integer({ min: 0, max: 40_000 }),
        fc.integer({ min: 40_001, max: 90_000 }),
        fc.integer({ min: -12_000, max: -1 }),
      ),
      value: fc.oneof(
        { weight: 6, arbitrary: fc.integer({ min: -5, max: 20 }) },
        { weight: 2, arbitrary: fc.constantFrom('a', 'b', 'c') },
        { weight: 1, arbitrary: fc.constantFrom(undefined, Number.NaN) },
      ),
      tag: fc.constantFrom('x', 'y', 'z', 'w'),
      // A consumer behind the stream (a replay) sees events stored well before it reads them.
      storedAgo: fc.option(fc.integer({ min: 0, max: 60_000 }), { nil: undefined }),
      lazy: fc.boolean(),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('redeliver' as const),
      dt: fc.integer({ min: 0, max: 2_500 }),
      pick: fc.nat(),
    }),
  },
  {
    // Another event with the same key and event time as the previous one: LAST's tie-break.
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('twin' as const),
      value: fc.integer({ min: -5, max: 20 }),
      tag: fc.constantFrom('x', 'y', 'z', 'w'),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('read' as const),
      dt: fc.integer({ min: 0, max: 20_000 }),
      keys: fc.subarray(keys, { minLength: 1 }),
    }),
  },
);

interface Runner {
  ingest(event: AggregationEvent, now: number): unknown;
  read(keys: readonly string[], now: number): FeatureColumns<AggregatedValue>;
}

/** Replays operations from `start` against runners in lock-step; returns every read's answers. */
function replay(
  operations: readonly Operation[],
  runners: readonly Runner[],
  start: { now: number; history: AggregationEvent[] },
): FeatureColumns<AggregatedValue>[][] {
  const reads: FeatureColumns<AggregatedValue>[][] = [];
  for (const op of operations) {
    start.now += op.kind === 'twin' ? 0 : op.dt;
    const now = start.now;
    if (op.kind === 'read') {
      reads.push(runners.map((r) => r.read(op.keys, now)));
      continue;
    }
    let event: AggregationEvent | undefined;
    if (op.kind === 'event') {
      const value = op.value;
      event = {
        eventId: `e${start.history.length}`,
        key: keys[op.key] as string,
        eventTime: now - op.age,
        values: specs.map((_, i) => (fields[i % fields.length]?.[1] === 'tag' ? op.tag : value)),
      };
      if (op.storedAgo !== undefined) {
        const storedAt = now - op.storedAgo;
        event = { ...event, storedAt: op.lazy ? () => storedAt : storedAt };
      }
      start.history.push(event);
    } else if (op.kind === 'twin') {
      const previous = start.history[start.history.length - 1];
      if (previous !== undefined) {
        event = {
          ...previous,
          eventId: `e${start.history.length}`,
          values: specs.map((_, i) =>
            fields[i % fields.length]?.[1] === 'tag' ? op.tag : op.value,
          ),
        };
        start.history.push(event);
      }
    } else if (start.history.length > 0) {
      event = start.history[op.pick % start.history.length];
    }
    if (event !== undefined) for (const r of runners) r.ingest(event, now);
  }
  return reads;
}

function plain(columns: FeatureColumns<AggregatedValue>): unknown {
  return {
    values: columns.values,
    statuses: Array.from(columns.statuses),
    eventTimes: Array.from(columns.eventTimes),
  };
}

const startTime = fc.integer({ min: 1_700_000_000_000, max: 1_700_000_120_000 });

describe('WindowAggregator against a brute-force recomputation', () => {
  it('answers every read exactly like recomputing over the de-duplicated, non-dropped events', () => {
    fc.assert(
      fc.property(
        startTime,
        fc.constantFrom(0, 70 * second),
        fc.array(operation, { maxLength: 250 }),
        (t0, ttlMs, operations) => {
          const aggregator = new WindowAggregator(options(ttlMs));
          const reference = new ReferenceAggregator(options(ttlMs));
          const reads = replay(operations, [aggregator, reference], { now: t0, history: [] });
          for (const [actual, expected] of reads) {
            expect(plain(actual!)).toEqual(plain(expected!));
          }
          const status = aggregator.status();
          expect(status.eventsDroppedLate).toBe(reference.late);
          expect(status.eventsDuplicate).toBe(reference.duplicate);
          expect(status.eventsDroppedInvalid).toBe(reference.invalid);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('gives the same answers after checkpoint → JSON → restore as without a restart', () => {
    fc.assert(
      fc.property(
        startTime,
        fc.array(operation, { maxLength: 150 }),
        fc.array(operation, { maxLength: 150 }),
        (t0, before, after) => {
          const clock = { now: t0, history: [] as AggregationEvent[] };
          const uninterrupted = new WindowAggregator(options(0));
          const reference = new ReferenceAggregator(options(0));
          replay(before, [uninterrupted, reference], clock);
          const checkpoint: unknown = JSON.parse(JSON.stringify(uninterrupted.checkpoint()));
          const restored = WindowAggregator.restore(
            options(0),
            checkpoint as ReturnType<WindowAggregator['checkpoint']>,
          );
          const reads = replay(after, [uninterrupted, restored, reference], clock);
          for (const [a, b, expected] of reads) {
            expect(plain(b!)).toEqual(plain(a!));
            expect(plain(b!)).toEqual(plain(expected!));
          }
          expect(restored.status()).toEqual(uninterrupted.status());
        },
      ),
      { numRuns: 150 },
    );
  });
});

describe('WindowAggregator catching up after a restart', () => {
  const minute = 60 * second;
  const t = 1_700_000_000_000;
  const options: WindowAggregatorOptions = {
    aggregations: [
      { feature: 'plays_1h', function: Fn.Count, windowMs: 60 * minute, bucketMs: minute },
    ],
    allowedLatenessMs: 60 * minute,
    ttlMs: 24 * 60 * minute,
  };
  const play = (eventId: string, key: string, eventTime: number): AggregationEvent => ({
    eventId,
    key,
    eventTime,
    values: [undefined],
    storedAt: eventTime,
  });

  it('serves what a replica that was up serves when its TTL is longer than its window', () => {
    const live = new WindowAggregator(options);
    live.ingest(play('e1', 'item-1', t), t);
    const checkpoint: unknown = JSON.parse(JSON.stringify(live.checkpoint()));
    // The live replica takes two more events in time; the other is down for two hours, and then
    // gets them from its durable, by when they are older than the window.
    live.ingest(play('e2', 'item-1', t + 30 * minute), t + 30 * minute);
    live.ingest(play('e3', 'item-2', t + 40 * minute), t + 40 * minute);
    const restored = WindowAggregator.restore(
      options,
      checkpoint as ReturnType<WindowAggregator['checkpoint']>,
    );
    restored.ingest(play('e2', 'item-1', t + 30 * minute), t + 120 * minute);
    restored.ingest(play('e3', 'item-2', t + 40 * minute), t + 120 * minute);
    // Delivered again, as after a lost acknowledgement: nothing changes.
    restored.ingest(play('e3', 'item-2', t + 40 * minute), t + 121 * minute);
    // A day and ten minutes on: each item's newest event is within its 24 h TTL, none in the
    // hour's window, so both read PRESENT with a count of 0, dated by that event.
    const at = t + 24 * 60 * minute + 10 * minute;
    for (const aggregator of [live, restored]) {
      const read = aggregator.read(['item-1', 'item-2'], at);
      expect(Array.from(read.statuses)).toEqual([FeatureStatus.Present, FeatureStatus.Present]);
      expect(read.values).toEqual([0, 0]);
      expect(Array.from(read.eventTimes)).toEqual([t + 30 * minute, t + 40 * minute]);
    }
    // Past the TTL of the newest event of item-1 (t + 30 min + 24 h), both read EXPIRED.
    const later = t + 24 * 60 * minute + 35 * minute;
    expect(Array.from(restored.read(['item-1'], later).statuses)).toEqual([FeatureStatus.Expired]);
    expect(Array.from(live.read(['item-1'], later).statuses)).toEqual([FeatureStatus.Expired]);
  });

  it('drops what a replica that took the events in time drops, its progress moved alike', () => {
    // item-2's event is behind item-1's by more than the lateness: late by the progress.
    const stream = [
      play('e1', 'item-1', t),
      { ...play('e2', 'item-2', t - 90 * minute), storedAt: t + second },
    ];
    const live = new WindowAggregator(options);
    live.ingest(stream[0]!, t);
    live.ingest(stream[1]!, t + second);
    const catchingUp = new WindowAggregator(options);
    for (const event of stream) catchingUp.ingest(event, t + 120 * minute);
    const at = t + 121 * minute;
    for (const aggregator of [live, catchingUp]) {
      const read = aggregator.read(['item-1', 'item-2'], at);
      expect(Array.from(read.statuses)).toEqual([FeatureStatus.Present, FeatureStatus.NotFound]);
      expect(read.eventTimes[0]).toBe(t);
    }
  });

  it('moves the progress alike for a copy published again, stored later', () => {
    const lateness = { ...options, allowedLatenessMs: 10 * minute };
    // Dated 2 s ahead of the stream; published again a second later; then an event behind it.
    const stream = [
      { event: { ...play('e1', 'item-1', t + 2 * second), storedAt: t }, at: t },
      { event: { ...play('e1', 'item-1', t + 2 * second), storedAt: t + second }, at: t + second },
      {
        event: { ...play('e3', 'item-2', t - 10 * minute + 500), storedAt: t + 2 * second },
        at: t + 2 * second,
      },
    ];
    const live = new WindowAggregator(lateness);
    for (const { event, at } of stream) live.ingest(event, at);
    const catchingUp = new WindowAggregator(lateness);
    for (const { event } of stream) catchingUp.ingest(event, t + 120 * minute);
    const at = t + 121 * minute;
    const [a, b] = [live, catchingUp].map((x) => x.read(['item-1', 'item-2'], at));
    expect(Array.from(b!.statuses)).toEqual(Array.from(a!.statuses));
    expect(Array.from(b!.eventTimes)).toEqual(Array.from(a!.eventTimes));
  });

  it('still drops an event older than the TTL, and one late by the progress', () => {
    const aggregator = new WindowAggregator(options);
    aggregator.ingest(play('e1', 'item-1', t), t);
    // Older than the TTL by the clock: it could only read EXPIRED.
    aggregator.ingest(play('old', 'item-2', t - 25 * 60 * minute), t);
    // Late by the progress (t − lateness), as every replica drops it.
    aggregator.ingest(play('behind', 'item-3', t - 61 * minute), t + 2 * 60 * minute);
    expect(Array.from(aggregator.read(['item-2', 'item-3'], t + 2 * 60 * minute).statuses)).toEqual(
      [FeatureStatus.NotFound, FeatureStatus.NotFound],
    );
    expect(aggregator.status().eventsDroppedLate).toBe(2);
  });
});

describe('WindowAggregator', () => {
  const t0 = 1_700_000_000_000;
  const playsOptions = {
    aggregations: [
      { feature: 'plays_1h', function: Fn.Count, windowMs: 3_600_000, bucketMs: 60_000 },
      { feature: 'seconds_1h', function: Fn.Sum, windowMs: 3_600_000, bucketMs: 60_000 },
      { feature: 'last_5m', function: Fn.Last, windowMs: 300_000, bucketMs: 5_000 },
    ],
    allowedLatenessMs: 3_600_000,
  };
  const plays = (): WindowAggregator => new WindowAggregator(playsOptions);
  const play = (id: string, eventTime: number, seconds: number): AggregationEvent => ({
    eventId: id,
    key: 'item-1',
    eventTime,
    values: [undefined, seconds, seconds],
  });
  const valuesOf = (a: WindowAggregator, now: number): unknown[] => a.read(['item-1'], now).values;

  it('makes an event readable immediately after it is ingested', () => {
    const aggregator = plays();
    expect(aggregator.ingest(play('p1', t0, 30), t0)).toBe('accepted');
    expect(valuesOf(aggregator, t0)).toEqual([1, 30, 30]);
    aggregator.ingest(play('p2', t0 + 1, 12), t0 + 1);
    expect(valuesOf(aggregator, t0 + 1)).toEqual([2, 42, 12]);
  });

  it('never counts a redelivered event twice, and counts it as a duplicate', () => {
    const aggregator = plays();
    aggregator.ingest(play('p1', t0, 30), t0);
    expect(aggregator.ingest(play('p1', t0, 30), t0 + 10_000)).toBe('duplicate');
    expect(valuesOf(aggregator, t0 + 10_000)).toEqual([1, 30, 30]);
    expect(aggregator.status().eventsDuplicate).toBe(1);
  });

  it('drops and counts events older than the allowed lateness', () => {
    const aggregator = plays();
    expect(aggregator.ingest(play('old', t0 - 3_600_001, 5), t0)).toBe('late');
    expect(aggregator.read(['item-1'], t0).statuses[0]).toBe(FeatureStatus.NotFound);
    expect(aggregator.status().eventsDroppedLate).toBe(1);
  });

  it('drops and counts an event time outside a Timestamp, and checkpoints after it', () => {
    const aggregator = plays();
    // 275760-09-13: a date, but past a Timestamp's 9999-12-31; its id's expiry is no date.
    for (const eventTime of [8.64e15, -62_135_596_800_001, Number.NaN]) {
      expect(aggregator.ingest(play(`t${eventTime}`, eventTime, 5), t0)).toBe('invalid');
    }
    expect(aggregator.ingest(play('last-day', 253_402_300_799_999, 5), t0)).toBe('accepted');
    expect(aggregator.status().eventsDroppedInvalid).toBe(3);
    const expiries = aggregator.checkpoint().seenEventIds.map(([, until]) => until);
    expect(expiries).toHaveLength(1);
    for (const until of expiries) expect(Number.isFinite(new Date(until).getTime())).toBe(true);
  });

  it('keeps a SUM past the range of a double through a checkpoint (no value), rather than reading 0', () => {
    const aggregator = plays();
    aggregator.ingest(play('big-1', t0, 1.7e308), t0);
    // Version 1 while every sum is a number, which every build reads; 2 once one is not.
    expect(aggregator.checkpoint().version).toBe(1);
    aggregator.ingest(play('big-2', t0 + 1, 1.7e308), t0 + 1);
    expect(aggregator.checkpoint().version).toBe(2);
    // Infinity is kept in the state but read as no value (doubles on the wire are finite).
    expect(valuesOf(aggregator, t0 + 1)[1]).toBeNull();
    const restored = WindowAggregator.restore(
      playsOptions,
      JSON.parse(JSON.stringify(aggregator.checkpoint())) as ReturnType<
        WindowAggregator['checkpoint']
      >,
    );
    expect(valuesOf(restored, t0 + 1)).toEqual(valuesOf(aggregator, t0 + 1));
  });

  it('folds −0 as 0, so a replica restored from a checkpoint serves the same zero', () => {
    const options = {
      aggregations: [
        { feature: 'low', function: Fn.Min, windowMs: 600_000, bucketMs: 1_000 },
        { feature: 'last', function: Fn.Last, windowMs: 600_000, bucketMs: 1_000 },
      ],
      allowedLatenessMs: 600_000,
    };
    const live = new WindowAggregator(options);
    live.ingest({ eventId: 'zero', key: 'k', eventTime: t0, values: [0, 0] }, t0);
    live.ingest({ eventId: 'negative', key: 'k', eventTime: t0 + 1, values: [-0, -0] }, t0 + 1);
    const restored = WindowAggregator.restore(
      options,
      JSON.parse(JSON.stringify(live.checkpoint())) as ReturnType<WindowAggregator['checkpoint']>,
    );
    for (const aggregator of [live, restored]) {
      for (const value of aggregator.read(['k'], t0 + 1).values)
        expect(Object.is(value, 0)).toBe(true);
    }
  });

  it('reads 0 for COUNT and SUM and NULL_VALUE for LAST when a known key has an empty window', () => {
    const aggregator = plays();
    aggregator.ingest(play('p1', t0, 30), t0);
    const later = aggregator.read(['item-1'], t0 + 2 * 3_600_000);
    expect(later.values).toEqual([0, 0, null]);
    expect(Array.from(later.statuses)).toEqual([
      FeatureStatus.Present,
      FeatureStatus.Present,
      FeatureStatus.NullValue,
    ]);
    expect(later.eventTimes[0]).toBe(t0);
  });

  it('counts an event from a clock running ahead once its bucket is inside the window', () => {
    const aggregator = plays();
    aggregator.ingest(play('ahead', t0 + 120_000, 7), t0);
    expect(valuesOf(aggregator, t0)).toEqual([0, 0, null]);
    expect(valuesOf(aggregator, t0 + 120_000)).toEqual([1, 7, 7]);
  });

  it('measures the processing delay past an event dated ahead of the clock', () => {
    const aggregator = plays();
    aggregator.ingest(play('ahead', t0 + 86_400_000, 1), t0);
    expect(aggregator.status().lastEventTime).toBe(t0);
    // Ten minutes later the stream is five minutes behind: the delay says so.
    aggregator.ingest(play('behind', t0 + 300_000, 1), t0 + 600_000);
    const { lastEventTime, lastProcessedTime } = aggregator.status();
    expect([lastEventTime, lastProcessedTime]).toEqual([t0 + 300_000, t0 + 600_000]);
  });

  it('keeps LAST by event time, not by arrival, and breaks ties by arrival', () => {
    const aggregator = plays();
    aggregator.ingest(play('new', t0, 1), t0);
    aggregator.ingest(play('older', t0 - 1_000, 2), t0);
    expect(valuesOf(aggregator, t0)[2]).toBe(1);
    aggregator.ingest(play('tie', t0, 3), t0);
    expect(valuesOf(aggregator, t0)[2]).toBe(3);
  });

  it('reads EXPIRED when the newest event is older than the TTL', () => {
    const aggregator = new WindowAggregator({
      aggregations: [{ feature: 'n', function: Fn.Count, windowMs: 60_000, bucketMs: 1_000 }],
      allowedLatenessMs: 60_000,
      ttlMs: 120_000,
    });
    aggregator.ingest({ eventId: 'a', key: 'u', eventTime: t0, values: [] }, t0);
    expect(aggregator.read(['u'], t0 + 120_000).statuses[0]).toBe(FeatureStatus.Present);
    expect(aggregator.read(['u'], t0 + 120_001).statuses[0]).toBe(FeatureStatus.Expired);
  });

  it('forgets idle keys, which then read as NOT_FOUND', () => {
    const aggregator = plays();
    aggregator.ingest(play('p1', t0, 30), t0);
    expect(aggregator.forgetIdleKeys(t0 + 1_000)).toBe(0);
    expect(aggregator.forgetIdleKeys(t0 + 3 * 3_600_000)).toBe(1);
    expect(aggregator.read(['item-1'], t0 + 3 * 3_600_000).statuses[0]).toBe(
      FeatureStatus.NotFound,
    );
    expect(aggregator.memory().keyCount).toBe(0);
  });

  it('bounds the seen-set and counts the ids it had to forget early', () => {
    const aggregator = new WindowAggregator({
      aggregations: [{ feature: 'n', function: Fn.Count, windowMs: 60_000, bucketMs: 1_000 }],
      allowedLatenessMs: 60_000,
      maxTrackedEventIds: 3,
    });
    for (let i = 0; i < 5; i++) {
      aggregator.ingest({ eventId: `e${i}`, key: 'u', eventTime: t0, values: [] }, t0);
    }
    expect(aggregator.memory().trackedEventIds).toBe(3);
    expect(aggregator.status().dedupeEvictions).toBe(2);
  });

  it('forgets event ids once a redelivery would be dropped as late anyway', () => {
    const aggregator = plays();
    aggregator.ingest(play('p1', t0, 30), t0);
    aggregator.ingest(play('p2', t0 + 3_600_001, 30), t0 + 3_600_001);
    expect(aggregator.memory().trackedEventIds).toBe(1);
    expect(aggregator.ingest(play('p1', t0, 30), t0 + 3_600_001)).toBe('late');
  });

  it('refuses to restore a checkpoint taken with other aggregations', () => {
    const checkpoint = plays().checkpoint();
    expect(() =>
      WindowAggregator.restore(
        {
          aggregations: [{ feature: 'n', function: Fn.Count, windowMs: 60_000, bucketMs: 1_000 }],
          allowedLatenessMs: 0,
        },
        checkpoint,
      ),
    ).toThrow(/other aggregation definitions/);
  });
});

// Found by a helper's adversarial tests.
describe('WindowAggregator at the edges', () => {
  const hour = 3_600 * second;

  it('forgets expired event ids behind one dated far ahead, and still recognises that one', () => {
    const aggregator = new WindowAggregator({
      aggregations: [{ feature: 'n', function: Fn.Count, windowMs: 60 * second, bucketMs: second }],
      allowedLatenessMs: 60 * second,
    });
    let now = 1_700_000_000_000;
    const event = (eventId: string, eventTime: number): AggregationEvent => ({
      eventId,
      key: 'k',
      eventTime,
      values: [1],
    });
    aggregator.ingest(event('early', now), now);
    aggregator.ingest(event('next-year', now + 365 * 24 * hour), now);
    for (let i = 0; i < 2_000; i++) {
      now += second;
      aggregator.ingest(event(`e${i}`, now), now);
    }
    // With 60 s of lateness, ~61 ids are still needed, and the one from next year.
    expect(aggregator.memory().trackedEventIds).toBeLessThan(100);
    expect(aggregator.ingest(event('next-year', now + 365 * 24 * hour), now)).toBe('duplicate');
    expect(aggregator.ingest(event('e1999', now), now)).toBe('duplicate');
    // After a checkpoint too: restored in the order they expire.
    const restored = WindowAggregator.restore(
      {
        aggregations: [
          { feature: 'n', function: Fn.Count, windowMs: 60 * second, bucketMs: second },
        ],
        allowedLatenessMs: 60 * second,
      },
      aggregator.checkpoint(),
    );
    for (let i = 0; i < 200; i++) {
      now += second;
      restored.ingest(event(`f${i}`, now), now);
    }
    expect(restored.memory().trackedEventIds).toBeLessThan(100);
    expect(restored.ingest(event('next-year', now + 365 * 24 * hour), now)).toBe('duplicate');
  });

  it('measures lateness against the stream, so a consumer behind it takes the same events', () => {
    const lateness = (now0: number) => {
      const aggregator = new WindowAggregator({
        aggregations: [
          { feature: 'n', function: Fn.Count, windowMs: 60 * second, bucketMs: second },
        ],
        allowedLatenessMs: 5 * second,
      });
      const t0 = 1_700_000_000_000;
      const outcomes: string[] = [];
      const ingest = (id: string, eventTime: number, now: number) =>
        outcomes.push(aggregator.ingest({ eventId: id, key: 'k', eventTime, values: [1] }, now));
      // Ten events a second apart, then one 7 s behind the newest, and one older than the window.
      for (let i = 0; i < 10; i++) ingest(`e${i}`, t0 + i * second, now0 + i * second);
      ingest('behind', t0 + 2 * second, now0 + 10 * second);
      ingest('ancient', now0 - 61 * second, now0 + 10 * second);
      return { outcomes, count: aggregator.read(['k'], now0 + 10 * second).values[0] };
    };
    const live = lateness(1_700_000_000_000);
    // 30 s behind: a new view replaying the stream, or a replica that was down.
    const behind = lateness(1_700_000_030_000);
    const expected = [...Array<string>(10).fill('accepted'), 'late', 'late'];
    expect(live.outcomes).toEqual(expected);
    expect(behind.outcomes).toEqual(expected);
    expect(live.count).toBe(10);
    expect(behind.count).toBe(10);
  });

  it('moves the progress by when the stream stored an event, so an event dated ahead moves it alike', () => {
    const outcomesAt = (delay: number) => {
      const aggregator = new WindowAggregator({
        aggregations: [
          { feature: 'n', function: Fn.Count, windowMs: 60 * second, bucketMs: second },
        ],
        allowedLatenessMs: 5 * second,
      });
      const t0 = 1_700_000_000_000;
      // A producer clock 20 s ahead, then events on time; each stored as it was published.
      const events = [
        { id: 'ahead', eventTime: t0 + 20 * second, storedAt: t0 },
        ...[1, 2, 3, 4, 5].map((i) => ({
          id: `e${i}`,
          eventTime: t0 + i * second,
          storedAt: t0 + i * second,
        })),
      ];
      return events.map(({ id, eventTime, storedAt }) =>
        aggregator.ingest(
          { eventId: id, key: 'k', eventTime, values: [1], storedAt },
          storedAt + delay,
        ),
      );
    };
    expect(outcomesAt(0)).toEqual(Array<string>(6).fill('accepted'));
    expect(outcomesAt(30 * second)).toEqual(outcomesAt(0));
  });

  it('reads a storedAt given as a function only for an event dated past the progress', () => {
    const aggregator = new WindowAggregator({
      aggregations: [{ feature: 'n', function: Fn.Count, windowMs: 60 * second, bucketMs: second }],
      allowedLatenessMs: 5 * second,
    });
    const t0 = 1_700_000_000_000;
    const read: string[] = [];
    const ingest = (id: string, eventTime: number, storedAt: number) =>
      aggregator.ingest(
        {
          eventId: id,
          key: 'k',
          eventTime,
          values: [1],
          storedAt: () => {
            read.push(id);
            return storedAt;
          },
        },
        t0 + 3 * second,
      );
    // Progress: t0 (capped by storage), then t0 + 1 s, then t0 + 2 s; never read for `c`.
    expect(ingest('a', t0 + 10 * second, t0)).toBe('accepted');
    expect(ingest('b', t0 + second, t0 + second)).toBe('accepted');
    expect(ingest('c', t0 + second / 2, t0 + 2 * second)).toBe('accepted');
    expect(ingest('d', t0 + 20 * second, t0 + 2 * second)).toBe('accepted');
    expect(read).toEqual(['a', 'b', 'd']);
    // Lateness counts from t0 + 2 s, the progress the stored times allowed: t0 − 3 s is the line.
    expect(ingest('e', t0 - 2.5 * second, t0 + 2 * second)).toBe('accepted');
    expect(ingest('f', t0 - 3.5 * second, t0 + 2 * second)).toBe('late');
    expect(read).toEqual(['a', 'b', 'd']);
  });
  it('forgets an event id once the progress makes a redelivery late, not only the window', () => {
    const aggregator = new WindowAggregator({
      aggregations: [{ feature: 'n', function: Fn.Count, windowMs: 24 * hour, bucketMs: hour }],
      allowedLatenessMs: 60 * second,
    });
    const t0 = 1_700_000_000_000;
    for (let i = 0; i < 10_000; i++) {
      const at = t0 + i * 100;
      aggregator.ingest(
        { eventId: `e${i}`, key: 'k', eventTime: at, values: [1], storedAt: at },
        at,
      );
    }
    // 60 s of lateness at 10 events a second: ~600 ids still needed, not 10,000.
    expect(aggregator.memory().trackedEventIds).toBeLessThan(700);
    const last = t0 + 9_999 * 100;
    expect(aggregator.ingest({ eventId: 'e0', key: 'k', eventTime: t0, values: [1] }, last)).toBe(
      'late',
    );
    expect(
      aggregator.ingest({ eventId: 'e9999', key: 'k', eventTime: last, values: [1] }, last),
    ).toBe('duplicate');
  });

  it('forgets restored event ids once the progress passes their event time and the window', () => {
    const options = {
      aggregations: [{ feature: 'n', function: Fn.Count, windowMs: 24 * hour, bucketMs: hour }],
      allowedLatenessMs: 60 * second,
    };
    const t0 = 1_700_000_000_000;
    const aggregator = new WindowAggregator(options);
    for (let i = 0; i < 100; i++) {
      const at = t0 + i * second;
      aggregator.ingest(
        { eventId: `e${i}`, key: 'k', eventTime: at, values: [1], storedAt: at },
        at,
      );
    }
    const restored = WindowAggregator.restore(
      options,
      JSON.parse(JSON.stringify(aggregator.checkpoint())) as ReturnType<
        WindowAggregator['checkpoint']
      >,
    );
    const ingestAt = (at: number, id: string) =>
      restored.ingest({ eventId: id, key: 'k', eventTime: at, values: [1], storedAt: at }, at);
    // Kept (whichever rule stored them) while the progress is within a window of them…
    ingestAt(t0 + 2 * hour, 'a');
    expect(
      restored.ingest(
        { eventId: 'e99', key: 'k', eventTime: t0 + 99 * second, values: [1] },
        t0 + 2 * hour,
      ),
    ).toBe('late');
    expect(restored.memory().trackedEventIds).toBeGreaterThan(60);
    // …and forgotten once it is past (by the periodic sweep): what a restart costs is memory
    // for a window, not a count.
    ingestAt(t0 + 25 * hour, 'b');
    restored.forgetIdleKeys(t0 + 25 * hour);
    expect(restored.memory().trackedEventIds).toBeLessThanOrEqual(3);
  });

  it('restores a checkpoint taken before the progress was kept without counting a redelivery twice', () => {
    const options = {
      aggregations: [{ feature: 'n', function: Fn.Count, windowMs: hour, bucketMs: 60 * second }],
      allowedLatenessMs: 5 * second,
    };
    const t0 = 1_700_000_000_000;
    const aggregator = new WindowAggregator(options);
    aggregator.ingest({ eventId: 'x', key: 'k', eventTime: t0, values: [1] }, t0);
    // As an older build wrote it: no progress, the id remembered until its time plus the lateness.
    const older = JSON.parse(JSON.stringify(aggregator.checkpoint())) as Record<string, unknown>;
    delete older.progress;
    const restore = (seenEventIds: [string, number][]) =>
      WindowAggregator.restore(options, {
        ...(older as unknown as ReturnType<WindowAggregator['checkpoint']>),
        seenEventIds,
      });
    const x = { eventId: 'x', key: 'k', eventTime: t0, values: [1] };
    // Its id restored: a duplicate, and late once the lateness has passed, as before.
    expect(restore([['x', t0 + 5 * second]]).ingest(x, t0 + 2 * second)).toBe('duplicate');
    expect(restore([['x', t0 + 5 * second]]).ingest(x, t0 + 10 * second)).toBe('late');
    // Its id already expired from storage (the replica was down for minutes): late by the clock
    // at the first event after the restore, as the older build measured it.
    expect(restore([]).ingest(x, t0 + 5 * 60 * second)).toBe('late');
    // Also after a checkpoint written before any event came (an idle key forgotten, say): it
    // still has no progress, so its restore measures lateness the older build's way too.
    const idle = restore([]);
    const again = JSON.parse(JSON.stringify(idle.checkpoint())) as Record<string, unknown>;
    expect(again.progress).toBeUndefined();
    const twice = WindowAggregator.restore(options, {
      ...(again as unknown as ReturnType<WindowAggregator['checkpoint']>),
      seenEventIds: [],
    });
    expect(twice.ingest(x, t0 + 6 * 60 * second)).toBe('late');
  });

  it('caps the event ids it remembers over both near and far-future ones, the far ones first', () => {
    const aggregator = new WindowAggregator({
      aggregations: [{ feature: 'n', function: Fn.Count, windowMs: hour, bucketMs: 60 * second }],
      allowedLatenessMs: hour,
      maxTrackedEventIds: 10,
    });
    const now = 1_700_000_000_000;
    for (let i = 0; i < 5; i++) {
      aggregator.ingest(
        { eventId: `far-${i}`, key: 'k', eventTime: now + 48 * hour, values: [1] },
        now,
      );
    }
    for (let i = 0; i < 10; i++) {
      aggregator.ingest({ eventId: `near-${i}`, key: 'k', eventTime: now, values: [1] }, now);
    }
    expect(aggregator.memory().trackedEventIds).toBe(10);
    expect(
      aggregator.ingest({ eventId: 'near-0', key: 'k', eventTime: now, values: [1] }, now),
    ).toBe('duplicate');
  });

  it('spreads a sweep for idle keys over calls of at most maxKeys keys', () => {
    const aggregator = new WindowAggregator({
      aggregations: [{ feature: 'n', function: Fn.Count, windowMs: 10 * second, bucketMs: second }],
      allowedLatenessMs: 10 * second,
    });
    const now = 1_700_000_000_000;
    for (let i = 0; i < 25; i++) {
      aggregator.ingest({ eventId: `e${i}`, key: `k${i}`, eventTime: now, values: [1] }, now);
    }
    const later = now + 60 * second;
    expect(aggregator.forgetIdleKeys(later, 10)).toBe(10);
    expect(aggregator.sweeping).toBe(true);
    expect(aggregator.memory().keyCount).toBe(15);
    expect(aggregator.forgetIdleKeys(later, 10)).toBe(10);
    expect(aggregator.forgetIdleKeys(later, 10)).toBe(5);
    expect(aggregator.sweeping).toBe(false);
    expect(aggregator.memory().keyCount).toBe(0);
  });

  it('reads a SUM or MEAN past the double range as no value, not Infinity or NaN', () => {
    const aggregator = new WindowAggregator({
      aggregations: [
        { feature: 's', function: Fn.Sum, windowMs: hour, bucketMs: 60 * second },
        { feature: 'm', function: Fn.Mean, windowMs: hour, bucketMs: 60 * second },
      ],
      allowedLatenessMs: hour,
    });
    const now = 1_700_000_000_000;
    const big = 1.7e308;
    aggregator.ingest({ eventId: '1', key: 'up', eventTime: now, values: [big, big] }, now);
    aggregator.ingest({ eventId: '2', key: 'up', eventTime: now, values: [big, big] }, now);
    // Overflowing both ways in two buckets: NaN.
    aggregator.ingest(
      { eventId: '3', key: 'both', eventTime: now - 120 * second, values: [big, big] },
      now,
    );
    aggregator.ingest(
      { eventId: '4', key: 'both', eventTime: now - 120 * second, values: [big, big] },
      now,
    );
    aggregator.ingest({ eventId: '5', key: 'both', eventTime: now, values: [-big, -big] }, now);
    aggregator.ingest({ eventId: '6', key: 'both', eventTime: now, values: [-big, -big] }, now);
    aggregator.ingest({ eventId: '7', key: 'fine', eventTime: now, values: [big, big] }, now);
    const read = aggregator.read(['up', 'both', 'fine'], now);
    expect(read.values).toEqual([null, null, big, null, null, big]);
    expect([...read.statuses]).toEqual([
      FeatureStatus.NullValue,
      FeatureStatus.NullValue,
      FeatureStatus.Present,
      FeatureStatus.NullValue,
      FeatureStatus.NullValue,
      FeatureStatus.Present,
    ]);
  });
});

describe('compileValueField', () => {
  it('reads proto fields by their proto names and struct keys verbatim', () => {
    const event = { itemId: 'i1', value: 3.5, properties: { watch_seconds: 42, genre: 'jazz' } };
    expect(compileValueField('item_id')(event)).toBe('i1');
    expect(compileValueField('value')(event)).toBe(3.5);
    expect(compileValueField('properties.watch_seconds')(event)).toBe(42);
    expect(compileValueField('properties.genre')(event)).toBe('jazz');
  });

  it('gives an event without value the value 1 and anything else missing undefined', () => {
    expect(compileValueField('value')({})).toBe(1);
    expect(compileValueField('properties.watch_seconds')({ properties: {} })).toBeUndefined();
    expect(compileValueField('properties.flag')({ properties: { flag: true } })).toBeUndefined();
  });
});
