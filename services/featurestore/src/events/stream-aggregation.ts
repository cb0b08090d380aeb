/**
 * The streaming aggregation of one stream-sourced feature view on this replica: a durable
 * JetStream consumer on the view's subject feeds the domain's WindowAggregator, whose state is
 * read by GetOnlineFeatures as soon as an event is folded in, and checkpointed to storage.
 *
 * Delivery guarantee (at-least-once in, exactly-once in the state): an event is acked only after
 * a checkpoint that includes it has been written. Each handler folds its batch synchronously and
 * then waits for the next checkpoint round (every interval, or at once when half the in-flight
 * limit is waiting), so many events are in flight at once and one checkpoint acks them all, with
 * one cumulative acknowledgement per batch. A crash before the checkpoint loses nothing: the
 * events were not acked, so the durable is rewound to them and they are folded into the restored
 * (older) state. A crash after the checkpoint but before the ack is also safe: the redelivered
 * event's id is in the checkpointed seen-set, so it is recognised as a duplicate. A checkpoint
 * write slower than the ack wait is waited for: a batch whose round is being written, or is next,
 * tells the bus it is still working, so that it is not delivered again only to wait for a later
 * round, as slow (see `handleBatch`). While NATS is down the consumer stops receiving and the
 * aggregation reports PAUSED; acks lost with the connection become redeliveries, again absorbed
 * by the seen-set. A consumer that cannot be started (NATS down when the view is applied or the
 * replica starts) is retried in the background, also reported as PAUSED, so that nothing waits
 * for NATS.
 *
 * Each replica has its own durable consumer (named after the view and the replica) and its own
 * checkpoint, because every replica serves every view from memory and so needs every event. The
 * two go together: without a checkpoint to resume from, the durable is deleted before subscribing,
 * so the stream is replayed into the empty state rather than resumed after events the state never
 * held (a view deleted and applied again under the same name, or a checkpoint lost).
 */
import { context, ROOT_CONTEXT } from '@opentelemetry/api';
import { callerMessage, UnavailableError } from '../../../platform/src/errors';
import { withTimeout } from '../../../platform/src/timeout';
import type { Logger } from '../../../platform/src/logging';
import type {
  BatchProgress,
  DeliveredEvent,
  EventBus,
  Subscription,
} from '../../../platform/src/events/bus';
import { Signal } from '../../../platform/src/events/signal';
import { OUTCOME_STREAM } from '../../../platform/src/events/streams';
import { OutcomeEvent } from '../../../../gen/ts/tandem/events/v1/outcome_event';
import { checkingTimestamps } from '../../../platform/src/events/timestamp-checked-codec';
import {
  effectiveAllowedLatenessMs,
  longerThan,
  windowAggregationSpecs,
  type FeatureViewDefinition,
  type StreamSource,
} from '../domain/registry';
import {
  AggregationKey,
  WindowAggregator,
  compileValueField,
  type AggregatedValue,
  type AggregationCounters,
  type WindowAggregatorOptions,
} from '../domain/window-aggregation';
import type { FeatureColumns } from '../domain/feature-values';
import type { CheckpointWriter } from '../store/aggregation-checkpoints';

export type AggregationPhase = 'backfilling' | 'running' | 'paused' | 'failed';

/** What GetAggregationStatus reports about one view on this replica. */
export interface AggregationProgress {
  readonly phase: AggregationPhase;
  readonly message: string;
  readonly counters: AggregationCounters;
  /**
   * Events dropped as invalid before aggregation: without their key field (unit or item id),
   * without a usable event id, or undecodable. (Stored under this name since it counted only the
   * first.)
   */
  readonly missingKeys: number;
  readonly lastCheckpointTime: Date | undefined;
}

export interface StreamAggregationOptions {
  readonly view: FeatureViewDefinition;
  readonly bus: EventBus;
  readonly checkpoints: CheckpointWriter;
  readonly logger: Logger;
  readonly stream: string;
  readonly durable: string;
  readonly checkpointIntervalMs: number;
  readonly inFlight: number;
}

interface Round {
  readonly done: Promise<void>;
  readonly resolve: () => void;
}

