/**
 * Fire-and-forget publishing for events a request must never wait for or fail on (exposure
 * logging, decision logging). `enqueue` encodes the event, puts it in a bounded in-memory queue
 * and returns; a background loop publishes the queue through the bus with JetStream acks. While
 * the bus is unavailable the loop backs off and retries, then publishes the backlog when it
 * returns. Retrying is safe because the stream deduplicates on `eventId`.
 *
 * Each event is published in the trace context that was active when it was enqueued, so its publish
 * span and `traceparent` belong to the request that produced it, not to the background loop.
 *
 * Drop policy: when the queue is full the NEW event is dropped (and counted), not the oldest. The
 * backlog of an outage then holds its earliest events, and for exposures the earliest event is the
 * one that matters (analysis windows start at a unit's first exposure); dropping the oldest would
 * silently move first exposures later.
 *
 * A {@link PublishGate} extends the stream's duplicate window: each round first asks it which of
 * its events were already published (by another replica, or before a restart, however long ago)
 * and skips those, and tells it which ones the stream acked. The telling goes on in the background
 * while the next rounds publish (one call of at most {@link GATE_CHUNK} ids at a time, oldest
 * first), so a gate slower to write than to read costs the queue little. A gate that fails or does not answer
 * within {@link GATE_TIMEOUT_MS} is logged and not asked for {@link GATE_BYPASS_MS}: meanwhile
 * the events are published unchecked (the stream's duplicate window deduplicates them), and the
 * ids acked are kept (up to {@link MAX_UNRECORDED}) and told to the gate once the bypass is over
 * and it answers again.
 */
import { context as traceContext, type Context } from '@opentelemetry/api';
import { UnavailableError } from '../errors';
import { errorText } from '../logging';
import { withTimeout } from '../timeout';
import type { BusLogger, EventBus, EventCodec } from './bus';
import { silentLogger } from './delivery';
import { Signal } from './signal';

export interface BufferedPublisherOptions {
  /** Events kept while the bus cannot take them; beyond this, new events are dropped. @default 10 000 */
  readonly capacity?: number;
  /** Publishes awaiting their ack at once: one at a time is ~5k events/s, 32 several times that. @default 32 */
  readonly maxInFlight?: number;
  /** Wait after the first failed attempt; doubles per consecutive failure. @default 100 ms */
  readonly initialRetryDelayMs?: number;
  /** Upper bound of that wait, which bounds how late the backlog starts after NATS returns. @default 5 s */
  readonly maxRetryDelayMs?: number;
  /** Ack timeout of each publish. @default 5 s */
  readonly publishTimeoutMs?: number;
  /** Where drops and outages are logged. @default silent */
  readonly logger?: BusLogger;
  /** Consulted before and told after each round (see the class comment). @default none */
  readonly gate?: PublishGate;
  /** How long a failed gate is left alone. @default 5 s */
  readonly gateBypassMs?: number;
  /**
   * Keeps the events still queued when the publisher closes, for the next publisher to take
   * (`restoreSpooled`), instead of dropping them. @default none: they are dropped and counted
   */
  readonly spool?: EventSpool;
  /** How long keeping them may take; past it, the rest are dropped. @default 1.5 s */
  readonly spoolTimeoutMs?: number;
}

/** An encoded event a closing publisher could not publish. */
export interface SpooledEvent {
  readonly subject: string;
  readonly data: Uint8Array;
  readonly eventId: string;
  /** Set by `peek`: the spool's reference to the keeping of the event it returned (see `forget`). */
  readonly handle?: string;
}

/**
 * Durable storage for the events a closing publisher could not publish. Any replica's may be
 * taken by any other: publishing one twice is skipped by the gate and the stream's duplicate
 * window.
 */
/** How a caller follows and ends a keeping (see {@link EventSpool.keep}). */
export interface KeepOptions {
  /** Once aborted, no more batches are started (one under way may still be stored). */
  readonly signal?: AbortSignal;
  /** Called with the number of events of each batch once stored. */
  readonly onKept?: (count: number) => void;
}

