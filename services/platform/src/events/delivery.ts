/**
 * What happens to one delivered event, shared by both adapters so they keep the same semantics:
 * the handler runs inside a consumer span with the ack wait as its deadline, and its outcome
 * becomes an ack, a delayed redelivery, or a drop after the last allowed delivery. The adapters
 * only translate the resulting `Disposition` into their own acknowledgement calls.
 */
import {
  ROOT_CONTEXT,
  SpanStatusCode,
  TraceFlags,
  context,
  trace,
  type Context,
  type Link,
  type Span,
  type SpanContext,
} from '@opentelemetry/api';
import type {
  BatchHandler,
  BatchProgress,
  BusLogger,
  DeliveredEvent,
  EventHandler,
  SubscriptionStats,
} from './bus';
import { errorText } from '../logging';
import { tracingRecords } from '../telemetry/rpc-spans';
import { recordFailure, withProcessSpan, type ProcessSpanFacts } from './event-spans';
import { retryDelayMs, type ConsumerSettings } from './event-settings';
import { extractTraceContext } from './trace-headers';

/**
 * How a handler's run ended. A failed or overrunning run names its consumer span (`span`), so
 * that the line logged when the event is retried or dropped, after the span ended, leads to it.
 */
export type HandlerOutcome =
  | { readonly kind: 'handled' }
  | { readonly kind: 'failed'; readonly error: unknown; readonly span?: SpanContext }
  /** Still running when the ack wait ended; the event is already due for redelivery. */
  | { readonly kind: 'overran'; readonly span?: SpanContext };

/** What to tell the stream about a delivery. */
export type Disposition =
  /** Done: ack it. */
  | { readonly kind: 'ack' }
  /** Failed: redeliver after `delayMs` (NATS `nak(delay)`). */
  | { readonly kind: 'retry'; readonly delayMs: number }
  /** Overran the ack wait: say nothing, the stream redelivers on its own. */
  | { readonly kind: 'await-redelivery' }
  /** The last allowed delivery failed: terminate it so it never comes back. */
  | { readonly kind: 'drop' };

const HANDLED: HandlerOutcome = { kind: 'handled' };
const OVERRAN: HandlerOutcome = { kind: 'overran' };

/**
 * Runs `handler` until it settles or `ackWaitMs` passes, whichever is first. A handler past the
 * ack wait is abandoned rather than awaited: the stream redelivers its event anyway, and waiting
 * would let one stuck handler stall the subscription (and `stop()`) forever. A handler that says
 * it is still working (`progress.working()`) before then has the ack wait start again, and
 * `onWorking` tells the stream so (see `BatchProgress`); once it overran, that is too late.
 */
function runWithinAckWait(
  run: (progress: BatchProgress) => Promise<void>,
  ackWaitMs: number,
  onWorking?: () => void,
): Promise<HandlerOutcome> {
  return new Promise((resolve) => {
    let settled = false;
    const overrun = (): void => {
      settled = true;
      resolve(OVERRAN);
    };
    let timer = setTimeout(overrun, ackWaitMs);
    const progress: BatchProgress = {
      working: () => {
        if (settled) return;
        clearTimeout(timer);
        timer = setTimeout(overrun, ackWaitMs);
        try {
          onWorking?.();
        } catch {
          // The stream could not be told (the connection is closing): it redelivers at its own
          // ack wait, as it would without this, and the handler goes on.
        }
      },
    };
    let running: Promise<void>;
    try {
      running = run(progress);
    } catch (error) {
      // A handler that throws before returning its promise failed all the same.
      running = Promise.reject(error instanceof Error ? error : new Error(String(error)));
    }
    running.then(
      () => {
        settled = true;
        clearTimeout(timer);
        resolve(HANDLED);
      },
      (error: unknown) => {
        settled = true;
        clearTimeout(timer);
        resolve({ kind: 'failed', error });
      },
    );
  });
}

/**
 * Runs the handler for one delivery inside a CONSUMER span that continues the producer's trace.
 * Never throws: a failure is an outcome.
 */
export async function runHandler<T>(
  settings: ConsumerSettings,
  handler: EventHandler<T>,
  delivered: DeliveredEvent<T>,
): Promise<HandlerOutcome> {
  const facts = {
    subject: delivered.subject,
    eventId: delivered.eventId,
    durable: settings.durable,
    deliveryCount: delivered.deliveryCount,
  };
  return withProcessSpan(facts, extractTraceContext(delivered.headers), async (span) => {
    const outcome = await runWithinAckWait(() => handler(delivered), settings.ackWaitMs);
    return recordOutcome(span, outcome, settings);
  });
}

/**
 * Marks `span` with a failed or overrunning `outcome`, and names the span in the outcome: the
 * adapter logs the retry or the drop once the span has ended, and that line must still lead to it.
 */
function recordOutcome(
  span: Span,
  outcome: HandlerOutcome,
  settings: ConsumerSettings,
): HandlerOutcome {
  if (outcome.kind === 'handled') return outcome;
  if (outcome.kind === 'failed') {
    recordFailure(span, outcome.error);
  } else {
    span.setStatus({
      code: SpanStatusCode.ERROR,
      message: `handler overran the ${settings.ackWaitMs} ms ack wait`,
    });
  }
  return { ...outcome, span: span.spanContext() };
}

