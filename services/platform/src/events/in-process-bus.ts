/**
 * The event bus inside one process, for the single-process dev mode when no NATS server runs.
 *
 * It keeps JetStream's semantics so code that works here works on NATS: streams capture subjects
 * (`*` one token, `>` the rest) and refuse to overlap; an `eventId` seen within the duplicate window
 * is stored once; durable consumers remember their position across subscribe/stop/subscribe and
 * share work between subscriptions with the same durable name; an event whose handler throws comes
 * back after a back-off, one whose handler overruns the ack wait comes back at once, and after
 * `maxDeliver` deliveries it is dropped; events are encoded on publish and decoded per delivery,
 * with the trace context in the headers. What it does not keep: events live in memory only, so
 * they are gone when the process exits (`storage` and `replicas` are ignored).
 */
import { FailedPreconditionError, NotFoundError, UnavailableError } from '../errors';
import { observeSubscription } from '../telemetry/consumer-metrics';
import {
  EVENT_ID_HEADER,
  type BatchConsumerSpec,
  type BatchHandler,
  type BusLogger,
  type ConsumerSpec,
  type DeliveredEvent,
  type EventBus,
  type EventCodec,
  type EventHandler,
  type PublishAck,
  type PublishOptions,
  type StreamSpec,
  type Subscription,
  type SubscriptionStats,
} from './bus';
import {
  HandlerSlots,
  SubscriptionCounters,
  dispositionFor,
  runBatchHandler,
  runHandler,
  silentLogger,
  type Disposition,
} from './delivery';
import { withPublishSpan } from './event-spans';
import {
  batchSettings,
  checkPublish,
  consumerSettings,
  streamSettings,
  type ConsumerSettings,
  type StreamSettings,
} from './event-settings';
import { Signal } from './signal';
import { matchesAnySubject, subjectsOverlap } from './subjects';
import { injectTraceContext } from './trace-headers';

export interface InProcessBusOptions {
  /** Where retries and drops are logged. @default silent */
  readonly logger?: BusLogger;
}

/** Creates an empty in-process bus. */
export function createInProcessBus(options: InProcessBusOptions = {}): EventBus {
  return new InProcessBus(options.logger ?? silentLogger);
}

/** One event as a stream stores it. */
interface StoredEvent {
  readonly sequence: number;
  readonly subject: string;
  readonly data: Uint8Array;
  readonly headers: Readonly<Record<string, string>>;
  readonly eventId: string;
  readonly storedAt: number;
  /** What the event counts against `maxBytes`. */
  readonly size: number;
}

function storedSize(subject: string, data: Uint8Array, headers: Record<string, string>): number {
  let size = subject.length + data.length;
  for (const [name, value] of Object.entries(headers)) size += name.length + value.length;
  return size;
}

/** A stream: its events in sequence order (always contiguous) and its durables' positions. */
class InProcessStream {
  /** Wakes the subscription loops of this stream: an event arrived or a delivery settled. */
  readonly changed = new Signal();
  readonly durables = new Map<string, DurableCursor>();
  private events: StoredEvent[] = [];
  private lastStored = 0;
  private storedBytes = 0;
  /** eventId → sequence, in arrival order, for the duplicate window. */
  private readonly recentIds = new Map<string, { sequence: number; at: number }>();

  constructor(public settings: StreamSettings) {}

  get lastSequence(): number {
    return this.lastStored;
  }

  /** The oldest sequence still stored; `lastSequence + 1` when the stream is empty. */
  get firstSequence(): number {
    return this.events[0]?.sequence ?? this.lastStored + 1;
  }

  eventAt(sequence: number): StoredEvent | undefined {
    const first = this.events[0];
    return first === undefined ? undefined : this.events[sequence - first.sequence];
  }

  /** Stores an event unless its id was seen within the duplicate window. */
  append(
    subject: string,
    data: Uint8Array,
    headers: Record<string, string>,
    eventId: string,
    now: number,
  ): PublishAck {
    this.forgetOldIds(now);
    const seen = this.recentIds.get(eventId);
    if (seen !== undefined) return { streamSequence: seen.sequence, duplicate: true };
    const sequence = ++this.lastStored;
    const size = storedSize(subject, data, headers);
    this.events.push({ sequence, subject, data, headers, eventId, storedAt: now, size });
    this.storedBytes += size;
    this.recentIds.set(eventId, { sequence, at: now });
    this.discardOld(now);
    this.changed.notify();
    return { streamSequence: sequence, duplicate: false };
  }

