/**
 * Sliding-window aggregates over outcome events ("plays of this item in the last hour"), kept per
 * entity key and maintained as each event arrives, so a read right after an event sees it.
 *
 * Why time buckets: a window of length W is the union of W / B buckets of size B aligned to the
 * Unix epoch (feature_view.proto, StreamSource). Each event touches one bucket per aggregation, so
 * ingesting is O(1) amortized, and memory per key holds only non-empty buckets inside the horizon.
 *
 * Bucket semantics, precisely: bucket id `b = floor(t / B)`. A read at server time `t` covers the
 * buckets `floor(t / B) − W / B + 1 … floor(t / B)`, the newest being the one containing `t`. So
 * the window is exact to one bucket: it may include events up to one bucket older than `t − W`,
 * and events later than `t` inside the current bucket (a producer clock running ahead). An event
 * in a bucket after the current one counts once its bucket is inside the window.
 *
 * Acceptance: the aggregator's clock is the largest `now` it has been given (reads and ingests;
 * a clock never goes back), and its progress the latest event time it has accepted, but never
 * past the time the stream stored that event (so an event dated ahead does not move it, and every
 * replica, however far behind, moves it alike). An event older than the
 * progress by more than `allowedLateness`, or older than the clock by more than the longest window
 * (it could count in no window), is dropped and counted as late. One late by the clock alone still
 * moves the progress, and sets its key's event time within the TTL (the newest event decides when
 * a key expires): a replica catching up after a restart must decide and serve as one that took
 * the event in time. Lateness is measured against the
 * stream's progress rather than the clock so that a consumer behind the stream (a new view's
 * replay, a replica that was down) takes the same events as one that is not; with the default
 * lateness (the longest window) the two rules agree. An accepted event whose bucket has already
 * left one aggregation's window for good (the clock only moves forward) is not stored for that
 * aggregation; it could never be read.
 *
 * De-duplication: every accepted event id is remembered until a redelivery of it would be late
 * anyway: until the progress passes `eventTime + allowedLateness`, or the clock
 * `eventTime + ` the longest window, whichever comes first. The
 * seen-set is per aggregator (one per stream-sourced view) and bounded by `maxTrackedEventIds`
 * (default 1,000,000, about 100 MB of 36-character ids): when full, the ids remembered first are
 * forgotten first and counted in `dedupeEvictions`, and a redelivery of one of those events could
 * then count twice. First remembered is nearly first to expire: an id that arrived out of order
 * (an event older than those before it) may stay, expired, behind live ones until they expire, and
 * a live one go before it. The seen-set is part of the checkpoint; restoring one that holds
 * more ids than the cap keeps the newest and counts the others in `dedupeEvictions` too.
 *
 * DISTINCT_COUNT is exact: each bucket keeps the set of its distinct values and a read unions the
 * sets in the window. Memory is bounded by the number of distinct (value, bucket) pairs inside the
 * window, at most the number of events in it. (The contract allows a HyperLogLog estimate above
 * 1,000 distinct values per key and window; this module does not switch to one yet.)
 *
 * LAST is the value of the event with the latest event time; on a tie, the latest to arrive. A
 * LAST of a DOUBLE feature takes numbers only and of a STRING feature strings only: an event whose
 * value has the other type is skipped for that aggregation and counted as invalid, as a string for
 * SUM is, rather than served as a value of the wrong type.
 *
 * Reads cost O(buckets in window) per key and aggregation on a cache miss; a per-series cache
 * keyed by the current bucket makes repeated reads of a key with no new event O(1).
 */

import { isTimestampMs } from '../../../platform/src/grpc/well-known';
import { FeatureStatus, ValueType, type FeatureColumns } from './feature-values';

/** An aggregate function; numbers match `AggregationFunction` in feature_view.proto. */
export enum AggregationFunction {
  Unspecified = 0,
  Count = 1,
  Sum = 2,
  Mean = 3,
  Min = 4,
  Max = 5,
  Last = 6,
  DistinctCount = 7,
}

/** Which event field keys the aggregate; numbers match `AggregationKey` in feature_view.proto. */
export enum AggregationKey {
  Unspecified = 0,
  UnitId = 1,
  ItemId = 2,
}

/** One windowed aggregate, resolved (the bucket is explicit). */
export interface WindowAggregationSpec {
  /** The feature the aggregate is served as. */
  readonly feature: string;
  /** The aggregate function. */
  readonly function: AggregationFunction;
  /** The window length in ms; a whole multiple of `bucketMs`. */
  readonly windowMs: number;
  /** The bucket size in ms, the window's time resolution. */
  readonly bucketMs: number;
  /**
   * The feature's declared type, which LAST's values must have (DOUBLE: numbers, STRING: strings).
   * Unset: LAST takes either.
   */
  readonly valueType?: ValueType;
}