export interface EventSpool {
  /**
   * Stores them, in batches (an event kept again is kept again: it may be queued twice). Throws
   * when storage fails: the batches reported to `onKept` are stored.
   */
  keep(events: readonly SpooledEvent[], options?: KeepOptions): Promise<void>;
  /** The first `limit` kept events, in the order they were kept; they stay kept. */
  peek(limit: number): Promise<SpooledEvent[]>;
  /**
   * Forgets the keepings `peek` returned, once they are queued again; the same event kept again
   * since (by a publisher that closed meanwhile) stays.
   */
  forget(events: readonly SpooledEvent[]): Promise<void>;
}

/** A durable record of the events published, shared by every publisher of the same stream. */
export interface PublishGate {
  /** Which of `eventIds` were already published: they are skipped. */
  alreadyPublished(eventIds: readonly string[]): Promise<ReadonlySet<string>>;
  /** Records that the stream acked `eventIds`. */
  published(eventIds: readonly string[]): Promise<void>;
}

/** What the publisher has done since it was created. */
export interface BufferedPublisherStats {
  /** Events waiting to be published now (including those being published). */
  readonly queued: number;
  /** Events the stream acked (a duplicate ack counts: the event is stored). */
  readonly published: number;
  /** Events not published because the gate said they already were. */
  readonly skipped: number;
  /** Events given up on: queue full, publisher closed, not encodable or refused by the bus. */
  readonly dropped: number;
  /** Publish attempts that failed and were retried. */
  readonly failedAttempts: number;
  /** Events still queued at close, kept in the spool for the next start rather than dropped. */
  readonly spooled: number;
  /** Events taken from the spool and queued again (`restoreSpooled`). */
  readonly restored: number;
}

/** Which of a round's events were taken: acked, or known to the gate (see `publishRound`). */
type RoundOutcome = 'all' | 'some' | 'none';

const DROP_LOG_INTERVAL_MS = 10_000;
/** A failing gate is logged at most this often. */
const GATE_LOG_INTERVAL_MS = 10_000;
/**
 * How long one gate call may take, and how long the gate is bypassed after it failed, so a storage
 * outage slows the queue by one timeout every few seconds, not by one per round.
 */
const GATE_TIMEOUT_MS = 2_000;
/** The least time left before a close's deadline in which a round is still started. */
const CLOSING_ROUND_MIN_MS = 100;
const GATE_BYPASS_MS = 5_000;
/**
 * Acked ids kept for the gate while it cannot be told or is being told (the oldest are forgotten
 * beyond this, and counted in the log: the stream's duplicate window still covers them).
 */
const MAX_UNRECORDED = 100_000;
/** Events taken from the spool at a time by `restoreSpooled`. */
const RESTORE_BATCH = 1_000;
/** The most ids in one call of the gate, so that a backlog does not make a call overrun its time. */
const GATE_CHUNK = 1_024;

/** An encoded event waiting in the queue. */
interface QueuedEvent {
  readonly subject: string;
  readonly data: Uint8Array;
  readonly eventId: string;
  /** The trace context active at enqueue (the request's), for the publish span and headers. */
  readonly context: Context;
}

/** Publishes bytes encoded at enqueue time, so a caller may reuse or change its event object. */
const ENCODED: EventCodec<Uint8Array> = {
  encode: (data) => ({ finish: () => data }),
  decode: (data) => data,
};

const EMPTY: ReadonlySet<string> = new Set();

const gateTimedOut = (): Error => new Error(`no answer within ${GATE_TIMEOUT_MS} ms`);