  /** Applies `maxAgeMs` and `maxBytes` by discarding from the oldest end, as JetStream does. */
  discardOld(now: number): void {
    const { maxAgeMs, maxBytes } = this.settings;
    let drop = 0;
    let bytes = this.storedBytes;
    for (const event of this.events) {
      const tooOld = now - event.storedAt > maxAgeMs;
      const tooBig = maxBytes !== undefined && bytes > maxBytes;
      if (!tooOld && !tooBig) break;
      bytes -= event.size;
      drop++;
    }
    if (drop > 0) {
      this.events = this.events.slice(drop);
      this.storedBytes = bytes;
    }
  }

  private forgetOldIds(now: number): void {
    // The map is in arrival order, so expired ids are all at its front.
    for (const [eventId, seen] of this.recentIds) {
      if (now - seen.at <= this.settings.duplicateWindowMs) break;
      this.recentIds.delete(eventId);
    }
  }
}

/** A delivered, not yet acked event of one durable. */
interface PendingEvent {
  deliveries: number;
  /** When it may be delivered again (meaningful only while not being handled). */
  dueAt: number;
  /** A handler is running for it now. */
  handling: boolean;
}

interface TakenEvent {
  readonly stored: StoredEvent;
  readonly deliveryCount: number;
}

/** A durable consumer's position: the next new event and the delivered-but-unacked ones. */
class DurableCursor {
  private readonly pending = new Map<number, PendingEvent>();

  constructor(
    public settings: ConsumerSettings,
    private nextSequence: number,
  ) {}

  /** The next event to hand to a handler: a due redelivery first, then a new event. */
  take(stream: InProcessStream, now: number): TakenEvent | undefined {
    for (const [sequence, pending] of this.pending) {
      if (pending.handling || pending.dueAt > now) continue;
      const stored = stream.eventAt(sequence);
      if (stored === undefined) {
        // Aged out of the stream while waiting for redelivery.
        this.pending.delete(sequence);
        continue;
      }
      pending.handling = true;
      pending.deliveries++;
      return { stored, deliveryCount: pending.deliveries };
    }
    if (this.pending.size >= this.settings.maxAckPending) return undefined;
    this.nextSequence = Math.max(this.nextSequence, stream.firstSequence);
    while (this.nextSequence <= stream.lastSequence) {
      const stored = stream.eventAt(this.nextSequence++);
      if (
        stored === undefined ||
        !matchesAnySubject(this.settings.filterSubjects, stored.subject)
      ) {
        continue;
      }
      this.pending.set(stored.sequence, { deliveries: 1, dueAt: 0, handling: true });
      return { stored, deliveryCount: 1 };
    }
    return undefined;
  }

  /** The stream's events after those handed out that match the filter: not delivered yet. */
  undelivered(stream: InProcessStream): number {
    let count = 0;
    for (
      let sequence = Math.max(this.nextSequence, stream.firstSequence);
      sequence <= stream.lastSequence;
      sequence++
    ) {
      const stored = stream.eventAt(sequence);
      if (stored !== undefined && matchesAnySubject(this.settings.filterSubjects, stored.subject)) {
        count++;
      }
    }
    return count;
  }

  /** When the earliest waiting redelivery falls due; undefined when none waits. */
  nextDueAt(): number | undefined {
    let earliest: number | undefined;
    for (const pending of this.pending.values()) {
      if (!pending.handling && (earliest === undefined || pending.dueAt < earliest)) {
        earliest = pending.dueAt;
      }
    }
    return earliest;
  }

  settle(sequence: number, disposition: Disposition, now: number): void {
    const pending = this.pending.get(sequence);
    if (pending === undefined) return;
    switch (disposition.kind) {
      case 'ack':
      case 'drop':
        this.pending.delete(sequence);
        break;
      case 'retry':
        pending.handling = false;
        pending.dueAt = now + disposition.delayMs;
        break;
      case 'await-redelivery':
        // Its ack wait is over: JetStream would redeliver it now.
        pending.handling = false;
        pending.dueAt = now;
        break;
    }
  }
}

class InProcessBus implements EventBus {
  readonly kind = 'in-process' as const;
  private readonly streams = new Map<string, InProcessStream>();
  private readonly subscriptions = new Set<InProcessSubscription<unknown>>();
  private closed = false;

  constructor(private readonly logger: BusLogger) {}

  isConnected(): boolean {
    return !this.closed;
  }

  declareStream(spec: StreamSpec): Promise<void> {
    return Promise.resolve().then(() => {
      this.throwIfClosed();
      const settings = streamSettings(spec);
      this.checkNoOverlap(settings);
      const existing = this.streams.get(settings.name);
      if (existing === undefined) {
        this.streams.set(settings.name, new InProcessStream(settings));
      } else {
        existing.settings = settings;
        existing.discardOld(Date.now());
      }
    });
  }

  private checkNoOverlap(settings: StreamSettings): void {
    for (const other of this.streams.values()) {
      if (other.settings.name === settings.name) continue;
      for (const mine of settings.subjects) {
        const clash = other.settings.subjects.find((theirs) => subjectsOverlap(mine, theirs));
        if (clash !== undefined) {
          throw new FailedPreconditionError(
            `stream ${settings.name}: subject ${mine} overlaps ${clash} of stream ${other.settings.name}`,
          );
        }
      }
    }
  }