/** The default of {@link WindowAggregatorOptions.maxTrackedEventIds}. */
export const DEFAULT_MAX_TRACKED_EVENT_IDS = 1_000_000;

/**
 * How far ahead of the clock (beyond the longest window) an event may be dated and have its id
 * remembered with the others; a later one's is kept apart (see `WindowAggregator.later`).
 */
const FUTURE_SLACK_MS = 60_000;

/** Options of a {@link WindowAggregator}. */
export interface WindowAggregatorOptions {
  /** The aggregates, in feature order. */
  readonly aggregations: readonly WindowAggregationSpec[];
  /**
   * How far behind the stream's progress an event's time may be and still be counted, in ms (see
   * the module comment).
   */
  readonly allowedLatenessMs: number;
  /** The view's TTL in ms: a key whose newest event is older reads as EXPIRED. 0 = never. @default 0 */
  readonly ttlMs?: number;
  /** The most event ids remembered for de-duplication. @default DEFAULT_MAX_TRACKED_EVENT_IDS */
  readonly maxTrackedEventIds?: number;
}

/** A value an aggregate folds or returns. */
export type AggregatedValue = number | string;

/** One event, reduced to what the aggregates need. */
export interface AggregationEvent {
  /** The event's unique id; redeliveries carry the same id. */
  readonly eventId: string;
  /** The entity key the event is folded into (its unit id or item id). */
  readonly key: string;
  /** When the event happened, in ms since the Unix epoch. */
  readonly eventTime: number;
  /**
   * One entry per aggregation, in order: the value of its value field, or undefined when the
   * event lacks it. Ignored for COUNT. A value of the wrong type for its function (a string for
   * SUM, a non-finite number) is skipped and the event is counted as invalid.
   */
  readonly values: readonly (AggregatedValue | undefined)[];
  /**
   * When the stream stored the event (ms), the same on every replica: the stream's progress is
   * not moved past it (see the module comment). Unset: the clock is used instead. May be a
   * function returning it, called only for an event dated past the progress (the only one that
   * can move it), for a caller to whom reading it costs.
   */
  readonly storedAt?: number | (() => number);
}

/** What happened to one ingested event. */
export type IngestOutcome = 'accepted' | 'late' | 'duplicate' | 'invalid';

/** Cumulative counters of an aggregator, checkpointed with its state. */
export interface AggregationCounters {
  /** Events folded into the state. */
  eventsProcessed: number;
  /** Events dropped because their event time was older than the allowed lateness. */
  eventsDroppedLate: number;
  /** Events skipped for at least one aggregation because a value was missing or mistyped. */
  eventsDroppedInvalid: number;
  /** Redelivered events recognised by id and not counted again. */
  eventsDuplicate: number;
  /** Event ids forgotten early because the seen-set was full. */
  dedupeEvictions: number;
  /**
   * The newest event time folded in, an event dated ahead of the clock counting as of the clock;
   * null before the first event.
   */
  lastEventTime: number | null;
  /** The clock when the last event was processed, or null before the first event. */
  lastProcessedTime: number | null;
}

/** Approximate size of an aggregator's state, for metrics. */
export interface AggregationMemory {
  /** Keys held. */
  readonly keyCount: number;
  /** Non-empty buckets held, over all keys and aggregations. */
  readonly bucketCount: number;
  /** Distinct values held in DISTINCT_COUNT buckets. */
  readonly distinctValueCount: number;
  /** Event ids held for de-duplication. */
  readonly trackedEventIds: number;
  /** A rough estimate of the heap bytes used. */
  readonly approximateBytes: number;
}

/**
 * A bucket as stored in a checkpoint: `[id, count, sum, min, max, lastTime, lastArrival, lastValue,
 * distinct]`. A sum past a double's range (`Infinity`, or `NaN` after both signs) is stored as
 * its string, which JSON has no number for: as `null` it would come back as 0.
 */
export type CheckpointBucket = [
  number,
  number,
  number | string,
  number | null,
  number | null,
  number | null,
  number,
  AggregatedValue | null,
  AggregatedValue[] | null,
];

/** The plain, JSON-serialisable state of an aggregator, from which it can be restored. */
export interface AggregationCheckpoint {
  /**
   * The checkpoint format version: 2 when a bucket's sum is stored as a string (past a double's
   * range), which a build that knows only 1 would add to as text; else 1, which every build reads.
   */
  readonly version: 1 | 2;
  /** `function:window:bucket` of each aggregation, to refuse restoring into another definition. */
  readonly aggregations: readonly string[];
  /** The aggregator's clock (ms); null before anything was ingested or read. */
  readonly clock: number | null;
  /** The stream's progress (ms; see the module comment); null or absent before any event. */
  readonly progress?: number | null;
  /** The arrival sequence number last handed out (orders LAST ties). */
  readonly arrivals: number;
  /** The cumulative counters. */
  readonly counters: AggregationCounters;
  /** Per key: `[key, newest event time, buckets of each aggregation]`. */
  readonly keys: readonly (readonly [string, number, readonly (readonly CheckpointBucket[])[]])[];
  /** The de-duplication seen-set: `[event id, remember until]`, oldest first. */
  readonly seenEventIds: readonly (readonly [string, number])[];
}

