/**
 * The event-bus port. Services publish and consume protobuf events through this interface; the
 * NATS JetStream adapter (`nats-bus.ts`) is used in production and tests, the in-process adapter
 * (`in-process-bus.ts`) in the single-process dev mode when no NATS server is reachable.
 *
 * Semantics both adapters keep:
 * - at-least-once delivery to each durable consumer; a handler that resolves acks the event, one
 *   that throws gets it again (after a back-off) until it has failed `maxDeliver` times, then it is
 *   terminated and counted as dropped;
 * - `eventId` is the dedupe key (`Nats-Msg-Id`): publishing the same id twice within the stream's
 *   duplicate window stores it once;
 * - the W3C `traceparent` of the publisher's active span travels in the headers, and the handler
 *   runs inside a consumer span that continues that trace.
 */

/** The header that carries `eventId`; JetStream deduplicates on it. */
export const EVENT_ID_HEADER = 'Nats-Msg-Id';

/** The subset of a pino logger the adapters use; `pino()` satisfies it. */
export interface BusLogger {
  info(fields: object, message: string): void;
  warn(fields: object, message: string): void;
  error(fields: object, message: string): void;
}

/** The encode/decode pair ts-proto generates for every message (`MessageFns<T>`). */
export interface EventCodec<T> {
  encode(message: T): { finish(): Uint8Array };
  decode(input: Uint8Array): T;
}

/** A stream and the subjects it captures; declared in code and created/updated at start-up. */
export interface StreamSpec {
  /** Stream name, for example `TANDEM_EXPOSURES`. */
  readonly name: string;
  /** Subjects (wildcards allowed), for example `tandem.events.v1.exposure`. */
  readonly subjects: readonly string[];
  /** How long events are kept. @default 7 days */
  readonly maxAgeMs?: number;
  /** Window within which a repeated `eventId` is dropped. @default 2 minutes */
  readonly duplicateWindowMs?: number;
  /** Upper bound on stored bytes; oldest events go first. @default unlimited */
  readonly maxBytes?: number;
  /** `file` survives a server restart. @default 'file' */
  readonly storage?: 'file' | 'memory';
  /** Copies kept by a JetStream cluster (1, 3 or 5); the in-process bus ignores it. @default 1 */
  readonly replicas?: number;
}

/** A durable consumer: its position survives restarts of both the service and the server. */
export interface ConsumerSpec<T> {
  readonly stream: string;
  /** Durable consumer name; replicas sharing a name share the work. */
  readonly durable: string;
  /** Subjects within the stream this consumer receives. @default all of the stream's subjects */
  readonly filterSubjects?: readonly string[];
  readonly codec: EventCodec<T>;
  /** Time a handler has before the event is redelivered. @default 30 s */
  readonly ackWaitMs?: number;
  /**
   * Failed handler runs before an event is terminated and counted as dropped. The NATS adapter
   * counts them per subscription (afresh when it restarts its consumption), since JetStream's
   * delivery count also counts the events a stopping subscription hands back unhandled, and
   * drops an event delivered `3 × maxDeliver` times whatever its failures there; a cumulatively
   * acknowledging batch consumer counts deliveries, which the rewind of its durable resets.
   * @default 5
   */
  readonly maxDeliver?: number;
  /** Events handed out but not yet acked, across replicas. @default 1000 */
  readonly maxAckPending?: number;
  /** Where a new durable starts. @default 'all' */
  readonly deliverPolicy?: 'all' | 'new';
  /**
   * Handlers this subscription runs at once. With 1 events are handled one after another in
   * stream order, which is the simplest for idempotent consumers; more trades order for throughput.
   * @default 1
   */
  readonly concurrency?: number;
  /** Back-off before the first redelivery of an event whose handler threw; doubles per delivery. @default 1 s */
  readonly initialRetryDelayMs?: number;
  /** Upper bound of that back-off. @default 30 s */
  readonly maxRetryDelayMs?: number;
  /**
   * How long the durable may go without a subscriber before NATS deletes it: for durables named
   * after a replica, which would otherwise pile up as replicas come and go. A subscription whose
   * durable was deleted (an outage longer than this) declares it again. The in-process bus ignores
   * it: its durables end with the process. @default never deleted
   */
  readonly inactiveThresholdMs?: number;
}

/** One delivery of an event to a handler. */
export interface DeliveredEvent<T> {
  readonly event: T;
  /** The publisher's event id (`Nats-Msg-Id`). */
  readonly eventId: string;
  readonly subject: string;
  /** 1 on first delivery, then 2, 3, … */
  readonly deliveryCount: number;
  /** The stream's sequence number: unique and increasing within a stream. */
  readonly streamSequence: number;
  /** When the stream stored the event. */
  readonly storedAt: Date;
  readonly headers: Readonly<Record<string, string>>;
}

/** Resolving acks the event; throwing asks for redelivery. */
export type EventHandler<T> = (delivered: DeliveredEvent<T>) => Promise<void>;