function newRound(): Round {
  let resolve: () => void = () => undefined;
  const done = new Promise<void>((r) => {
    resolve = r;
  });
  return { done, resolve };
}

/** Events per batch handed to the aggregation. */
const BATCH_SIZE = 500;

/** Deliveries of an event before the bus gives up on it (see `subscribe`). */
const MAX_DELIVERIES = 10_000;

/** The share of the in-flight limit at which a checkpoint is written without waiting for the timer. */
const EARLY_CHECKPOINT_SHARE = 0.5;

/** How long without events before a replaying view counts as caught up. */
const BACKFILL_IDLE_MS = 1_000;
/** Bounds of how often idle entities are looked for (see `forgetIdleKeysIfDue`). */
const FORGET_IDLE_KEYS_MIN_MS = 5_000;
const FORGET_IDLE_KEYS_MAX_MS = 60_000;
/** Keys looked at per checkpoint tick by a sweep for idle entities (~5 ms with two aggregations). */
const FORGET_IDLE_KEYS_PER_TICK = 10_000;

/** Back-off between attempts to start the consumer while NATS is unavailable, doubling to a cap. */
const START_RETRY_INITIAL_MS = 500;
const START_RETRY_MAX_MS = 10_000;
/** The longest event id an event may have (OutcomeEvent.event_id). */
const MAX_EVENT_ID_LENGTH = 128;
/**
 * Outcome events as the aggregations read them: one whose `event_time` has nanos out of range is
 * undecodable (dropped and counted as invalid), not taken as a time up to two seconds off.
 */
const OUTCOME_EVENTS = checkingTimestamps(OutcomeEvent, 'tandem.events.v1.OutcomeEvent');

/** How long an aggregation's durable may go unconsumed before NATS deletes it: the stream's age. */
export const DURABLE_IDLE_MS = OUTCOME_STREAM.maxAgeMs;

/** The durable consumer of a stream-sourced view on one replica. */
export function aggregationDurable(view: string, replicaId: string): string {
  return `featurestore-${view}-${replicaId}`;
}

export class StreamAggregation {
  private aggregator: WindowAggregator;
  private options: WindowAggregatorOptions;
  private readonly source: StreamSource;
  private readonly eventNames: ReadonlySet<string>;
  private readonly valueFields: ((
    event: Readonly<Record<string, unknown>>,
  ) => AggregatedValue | undefined)[];
  private readonly lateness: number;
  private subscription: Subscription | undefined;
  private round = newRound();
  private dirty = false;
  /** When idle entities were last forgotten (see `forgetIdleKeysIfDue`); start-up counts. */
  private idleKeysForgottenAt = Date.now();
  private newSeenIds: (readonly [string, number])[] = [];
  private missingKeys = 0;
  /** The undecodable events of the current subscription already added to `missingKeys`. */
  private poisonCounted = 0;
  /** Whether an event dropped for its event id was logged (once per view and process). */
  private warnedOfEventIds = false;
  private inFlight = 0;
  private lastCheckpointTime: Date | undefined;
  private backfilling = false;
  private startedAt = Date.now();
  private lastEventAt = 0;
  /** Why the consumer has not started (the last attempt's error); unset once it has. */
  private startFailure: Error | undefined;
  /** Set when there is no state to resume: the durable is deleted before subscribing. */
  private resetDurable = false;
  private starting: Promise<void> = Promise.resolve();
  private readonly stopSignal = new Signal();
  private checkpointFailure: string | undefined;
  private timer: NodeJS.Timeout | undefined;
  private checkpointing: Promise<void> | undefined;
  /** When the checkpoint write under way started; unset between writes. */
  private writeStartedAt: number | undefined;
  private stopping = false;

  constructor(private readonly parts: StreamAggregationOptions) {
    const source = parts.view.source;
    if (source?.kind !== 'stream') throw new Error(`${parts.view.name} is not stream-sourced`);
    this.source = source;
    this.lateness = effectiveAllowedLatenessMs(source);
    const specs = windowAggregationSpecs(parts.view);
    this.options = {
      aggregations: specs,
      allowedLatenessMs: this.lateness,
      ttlMs: parts.view.ttlMs,
    };
    this.aggregator = new WindowAggregator(this.options);
    this.eventNames = new Set(source.eventNames);
    this.valueFields = specs.map((spec) =>
      compileValueField(
        source.aggregations.find((a) => a.feature === spec.feature)?.valueField ?? '',
      ),
    );
  }