interface Bucket {
  readonly id: number;
  count: number;
  sum: number;
  min: number;
  max: number;
  lastTime: number;
  lastArrival: number;
  lastValue: AggregatedValue | undefined;
  distinct: Set<AggregatedValue> | undefined;
}

interface Series {
  /** Non-empty buckets, ascending by id. */
  buckets: Bucket[];
  /** The current bucket id the cached value was computed at, or NaN when stale. */
  cachedAt: number;
  cachedValue: AggregatedValue | null;
}

interface KeyState {
  eventTime: number;
  readonly series: Series[];
}

interface CompiledAggregation {
  readonly spec: WindowAggregationSpec;
  readonly bucketCount: number;
  readonly accepts: (value: AggregatedValue | undefined) => value is AggregatedValue;
}

const isFiniteNumber = (v: AggregatedValue | undefined): v is number =>
  typeof v === 'number' && Number.isFinite(v);
const isString = (v: AggregatedValue | undefined): v is string => typeof v === 'string';
const isNumberOrString = (v: AggregatedValue | undefined): v is AggregatedValue =>
  typeof v === 'string' || isFiniteNumber(v);
const acceptsAnything = (_v: AggregatedValue | undefined): _v is AggregatedValue => true;

function compile(spec: WindowAggregationSpec): CompiledAggregation {
  const { windowMs, bucketMs } = spec;
  if (!(Number.isInteger(bucketMs) && bucketMs > 0 && Number.isInteger(windowMs))) {
    throw new RangeError(
      `aggregation ${spec.feature}: window and bucket must be positive integers`,
    );
  }
  if (windowMs < bucketMs || windowMs % bucketMs !== 0) {
    throw new RangeError(`aggregation ${spec.feature}: window must be a multiple of the bucket`);
  }
  return { spec, bucketCount: windowMs / bucketMs, accepts: acceptorOf(spec) };
}

/** Which values an aggregation folds in; any other makes the event invalid for it. */
function acceptorOf(
  spec: WindowAggregationSpec,
): (value: AggregatedValue | undefined) => value is AggregatedValue {
  switch (spec.function) {
    case AggregationFunction.Count:
      return acceptsAnything;
    case AggregationFunction.DistinctCount:
      return isNumberOrString;
    case AggregationFunction.Last:
      if (spec.valueType === ValueType.Double) return isFiniteNumber;
      if (spec.valueType === ValueType.String) return isString;
      return isNumberOrString;
    default:
      return isFiniteNumber;
  }
}

function newBucket(id: number): Bucket {
  return {
    id,
    count: 0,
    sum: 0,
    min: Infinity,
    max: -Infinity,
    lastTime: -Infinity,
    lastArrival: 0,
    lastValue: undefined,
    distinct: undefined,
  };
}

/** The bucket with id `id` in ascending `buckets`, inserted when missing (in-order events: O(1)). */
function bucketFor(buckets: Bucket[], id: number): Bucket {
  let i = buckets.length - 1;
  while (i >= 0 && (buckets[i] as Bucket).id > id) i--;
  const found = buckets[i];
  if (found !== undefined && found.id === id) return found;
  const bucket = newBucket(id);
  if (i === buckets.length - 1) buckets.push(bucket);
  else buckets.splice(i + 1, 0, bucket);
  return bucket;
}

/** Drops buckets older than `oldest`, which the monotone clock will never read again. */
function pruneBefore(series: Series, oldest: number): void {
  const buckets = series.buckets;
  let drop = 0;
  while (drop < buckets.length && (buckets[drop] as Bucket).id < oldest) drop++;
  if (drop > 0) buckets.splice(0, drop);
}

/**
 * The streaming aggregates of one stream-sourced feature view: per entity key, one bucketed
 * series per aggregation, plus the de-duplication seen-set and the view's counters.
 */