export class BufferedPublisher {
  private readonly capacity: number;
  private readonly maxInFlight: number;
  private readonly initialRetryDelayMs: number;
  private readonly maxRetryDelayMs: number;
  private readonly publishTimeoutMs: number;
  private readonly logger: BusLogger;
  private readonly gate: PublishGate | undefined;
  private readonly gateBypassMs: number;
  /** FIFO queue; `head` skips published events without shifting the array each time. */
  private queue: QueuedEvent[] = [];
  private head = 0;
  private published = 0;
  private skipped = 0;
  private dropped = 0;
  private failedAttempts = 0;
  private spooled = 0;
  private restored = 0;
  private readonly spool: EventSpool | undefined;
  /** The `restoreSpooled` under way, if any. */
  private restoring: Promise<number> | undefined;
  private readonly spoolTimeoutMs: number;
  private droppedSinceLog = 0;
  private lastDropLogAt = -Infinity;
  private consecutiveFailures = 0;
  private lastGateLogAt = -Infinity;
  /** Acked ids forgotten by the cap of `unrecorded` since the last log of it. */
  private forgottenSinceLog = 0;
  private lastForgottenLogAt = -Infinity;
  private gateBypassedUntil = -Infinity;
  /** Acked ids the gate has not been told yet, oldest first (those of a call under way excepted). */
  private unrecorded: string[] = [];
  /** The gate being told what was acked, while the loop goes on; undefined when idle. */
  private recording: Promise<void> | undefined;
  /** Tells the gate again once its bypass is over (see `recordAfterBypass`). */
  private recordTimer: NodeJS.Timeout | undefined;
  /**
   * Set by `close()`: past it, one more gate call at most starts after the one under way, so a
   * slow gate cannot hold the close up for the whole backlog.
   */
  private recordUntil = Infinity;
  private callsPastRecordUntil = 0;
  /** Set when a round fails after `close()` was called: the spool is then waited for no more. */
  private failedWhileClosing = false;
  /** False once `close()` is called: new events are dropped. */
  private accepting = true;
  /** True once the loop should stop. */
  private loopDone = false;
  /** Wakes an idle loop when an event arrives. */
  private readonly arrived = new Signal();
  /** Cuts a back-off short on close (arrivals must not, or an outage would become a retry storm). */
  private readonly closing = new Signal();
  /** Notified after each round and each recording, for `flush`. */
  private readonly progress = new Signal();
  private readonly loop: Promise<void>;

  constructor(
    private readonly bus: EventBus,
    options: BufferedPublisherOptions = {},
  ) {
    this.capacity = options.capacity ?? 10_000;
    this.maxInFlight = options.maxInFlight ?? 32;
    this.initialRetryDelayMs = options.initialRetryDelayMs ?? 100;
    this.maxRetryDelayMs = options.maxRetryDelayMs ?? 5_000;
    this.publishTimeoutMs = options.publishTimeoutMs ?? 5_000;
    this.logger = options.logger ?? silentLogger;
    this.gate = options.gate;
    this.gateBypassMs = options.gateBypassMs ?? GATE_BYPASS_MS;
    this.spool = options.spool;
    this.spoolTimeoutMs = options.spoolTimeoutMs ?? 1_500;
    this.loop = this.publishUntilClosed();
  }

  /**
   * Queues an event for publishing and returns at once; false when it was not queued. Never
   * throws: an event that cannot be queued (full, closed, not encodable, no id) is counted as
   * dropped and logged.
   */
  enqueue<T>(subject: string, codec: EventCodec<T>, event: T, eventId: string): boolean {
    // Checked before encoding, which a full queue through an outage would otherwise pay for.
    if (!this.admits(subject, eventId)) return false;
    let data: Uint8Array;
    try {
      data = codec.encode(event).finish();
    } catch (error) {
      return this.drop(subject, eventId, `not encodable: ${errorText(error)}`);
    }
    this.push(subject, data, eventId);
    return true;
  }

  private enqueueEncoded(subject: string, data: Uint8Array, eventId: string): boolean {
    if (!this.admits(subject, eventId)) return false;
    this.push(subject, data, eventId);
    return true;
  }

  /** Whether an event may be queued now; if not, it is counted as dropped. */
  private admits(subject: string, eventId: string): boolean {
    if (!this.accepting) return this.drop(subject, eventId, 'publisher closed');
    if (eventId.length === 0) return this.drop(subject, eventId, 'empty event id');
    if (this.size >= this.capacity) return this.drop(subject, eventId, 'queue full');
    return true;
  }

  private push(subject: string, data: Uint8Array, eventId: string): void {
    this.queue.push({ subject, data, eventId, context: traceContext.active() });
    this.arrived.notify();
  }

  stats(): BufferedPublisherStats {
    return {
      queued: this.size,
      published: this.published,
      skipped: this.skipped,
      dropped: this.dropped,
      failedAttempts: this.failedAttempts,
      spooled: this.spooled,
      restored: this.restored,
    };
  }