/** A durable consumer whose handler takes events in batches (see `EventBus.subscribeBatches`). */
export interface BatchConsumerSpec<T> extends ConsumerSpec<T> {
  /**
   * The most events in one batch. A batch holds the events that have arrived and are not yet
   * handed out, so under light load batches are small and nothing waits to fill one.
   * `concurrency` counts batches, and `maxAckPending` still counts events. @default 1000
   */
  readonly maxBatchSize?: number;
  /**
   * How the events of resolved batches are acknowledged:
   * - `each`: every event by itself, as `subscribe` does;
   * - `cumulative`: one acknowledgement per resolved batch covers every event delivered up to the
   *   batch's last one (JetStream `AckPolicy.All`), so the server and the client handle one
   *   acknowledgement per batch instead of one per event. The price: when a batch fails or overruns
   *   `ackWaitMs`, when a delivery went missing (lost with a connection), or when a subscription
   *   starts while events of the durable are unacknowledged (after a crash), the durable is rewound
   *   to its first unacknowledged event and everything after it comes again, including events
   *   already handled. For idempotent consumers with one subscriber per durable. A failing batch
   *   comes again after the usual back-off, and is dropped as a whole once one of its events has
   *   failed `maxDeliver` deliveries.
   * A durable declared with the other policy is replaced at its acknowledged position. The
   * in-process bus acknowledges each event either way: nothing is lost with a connection there,
   * so handlers see the same contract with fewer redeliveries.
   * @default 'each'
   */
  readonly acknowledgement?: 'each' | 'cumulative';
}

/** What a batch handler may tell the bus about its batch while it runs. */
export interface BatchProgress {
  /**
   * The handler is still working on the batch and will finish it: its ack wait starts again from
   * now, here and on the stream (JetStream's "in progress" acknowledgement of each event), so that
   * it is not delivered again meanwhile. Only for a wait known to be making progress: a handler
   * that says so forever keeps its events (and their share of `maxAckPending`) forever. Does
   * nothing once the handler has overrun the ack wait.
   */
  working(): void;
}

/**
 * Takes a batch of decoded events (never empty; undecodable ones are terminated before, as with
 * `subscribe`). Resolving acks every event of the batch; throwing (or overrunning the ack wait)
 * asks for every one of them again, each by its own delivery count and back-off.
 */
export type BatchHandler<T> = (
  batch: readonly DeliveredEvent<T>[],
  /** Given by both adapters; optional so that tests may call a handler without it. */
  progress?: BatchProgress,
) => Promise<void>;

export interface PublishOptions {
  /** Required. Unique per logical event; the stream stores one copy per id. */
  readonly eventId: string;
  /** Extra headers. `traceparent` is added from the active context. */
  readonly headers?: Readonly<Record<string, string>>;
  /** Give up waiting for the stream's ack after this long. @default 5 s */
  readonly timeoutMs?: number;
}

/** What `publish` learned from the stream. */
export interface PublishAck {
  readonly streamSequence: number;
  /** True when the stream already had this `eventId` and stored nothing. */
  readonly duplicate: boolean;
}

/**
 * What a subscription has done with the events it received, since it started. Also exported as
 * the metrics `tandem.events.consumer.*` by stream and durable (`telemetry/consumer-metrics.ts`).
 */
export interface SubscriptionStats {
  /** Deliveries whose handler resolved, so the event was acked. */
  readonly acked: number;
  /** Deliveries whose handler threw or overran `ackWaitMs`; the event comes again. */
  readonly retried: number;
  /** Events given up on after `maxDeliver` failed handler runs (terminated, logged; see `maxDeliver`). */
  readonly dropped: number;
  /** Events that could not be decoded with the consumer's codec (terminated at once, logged). */
  readonly poison: number;
}

/** A running consumer. */
export interface Subscription {
  /**
   * Stops fetching, lets in-flight handlers finish, and returns once they have. A handler that
   * overran `ackWaitMs` has already been given up on (its event is redelivered) and is not awaited.
   */
  stop(): Promise<void>;
  stats(): SubscriptionStats;
}

export interface EventBus {
  /** `nats` or `in-process`, for logs and health. */
  readonly kind: 'nats' | 'in-process';
  /** Creates the stream or updates it to match `spec`. Idempotent. */
  declareStream(spec: StreamSpec): Promise<void>;
  /**
   * Publishes one event and waits for the stream to store it. Throws `UnavailableError` when it
   * cannot now, and `FailedPreconditionError` when it never could (an event larger than the NATS
   * server's `max_payload`), which a retry would meet again.
   */
  publish<T>(
    subject: string,
    codec: EventCodec<T>,
    event: T,
    options: PublishOptions,
  ): Promise<PublishAck>;
  /** Creates (or binds to) the durable consumer and starts handing events to `handler`. */
  subscribe<T>(spec: ConsumerSpec<T>, handler: EventHandler<T>): Promise<Subscription>;
  /**
   * Like `subscribe`, with the same durable, delivery and retry semantics per event, but hands
   * events to `handler` in batches: one handler run, one consumer span and one ack-wait timer
   * per batch instead of per event, for consumers that process many small events (aggregations).
   * The batch's span continues the producer's trace when the batch holds one event, and links to
   * every producer's span otherwise (when a tracer records). Optional so that test doubles of the
   * port need not implement it; both adapters do.
   */
  subscribeBatches?<T>(spec: BatchConsumerSpec<T>, handler: BatchHandler<T>): Promise<Subscription>;
  /**
   * Deletes a durable consumer, so that one subscribed again under its name starts afresh (from
   * its `deliverPolicy`) instead of where the old one left off. Resolves false when there was
   * none. Stop its subscriptions first: a running one declares it again. Optional so that test
   * doubles of the port need not implement it; both adapters do.
   */
  deleteConsumer?(stream: string, durable: string): Promise<boolean>;
  /**
   * The events of `stream` that match the durable's filter and have not been delivered to it yet
   * (its lag); undefined when there is no such durable. Optional, as `deleteConsumer`.
   */
  consumerPending?(stream: string, durable: string): Promise<number | undefined>;
  /** True while the bus can publish (the connection is up). */
  isConnected(): boolean;
  /** Stops all subscriptions, flushes, and closes the connection (NATS `drain`). */
  close(): Promise<void>;
}