export class WindowAggregator {
  private readonly aggregations: readonly CompiledAggregation[];
  private readonly features: readonly string[];
  private readonly lateness: number;
  /** The longest window (or the lateness, were it longer): how long an event may count. */
  private readonly horizon: number;
  private ttl: number;
  private readonly maxTrackedEventIds: number;
  private readonly keys = new Map<string, KeyState>();
  /** Event id → remember until (ms); Map order is insertion order, oldest first. */
  private readonly seen = new Map<string, number>();
  /**
   * The ids of events dated more than {@link FUTURE_SLACK_MS} ahead of the clock when they came:
   * kept apart, because in `seen` one such id (remembered until its distant event time) would
   * hold up forgetting every id after it. Swept by `forgetIdleKeys`.
   */
  private readonly later = new Map<string, number>();
  /** Where `forgetIdleKeys` stopped, when it stopped at its `maxKeys`. */
  private sweep: MapIterator<[string, KeyState]> | undefined;
  private clock = -Infinity;
  /** The stream's progress: the latest accepted event time, never past when it was stored. */
  private progress = -Infinity;
  /** Restored from a checkpoint that had no progress: it starts at the first event's clock. */
  private progressFromClock = false;
  private arrivals = 0;
  private readonly counters: AggregationCounters = {
    eventsProcessed: 0,
    eventsDroppedLate: 0,
    eventsDroppedInvalid: 0,
    eventsDuplicate: 0,
    dedupeEvictions: 0,
    lastEventTime: null,
    lastProcessedTime: null,
  };

  constructor(options: WindowAggregatorOptions) {
    if (!(options.allowedLatenessMs >= 0)) throw new RangeError('allowedLatenessMs must be ≥ 0');
    this.aggregations = options.aggregations.map(compile);
    this.features = options.aggregations.map((a) => a.feature);
    this.lateness = options.allowedLatenessMs;
    this.horizon = Math.max(this.lateness, ...options.aggregations.map((a) => a.windowMs));
    this.ttl = options.ttlMs ?? 0;
    this.maxTrackedEventIds = options.maxTrackedEventIds ?? DEFAULT_MAX_TRACKED_EVENT_IDS;
  }

  /**
   * Until when the id of an accepted event dated `eventTime` must be remembered: a redelivery
   * after that is late whatever the progress. A caller that stores ids keeps them as long.
   */
  rememberUntil(eventTime: number): number {
    return eventTime + this.horizon;
  }

  /** Restores an aggregator from a checkpoint taken with the same aggregation definitions. */
  static restore(
    options: WindowAggregatorOptions,
    checkpoint: AggregationCheckpoint,
  ): WindowAggregator {
    const aggregator = new WindowAggregator(options);
    aggregator.load(checkpoint);
    return aggregator;
  }

  /** The features this aggregator serves, in order. */
  featureNames(): readonly string[] {
    return this.features;
  }

  /**
   * Folds one event into the state at server time `now` (ms). Returns whether it was accepted,
   * dropped as late, recognised as a redelivery, or dropped as invalid (an event time that is not
   * a Timestamp's: missing, or outside 0001-01-01 to 9999-12-31).
   */
  ingest(event: AggregationEvent, now: number): IngestOutcome {
    if (now > this.clock) this.clock = now;
    const clock = this.clock;
    const eventTime = event.eventTime;
    // Past 9999 the expiry of its remembered id (event time + lateness) is no date storage holds,
    // and every checkpoint after it would fail.
    if (!isTimestampMs(eventTime)) {
      this.counters.eventsDroppedInvalid++;
      return 'invalid';
    }
    if (this.progressFromClock) {
      this.progressFromClock = false;
      if (clock > this.progress) this.progress = clock;
    }
    if (eventTime < Math.max(this.progress - this.lateness, clock - this.horizon)) {
      this.counters.eventsDroppedLate++;
      // Late by the clock alone, it counts in no window, but a replica that took it in time
      // moved its progress with it, and held it as its key's newest event until the TTL passed:
      // one catching up after a restart does both too, so that it drops what that one drops and
      // serves the same status and event time. (Both are harmless to repeat, so a copy delivered
      // again needs no remembered id.)
      if (eventTime >= this.progress - this.lateness) {
        this.advanceProgress(event, clock);
        if (eventTime >= clock - this.ttl) this.touchKey(event.key, eventTime);
      }
      return 'late';
    }
    this.forgetExpiredEventIds(clock);
    if (this.seen.has(event.eventId) || this.later.has(event.eventId)) {
      this.counters.eventsDuplicate++;
      // A copy published again is stored later: it moves the progress as it does on a replica
      // catching up, which takes it late by the clock and cannot tell it from the first.
      this.advanceProgress(event, clock);
      return 'duplicate';
    }
    this.rememberEventId(event.eventId, this.rememberUntil(eventTime));
    this.advanceProgress(event, clock);
    const arrival = ++this.arrivals;

    const state = this.touchKey(event.key, eventTime);

    let invalid = false;
    for (let i = 0; i < this.aggregations.length; i++) {
      const aggregation = this.aggregations[i] as CompiledAggregation;
      const value = event.values[i];
      if (!aggregation.accepts(value)) {
        invalid = true;
        continue;
      }
      const bucketMs = aggregation.spec.bucketMs;
      const bucketId = Math.floor(eventTime / bucketMs);
      const oldest = Math.floor(clock / bucketMs) - aggregation.bucketCount + 1;
      if (bucketId < oldest) continue;
      const series = state.series[i] as Series;
      pruneBefore(series, oldest);
      fold(
        bucketFor(series.buckets, bucketId),
        aggregation.spec.function,
        value,
        eventTime,
        arrival,
      );
      series.cachedAt = Number.NaN;
    }

    if (invalid) this.counters.eventsDroppedInvalid++;
    this.counters.eventsProcessed++;
    // An event dated ahead of the clock counts as of the clock: a producer whose clock runs a day
    // fast would otherwise hold the newest event time a day ahead, and the processing delay
    // (processed time − newest event time) at 0 for that day however far behind processing fell.
    const newest = Math.min(eventTime, clock);
    const last = this.counters.lastEventTime;
    if (last === null || newest > last) this.counters.lastEventTime = newest;
    this.counters.lastProcessedTime = clock;
    return 'accepted';
  }