  async publish<T>(
    subject: string,
    codec: EventCodec<T>,
    event: T,
    options: PublishOptions,
  ): Promise<PublishAck> {
    checkPublish(subject, options.eventId);
    // Copied so a caller reusing its buffer cannot change a stored event.
    const data = codec.encode(event).finish().slice();
    return withPublishSpan(subject, options.eventId, () =>
      Promise.resolve().then(() => {
        this.throwIfClosed();
        const stream = this.streamCapturing(subject);
        const headers: Record<string, string> = { ...options.headers };
        injectTraceContext(headers);
        headers[EVENT_ID_HEADER] = options.eventId;
        return stream.append(subject, data, headers, options.eventId, Date.now());
      }),
    );
  }

  private streamCapturing(subject: string): InProcessStream {
    for (const stream of this.streams.values()) {
      if (matchesAnySubject(stream.settings.subjects, subject)) return stream;
    }
    // NATS answers "no responders" here, which the NATS adapter also reports as unavailable.
    throw new UnavailableError(`no stream captures ${subject}`);
  }

  async subscribe<T>(spec: ConsumerSpec<T>, handler: EventHandler<T>): Promise<Subscription> {
    return this.startSubscription(spec, { kind: 'each', handler });
  }

  async subscribeBatches<T>(
    spec: BatchConsumerSpec<T>,
    handler: BatchHandler<T>,
  ): Promise<Subscription> {
    // Cumulative acknowledgement changes nothing here (see `BatchConsumerSpec.acknowledgement`).
    const { maxBatchSize } = batchSettings(spec);
    return this.startSubscription(spec, { kind: 'batch', handler, maxBatchSize });
  }

  private async startSubscription<T>(
    spec: ConsumerSpec<T>,
    mode: HandlingMode<T>,
  ): Promise<Subscription> {
    await Promise.resolve();
    this.throwIfClosed();
    const settings = consumerSettings(spec);
    const stream = this.streams.get(settings.stream);
    if (stream === undefined) {
      throw new NotFoundError(`stream ${settings.stream} is not declared`);
    }
    let cursor = stream.durables.get(settings.durable);
    if (cursor === undefined) {
      const start =
        settings.deliverPolicy === 'new' ? stream.lastSequence + 1 : stream.firstSequence;
      cursor = new DurableCursor(settings, start);
      stream.durables.set(settings.durable, cursor);
    } else {
      // Like a JetStream update: limits change, the position stays.
      cursor.settings = settings;
    }
    const subscription: InProcessSubscription<T> = new InProcessSubscription({
      stream,
      cursor,
      settings,
      codec: spec.codec,
      mode,
      logger: this.logger,
      onStopped: () => this.subscriptions.delete(subscription as InProcessSubscription<unknown>),
    });
    this.subscriptions.add(subscription as InProcessSubscription<unknown>);
    subscription.start();
    return subscription;
  }

  deleteConsumer(stream: string, durable: string): Promise<boolean> {
    return Promise.resolve().then(() => {
      this.throwIfClosed();
      return this.streams.get(stream)?.durables.delete(durable) ?? false;
    });
  }