/**
 * Runs a batch handler inside one CONSUMER span: for a single event it continues the producer's
 * trace, as `runHandler` does. For several (the messaging conventions' batch shape) it links to
 * every producer's span, and is the child of the first producer whose trace was sampled, so that
 * a sampled request's events are processed in a recorded span whatever the root sampler would
 * decide for a new trace (with a ratio sampler, most batches); a batch with no sampled producer
 * starts a trace of its own. The producers are read only when a tracer provider records, as
 * reading them costs a parse per event on NATS.
 * Never throws: a failure is an outcome, which applies to every event of the batch. `onWorking`
 * runs each time the handler says it is still working on the batch (the adapter resets the
 * stream's ack timers of its events), which also starts the ack wait here again.
 */
export async function runBatchHandler<T>(
  settings: ConsumerSettings,
  handler: BatchHandler<T>,
  batch: readonly DeliveredEvent<T>[],
  onWorking?: () => void,
): Promise<HandlerOutcome> {
  const first = batch[0];
  if (first === undefined) return HANDLED;
  const single = batch.length === 1;
  let parent: Context = single ? extractTraceContext(first.headers) : ROOT_CONTEXT;
  let facts: ProcessSpanFacts = {
    subject: first.subject,
    ...(single ? { eventId: first.eventId } : {}),
    durable: settings.durable,
    deliveryCount: first.deliveryCount,
  };
  if (!single && tracingRecords()) {
    // The batch's delivery count is its most delivered event's.
    let deliveryCount = 0;
    const links: Link[] = [];
    for (const delivered of batch) {
      deliveryCount = Math.max(deliveryCount, delivered.deliveryCount);
      const producer = trace.getSpanContext(extractTraceContext(delivered.headers));
      if (producer === undefined) continue;
      if (parent === ROOT_CONTEXT && (producer.traceFlags & TraceFlags.SAMPLED) !== 0) {
        parent = trace.setSpanContext(ROOT_CONTEXT, producer);
      }
      links.push({ context: producer });
    }
    facts = {
      ...facts,
      deliveryCount,
      attributes: { 'messaging.batch.message_count': batch.length },
      links,
    };
  }
  return withProcessSpan(facts, parent, async (span) => {
    const outcome = await runWithinAckWait(
      (progress) => handler(batch, progress),
      settings.ackWaitMs,
      onWorking,
    );
    return recordOutcome(span, outcome, settings);
  });
}

/**
 * How many deliveries of one event, times `maxDeliver`, end it whatever its failures here: the cap
 * for an event that fails in one process after another (see {@link FailureCounts}).
 */
export const DELIVERY_CAP_PER_ATTEMPT = 3;

/**
 * Decides what a handler's outcome means for the stream; pure. `attempt` is this run's number
 * among the event's handler runs (failed ones before it, plus one); `deliveryCount`, the
 * stream's count of its deliveries, which may be higher (see {@link FailureCounts}).
 */
export function dispositionFor(
  settings: ConsumerSettings,
  outcome: HandlerOutcome,
  attempt: number,
  deliveryCount = attempt,
): Disposition {
  if (outcome.kind === 'handled') return { kind: 'ack' };
  if (
    attempt >= settings.maxDeliver ||
    deliveryCount >= DELIVERY_CAP_PER_ATTEMPT * settings.maxDeliver
  ) {
    return { kind: 'drop' };
  }
  if (outcome.kind === 'overran') return { kind: 'await-redelivery' };
  return { kind: 'retry', delayMs: retryDelayMs(settings, attempt) };
}

/**
 * The handler runs that failed (threw or overran) for each event a subscription still holds, by
 * stream sequence: what `maxDeliver` and the back-off count. JetStream's delivery count also
 * counts every time a stopping subscription handed an event back unhandled, so an event handed
 * back at a few stops would be dropped after one failure. Kept per consumption (a subscription
 * restarting its iterator, perhaps on a recreated stream, starts again): an event that failed
 * before starts again here, up to {@link DELIVERY_CAP_PER_ATTEMPT} × `maxDeliver` deliveries in
 * all. Bounded: beyond `capacity` events, the oldest are forgotten.
 */
export class FailureCounts {
  private readonly failures = new Map<number, number>();

  constructor(private readonly capacity: number) {}

  /** The number of the run about to settle for the event at `sequence`. */
  attempt(sequence: number): number {
    return (this.failures.get(sequence) ?? 0) + 1;
  }

  /** Records how `attempt` settled: a failure is remembered, anything else forgets the event. */
  settled(sequence: number, attempt: number, disposition: Disposition): void {
    this.failures.delete(sequence);
    if (disposition.kind !== 'retry' && disposition.kind !== 'await-redelivery') return;
    this.failures.set(sequence, attempt);
    if (this.failures.size > this.capacity) {
      const oldest = this.failures.keys().next();
      if (!oldest.done) this.failures.delete(oldest.value);
    }
  }