  /**
   * Reads every aggregate for `keys` at server time `now` (ms), column-oriented. A key no event
   * has been folded into is NOT_FOUND; a key whose newest event is older than the TTL is EXPIRED;
   * an empty window reads 0 for COUNT, DISTINCT_COUNT and SUM and NULL_VALUE otherwise.
   */
  read(keys: readonly string[], now: number): FeatureColumns<AggregatedValue> {
    if (now > this.clock) this.clock = now;
    const clock = this.clock;
    const rowCount = keys.length;
    const featureCount = this.aggregations.length;
    const values = new Array<AggregatedValue | null>(rowCount * featureCount).fill(null);
    const statuses = new Uint8Array(rowCount * featureCount);
    const eventTimes = new Float64Array(rowCount);
    for (let row = 0; row < rowCount; row++) {
      const state = this.keys.get(keys[row] as string);
      if (state === undefined) {
        for (let f = 0; f < featureCount; f++)
          statuses[f * rowCount + row] = FeatureStatus.NotFound;
        continue;
      }
      eventTimes[row] = state.eventTime;
      if (this.ttl > 0 && state.eventTime + this.ttl < clock) {
        for (let f = 0; f < featureCount; f++) statuses[f * rowCount + row] = FeatureStatus.Expired;
        continue;
      }
      for (let f = 0; f < featureCount; f++) {
        const value = this.valueOf(state.series[f] as Series, f, clock);
        const at = f * rowCount + row;
        values[at] = value;
        statuses[at] = value === null ? FeatureStatus.NullValue : FeatureStatus.Present;
      }
    }
    return { rowCount, features: this.features, values, statuses, eventTimes };
  }

  /** The cumulative counters (a copy). */
  status(): AggregationCounters {
    return { ...this.counters };
  }

  /** Approximate memory held, for metrics. O(keys × aggregations). */
  memory(): AggregationMemory {
    let bucketCount = 0;
    let distinctValueCount = 0;
    for (const state of this.keys.values()) {
      for (const series of state.series) {
        bucketCount += series.buckets.length;
        for (const bucket of series.buckets) distinctValueCount += bucket.distinct?.size ?? 0;
      }
    }
    const keyCount = this.keys.size;
    const trackedEventIds = this.seen.size + this.later.size;
    const approximateBytes =
      keyCount * (120 + this.aggregations.length * 64) +
      bucketCount * 120 +
      distinctValueCount * 48 +
      trackedEventIds * 100;
    return { keyCount, bucketCount, distinctValueCount, trackedEventIds, approximateBytes };
  }

  /** Applies a view's new TTL to reads from now on (the windows and their state are kept). */
  setTtl(ttlMs: number): void {
    this.ttl = ttlMs;
  }

  /**
   * How long after its newest event a key is forgotten (see {@link forgetIdleKeys}): the longest
   * window, or the TTL when that is longer, so that a key reads EXPIRED once its TTL has passed
   * (until the next sweep forgets it) rather than NOT_FOUND before.
   */
  get idleHorizonMs(): number {
    let longest = this.ttl;
    for (const a of this.aggregations) longest = Math.max(longest, a.spec.windowMs);
    return longest;
  }

  /** Whether a sweep of `forgetIdleKeys` is under way (it stopped at its `maxKeys`). */
  get sweeping(): boolean {
    return this.sweep !== undefined;
  }