  /**
   * Restores the checkpoint, then starts checkpointing, and the consumer in the background: while
   * NATS is unavailable it is retried with a capped back-off, so applying a view never waits.
   */
  async start(): Promise<void> {
    const { logger, view } = this.parts;
    const stored = await this.parts.checkpoints.restore();
    if (stored === undefined) {
      this.backfilling = true;
      this.resetDurable = true;
    } else {
      try {
        this.aggregator = WindowAggregator.restore(this.options, stored.checkpoint);
        this.lastCheckpointTime = stored.checkpointTime;
        this.missingKeys = stored.extraCounters.missingKeys ?? 0;
      } catch (error) {
        logger.error(
          { err: error, view: view.name },
          'aggregation checkpoint unusable; rebuilding from the stream',
        );
        // Its seen ids, restored after a restart during the rebuild, would make the events not
        // yet replayed count as duplicates.
        await this.parts.checkpoints.discardUnusable(
          error instanceof Error ? error.message : String(error),
        );
        this.backfilling = true;
        this.resetDurable = true;
      }
    }
    // Background work for the life of the view: not part of the call that applied it (an
    // ApplyFeatureView's trace would otherwise collect every checkpoint, forever).
    context.with(ROOT_CONTEXT, () => {
      this.timer = setInterval(() => {
        this.forgetIdleKeysIfDue();
        void this.checkpointIfDirty();
      }, this.parts.checkpointIntervalMs);
      this.starting = this.startConsumer();
    });
  }

  /**
   * Subscribes, retrying while NATS is unavailable until it succeeds or the aggregation stops.
   * Any other error (the server refused the consumer) is final: the aggregation reports FAILED.
   */
  private async startConsumer(): Promise<void> {
    const { logger, view } = this.parts;
    for (let attempt = 0; !this.isStopping(); attempt++) {
      try {
        this.subscription = await this.subscribe();
        this.poisonCounted = 0;
        if (this.startFailure !== undefined) {
          logger.info({ view: view.name }, 'aggregation consumer started');
        }
        this.startFailure = undefined;
        return;
      } catch (error) {
        this.startFailure = error instanceof Error ? error : new Error(String(error));
        if (!(error instanceof UnavailableError)) {
          logger.error({ err: error, view: view.name }, 'cannot start the aggregation consumer');
          return;
        }
        if (attempt === 0) {
          logger.warn(
            { err: error, view: view.name },
            'cannot start the aggregation consumer; retrying until NATS is back',
          );
        }
      }
      // The signal wakes only a wait under way: a stop during the attempt is seen here.
      if (this.isStopping()) return;
      await this.stopSignal.wait(
        Math.min(START_RETRY_INITIAL_MS * 2 ** attempt, START_RETRY_MAX_MS),
      );
    }
  }

  private async subscribe(): Promise<Subscription> {
    const { bus, stream, durable, logger, view } = this.parts;
    if (this.resetDurable) {
      if (await bus.deleteConsumer?.(stream, durable)) {
        logger.info(
          { view: view.name, durable },
          'no aggregation state to resume: consumer deleted, the stream is replayed',
        );
      }
      this.resetDurable = false;
    }
    // Events stored from now on are new: the replay has caught up when it reaches one.
    this.startedAt = Date.now();
    const spec = {
      stream,
      durable,
      filterSubjects: [this.source.subject],
      codec: OUTCOME_EVENTS,
      maxAckPending: this.parts.inFlight,
      ackWaitMs: this.ackWaitMs(),
      // A batch fails only while checkpoints do (folding never throws), so it is not given up
      // on (acked, though no checkpoint holds it) after a few dozen deliveries: at the bus's
      // 30 s back-off, these last days.
      maxDeliver: MAX_DELIVERIES,
      // A durable nobody consumed from for as long as the stream keeps events has nothing left to
      // resume from, so NATS deletes it rather than keeping it forever: a replica scaled away, or
      // one down while its view was deleted, leaves none behind. One back later declares it
      // again and replays the stream into its checkpoint, whose seen-set absorbs what it holds.
      inactiveThresholdMs: DURABLE_IDLE_MS,
    };
    // In batches where the bus offers them: one handler run, span and ack-wait timer per batch
    // rather than per event (the per-event machinery cost more than the aggregation itself),
    // and one cumulative acknowledgement per batch, since a redelivery is recognised anyway.
    return bus.subscribeBatches === undefined
      ? bus.subscribe({ ...spec, concurrency: this.parts.inFlight }, (delivered) =>
          this.handleBatch([delivered]),
        )
      : bus.subscribeBatches(
          {
            ...spec,
            maxBatchSize: BATCH_SIZE,
            acknowledgement: 'cumulative',
            concurrency: Math.max(1, Math.ceil(this.parts.inFlight / BATCH_SIZE)),
          },
          (batch, progress) => this.handleBatch(batch, progress),
        );
  }