  /** Forgets the event at `sequence` (handled). */
  forget(sequence: number): void {
    this.failures.delete(sequence);
  }

  /** Forgets every event: a new consumption, perhaps of a stream recreated with new sequences. */
  clear(): void {
    this.failures.clear();
  }

  get size(): number {
    return this.failures.size;
  }
}

/** A subscription's counters and the log lines that go with them. */
export class SubscriptionCounters {
  private acked = 0;
  private retried = 0;
  private dropped = 0;
  private poison = 0;

  constructor(
    private readonly settings: ConsumerSettings,
    private readonly logger: BusLogger,
  ) {}

  /**
   * Counts (and logs, when it is news) what became of one delivery, or of `count` deliveries of
   * one batch that share its fate (logged once, naming the first).
   */
  record(
    disposition: Disposition,
    outcome: HandlerOutcome,
    delivered: Pick<
      DeliveredEvent<unknown>,
      'subject' | 'eventId' | 'deliveryCount' | 'streamSequence'
    >,
    count = 1,
    /** The run's number among the event's handler runs here (see `FailureCounts`), if counted. */
    attempt?: number,
  ): void {
    if (disposition.kind === 'ack') {
      this.acked += count;
      return;
    }
    const fields = {
      stream: this.settings.stream,
      durable: this.settings.durable,
      subject: delivered.subject,
      eventId: delivered.eventId,
      streamSequence: delivered.streamSequence,
      deliveryCount: delivered.deliveryCount,
      ...(attempt !== undefined ? { attempt } : {}),
      maxDeliver: this.settings.maxDeliver,
      ...(count > 1 ? { events: count } : {}),
      error: outcome.kind === 'failed' ? errorText(outcome.error) : 'handler overran the ack wait',
    };
    // Logged in the context of the handler's (ended) span, so that the logger's trace_id and
    // span_id lead from the line to the span that recorded the failure, as a call's lines do.
    const span = outcome.kind === 'handled' ? undefined : outcome.span;
    const within = span === undefined ? context.active() : trace.setSpanContext(ROOT_CONTEXT, span);
    context.with(within, () => {
      if (disposition.kind === 'drop') {
        this.dropped += count;
        this.logger.error(
          fields,
          'event dropped: its handler failed on its last allowed attempt (maxDeliver), or it was delivered 3 × maxDeliver times',
        );
      } else {
        this.retried += count;
        this.logger.warn(
          disposition.kind === 'retry' ? { ...fields, retryInMs: disposition.delayMs } : fields,
          'event handler failed; the event will be redelivered',
        );
      }
    });
  }

  /** Counts `count` deliveries acked at once. */
  recordAcked(count: number): void {
    this.acked += count;
  }

  /**
   * Counts (and logs) an event the codec could not decode. No consumer span ran for it: the line
   * is logged in the producer's trace context, from the message's headers, to lead to the
   * producer that published it.
   */
  recordPoison(
    delivered: Pick<DeliveredEvent<unknown>, 'subject' | 'eventId' | 'streamSequence'>,
    error: unknown,
    headers: Readonly<Record<string, string>>,
  ): void {
    this.poison++;
    context.with(extractTraceContext(headers), () => {
      this.logPoison(delivered, error);
    });
  }

  private logPoison(
    delivered: Pick<DeliveredEvent<unknown>, 'subject' | 'eventId' | 'streamSequence'>,
    error: unknown,
  ): void {
    this.logger.error(
      {
        stream: this.settings.stream,
        durable: this.settings.durable,
        subject: delivered.subject,
        eventId: delivered.eventId,
        streamSequence: delivered.streamSequence,
        error: errorText(error),
      },
      'undecodable event terminated',
    );
  }

  snapshot(): SubscriptionStats {
    return { acked: this.acked, retried: this.retried, dropped: this.dropped, poison: this.poison };
  }
}

/**
 * A counting semaphore for the handlers of one subscription, which also tells when none is
 * running (for `stop()`).
 */
export class HandlerSlots {
  private running = 0;
  private readonly waitingForSlot: (() => void)[] = [];
  private readonly waitingForIdle: (() => void)[] = [];

  constructor(private readonly limit: number) {}

  /** Resolves once a slot is held; pair with `release()`. */
  async acquire(): Promise<void> {
    if (this.running < this.limit) {
      this.running++;
      return;
    }
    // The releasing holder hands its slot straight over, so `running` is unchanged.
    await new Promise<void>((resolve) => this.waitingForSlot.push(resolve));
  }

  release(): void {
    const next = this.waitingForSlot.shift();
    if (next) {
      next();
      return;
    }
    this.running--;
    if (this.running === 0) {
      for (const resolve of this.waitingForIdle.splice(0)) resolve();
    }
  }

  /** Resolves when no slot is held. */
  async whenIdle(): Promise<void> {
    if (this.running === 0) return;
    await new Promise<void>((resolve) => this.waitingForIdle.push(resolve));
  }
}

/** A logger that discards everything, the default when none is given. */
export const silentLogger: BusLogger = {
  info: () => undefined,
  warn: () => undefined,
  error: () => undefined,
};