  /**
   * Waits until the queue is empty and the gate has been told (or has failed) or `timeoutMs`
   * passes; true when everything was published.
   */
  async flush(timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (this.size > 0 || this.recording !== undefined) {
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await this.progress.wait(left);
    }
    return true;
  }

  /**
   * {@link flush} for `close()`: until `deadline`, or with a spool until a round gets no ack.
   */
  private async drainForClose(deadline: number): Promise<void> {
    while (this.size > 0 || this.recording !== undefined) {
      if (this.spool !== undefined && this.failedWhileClosing) return;
      const left = deadline - Date.now();
      if (left <= 0) return;
      await this.progress.wait(left);
    }
  }

  /**
   * Stops accepting events, publishes what is queued and tells the gate for up to `timeoutMs`
   * (past it, the gate call under way and one more at most), then stops the loop. Events still
   * queued then are kept in the spool, or counted as dropped. Publishes started meanwhile time
   * out by the deadline, and none starts in its last 100 ms; a round under way at the call keeps
   * its `publishTimeoutMs`, which a shorter `timeoutMs` can overrun, and the gate's check of a
   * round keeps its own timeout (a check cut short would publish again what the gate knows was
   * published). A back-off under way ends at the call: the bus may be back, and the close has no
   * time to wait for the next try. With a spool, an outage's backlog (large) goes to the spool
   * with the rest of `timeoutMs` on top of the spool's own time: at once when the bus is
   * disconnected at the call, else once a round started while closing gets no ack at all
   * (JetStream not answering; when the bus was failing already, such a round's publishes time
   * out by half the time left, so that the other half remains), and before a slow gate is told
   * its backlog. A round with some acks goes on, retried after the shortest back-off. Does not
   * close the bus, which the caller owns.
   */
  async close(timeoutMs = 5_000): Promise<void> {
    if (this.accepting) {
      this.accepting = false;
      // One deadline for all of it, so a close takes `timeoutMs` (and the spill its own).
      const deadline = Date.now() + timeoutMs;
      this.recordUntil = deadline;
      // Set before the loop can start another round (whose gate check alone may take seconds).
      if (this.spool !== undefined && !this.bus.isConnected()) this.failedWhileClosing = true;
      else this.closing.notify();
      // A restore under way stops at its next event; what it queued is published or spilled. Not
      // waited for past the deadline (storage slow): `forget` spares an event kept again since.
      if (this.restoring) {
        await withTimeout(this.restoring, timeoutMs, () => new Error('restore')).catch(
          () => undefined,
        );
      }
      await this.drainForClose(deadline);
      this.loopDone = true;
      this.arrived.notify();
      this.closing.notify();
    }
    await this.loop;
  }

  /**
   * Queues again the events a publisher closed before it could publish them (see `spool`), this
   * replica's or another's, while the bus takes events and the queue is less than half full: the
   * other half stays for new events, and the rest stay kept for a later call. Returns how many
   * were queued.
   */
  restoreSpooled(): Promise<number> {
    this.restoring ??= this.restoreFromSpool().finally(() => {
      this.restoring = undefined;
    });
    return this.restoring;
  }

  /**
   * Takes what fits in the queue, oldest first, and forgets it from the spool only once queued:
   * what does not fit, or comes after a close, stays kept. (A close waits for this, so what it
   * queued is spilled again after it was forgotten, not before.)
   */
  private async restoreFromSpool(): Promise<number> {
    const spool = this.spool;
    if (spool === undefined) return 0;
    let total = 0;
    // Only while the bus takes events: kept in storage they are safe from a kill, and in the
    // buffer they would take the room of new events. Up to half the queue at most, for those
    // (as it drains, more are taken; a bus slow to ack leaves the other half free).
    // Half the buffer, but one event at least: a buffer of one (the least the service allows)
    // would otherwise never take anything back, and what was kept would expire in storage.
    const restoreRoom = Math.max(1, Math.floor(this.capacity / 2));
    while (this.isAccepting() && this.bus.isConnected() && this.consecutiveFailures === 0) {
      const room = Math.min(restoreRoom - this.size, RESTORE_BATCH);
      if (room <= 0) break;
      const events = await spool.peek(room);
      const taken: SpooledEvent[] = [];
      for (const event of events) {
        if (!this.isAccepting() || this.size >= this.capacity) break;
        // One without an id cannot be queued: forgotten, so that it does not block the rest.
        if (event.eventId.length > 0) this.push(event.subject, event.data, event.eventId);
        taken.push(event);
      }
      if (taken.length > 0) await spool.forget(taken);
      const queued = taken.filter((event) => event.eventId.length > 0);
      total += queued.length;
      this.restored += queued.length;
      if (taken.length < room) break;
    }
    if (total > 0)
      this.logger.info({ restored: total }, 'events kept by a closed publisher queued again');
    return total;
  }