  /** The events on the view's subject its durable has not been delivered yet (its lag). */
  async pending(): Promise<number | undefined> {
    const { bus, stream, durable } = this.parts;
    return bus.consumerPending?.(stream, durable);
  }

  /** How long the bus waits for a batch before delivering it again. */
  private ackWaitMs(): number {
    return Math.max(30_000, this.parts.checkpointIntervalMs * 20);
  }

  /** How long a batch waits for its checkpoint before asking whether checkpoints fail. */
  private checkpointWaitMs(): number {
    return Math.min(this.ackWaitMs() / 3, 40 * this.parts.checkpointIntervalMs);
  }

  /** A method, not a field read, because it changes while the start loop awaits. */
  private isStopping(): boolean {
    return this.stopping;
  }

  /**
   * Takes a new registration of the view whose stream source is unchanged (its description,
   * owner, tags or TTL changed): the aggregation goes on, and the TTL applies to reads at once.
   */
  redefine(view: FeatureViewDefinition): void {
    this.options = { ...this.options, ttlMs: view.ttlMs };
    this.aggregator.setTtl(view.ttlMs);
  }

  /** Reads every aggregate for `keys` at `now`. */
  read(keys: readonly string[], now: number): FeatureColumns<AggregatedValue> {
    return this.aggregator.read(keys, now);
  }

  progress(connected: boolean): AggregationProgress {
    if (
      this.backfilling &&
      this.subscription !== undefined &&
      this.inFlight === 0 &&
      // Idle since the last event, or since subscribing when none has come yet.
      Date.now() - Math.max(this.lastEventAt, this.startedAt) > BACKFILL_IDLE_MS
    ) {
      this.backfilling = false;
    }
    const notStarted = this.startFailure;
    const phase: AggregationPhase =
      notStarted !== undefined && !(notStarted instanceof UnavailableError)
        ? 'failed'
        : notStarted !== undefined || !connected || this.subscription === undefined
          ? 'paused'
          : this.backfilling
            ? 'backfilling'
            : 'running';
    // Callers read it (GetAggregationStatus): an error's message only as a call would show it.
    const message =
      notStarted instanceof UnavailableError
        ? `waiting for NATS to start the consumer: ${callerMessage(notStarted)}`
        : notStarted !== undefined
          ? callerMessage(notStarted)
          : !connected
            ? 'NATS is unreachable; waiting for it to come back'
            : this.subscription === undefined
              ? 'starting the consumer'
              : (this.checkpointFailure ??
                this.slowCheckpoint() ??
                (this.backfilling ? 'replaying the stream' : 'following new events'));
    this.countUndecodable();
    return {
      phase,
      message,
      counters: this.aggregator.status(),
      missingKeys: this.missingKeys,
      lastCheckpointTime: this.lastCheckpointTime,
    };
  }

  /** Says so when the checkpoint write under way is slow enough that batches wait on it. */
  private slowCheckpoint(): string | undefined {
    const started = this.writeStartedAt;
    if (started === undefined) return undefined;
    const seconds = Math.floor((Date.now() - started) / 1_000);
    return seconds * 1_000 < this.checkpointWaitMs()
      ? undefined
      : `checkpoint write under way for ${seconds} s (slow storage); events are acknowledged once it is written`;
  }