  /**
   * Forgets keys with no bucket left in any window whose newest event is older than
   * {@link idleHorizonMs}, which bounds memory to keys active within the horizon; a forgotten key
   * reads as NOT_FOUND. Call it periodically. Looks at `maxKeys` keys at most, going on from where
   * the last call stopped (so a sweep of many keys can be spread over several calls, rather than
   * hold the event loop: ~0.45 µs a key and aggregation); the far-future event ids are swept when
   * a sweep ends. Returns how many keys were forgotten.
   */
  forgetIdleKeys(now: number, maxKeys = Infinity): number {
    if (now > this.clock) this.clock = now;
    const clock = this.clock;
    const longest = this.idleHorizonMs;
    let forgotten = 0;
    const sweep = this.sweep ?? this.keys.entries();
    this.sweep = sweep;
    for (let looked = 0; looked < maxKeys; looked++) {
      const next = sweep.next();
      if (next.done === true) {
        this.sweep = undefined;
        const threshold = this.forgetBefore(clock);
        for (const [id, until] of this.later) if (until < threshold) this.later.delete(id);
        break;
      }
      const [key, state] = next.value;
      let empty = true;
      for (let i = 0; i < this.aggregations.length; i++) {
        const aggregation = this.aggregations[i] as CompiledAggregation;
        const series = state.series[i] as Series;
        pruneBefore(
          series,
          Math.floor(clock / aggregation.spec.bucketMs) - aggregation.bucketCount + 1,
        );
        if (series.buckets.length > 0) empty = false;
      }
      if (empty && state.eventTime < clock - longest) {
        this.keys.delete(key);
        forgotten++;
      }
    }
    this.forgetExpiredEventIds(clock);
    return forgotten;
  }

  /**
   * The whole state as plain JSON-serialisable data, including the de-duplication seen-set unless
   * `seenEventIds` is false (for a caller that stores the seen ids incrementally: copying up to a
   * million of them at every checkpoint would cost more than the rest).
   */
  checkpoint(options: { readonly seenEventIds?: boolean } = {}): AggregationCheckpoint {
    const keys: [string, number, CheckpointBucket[][]][] = [];
    let version: 1 | 2 = 1;
    for (const [key, state] of this.keys) {
      const series = state.series.map((s) => s.buckets.map(bucketToCheckpoint));
      if (series.some((buckets) => buckets.some((b) => typeof b[2] === 'string'))) version = 2;
      keys.push([key, state.eventTime, series]);
    }
    return {
      version,
      aggregations: this.aggregations.map(signature),
      clock: Number.isFinite(this.clock) ? this.clock : null,
      // Still as an older build measured it until the first event (see `load`): left out, so
      // that a restore of this checkpoint does the same.
      progress: this.progressFromClock
        ? undefined
        : Number.isFinite(this.progress)
          ? this.progress
          : null,
      arrivals: this.arrivals,
      counters: { ...this.counters },
      keys,
      seenEventIds: options.seenEventIds === false ? [] : [...this.seen, ...this.later],
    };
  }

  private load(checkpoint: AggregationCheckpoint): void {
    // Checkpoints come from storage, so the declared type is a hope, not a guarantee.
    if ((checkpoint.version as number) !== 1 && (checkpoint.version as number) !== 2) {
      throw new Error(`unsupported aggregation checkpoint version ${String(checkpoint.version)}`);
    }
    // The same definitions in any order (a view whose features were listed in another order):
    // each aggregation takes its own series from the checkpoint.
    const taken = new Map(checkpoint.aggregations.map((s, i) => [s, i]));
    const from = this.aggregations.map((aggregation) => taken.get(signature(aggregation)));
    if (
      checkpoint.aggregations.length !== this.aggregations.length ||
      taken.size !== this.aggregations.length ||
      from.some((i) => i === undefined)
    ) {
      throw new Error('the checkpoint was taken with other aggregation definitions');
    }
    this.clock = checkpoint.clock ?? -Infinity;
    // Absent from checkpoints taken before it was kept, whose ids were remembered (and stored)
    // until their event time plus the lateness by the clock: the clock at the first event after
    // the restore, which keeps that rule for them (see `ingest`).
    const legacy = checkpoint.progress === undefined;
    this.progressFromClock = legacy;
    this.progress = legacy ? (checkpoint.clock ?? -Infinity) : (checkpoint.progress ?? -Infinity);
    this.arrivals = checkpoint.arrivals;
    Object.assign(this.counters, checkpoint.counters);
    for (const [key, eventTime, series] of checkpoint.keys) {
      this.keys.set(key, {
        eventTime,
        series: this.aggregations.map((aggregation, i) => ({
          buckets: (series[from[i] ?? i] ?? []).map((bucket) =>
            bucketFromCheckpoint(bucket, aggregation.accepts),
          ),
          cachedAt: Number.NaN,
          cachedValue: null,
        })),
      });
    }
    // In the order they expire, far-future ones apart (as `rememberEventId` does), so that none
    // holds up forgetting the others; and those that expire last only: a checkpoint may hold more
    // than the cap (one taken with a larger cap).
    const ids = [...checkpoint.seenEventIds].sort((a, b) => a[1] - b[1]);
    const evicted = Math.max(0, ids.length - this.maxTrackedEventIds);
    const far = this.clock + this.horizon + FUTURE_SLACK_MS;
    // Ids stored before lateness was measured against the progress were remembered until their
    // event time plus the lateness, not the longest window, and nothing tells them from newer
    // ones (a header written since may come with seen ids written before): every restored id is
    // extended by the difference, so that none is forgotten early by the progress rule. A newer
    // one is then kept until the progress passes its event time plus the window, not the lateness.
    const extension = this.horizon - this.lateness;
    for (let i = evicted; i < ids.length; i++) {
      const [id, stored] = ids[i] as readonly [string, number];
      // Extended, most look far-future: in `later` they do not hold up forgetting the ids after
      // them in `seen`, and `forgetIdleKeys` sweeps them.
      const until = stored + extension;
      (until > far ? this.later : this.seen).set(id, until);
    }
    this.counters.dedupeEvictions += evicted;
  }