  /** A method, not a field, because it changes while a restore awaits. */
  private isAccepting(): boolean {
    return this.accepting;
  }

  /** A method, not a field, because it changes while the loop awaits. */
  private isClosed(): boolean {
    return this.loopDone;
  }

  private get size(): number {
    return this.queue.length - this.head;
  }

  /**
   * Counts a dropped event. Logged at most once per `DROP_LOG_INTERVAL_MS` with the count since,
   * because a full queue during an outage drops on every request and must not flood the logs.
   * Returns false, for `enqueue` to return.
   */
  private drop(subject: string, eventId: string, reason: string): false {
    this.dropped++;
    this.droppedSinceLog++;
    const now = Date.now();
    if (now - this.lastDropLogAt < DROP_LOG_INTERVAL_MS) return false;
    this.logger.warn(
      {
        subject,
        eventId,
        reason,
        droppedSinceLastLog: this.droppedSinceLog,
        dropped: this.dropped,
      },
      'events dropped by buffered publisher',
    );
    this.lastDropLogAt = now;
    this.droppedSinceLog = 0;
    return false;
  }

  private async publishUntilClosed(): Promise<void> {
    while (!this.isClosed()) {
      if (this.size === 0) {
        await this.arrived.wait();
        continue;
      }
      if (this.recordUntil - Date.now() < CLOSING_ROUND_MIN_MS) {
        // Too close to the close's deadline for an ack to come back: the events are kept (or
        // dropped) at the end rather than sent unconfirmed, to be published again later.
        await this.closing.wait();
        continue;
      }
      const outcome = await this.publishRound();
      const allPublished = outcome === 'all';
      if (outcome === 'none' && !this.accepting) this.failedWhileClosing = true;
      this.progress.notify();
      if (!allPublished && !this.isClosed()) {
        // While closing, no long back-off: the close has only its own time left.
        const delayMs = this.retryDelayMs();
        await this.closing.wait(
          this.accepting ? delayMs : Math.min(delayMs, this.initialRetryDelayMs),
        );
      }
    }
    // Given up on the bus: what is queued goes to the spool first, with the close's time, before
    // a slow gate is told its backlog (which would take that time; acks are only remembered).
    if (this.spool !== undefined && this.failedWhileClosing) await this.spillQueue();
    // The recording under way, then what a bypassed gate was not told, once more before stopping.
    clearTimeout(this.recordTimer);
    this.recordTimer = undefined;
    while (this.recording !== undefined) await this.recording;
    // The last chance (bounded by the close's deadline): a bypass still running would drop them.
    this.gateBypassedUntil = -Infinity;
    await this.recordUnrecorded();
    await this.spillQueue();
    this.progress.notify();
  }