  consumerPending(stream: string, durable: string): Promise<number | undefined> {
    return Promise.resolve().then(() => {
      this.throwIfClosed();
      const held = this.streams.get(stream);
      return held?.durables.get(durable)?.undelivered(held);
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    await Promise.all([...this.subscriptions].map((subscription) => subscription.stop()));
  }

  private throwIfClosed(): void {
    if (this.closed) throw new UnavailableError('the in-process event bus is closed');
  }
}

/** Whether a subscription's handler takes one event or a batch. */
type HandlingMode<T> =
  | { readonly kind: 'each'; readonly handler: EventHandler<T> }
  | { readonly kind: 'batch'; readonly handler: BatchHandler<T>; readonly maxBatchSize: number };

interface InProcessSubscriptionParts<T> {
  readonly stream: InProcessStream;
  readonly cursor: DurableCursor;
  readonly settings: ConsumerSettings;
  readonly codec: EventCodec<T>;
  readonly mode: HandlingMode<T>;
  readonly logger: BusLogger;
  readonly onStopped: () => void;
}

class InProcessSubscription<T> implements Subscription {
  private readonly slots: HandlerSlots;
  private readonly counters: SubscriptionCounters;
  /** Stops reporting the counters as metrics (see `telemetry/consumer-metrics.ts`). */
  private readonly unobserve: () => void;
  private stopRequested = false;
  private running: Promise<void> = Promise.resolve();
  private stopped: Promise<void> | undefined;

  constructor(private readonly parts: InProcessSubscriptionParts<T>) {
    this.slots = new HandlerSlots(parts.settings.concurrency);
    this.counters = new SubscriptionCounters(parts.settings, parts.logger);
    this.unobserve = observeSubscription(parts.settings, this);
  }

  start(): void {
    this.running = this.deliverUntilStopped();
  }

  /** A method, not a field, because it changes while the loop awaits. */
  private isStopping(): boolean {
    return this.stopRequested;
  }

  stats(): SubscriptionStats {
    return this.counters.snapshot();
  }

  async stop(): Promise<void> {
    this.stopped ??= this.shutDown();
    return this.stopped;
  }

  private async shutDown(): Promise<void> {
    this.stopRequested = true;
    this.parts.stream.changed.notify();
    try {
      await this.running;
      await this.slots.whenIdle();
    } finally {
      // Once the handlers are done: a collection meanwhile still reports what they count.
      this.unobserve();
    }
    this.parts.onStopped();
  }

  /** Hands events to handlers as slots free up; sleeps until an event arrives or a retry is due. */
  private async deliverUntilStopped(): Promise<void> {
    const { stream, cursor } = this.parts;
    while (!this.isStopping()) {
      await this.slots.acquire();
      if (this.isStopping()) {
        this.slots.release();
        break;
      }
      const now = Date.now();
      const mode = this.parts.mode;
      if (mode.kind === 'batch') {
        const batch: TakenEvent[] = [];
        for (let next = cursor.take(stream, now); next !== undefined;) {
          batch.push(next);
          if (batch.length >= mode.maxBatchSize) break;
          next = cursor.take(stream, now);
        }
        if (batch.length === 0) {
          this.slots.release();
          const dueAt = cursor.nextDueAt();
          await stream.changed.wait(dueAt === undefined ? undefined : dueAt - now);
          continue;
        }
        void this.processBatch(mode.handler, batch).finally(() => {
          this.slots.release();
          stream.changed.notify();
        });
        continue;
      }
      const taken = cursor.take(stream, now);
      if (taken === undefined) {
        this.slots.release();
        const dueAt = cursor.nextDueAt();
        await stream.changed.wait(dueAt === undefined ? undefined : dueAt - now);
        continue;
      }
      void this.process(taken).finally(() => {
        this.slots.release();
        // A settled event may free room under maxAckPending for this or another subscription.
        stream.changed.notify();
      });
    }
  }

  /** Decodes every delivery, runs the batch handler and settles each by its outcome. Never throws. */
  private async processBatch(
    handler: BatchHandler<T>,
    taken: readonly TakenEvent[],
  ): Promise<void> {
    const { settings, codec, cursor } = this.parts;
    const batch: DeliveredEvent<T>[] = [];
    for (const { stored, deliveryCount } of taken) {
      const facts = {
        subject: stored.subject,
        eventId: stored.eventId,
        deliveryCount,
        streamSequence: stored.sequence,
      };
      try {
        const event = codec.decode(stored.data);
        batch.push({
          ...facts,
          event,
          storedAt: new Date(stored.storedAt),
          headers: { ...stored.headers },
        });
      } catch (error) {
        cursor.settle(stored.sequence, { kind: 'drop' }, Date.now());
        this.counters.recordPoison(facts, error, stored.headers);
      }
    }
    if (batch.length === 0) return;
    const outcome = await runBatchHandler(settings, handler, batch);
    const now = Date.now();
    for (const delivered of batch) {
      const disposition = dispositionFor(settings, outcome, delivered.deliveryCount);
      cursor.settle(delivered.streamSequence, disposition, now);
      this.counters.record(disposition, outcome, delivered);
    }
  }

  /** Decodes, runs the handler and settles one delivery. Never throws. */
  private async process({ stored, deliveryCount }: TakenEvent): Promise<void> {
    const { settings, codec, mode, cursor } = this.parts;
    if (mode.kind !== 'each') return;
    const handler = mode.handler;
    const facts = {
      subject: stored.subject,
      eventId: stored.eventId,
      deliveryCount,
      streamSequence: stored.sequence,
    };
    let event: T;
    try {
      event = codec.decode(stored.data);
    } catch (error) {
      cursor.settle(stored.sequence, { kind: 'drop' }, Date.now());
      this.counters.recordPoison(facts, error, stored.headers);
      return;
    }
    const delivered: DeliveredEvent<T> = {
      ...facts,
      event,
      storedAt: new Date(stored.storedAt),
      headers: { ...stored.headers },
    };
    const outcome = await runHandler(settings, handler, delivered);
    const disposition = dispositionFor(settings, outcome, deliveryCount);
    cursor.settle(stored.sequence, disposition, Date.now());
    this.counters.record(disposition, outcome, facts);
  }
}