  private valueOf(series: Series, f: number, clock: number): AggregatedValue | null {
    const aggregation = this.aggregations[f] as CompiledAggregation;
    const current = Math.floor(clock / aggregation.spec.bucketMs);
    if (series.cachedAt === current) return series.cachedValue;
    const oldest = current - aggregation.bucketCount + 1;
    pruneBefore(series, oldest);
    const combined = combine(series.buckets, current, aggregation.spec.function);
    // A SUM or MEAN past the double range (Infinity, or NaN from overflows both ways) is no
    // value: doubles on the wire are finite.
    const value = typeof combined === 'number' && !Number.isFinite(combined) ? null : combined;
    series.cachedAt = current;
    series.cachedValue = value;
    return value;
  }

  /** Moves the progress to an event taken: its event time, but never past when it was stored. */
  private advanceProgress(event: AggregationEvent, clock: number): void {
    if (!(event.eventTime > this.progress)) return;
    const storedAt = event.storedAt;
    const progress = Math.min(
      event.eventTime,
      storedAt === undefined ? clock : typeof storedAt === 'number' ? storedAt : storedAt(),
    );
    if (progress > this.progress) this.progress = progress;
  }

  /** The state of `key`, made when it has none, with `eventTime` as its newest event's if newer. */
  private touchKey(key: string, eventTime: number): KeyState {
    let state = this.keys.get(key);
    if (state === undefined) {
      state = { eventTime, series: this.aggregations.map(newSeries) };
      this.keys.set(key, state);
    } else if (eventTime > state.eventTime) {
      state.eventTime = eventTime;
    }
    return state;
  }

  private rememberEventId(eventId: string, until: number): void {
    const ids = until > this.clock + this.horizon + FUTURE_SLACK_MS ? this.later : this.seen;
    ids.set(eventId, until);
    // The cap counts both; the far-future ids go first.
    if (this.seen.size + this.later.size > this.maxTrackedEventIds) {
      const from = this.later.size > 0 ? this.later : this.seen;
      const oldest = from.keys().next();
      if (oldest.done !== true) {
        from.delete(oldest.value);
        this.counters.dedupeEvictions++;
      }
    }
  }

  /**
   * Drops remembered ids from the front while they are past their horizon. Out-of-order arrival
   * can leave an expired id behind an unexpired one for a while; that only delays forgetting it.
   */
  private forgetExpiredEventIds(clock: number): void {
    const threshold = this.forgetBefore(clock);
    for (const [id, until] of this.seen) {
      if (until >= threshold) break;
      this.seen.delete(id);
    }
  }

  /**
   * Ids remembered until before this are dead: their event (`until − horizon`) is late by the
   * clock, or by the progress (`eventTime < progress − lateness`).
   */
  private forgetBefore(clock: number): number {
    return Math.max(clock, this.progress - this.lateness + this.horizon);
  }
}

function newSeries(): Series {
  return { buckets: [], cachedAt: Number.NaN, cachedValue: null };
}

function signature(a: CompiledAggregation): string {
  return `${a.spec.feature}:${a.spec.function}:${a.spec.windowMs}:${a.spec.bucketMs}`;
}

function fold(
  bucket: Bucket,
  fn: AggregationFunction,
  folded: AggregatedValue,
  eventTime: number,
  arrival: number,
): void {
  // −0 as 0: a checkpoint (JSON) keeps no sign of zero, and MIN or MAX of 0 and −0 would depend
  // on arrival order, so a restored replica could serve another zero than the others.
  const value = folded === 0 ? 0 : folded;
  bucket.count++;
  switch (fn) {
    case AggregationFunction.Sum:
    case AggregationFunction.Mean:
      bucket.sum += value as number;
      break;
    case AggregationFunction.Min:
      if ((value as number) < bucket.min) bucket.min = value as number;
      break;
    case AggregationFunction.Max:
      if ((value as number) > bucket.max) bucket.max = value as number;
      break;
    case AggregationFunction.Last:
      // Arrivals only increase, so an equal event time means this event arrived later: it wins.
      if (eventTime >= bucket.lastTime) {
        bucket.lastTime = eventTime;
        bucket.lastArrival = arrival;
        bucket.lastValue = value;
      }
      break;
    case AggregationFunction.DistinctCount:
      (bucket.distinct ??= new Set()).add(value);
      break;
    default:
      break;
  }
}