  /**
   * Publishes up to `maxInFlight` events from the head of the queue at once. Failed ones stay at
   * the head, in order, for the next round. Returns whether all, some or none were taken (acked,
   * or known to the gate); a back-off is due unless all were.
   */
  private async publishRound(): Promise<RoundOutcome> {
    const batch = this.queue.slice(this.head, this.head + this.maxInFlight);
    const skip = await this.alreadyPublished(batch);
    const results = await Promise.allSettled(
      batch.map((queued) =>
        skip.has(queued.eventId)
          ? Promise.resolve(undefined)
          : traceContext.with(queued.context, () =>
              this.bus.publish(queued.subject, ENCODED, queued.data, {
                eventId: queued.eventId,
                timeoutMs: this.withinClose(this.publishTimeoutMs),
              }),
            ),
      ),
    );
    const retry: QueuedEvent[] = [];
    const acked: string[] = [];
    let lastError: unknown;
    results.forEach((result, i) => {
      const queued = batch[i];
      if (queued === undefined) return;
      if (skip.has(queued.eventId)) {
        this.skipped++;
      } else if (result.status === 'fulfilled') {
        this.published++;
        acked.push(queued.eventId);
      } else if (result.reason instanceof UnavailableError) {
        retry.push(queued);
        lastError = result.reason;
      } else {
        // Anything but "unavailable" would fail the same way again (a bad subject, say).
        this.drop(queued.subject, queued.eventId, `refused: ${errorText(result.reason)}`);
      }
    });
    // Out of the queue before the gate is told, so the room is free as soon as the stream acked.
    this.requeueAtHead(batch.length, retry);
    this.recordInBackground(acked);
    if (retry.length === 0) {
      if (this.consecutiveFailures > 0) {
        this.logger.info({ queued: this.size }, 'event bus available again; publishing backlog');
      }
      this.consecutiveFailures = 0;
      return 'all';
    }
    this.failedAttempts += retry.length;
    this.consecutiveFailures++;
    if (this.consecutiveFailures === 1) {
      this.logger.warn(
        { queued: this.size, error: errorText(lastError) },
        'event bus unavailable; buffering events',
      );
    }
    return acked.length === 0 && skip.size === 0 ? 'none' : 'some';
  }

  /**
   * Removes a round of `roundSize` events from the head, putting `retry` (in order) back in front.
   * O(round): the array is only compacted once most of it is spent.
   */
  private requeueAtHead(roundSize: number, retry: readonly QueuedEvent[]): void {
    this.head += roundSize - retry.length;
    retry.forEach((queued, i) => {
      this.queue[this.head + i] = queued;
    });
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
  }

  /**
   * `timeoutMs`, or less once `close()` has begun: what is left of its time, so that the
   * publishes of a round started while closing end by the close's deadline (a round starts with
   * {@link CLOSING_ROUND_MIN_MS} left at least); with a spool and the bus failing already, half
   * of it, so that a round that fails again leaves the spool the other half. (A bus that has not
   * failed gets it all: a healthy NATS slow to ack is not taken for an outage.)
   */
  private withinClose(timeoutMs: number): number {
    const left = this.recordUntil - Date.now();
    const halve = this.spool !== undefined && this.consecutiveFailures > 0;
    return Math.max(1, Math.min(timeoutMs, halve ? left / 2 : left));
  }

  /** The round's events the gate knows were published; none without a gate or when it fails. */
  private async alreadyPublished(batch: readonly QueuedEvent[]): Promise<ReadonlySet<string>> {
    const gate = this.usableGate();
    if (!gate || batch.length === 0) return EMPTY;
    try {
      return await withTimeout(
        gate.alreadyPublished(batch.map((queued) => queued.eventId)),
        GATE_TIMEOUT_MS,
        gateTimedOut,
      );
    } catch (error) {
      this.gateFailed('checking', batch.length, error);
      return EMPTY;
    }
  }

  /** Adds `eventIds` (acked) to what the gate is to be told, and starts telling it if idle. */
  private recordInBackground(eventIds: readonly string[]): void {
    if (!this.gate || eventIds.length === 0) return;
    for (const id of eventIds) this.unrecorded.push(id);
    this.unrecorded = this.capped(this.unrecorded);
    this.startRecording();
  }

  private startRecording(): void {
    if (this.unrecorded.length === 0 || this.recording !== undefined) return;
    this.recording = this.recordUnrecorded().finally(() => {
      this.recording = undefined;
      this.progress.notify();
      this.recordAfterBypass();
    });
  }

  /**
   * Ids left untold (the gate failed or was bypassed) are told once the bypass is over, even when
   * nothing else is published meanwhile: a quiet publisher's ids must not wait for its close.
   */
  private recordAfterBypass(): void {
    if (this.unrecorded.length === 0 || this.loopDone || this.recordTimer !== undefined) return;
    const delayMs = Math.max(0, this.gateBypassedUntil - Date.now()) + 1;
    this.recordTimer = setTimeout(() => {
      this.recordTimer = undefined;
      if (!this.loopDone) this.startRecording();
    }, delayMs);
    this.recordTimer.unref();
  }