  /**
   * Stops for good a view that is gone (deleted, or no longer stream-sourced): as {@link stop},
   * without a last checkpoint, and deletes this replica's checkpoint. Another replica deleting
   * the view deletes every checkpoint of it, but this one's last would come after.
   */
  async retire(): Promise<void> {
    await this.stop(false);
    await this.parts.checkpoints.delete();
  }

  /** Stops consuming, writes a last checkpoint (when `checkpoint`) and stops checkpointing. */
  async stop(checkpoint = true): Promise<void> {
    this.stopping = true;
    this.stopSignal.notify();
    // An attempt to start the consumer under way ends first (it may still succeed).
    await this.starting;
    // Handlers wait for a checkpoint round, so rounds keep running while the consumer stops.
    await this.subscription?.stop();
    if (this.timer !== undefined) clearInterval(this.timer);
    await this.checkpointing;
    this.countUndecodable();
    if (checkpoint && this.dirty) await this.checkpoint().catch(() => undefined);
  }

  /** Folds a batch at once (readable immediately), then waits for a checkpoint to include it. */
  private async handleBatch(
    batch: readonly DeliveredEvent<OutcomeEvent>[],
    progress?: BatchProgress,
  ): Promise<void> {
    const now = Date.now();
    for (const delivered of batch) this.fold(delivered, now);
    this.lastEventAt = now;
    // Events come in stream order: the batch's newest tells whether the replay has caught up.
    const newest = batch[batch.length - 1];
    if (this.backfilling && newest !== undefined && newest.storedAt.getTime() >= this.startedAt) {
      this.backfilling = false;
    }
    this.dirty = true;
    this.inFlight += batch.length;
    // The round these events are in: a checkpoint made due below swaps in the next at once.
    const round = this.round;
    if (this.checkpointDueEarly()) void this.checkpointIfDirty();
    try {
      // Acked (by returning) only once a checkpoint includes these events. While checkpoints
      // fail, handed back for a later delivery (the bus's back-off): held here instead, a batch
      // and each of its deliveries at every ack wait would stay in memory for the whole outage.
      // Storage that is only slow is waited for, and the bus told so: a write under way is
      // followed by the round holding these events (the one written, or the next, which starts
      // once it ends), and a batch delivered again would only wait for a later, as slow, round.
      // (`checkpointWaitMs` is a third of the ack wait at most, so this comes before it ends.)
      const checkpointed = round.done.then(() => true);
      const waitMs = this.checkpointWaitMs();
      while (
        !(await withTimeout(checkpointed, waitMs, () => new Error('waiting')).catch(() => false))
      ) {
        const failure = this.checkpointFailure;
        if (failure !== undefined) {
          throw new UnavailableError(`${failure}; the events are delivered again later`);
        }
        if (this.checkpointing !== undefined) progress?.working();
      }
    } finally {
      this.inFlight -= batch.length;
    }
  }

  /**
   * True when so many events await their checkpoint that waiting for the timer would stall the
   * consumer: JetStream hands out no more than `inFlight` (max ack pending) unacknowledged events.
   * Not after a failed checkpoint: the timer paces the retries.
   */
  private checkpointDueEarly(): boolean {
    return (
      this.inFlight >= this.parts.inFlight * EARLY_CHECKPOINT_SHARE &&
      this.checkpointFailure === undefined &&
      !this.stopping
    );
  }