/** Combines the buckets with ids in `current − n + 1 … current` (the caller pruned older ones). */
function combine(
  buckets: readonly Bucket[],
  current: number,
  fn: AggregationFunction,
): AggregatedValue | null {
  let count = 0;
  let sum = 0;
  let min = Infinity;
  let max = -Infinity;
  let lastTime = -Infinity;
  let lastArrival = 0;
  let lastValue: AggregatedValue | undefined;
  let distinct: Set<AggregatedValue> | undefined;
  for (const bucket of buckets) {
    if (bucket.id > current) break;
    count += bucket.count;
    switch (fn) {
      case AggregationFunction.Sum:
      case AggregationFunction.Mean:
        sum += bucket.sum;
        break;
      case AggregationFunction.Min:
        if (bucket.min < min) min = bucket.min;
        break;
      case AggregationFunction.Max:
        if (bucket.max > max) max = bucket.max;
        break;
      case AggregationFunction.Last:
        if (
          bucket.lastTime > lastTime ||
          (bucket.lastTime === lastTime && bucket.lastArrival > lastArrival)
        ) {
          lastTime = bucket.lastTime;
          lastArrival = bucket.lastArrival;
          lastValue = bucket.lastValue;
        }
        break;
      case AggregationFunction.DistinctCount:
        if (bucket.distinct !== undefined) {
          if (distinct === undefined) distinct = new Set(bucket.distinct);
          else for (const v of bucket.distinct) distinct.add(v);
        }
        break;
      default:
        break;
    }
  }
  switch (fn) {
    case AggregationFunction.Count:
      return count;
    case AggregationFunction.Sum:
      return sum;
    case AggregationFunction.Mean:
      return count === 0 ? null : sum / count;
    case AggregationFunction.Min:
      return count === 0 ? null : min;
    case AggregationFunction.Max:
      return count === 0 ? null : max;
    case AggregationFunction.Last:
      return lastValue ?? null;
    case AggregationFunction.DistinctCount:
      return distinct?.size ?? 0;
    default:
      return null;
  }
}

function bucketToCheckpoint(b: Bucket): CheckpointBucket {
  return [
    b.id,
    b.count,
    Number.isFinite(b.sum) ? b.sum : String(b.sum),
    Number.isFinite(b.min) ? b.min : null,
    Number.isFinite(b.max) ? b.max : null,
    Number.isFinite(b.lastTime) ? b.lastTime : null,
    b.lastArrival,
    b.lastValue ?? null,
    b.distinct === undefined ? null : [...b.distinct],
  ];
}

/**
 * A bucket from a checkpoint. A LAST value its aggregation does not accept (one taken before LAST
 * checked the feature's type) is dropped, as its event would be now.
 */
function bucketFromCheckpoint(
  c: CheckpointBucket,
  accepts: (value: AggregatedValue | undefined) => boolean,
): Bucket {
  const [id, count, sum, min, max, lastTime, lastArrival, lastValue, distinct] = c;
  const keepsLast = lastValue !== null && accepts(lastValue);
  return {
    id,
    count,
    sum: typeof sum === 'string' ? Number(sum) : sum,
    min: min ?? Infinity,
    max: max ?? -Infinity,
    lastTime: keepsLast ? (lastTime ?? -Infinity) : -Infinity,
    lastArrival: keepsLast ? lastArrival : 0,
    lastValue: keepsLast ? lastValue : undefined,
    distinct: distinct === null ? undefined : new Set(distinct),
  };
}

/**
 * Reads an aggregation's value field from a decoded OutcomeEvent (plain object, camelCase field
 * names as ts-proto produces them). The path uses proto field names (`value`, `item_id`) and, past
 * a `properties` Struct, the struct's keys verbatim (`properties.watch_seconds`). An event without
 * `value` has the value 1, as OutcomeEvent defines. Anything other than a finite number or a
 * string reads as undefined (the aggregation skips the event and counts it invalid).
 */
export function compileValueField(
  path: string,
): (event: Readonly<Record<string, unknown>>) => AggregatedValue | undefined {
  if (path === '') return () => undefined;
  const segments = path.split('.');
  const names = segments.map((segment, i) =>
    i > 0 && segments[0] === 'properties' ? segment : snakeToCamel(segment),
  );
  const defaultsToOne = path === 'value';
  return (event) => {
    let current: unknown = event;
    for (const name of names) {
      if (current === null || typeof current !== 'object') return undefined;
      current = (current as Record<string, unknown>)[name];
    }
    if (current === undefined && defaultsToOne) return 1;
    if (typeof current === 'string') return current;
    if (typeof current === 'number' && Number.isFinite(current)) return current;
    return undefined;
  };
}

function snakeToCamel(name: string): string {
  return name.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
}