  /**
   * Tells the gate the unrecorded ids, a call of at most {@link GATE_CHUNK} at a time, until none
   * are left, the gate fails or is bypassed, or close() is out of time. A failed call's ids go back
   * in front, for the next time.
   */
  private async recordUnrecorded(): Promise<void> {
    while (this.unrecorded.length > 0) {
      const gate = this.usableGate();
      if (gate === undefined) return;
      if (Date.now() >= this.recordUntil && this.callsPastRecordUntil++ > 0) return;
      const chunk = this.unrecorded.slice(0, GATE_CHUNK);
      this.unrecorded = this.unrecorded.slice(chunk.length);
      try {
        await withTimeout(gate.published(chunk), GATE_TIMEOUT_MS, gateTimedOut);
      } catch (error) {
        this.unrecorded = this.capped([...chunk, ...this.unrecorded]);
        this.gateFailed('recording', this.unrecorded.length, error);
        return;
      }
    }
  }

  /** `ids` without its oldest beyond {@link MAX_UNRECORDED}, which are counted and logged. */
  private capped(ids: string[]): string[] {
    if (ids.length <= MAX_UNRECORDED) return ids;
    this.forgottenSinceLog += ids.length - MAX_UNRECORDED;
    const now = Date.now();
    if (now - this.lastForgottenLogAt >= GATE_LOG_INTERVAL_MS) {
      this.logger.warn(
        { forgotten: this.forgottenSinceLog },
        'acked event ids not recorded by the publish gate; the stream duplicate window alone deduplicates them',
      );
      this.lastForgottenLogAt = now;
      this.forgottenSinceLog = 0;
    }
    return ids.slice(-MAX_UNRECORDED);
  }

  private usableGate(): PublishGate | undefined {
    return Date.now() < this.gateBypassedUntil ? undefined : this.gate;
  }

  private gateFailed(step: string, events: number, error: unknown): void {
    const now = Date.now();
    this.gateBypassedUntil = now + this.gateBypassMs;
    if (now - this.lastGateLogAt < GATE_LOG_INTERVAL_MS) return;
    this.lastGateLogAt = now;
    this.logger.warn(
      { step, events, error: errorText(error), bypassMs: this.gateBypassMs },
      'publish gate failed; the stream duplicate window alone deduplicates events meanwhile',
    );
  }

  private retryDelayMs(): number {
    const exponent = Math.min(this.consecutiveFailures - 1, 30);
    return Math.min(this.initialRetryDelayMs * 2 ** exponent, this.maxRetryDelayMs);
  }

  /**
   * The events still queued at close: kept in the spool when there is one, as many as it stores
   * within `spoolTimeoutMs` (and the close's time left unused, see `close`), the rest dropped (a
   * batch under way at the timeout may still be stored, and taken by a later start though counted
   * as dropped). What is lost is said in one log line whatever the drop log's rate limit, since
   * nothing will report it later.
   */
  private async spillQueue(): Promise<void> {
    const left = this.queue.slice(this.head);
    this.queue = [];
    this.head = 0;
    if (left.length === 0) return;
    const subjects = [...new Set(left.map((queued) => queued.subject))];
    let kept = 0;
    if (this.spool !== undefined) {
      const stop = new AbortController();
      // With the close's time left when a failed round ended its wait for the bus.
      const timeoutMs = this.spoolTimeoutMs + Math.max(0, this.recordUntil - Date.now());
      try {
        const events = left.map(({ subject, data, eventId }) => ({ subject, data, eventId }));
        await withTimeout(
          this.spool.keep(events, { signal: stop.signal, onKept: (count) => (kept += count) }),
          timeoutMs,
          () => new Error(`not kept within ${timeoutMs} ms`),
        );
        kept = left.length;
      } catch (error) {
        stop.abort();
        this.logger.error(
          { err: error, events: left.length, kept },
          'could not keep all the events not published',
        );
      }
      this.spooled += kept;
      if (kept > 0) {
        this.logger.warn(
          { kept, subjects },
          'publisher closed with events not published; kept for the next start',
        );
      }
    }
    const lost = left.length - kept;
    if (lost === 0) return;
    this.dropped += lost;
    this.logger.error(
      { lost, subjects, dropped: this.dropped },
      'publisher closed with events not published; they are lost',
    );
  }
}