  private fold(delivered: DeliveredEvent<OutcomeEvent>, now: number): void {
    const event = delivered.event;
    if (this.eventNames.size > 0 && !this.eventNames.has(event.name)) return;
    const key = this.source.key === AggregationKey.ItemId ? event.itemId : (event.unit?.id ?? '');
    // The event's own id is what makes a copy published again a duplicate: required, as the
    // contract says, and at most 128 characters. (The message id is not used instead: a message
    // published without one has its stream sequence there, different for every copy.)
    const eventId = event.eventId;
    // Characters, not UTF-16 units: an id of 128 emoji is one OutcomeEvent allows.
    const badId = eventId === '' || longerThan(eventId, MAX_EVENT_ID_LENGTH);
    if (badId && !this.warnedOfEventIds) {
      this.warnedOfEventIds = true;
      this.parts.logger.warn(
        { view: this.parts.view.name, subject: delivered.subject, eventId: delivered.eventId },
        'outcome events without an event_id (or one over 128 characters) are dropped as invalid',
      );
    }
    if (key === '' || badId) {
      this.missingKeys++;
    } else {
      const record = event as unknown as Readonly<Record<string, unknown>>;
      const eventTime = event.eventTime?.getTime() ?? Number.NaN;
      const outcome = this.aggregator.ingest(
        {
          eventId,
          key,
          eventTime,
          values: this.valueFields.map((read) => read(record)),
          // Read from the message's reply subject, which only the rare event dated past the
          // stream's progress needs.
          storedAt: () => delivered.storedAt.getTime(),
        },
        now,
      );
      if (outcome === 'accepted') {
        this.newSeenIds.push([eventId, this.aggregator.rememberUntil(eventTime)]);
      }
    }
  }

  /**
   * Forgets the entities with no event within the longest window (or the TTL), at most once per
   * that horizon clamped to 5–60 s: otherwise every entity ever seen stays in memory and in every
   * checkpoint. The next checkpoint stores the smaller state.
   */
  private forgetIdleKeysIfDue(): void {
    const now = Date.now();
    if (!this.aggregator.sweeping) {
      const every = Math.min(
        FORGET_IDLE_KEYS_MAX_MS,
        Math.max(FORGET_IDLE_KEYS_MIN_MS, this.aggregator.idleHorizonMs),
      );
      if (now - this.idleKeysForgottenAt < every) return;
      this.idleKeysForgottenAt = now;
    }
    // A slice of the keys per tick: a million would hold the event loop for about half a second.
    if (this.aggregator.forgetIdleKeys(now, FORGET_IDLE_KEYS_PER_TICK) > 0) this.dirty = true;
  }

  private checkpointIfDirty(): Promise<void> {
    this.countUndecodable();
    if (!this.dirty || this.checkpointing !== undefined) return Promise.resolve();
    this.checkpointing = this.checkpoint()
      .catch((error: unknown) => {
        // Shown by GetAggregationStatus: what the logged error says goes in the line below.
        this.checkpointFailure = `checkpoint failed: ${callerMessage(error)}`;
        if (!this.stopping)
          this.parts.logger.warn(
            { err: error, view: this.parts.view.name },
            'aggregation checkpoint failed; retrying',
          );
      })
      .finally(() => {
        this.checkpointing = undefined;
        if (this.checkpointDueEarly()) void this.checkpointIfDirty();
      });
    return this.checkpointing;
  }

  /**
   * Adds the events the bus terminated as undecodable since the last call to the invalid ones:
   * they never reach `fold`, and count as invalid all the same.
   */
  private countUndecodable(): void {
    const poison = this.subscription?.stats().poison ?? 0;
    if (poison > this.poisonCounted) {
      this.missingKeys += poison - this.poisonCounted;
      // A count the next checkpoint must store: the event is not delivered again.
      this.dirty = true;
    }
    this.poisonCounted = poison;
  }

  /** One round: snapshot (synchronously, so it holds every event folded so far), write, ack. */
  private async checkpoint(): Promise<void> {
    const round = this.round;
    this.round = newRound();
    const seen = this.newSeenIds;
    this.newSeenIds = [];
    this.dirty = false;
    const snapshot = this.aggregator.checkpoint({ seenEventIds: false });
    this.writeStartedAt = Date.now();
    try {
      this.lastCheckpointTime = await this.parts.checkpoints.write(snapshot, seen, {
        missingKeys: this.missingKeys,
      });
      this.checkpointFailure = undefined;
      round.resolve();
    } catch (error) {
      // Not written: its events wait for the next round, which must also carry their ids.
      this.newSeenIds = [...seen, ...this.newSeenIds];
      this.dirty = true;
      void this.round.done.then(round.resolve);
      throw error;
    } finally {
      this.writeStartedAt = undefined;
    }
  }
}
