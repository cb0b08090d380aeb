/**
 * The event bus on NATS JetStream (production and integration tests).
 *
 * - Streams and durable pull consumers are declared from specs: created when missing, updated
 *   when their config differs, left alone otherwise, so every replica can declare at start-up.
 * - `publish` waits for the stream's ack, with `eventId` as `Nats-Msg-Id` for deduplication and
 *   the W3C trace context in the headers. It fails fast with `UnavailableError` while the
 *   connection is down, so a request path never waits out a publish timeout.
 * - Each subscription pulls with `consume()` and runs its handlers with a bounded concurrency
 *   (`ConsumerSpec.concurrency`, default 1: one at a time, in stream order). Handler resolved →
 *   `ack`; threw → `nak(back-off)`; last allowed delivery failed → `term` (dropped); undecodable →
 *   `term` (poison). A batch handler still working on its batch (`BatchProgress.working`) has
 *   the ack timers of its messages reset (`working()`, "in progress"). A supervisor restarts
 *   consumption (re-declaring the durable) if it ends.
 * - The connection reconnects forever; `isConnected()` follows its status events.
 * - A bus whose server cannot be reached at start-up keeps connecting in the background (see
 *   `connectNatsBus`): declarations and subscriptions made meanwhile are carried out, in call
 *   order, once it connects.
 * - The bus remembers the streams it declared and declares them again when NATS has lost them (a
 *   server back on an empty store): after each reconnection, and when a publish finds no stream
 *   for a subject of one of them or a consumer's declaration finds its stream missing. Consumers
 *   are then created again by their supervisor's re-declaration.
 */
import {
  AckPolicy,
  DeliverPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  StorageType,
  jetstream,
  jetstreamManager,
  type ConsumerConfig,
  type ConsumerMessages,
  type ConsumerUpdateConfig,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
  type StreamConfig,
} from '@nats-io/jetstream';
import {
  ConnectionError,
  InvalidArgumentError as NatsInvalidArgumentError,
  TimeoutError,
  connect,
  headers as natsHeaders,
  nanos,
  type NatsConnection,
} from '@nats-io/transport-node';
import { FailedPreconditionError, NotFoundError, UnavailableError } from '../errors';
import { errorText } from '../logging';
import { observeSubscription } from '../telemetry/consumer-metrics';
import { AckFrontier, type FrontierBatch } from './ack-frontier';
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
  FailureCounts,
  HandlerSlots,
  SubscriptionCounters,
  dispositionFor,
  runBatchHandler,
  runHandler,
  silentLogger,
  type Disposition,
  type HandlerOutcome,
} from './delivery';
import { withPublishSpan } from './event-spans';
import {
  batchSettings,
  checkPublish,
  consumerSettings,
  streamSettings,
  type BatchSettings,
  type ConsumerSettings,
  type StreamSettings,
} from './event-settings';
import { serverList, withoutCredentials } from './server-urls';
import { Signal } from './signal';
import { matchesAnySubject } from './subjects';
import { injectTraceContext } from './trace-headers';

export interface NatsBusOptions {
  /** Required. Server URL(s), for example `nats://127.0.0.1:4222`; a string may list several, comma-separated. */
  readonly servers: string | readonly string[];
  /** Required. The connection name the server shows in its monitoring; use the service name. */
  readonly name: string;
  /** Where connection changes, retries and drops are logged. @default silent */
  readonly logger?: BusLogger;
  /** How long one attempt to connect (the first one included) may take. @default 5 s */
  readonly connectTimeoutMs?: number;
  /**
   * What `connectNatsBus` does when its first attempt finds no server to connect to: `'fail'`
   * throws `UnavailableError` (a caller with somewhere else to go, such as the dev launcher's
   * in-process bus, or a test or tool that needs NATS now); `'connect-in-background'` returns a
   * bus that keeps trying, which is what a service's bootstrap asks for (degraded, never down).
   * @default 'fail'
   */
  readonly whenUnreachable?: 'connect-in-background' | 'fail';
  /** Token authentication. @default none */
  readonly token?: string;
  /** User/password authentication. @default none */
  readonly user?: string;
  readonly pass?: string;
}

/** JetStream's own limit value meaning "unlimited". */
const UNLIMITED = -1;
const DEFAULT_PUBLISH_TIMEOUT_MS = 5_000;
const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;
/** The first server release that accepts several `filter_subjects` on one consumer. */
const MULTIPLE_FILTERS_SINCE: readonly [number, number] = [2, 10];
/**
 * Back-off between attempts to connect in the background, and between attempts to declare again
 * the streams NATS lost: doubling from the first to the cap.
 */
const RETRY_FIRST_DELAY_MS = 500;
const RETRY_MAX_DELAY_MS = 5_000;
/** How long close() waits for a connection attempt under way in the background. */
const CLOSE_WAIT_FOR_ATTEMPT_MS = 1_000;
/** Error codes of a socket or name lookup that mean "nothing to connect to (yet)". */
const UNREACHABLE_CODES: ReadonlySet<string> = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'EHOSTUNREACH',
  'EHOSTDOWN',
  'ENETUNREACH',
  'ENETDOWN',
  'ETIMEDOUT',
  'EPIPE',
  'ENOTFOUND',
  'EAI_AGAIN',
]);

/**
 * Connects to NATS and returns the bus, which reconnects forever once it has connected.
 *
 * When the first attempt finds no server (refused, timed out after `connectTimeoutMs`, host name
 * not resolved, or JetStream not answering in time), it throws `UnavailableError`, or, when
 * `whenUnreachable` is `'connect-in-background'`, logs a warning and returns a bus that keeps
 * connecting in the background (back-off 0.5 s doubling to 5 s). Until that bus connects,
 * `isConnected()` is false, `publish`, `deleteConsumer` and `consumerPending` throw
 * `UnavailableError`, and `declareStream`, `subscribe` and `subscribeBatches` resolve at once:
 * they are carried out in call order once connected, a failure then being logged and retried
 * (streams by the re-declaration of lost streams, consumers by their supervisor).
 *
 * What a reachable server says is not retried: an invalid URL or option, or a server that refuses
 * the connection (authentication, TLS), throws `FailedPreconditionError`; a server answering that
 * JetStream is not enabled throws `UnavailableError`, as before. Such an answer to a bus already
 * connecting in the background is logged as an error and retried.
 */
export async function connectNatsBus(options: NatsBusOptions): Promise<EventBus> {
  const logger = options.logger ?? silentLogger;
  const attempt = await attemptConnection(options);
  if (attempt.kind === 'connected') {
    logConnected(logger, attempt.link);
    return new NatsBus(options, logger, attempt.link);
  }
  if (attempt.kind === 'refused' || options.whenUnreachable !== 'connect-in-background') {
    throw attempt.error;
  }
  logger.warn(
    { servers: shownServers(options.servers), error: attempt.error.message },
    'NATS unreachable: no events are published or consumed until it answers; connecting in the background',
  );
  return new NatsBus(options, logger);
}

/** The servers as logs and errors show them, without credentials. */
function shownServers(servers: string | readonly string[]): string[] {
  return serverList(servers).map(withoutCredentials);
}

/** `error`'s message with any of `servers` in it shown without credentials. */
function messageWithout(error: unknown, servers: readonly string[]): string {
  let message = messageOf(error);
  for (const server of servers) {
    if (server.includes('@')) message = message.replaceAll(server, withoutCredentials(server));
  }
  return message;
}

/** What the bus talks to NATS through once connected. */
interface Link {
  readonly connection: NatsConnection;
  readonly manager: JetStreamManager;
  readonly client: JetStreamClient;
}

/** One attempt to connect: connected, nothing to connect to (yet), or refused by what answered. */
type Attempt =
  | { readonly kind: 'connected'; readonly link: Link }
  | { readonly kind: 'unreachable' | 'refused'; readonly error: Error };

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** True when `error` means no server could be talked to, rather than one saying no. */
function isUnreachable(error: unknown): boolean {
  if (error instanceof ConnectionError || error instanceof TimeoutError) return true;
  const code = (error as { code?: unknown } | undefined)?.code;
  return typeof code === 'string' && UNREACHABLE_CODES.has(code);
}

/** Connects once (each server of the list once) and checks that JetStream answers. */
async function attemptConnection(options: NatsBusOptions): Promise<Attempt> {
  const servers = serverList(options.servers);
  let connection: NatsConnection;
  try {
    connection = await connect({
      servers,
      name: options.name,
      timeout: options.connectTimeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
      maxReconnectAttempts: -1,
      token: options.token,
      user: options.user,
      pass: options.pass,
    });
  } catch (error) {
    const where = `NATS at ${servers.map(withoutCredentials).join(',')}`;
    return isUnreachable(error)
      ? {
          kind: 'unreachable',
          error: new UnavailableError(
            `cannot connect to ${where}: ${messageWithout(error, servers)}`,
            {
              cause: error,
            },
          ),
        }
      : {
          kind: 'refused',
          error: new FailedPreconditionError(
            `cannot connect to ${where} (not retried): ${messageWithout(error, servers)}`,
            { cause: error },
          ),
        };
  }
  try {
    const manager = await jetstreamManager(connection);
    return { kind: 'connected', link: { connection, manager, client: jetstream(connection) } };
  } catch (error) {
    await connection.close().catch(() => undefined);
    // Enabled but not answering in time (a cluster electing its leader): not there yet.
    const notEnabled = error instanceof Error && error.name === 'JetStreamNotEnabled';
    return {
      kind: notEnabled ? 'refused' : 'unreachable',
      error: new UnavailableError(
        notEnabled
          ? 'NATS is reachable but JetStream is not enabled'
          : `NATS is reachable but JetStream did not answer: ${messageWithout(error, servers)}`,
        { cause: error },
      ),
    };
  }
}

function logConnected(logger: BusLogger, link: Link): void {
  logger.info(
    { server: link.connection.getServer(), version: link.connection.info?.version },
    'connected to NATS',
  );
}

/**
 * JetStream API errors that say the server cannot do it right now (nats-server's errors.json):
 * JSClusterIncompleteErr, JSClusterNotAvailErr ("JetStream system temporarily unavailable") and
 * JSClusterNotLeaderErr, which a cluster answers while it elects a leader or a peer is down, and
 * JSInsufficientResourcesErr, which lasts until resources are freed. Not every 503: "JetStream not
 * enabled" is one, and retrying it would hide a configuration to fix.
 */
const TRANSIENT_API_ERRORS: ReadonlySet<number> = new Set([10004, 10008, 10009, 10023]);

/**
 * Maps a failed JetStream API call to a domain error: an API error is a configuration the server
 * refused (for example overlapping subjects), unless it is one of {@link TRANSIENT_API_ERRORS}:
 * then, as for anything else (the server could not be reached), UNAVAILABLE, which callers retry.
 * The message may reach a caller (an aggregation's status), so it gives the JetStream error code,
 * not the server's description, which can quote its store paths, peers or cluster: that stays
 * in `cause`, which the logs show.
 *
 * @internal Exported for tests.
 */
export function toBusError(error: unknown, what: string): Error {
  if (error instanceof JetStreamApiError && !TRANSIENT_API_ERRORS.has(error.code)) {
    return new FailedPreconditionError(`${what}: NATS JetStream refused it (error ${error.code})`, {
      cause: error,
      metadata: { jetStreamCode: String(error.code) },
    });
  }
  const why =
    error instanceof JetStreamApiError
      ? `NATS JetStream is temporarily unavailable (error ${error.code})`
      : 'NATS did not answer';
  return new UnavailableError(`${what}: ${why}`, { cause: error });
}

function isApiError(error: unknown, code: number): boolean {
  return error instanceof JetStreamApiError && error.code === code;
}

/** A publish that found nothing listening on its subject: no stream captures it (or no JetStream). */
function isNoStream(error: unknown): boolean {
  return error instanceof Error && error.name === 'JetStreamNotEnabled';
}

/** Whether the client refused a message larger than the server's `max_payload` (or its cause did). */
function isOverMaxPayload(error: unknown): boolean {
  for (let e = error, depth = 0; e instanceof Error && depth < 4; e = e.cause, depth++) {
    if (e instanceof NatsInvalidArgumentError && e.message.includes('max_payload')) return true;
  }
  return false;
}

/** What a declaration did. */
type Declared = 'created' | 'updated' | 'unchanged';

/** A declaration or subscription made before the first connection, carried out once connected. */
type PendingOperation =
  | { readonly kind: 'stream'; readonly spec: StreamSpec }
  | { readonly kind: 'subscription'; readonly begin: () => void };

class NatsBus implements EventBus {
  readonly kind = 'nats' as const;
  /** Set once connected; undefined while the first connection is being made in the background. */
  private link: Link | undefined;
  private connected = false;
  private closing: Promise<void> | undefined;
  private closeRequested = false;
  /** Wakes the background loops when the bus closes. */
  private readonly closeSignal = new Signal();
  private readonly subscriptions = new Set<NatsSubscription<unknown>>();
  /**
   * Declarations and subscriptions waiting for the first connection, in call order; undefined
   * once they have been carried out (or for a bus connected from the start).
   */
  private pending: PendingOperation[] | undefined;
  /** The background connection loop, while there is one. */
  private connecting: Promise<void> | undefined;
  /** Every stream this bus was asked to declare, by name: declared again when NATS lost them. */
  private readonly streams = new Map<string, StreamSpec>();
  /** The declaration of the remembered streams under way, which callers share. */
  private restoring: Promise<void> | undefined;
  /** Whether a background loop is declaring the remembered streams again. */
  private restoringInBackground = false;
  /** Why declaring the remembered streams last failed, logged once until it changes. */
  private restoreProblem: string | undefined;

  constructor(
    private readonly options: NatsBusOptions,
    private readonly logger: BusLogger,
    link?: Link,
  ) {
    if (link === undefined) {
      this.pending = [];
      this.connecting = this.connectInBackground();
    } else {
      this.attach(link);
    }
  }

  private attach(link: Link): void {
    this.link = link;
    this.connected = true;
    void this.followStatus(link.connection);
  }

  /** The connection, or `UnavailableError` while there has not been one yet. */
  private live(): Link {
    if (this.link === undefined) {
      throw new UnavailableError('NATS has not been reached yet (connecting in the background)', {
        retryDelayMs: 1_000,
      });
    }
    return this.link;
  }

  /**
   * Tries to connect until it succeeds or the bus closes, then carries out what was asked for
   * meanwhile. Each failure is logged when its reason differs from the last one's.
   */
  private async connectInBackground(): Promise<void> {
    let lastReason: string | undefined;
    for (let delayMs = RETRY_FIRST_DELAY_MS; ;) {
      await this.closeSignal.wait(delayMs);
      if (this.isClosing()) return;
      const attempt = await attemptConnection(this.options);
      if (attempt.kind === 'connected') {
        if (this.isClosing()) {
          await attempt.link.connection.close().catch(() => undefined);
          return;
        }
        this.attach(attempt.link);
        logConnected(this.logger, attempt.link);
        await this.carryOutPending();
        return;
      }
      if (this.isClosing()) return;
      if (attempt.error.message !== lastReason) {
        lastReason = attempt.error.message;
        const fields = { servers: shownServers(this.options.servers), error: lastReason };
        if (attempt.kind === 'refused') {
          this.logger.error(fields, 'NATS answered but refused; retrying in the background');
        } else {
          this.logger.warn(fields, 'NATS still unreachable; retrying in the background');
        }
      }
      delayMs = Math.min(delayMs * 2, RETRY_MAX_DELAY_MS);
    }
  }

  /**
   * Carries out the declarations and subscriptions made before the first connection, in call
   * order (those made meanwhile join the queue). A stream that cannot be declared now is logged
   * and declared again in the background; a subscription declares its durable in its supervisor,
   * which retries.
   */
  private async carryOutPending(): Promise<void> {
    const queue = this.pending ?? [];
    let streamsMissing = false;
    for (
      let operation = queue.shift();
      operation !== undefined && !this.isClosing();
      operation = queue.shift()
    ) {
      if (operation.kind === 'subscription') {
        try {
          operation.begin();
        } catch (error) {
          // Nothing it throws may escape the background loop (close() awaits it).
          this.logger.error({ error: errorText(error) }, 'a subscription could not start');
        }
        continue;
      }
      try {
        await this.declareStreamNow(this.live(), operation.spec);
      } catch (error) {
        // The whole chain: a refusal's message names only its JetStream code (see `toBusError`).
        const fields = { stream: operation.spec.name, error: errorText(error) };
        if (error instanceof FailedPreconditionError) {
          // The server refuses this config: retrying would not change its mind.
          this.streams.delete(operation.spec.name);
          this.logger.error(fields, 'stream refused by NATS; not declared');
        } else {
          streamsMissing = true;
          this.logger.warn(fields, 'stream not declared on connecting; retrying in the background');
        }
      }
    }
    this.pending = undefined;
    if (streamsMissing) this.restoreInBackground('declared before NATS answered');
  }

  /** Keeps `connected` in step with the connection and logs each change. */
  private async followStatus(connection: NatsConnection): Promise<void> {
    const closed = connection.closed().then((error) => {
      this.connected = false;
      if (error)
        this.logger.error({ error: error.message }, 'NATS connection closed with an error');
    });
    for await (const status of connection.status()) {
      if (status.type === 'disconnect') {
        this.connected = false;
        this.logger.warn({ server: status.server }, 'NATS disconnected; reconnecting');
      } else if (status.type === 'reconnect') {
        this.connected = true;
        this.logger.info({ server: status.server }, 'NATS reconnected');
        // The server may be back without its JetStream state (an empty store).
        this.restoreInBackground('reconnected');
      } else if (status.type === 'error') {
        this.logger.error({ error: status.error.message }, 'NATS reported an error');
      }
    }
    await closed;
  }

  isConnected(): boolean {
    return this.connected && this.link !== undefined && !this.link.connection.isClosed();
  }

  /** A method, not a field read, because it changes while the background loops await. */
  private isClosing(): boolean {
    return this.closeRequested;
  }

  private checkOpen(): void {
    if (this.closeRequested) throw new UnavailableError('the NATS event bus is closed');
  }

  async declareStream(spec: StreamSpec): Promise<void> {
    streamSettings(spec);
    this.checkOpen();
    this.streams.set(spec.name, spec);
    if (this.pending !== undefined) {
      this.pending.push({ kind: 'stream', spec });
      return;
    }
    try {
      await this.declareStreamNow(this.live(), spec);
    } catch (error) {
      // A config the server refuses is not declared again; one NATS did not answer for is.
      if (error instanceof FailedPreconditionError) this.streams.delete(spec.name);
      throw error;
    }
  }

  private async declareStreamNow(link: Link, spec: StreamSpec): Promise<Declared> {
    const settings = streamSettings(spec);
    const desired = streamConfigFor(settings);
    let current: StreamConfig | undefined;
    try {
      current = (await link.manager.streams.info(settings.name)).config;
    } catch (error) {
      if (!isApiError(error, JetStreamApiCodes.StreamNotFound)) {
        throw toBusError(error, `cannot read stream ${settings.name}`);
      }
    }
    try {
      if (current === undefined) {
        await link.manager.streams.add({ name: settings.name, ...desired });
        this.logger.info({ stream: settings.name }, 'stream created');
        return 'created';
      } else if (current.storage !== desired.storage) {
        throw new FailedPreconditionError(
          `stream ${settings.name} has ${current.storage} storage; JetStream cannot change it, delete the stream to switch to ${desired.storage}`,
        );
      } else if (streamConfigDiffers(current, desired)) {
        await link.manager.streams.update(settings.name, streamUpdateFor(settings));
        this.logger.info({ stream: settings.name }, 'stream updated');
        return 'updated';
      }
      return 'unchanged';
    } catch (error) {
      if (error instanceof FailedPreconditionError) throw error;
      throw toBusError(error, `cannot declare stream ${settings.name}`);
    }
  }

  /**
   * Declares every remembered stream again, logging those NATS had lost; callers at the same time
   * share one run. Throws when a declaration fails (logged once per distinct reason).
   */
  private restoreStreams(trigger: string): Promise<void> {
    this.restoring ??= this.declareRemembered(trigger).finally(() => {
      this.restoring = undefined;
    });
    return this.restoring;
  }

  private async declareRemembered(trigger: string): Promise<void> {
    const link = this.live();
    const recreated: string[] = [];
    let failure: Error | undefined;
    for (const spec of [...this.streams.values()]) {
      try {
        if ((await this.declareStreamNow(link, spec)) === 'created') recreated.push(spec.name);
      } catch (error) {
        // The others are declared all the same.
        failure ??= error instanceof Error ? error : new Error(String(error));
      }
    }
    if (recreated.length > 0) {
      this.logger.warn(
        { streams: recreated, trigger },
        'NATS had lost streams this service declared (JetStream state gone): declared them again, empty',
      );
    }
    if (failure === undefined) {
      this.restoreProblem = undefined;
      return;
    }
    const reason = errorText(failure);
    if (reason !== this.restoreProblem) {
      this.restoreProblem = reason;
      this.logger.warn({ trigger, error: reason }, 'cannot declare the streams again; retrying');
    }
    throw failure;
  }

  /**
   * Declares the remembered streams again in the background, retrying with back-off while
   * connected, until it succeeds or the bus closes (a later reconnection starts it again).
   */
  private restoreInBackground(trigger: string): void {
    if (this.streams.size === 0 || this.restoringInBackground) return;
    this.restoringInBackground = true;
    void (async () => {
      for (let delayMs = RETRY_FIRST_DELAY_MS; !this.closeRequested && this.isConnected();) {
        try {
          await this.restoreStreams(trigger);
          return;
        } catch {
          // Logged by restoreStreams.
        }
        await this.closeSignal.wait(delayMs);
        delayMs = Math.min(delayMs * 2, RETRY_MAX_DELAY_MS);
      }
    })().finally(() => {
      this.restoringInBackground = false;
    });
  }

  /** True when `subject` belongs to a stream this bus declared. */
  private declaresStreamFor(subject: string): boolean {
    for (const spec of this.streams.values()) {
      if (matchesAnySubject(spec.subjects, subject)) return true;
    }
    return false;
  }

  async publish<T>(
    subject: string,
    codec: EventCodec<T>,
    event: T,
    options: PublishOptions,
  ): Promise<PublishAck> {
    checkPublish(subject, options.eventId);
    const data = codec.encode(event).finish();
    return withPublishSpan(subject, options.eventId, async () => {
      if (!this.isConnected()) {
        throw new UnavailableError(`NATS is disconnected; ${subject} not published`, {
          retryDelayMs: 1_000,
        });
      }
      const { client } = this.live();
      const carried: Record<string, string> = { ...options.headers };
      injectTraceContext(carried);
      const headers = natsHeaders();
      for (const [name, value] of Object.entries(carried)) headers.set(name, value);
      const send = () =>
        client.publish(subject, data, {
          msgID: options.eventId,
          headers,
          timeout: options.timeoutMs ?? DEFAULT_PUBLISH_TIMEOUT_MS,
        });
      const failed = (error: unknown): UnavailableError | FailedPreconditionError =>
        // Not UNAVAILABLE: every retry would fail the same way (a buffered publisher drops it).
        isOverMaxPayload(error)
          ? new FailedPreconditionError(
              `cannot publish to ${subject}: the event (${data.length} bytes, and its headers) is larger than the NATS server's max_payload`,
              { cause: error, reason: 'EVENT_TOO_LARGE' },
            )
          : // The client's own message (which may name servers or the account) stays in `cause`.
            new UnavailableError(`cannot publish to ${subject}: NATS did not acknowledge it`, {
              cause: error,
            });
      let ack: Awaited<ReturnType<typeof send>>;
      try {
        ack = await send();
      } catch (error) {
        if (!isNoStream(error) || !this.declaresStreamFor(subject)) throw failed(error);
        // The stream this bus declared for the subject is gone: declare it again, then retry once.
        try {
          await this.restoreStreams(`publish to ${subject} found no stream`);
          ack = await send();
        } catch (retryError) {
          throw failed(retryError);
        }
      }
      return { streamSequence: ack.seq, duplicate: ack.duplicate };
    });
  }

  async subscribe<T>(spec: ConsumerSpec<T>, handler: EventHandler<T>): Promise<Subscription> {
    return this.startSubscription(spec, { kind: 'each', handler });
  }

  async subscribeBatches<T>(
    spec: BatchConsumerSpec<T>,
    handler: BatchHandler<T>,
  ): Promise<Subscription> {
    return this.startSubscription(spec, { kind: 'batch', handler, ...batchSettings(spec) });
  }

  private async startSubscription<T>(
    spec: ConsumerSpec<T>,
    mode: HandlingMode<T>,
  ): Promise<Subscription> {
    const settings = consumerSettings(spec);
    this.checkOpen();
    const acknowledgement = mode.kind === 'batch' ? mode.acknowledgement : 'each';
    if (this.pending !== undefined) {
      // Not connected yet: started once connected, its supervisor declaring the durable.
      const deferred = new DeferredSubscription();
      this.pending.push({
        kind: 'subscription',
        begin: () => {
          deferred.begin(() => {
            const { clientFilter } = this.desiredConsumer(settings, acknowledgement);
            return this.runSubscription(spec, mode, settings, clientFilter, false);
          });
        },
      });
      return deferred;
    }
    const clientFilter = await this.declareConsumer(settings, acknowledgement);
    // Closed while the durable was declared: the close has gathered the subscriptions to stop
    // already, and would not stop one started now.
    this.checkOpen();
    return this.runSubscription(spec, mode, settings, clientFilter, true);
  }

  /** Starts consuming; `declared` tells whether the durable was declared already. */
  private runSubscription<T>(
    spec: ConsumerSpec<T>,
    mode: HandlingMode<T>,
    settings: ConsumerSettings,
    clientFilter: readonly string[],
    declared: boolean,
  ): NatsSubscription<T> {
    const acknowledgement = mode.kind === 'batch' ? mode.acknowledgement : 'each';
    const link = this.live();
    const subscription = new NatsSubscription<T>({
      settings,
      codec: spec.codec,
      mode,
      clientFilter,
      client: link.client,
      connection: link.connection,
      redeclare: () => this.declareConsumer(settings, acknowledgement),
      rewind: (reason) => this.replaceConsumer(settings, acknowledgement, reason),
      logger: this.logger,
      onStopped: () => this.subscriptions.delete(subscription as NatsSubscription<unknown>),
    });
    this.subscriptions.add(subscription as NatsSubscription<unknown>);
    subscription.start(declared);
    return subscription;
  }

  /**
   * The consumer config `settings` ask for, and the subjects the client must filter itself: on
   * servers before 2.10 a consumer takes one filter at most.
   */
  private desiredConsumer(
    settings: ConsumerSettings,
    acknowledgement: Acknowledgement,
  ): { readonly desired: DeclaredConsumerConfig; readonly clientFilter: readonly string[] } {
    const serverFilters = supportsMultipleFilters(this.live().connection.info?.version);
    const clientFilter =
      settings.filterSubjects.length > 1 && !serverFilters ? settings.filterSubjects : [];
    const desired = consumerConfigFor(
      settings,
      clientFilter.length > 0 ? [] : settings.filterSubjects,
      acknowledgement,
    );
    return { desired, clientFilter };
  }

  /**
   * Creates the durable or updates what may change on an existing one (a new durable's start
   * position cannot change later, so `deliverPolicy` is ignored then); one with another
   * acknowledgement policy, which JetStream cannot change, is replaced at its acknowledged
   * position. A stream this bus declared and NATS lost is declared again first. Returns the
   * subjects the client must filter itself.
   */
  private async declareConsumer(
    settings: ConsumerSettings,
    acknowledgement: Acknowledgement,
    streamRestored = false,
  ): Promise<readonly string[]> {
    const { manager } = this.live();
    const { desired, clientFilter } = this.desiredConsumer(settings, acknowledgement);
    let current: ConsumerConfig | undefined;
    try {
      current = (await manager.consumers.info(settings.stream, settings.durable)).config;
    } catch (error) {
      if (isApiError(error, JetStreamApiCodes.StreamNotFound)) {
        if (!streamRestored && this.streams.has(settings.stream)) {
          await this.restoreStreams(
            `consumer ${settings.stream}/${settings.durable} found its stream missing`,
          );
          return this.declareConsumer(settings, acknowledgement, true);
        }
        throw new NotFoundError(`stream ${settings.stream} is not declared`, { cause: error });
      }
      if (!isApiError(error, JetStreamApiCodes.ConsumerNotFound)) {
        throw toBusError(error, `cannot read consumer ${settings.stream}/${settings.durable}`);
      }
    }
    if (current !== undefined && current.ack_policy !== desired.ack_policy) {
      await this.replaceConsumer(
        settings,
        acknowledgement,
        `acknowledgement policy ${current.ack_policy} changed to ${desired.ack_policy}`,
      );
      return clientFilter;
    }
    try {
      if (current === undefined) {
        await manager.consumers.add(settings.stream, desired);
        this.logger.info(
          { stream: settings.stream, durable: settings.durable },
          'consumer created',
        );
      } else {
        const changes = consumerChanges(current, desired);
        if (changes !== undefined) {
          await manager.consumers.update(settings.stream, settings.durable, changes);
          this.logger.info(
            { stream: settings.stream, durable: settings.durable },
            'consumer updated',
          );
        }
      }
    } catch (error) {
      throw toBusError(error, `cannot declare consumer ${settings.stream}/${settings.durable}`);
    }
    return clientFilter;
  }

  /**
   * Replaces the durable with one that starts at its first unacknowledged event, which is then
   * delivered again with everything after it: how a cumulatively acknowledged durable is rewound,
   * and how a durable changes its acknowledgement policy. Only for a durable with one subscriber.
   */
  private async replaceConsumer(
    settings: ConsumerSettings,
    acknowledgement: Acknowledgement,
    reason: string,
  ): Promise<void> {
    const { stream, durable } = settings;
    const { manager } = this.live();
    const { desired } = this.desiredConsumer(settings, acknowledgement);
    try {
      const current = await manager.consumers.info(stream, durable);
      const resumeAt = current.ack_floor.stream_seq + 1;
      await manager.consumers.delete(stream, durable);
      await manager.consumers.add(stream, {
        ...desired,
        deliver_policy: DeliverPolicy.StartSequence,
        opt_start_seq: resumeAt,
      });
      this.logger.warn(
        { stream, durable, resumeAt, reason },
        'consumer replaced at its first unacknowledged event',
      );
    } catch (error) {
      throw toBusError(error, `cannot replace consumer ${stream}/${durable}`);
    }
  }

  async deleteConsumer(stream: string, durable: string): Promise<boolean> {
    const { manager } = this.live();
    try {
      await manager.consumers.delete(stream, durable);
    } catch (error) {
      if (
        isApiError(error, JetStreamApiCodes.ConsumerNotFound) ||
        isApiError(error, JetStreamApiCodes.StreamNotFound)
      ) {
        return false;
      }
      throw toBusError(error, `cannot delete consumer ${stream}/${durable}`);
    }
    this.logger.info({ stream, durable }, 'consumer deleted');
    return true;
  }

  async consumerPending(stream: string, durable: string): Promise<number | undefined> {
    const { manager } = this.live();
    try {
      return (await manager.consumers.info(stream, durable)).num_pending;
    } catch (error) {
      if (
        isApiError(error, JetStreamApiCodes.ConsumerNotFound) ||
        isApiError(error, JetStreamApiCodes.StreamNotFound)
      ) {
        return undefined;
      }
      throw toBusError(error, `cannot read consumer ${stream}/${durable}`);
    }
  }

  async close(): Promise<void> {
    this.closing ??= this.shutDown();
    return this.closing;
  }

  private async shutDown(): Promise<void> {
    this.closeRequested = true;
    this.closeSignal.notify();
    // Ends the background connection loop. An attempt under way (up to connectTimeoutMs and the
    // JetStream check) is not waited for past a second: the loop closes what it then connects.
    if (this.connecting !== undefined) {
      await Promise.race([
        this.connecting,
        new Promise((resolve) => setTimeout(resolve, CLOSE_WAIT_FOR_ATTEMPT_MS).unref()),
      ]);
    }
    await Promise.all([...this.subscriptions].map((subscription) => subscription.stop()));
    const connection = this.link?.connection;
    if (connection !== undefined && !connection.isClosed()) {
      if (this.connected) {
        // drain flushes pending publishes and acks before closing; it fails when the connection
        // drops meanwhile.
        await connection.drain().catch(() => connection.close());
      } else {
        // Disconnected: nothing can be flushed, and drain would fail.
        await connection.close();
      }
    }
    this.connected = false;
  }
}

/** A subscription made before the first connection: started once connected, unless stopped. */
class DeferredSubscription implements Subscription {
  private running: Subscription | undefined;
  private stopped: Promise<void> | undefined;

  begin(start: () => Subscription): void {
    if (this.stopped === undefined) this.running = start();
  }

  stop(): Promise<void> {
    this.stopped ??= this.running?.stop() ?? Promise.resolve();
    return this.stopped;
  }

  stats(): SubscriptionStats {
    return this.running?.stats() ?? { acked: 0, retried: 0, dropped: 0, poison: 0 };
  }
}

/** The part of a stream's JetStream config a `StreamSpec` decides and an update may change. */
type DeclaredStreamUpdate = Pick<
  StreamConfig,
  'subjects' | 'max_age' | 'duplicate_window' | 'max_bytes' | 'num_replicas'
>;

/** All of the JetStream config a `StreamSpec` decides. */
type DeclaredStreamConfig = DeclaredStreamUpdate & Pick<StreamConfig, 'storage'>;

function streamUpdateFor(settings: StreamSettings): DeclaredStreamUpdate {
  return {
    subjects: [...settings.subjects],
    max_age: nanos(settings.maxAgeMs),
    duplicate_window: nanos(settings.duplicateWindowMs),
    max_bytes: settings.maxBytes ?? UNLIMITED,
    num_replicas: settings.replicas,
  };
}

function streamConfigFor(settings: StreamSettings): DeclaredStreamConfig {
  return {
    ...streamUpdateFor(settings),
    storage: settings.storage === 'memory' ? StorageType.Memory : StorageType.File,
  };
}

function sameMembers(a: readonly string[], b: readonly string[]): boolean {
  return a.length === b.length && a.every((item) => b.includes(item));
}

function streamConfigDiffers(current: StreamConfig, desired: DeclaredStreamConfig): boolean {
  return (
    !sameMembers(current.subjects, desired.subjects) ||
    current.max_age !== desired.max_age ||
    current.duplicate_window !== desired.duplicate_window ||
    current.max_bytes !== desired.max_bytes ||
    current.num_replicas !== desired.num_replicas
  );
}

/** The part of a consumer's JetStream config a `ConsumerSpec` decides. */
type DeclaredConsumerConfig = Pick<
  ConsumerConfig,
  | 'durable_name'
  | 'ack_policy'
  | 'deliver_policy'
  | 'ack_wait'
  | 'max_deliver'
  | 'max_ack_pending'
  | 'filter_subject'
  | 'filter_subjects'
  | 'inactive_threshold'
>;

/** An undecodable message, counted once acknowledged (see `prepare`). */
interface Undecodable {
  readonly facts: {
    readonly subject: string;
    readonly eventId: string;
    readonly streamSequence: number;
  };
  readonly error: unknown;
  readonly headers: Readonly<Record<string, string>>;
}

/** A consumer's `max_deliver` on the server: unlimited (see `consumerConfigFor`). */
const SERVER_MAX_DELIVER = -1;

function consumerConfigFor(
  settings: ConsumerSettings,
  serverFilter: readonly string[],
  acknowledgement: Acknowledgement,
): DeclaredConsumerConfig {
  return {
    durable_name: settings.durable,
    ack_policy: acknowledgement === 'cumulative' ? AckPolicy.All : AckPolicy.Explicit,
    deliver_policy: settings.deliverPolicy === 'new' ? DeliverPolicy.New : DeliverPolicy.All,
    ack_wait: nanos(settings.ackWaitMs),
    // Unlimited on the server: the client gives up after `maxDeliver` (terminating the event,
    // counting and logging it). The server counts every delivery, the events a stopping
    // subscription hands back unhandled too, and at its limit stops delivering without a word.
    max_deliver: SERVER_MAX_DELIVER,
    max_ack_pending: settings.maxAckPending,
    // One filter goes in `filter_subject`, which every server version understands.
    ...(serverFilter.length === 1 ? { filter_subject: serverFilter[0] } : {}),
    ...(serverFilter.length > 1 ? { filter_subjects: [...serverFilter] } : {}),
    ...(settings.inactiveThresholdMs !== undefined
      ? { inactive_threshold: nanos(settings.inactiveThresholdMs) }
      : {}),
  };
}

/** The filters a consumer config applies, however they are spelled. */
function filtersOf(config: Pick<ConsumerConfig, 'filter_subject' | 'filter_subjects'>): string[] {
  if (config.filter_subjects && config.filter_subjects.length > 0) return config.filter_subjects;
  return config.filter_subject ? [config.filter_subject] : [];
}

/** The update that makes `current` match `desired`, or undefined when nothing changes. */
function consumerChanges(
  current: ConsumerConfig,
  desired: DeclaredConsumerConfig,
): Partial<ConsumerUpdateConfig> | undefined {
  const filtersChanged = !sameMembers(filtersOf(current), filtersOf(desired));
  const limitsChanged =
    current.ack_wait !== desired.ack_wait ||
    current.max_deliver !== desired.max_deliver ||
    current.max_ack_pending !== desired.max_ack_pending ||
    (current.inactive_threshold ?? 0) !== (desired.inactive_threshold ?? 0);
  if (!filtersChanged && !limitsChanged) return undefined;
  const filters = filtersOf(desired);
  return {
    ack_wait: desired.ack_wait,
    max_deliver: desired.max_deliver,
    max_ack_pending: desired.max_ack_pending,
    // Zero removes a threshold.
    inactive_threshold: desired.inactive_threshold ?? 0,
    // Only sent when filters change. The update is merged into the current config: a field
    // left out keeps its value, one set to `undefined` is removed (the client names a single
    // filter in the API subject it sends to, and an empty one there reaches no server).
    ...(filtersChanged && filters.length <= 1
      ? { filter_subject: filters[0], filter_subjects: undefined }
      : {}),
    ...(filtersChanged && filters.length > 1
      ? { filter_subject: undefined, filter_subjects: filters }
      : {}),
  };
}

/** True when the server version (for example `2.10.4`) accepts several `filter_subjects`. */
export function supportsMultipleFilters(version: string | undefined): boolean {
  const [major = 0, minor = 0] = (version ?? '')
    .split('.')
    .map((part) => Number.parseInt(part, 10));
  const [wantMajor, wantMinor] = MULTIPLE_FILTERS_SINCE;
  return major > wantMajor || (major === wantMajor && minor >= wantMinor);
}

/** Reads a message's headers as a plain record (the first value of a repeated header). */
function headersOf(message: JsMsg): Record<string, string> {
  const record: Record<string, string> = {};
  if (!message.headers) return record;
  for (const [name, values] of message.headers) {
    const first = values[0];
    if (first !== undefined) record[name] = first;
  }
  return record;
}

/**
 * The event id of a message. One published outside the bus may lack `Nats-Msg-Id`; its stream
 * position is then the id, which at least stays the same across redeliveries.
 */
function eventIdOf(headers: Readonly<Record<string, string>>, message: JsMsg): string {
  return headers[EVENT_ID_HEADER] ?? `${message.info.stream}:${message.info.streamSequence}`;
}

/**
 * Deliveries of events before the durable was last rewound, by stream sequence, for the events
 * of batches that failed: a rewound durable counts deliveries from 1 again, while `maxDeliver` and
 * the retry back-off go by every delivery of the event.
 */
type EarlierDeliveries = Map<number, number>;

/**
 * One delivery of a batch, whose facts are read from the message when first asked for: most
 * batch consumers read only the event, and at tens of thousands of events a second parsing each
 * message's reply subject and headers shows.
 */
class NatsDelivery<T> implements DeliveredEvent<T> {
  private headerRecord: Record<string, string> | undefined;

  constructor(
    readonly message: JsMsg,
    readonly event: T,
    private readonly earlier: EarlierDeliveries,
  ) {}

  get subject(): string {
    return this.message.subject;
  }

  get eventId(): string {
    const headers = this.message.headers;
    if (headers?.has(EVENT_ID_HEADER) === true) return headers.get(EVENT_ID_HEADER);
    const info = this.message.info;
    return `${info.stream}:${info.streamSequence}`;
  }

  get deliveryCount(): number {
    const info = this.message.info;
    if (this.earlier.size === 0) return info.deliveryCount;
    return info.deliveryCount + (this.earlier.get(info.streamSequence) ?? 0);
  }

  get streamSequence(): number {
    return this.message.info.streamSequence;
  }

  get storedAt(): Date {
    return this.message.time;
  }

  get headers(): Readonly<Record<string, string>> {
    this.headerRecord ??= headersOf(this.message);
    return this.headerRecord;
  }
}

type Acknowledgement = BatchSettings['acknowledgement'];

/** Whether a subscription's handler takes one event or a batch. */
type HandlingMode<T> =
  | { readonly kind: 'each'; readonly handler: EventHandler<T> }
  | ({ readonly kind: 'batch'; readonly handler: BatchHandler<T> } & BatchSettings);

interface NatsSubscriptionParts<T> {
  readonly settings: ConsumerSettings;
  readonly codec: EventCodec<T>;
  readonly mode: HandlingMode<T>;
  /** Subjects to filter on the client; empty when the server filters. */
  readonly clientFilter: readonly string[];
  readonly client: JetStreamClient;
  readonly connection: NatsConnection;
  /** Declares the durable again, in case it was deleted while consumption was down. */
  readonly redeclare: () => Promise<unknown>;
  /** Replaces the durable at its first unacknowledged event (cumulative acknowledgement). */
  readonly rewind: (reason: string) => Promise<void>;
  readonly logger: BusLogger;
  readonly onStopped: () => void;
}

/** Why a cumulatively acknowledging consumption stopped to rewind, and when to resume. */
interface RewindRequest {
  readonly reason: string;
  readonly delayMs: number;
}

const RESTART_INITIAL_DELAY_MS = 1_000;
const RESTART_MAX_DELAY_MS = 30_000;

/**
 * A cumulatively acknowledging subscription that starts while events of its durable await
 * acknowledgement looks again this often, this far apart (acknowledgements sent just before may
 * still be on their way), before it rewinds the durable.
 */
const UNACKNOWLEDGED_CHECKS = 3;
const UNACKNOWLEDGED_CHECK_INTERVAL_MS = 100;

class NatsSubscription<T> implements Subscription {
  private readonly slots: HandlerSlots;
  private readonly counters: SubscriptionCounters;
  /** Stops reporting the counters as metrics (see `telemetry/consumer-metrics.ts`). */
  private readonly unobserve: () => void;
  private readonly stopSignal = new Signal();
  private stopRequested = false;
  private messages: ConsumerMessages | undefined;
  private supervision: Promise<void> = Promise.resolve();
  private stopped: Promise<void> | undefined;
  /** Cumulative acknowledgement: the batches of the current consumption, in delivery order. */
  private frontier: AckFrontier<JsMsg> | undefined;
  /**
   * Cumulative acknowledgement: how finished batches of the current frontier count (acked or
   * dropped), applied once an acknowledgement covers them. A rewind discards them with the
   * frontier, since those events come again and are counted then.
   */
  private uncounted: { readonly through: number; readonly count: () => void }[] = [];
  /** Cumulative acknowledgement: the durable's delivery sequence when consumption started. */
  private deliveredBefore = 0;
  private rewindRequest: RewindRequest | undefined;
  private readonly earlier: EarlierDeliveries = new Map();
  /**
   * The failed handler runs of events not yet settled for good, which `maxDeliver` counts
   * rather than the delivery count (per-event acknowledgement; see `FailureCounts`).
   */
  private readonly failures: FailureCounts;

  constructor(private readonly parts: NatsSubscriptionParts<T>) {
    this.slots = new HandlerSlots(parts.settings.concurrency);
    this.counters = new SubscriptionCounters(parts.settings, parts.logger);
    this.unobserve = observeSubscription(parts.settings, this);
    this.failures = new FailureCounts(4 * parts.settings.maxAckPending);
  }

  /** Starts consuming; with `declared` false the supervisor declares the durable first. */
  start(declared: boolean): void {
    this.supervision = this.supervise(declared);
  }

  /** A method, not a field, because it changes while the loops await. */
  private isStopping(): boolean {
    return this.stopRequested;
  }

  private isCumulative(): boolean {
    return this.parts.mode.kind === 'batch' && this.parts.mode.acknowledgement === 'cumulative';
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
    this.stopSignal.notify();
    // close() ends the iterator once the events already pulled have come out of it (they are
    // handed back with a nak); the supervisor then returns.
    const closing = this.messages?.close();
    try {
      await this.supervision;
      await closing;
      await this.slots.whenIdle();
    } finally {
      // Once the handlers are done: a collection meanwhile still reports what they count.
      this.unobserve();
    }
    this.parts.onStopped();
  }

  /**
   * Keeps consumption running until `stop()`: if the iterator ends or fails (the durable was
   * deleted, the stream recreated), it declares the durable again and resumes, backing off; when
   * a cumulatively acknowledging consumption asks for a rewind, it rewinds the durable and resumes
   * after the requested delay.
   */
  private async supervise(declared: boolean): Promise<void> {
    const { settings, logger } = this.parts;
    let restarts = 0;
    let first = declared;
    while (!this.isStopping() && !this.parts.connection.isClosed()) {
      let delayMs: number | undefined;
      try {
        if (!first) await this.parts.redeclare();
        first = false;
        const rewind = await this.consumeUntilEnd();
        restarts = 0;
        if (rewind !== undefined && !this.isStopping()) {
          await this.parts.rewind(rewind.reason);
          delayMs = rewind.delayMs;
        }
      } catch (error) {
        restarts++;
        logger.warn(
          {
            stream: settings.stream,
            durable: settings.durable,
            error: errorText(error),
          },
          'event consumption failed; restarting',
        );
      }
      if (this.isStopping() || this.parts.connection.isClosed()) break;
      delayMs ??= Math.min(
        RESTART_INITIAL_DELAY_MS * 2 ** Math.max(0, restarts - 1),
        RESTART_MAX_DELAY_MS,
      );
      await this.stopSignal.wait(delayMs);
    }
  }

  /**
   * Pulls a few events ahead of the handlers: enough to hide the round trip, few enough that
   * events waiting in the client do not use up much of their ack wait, which runs from delivery.
   * One at a time, an event waits for at most the three handled before it, so a handler taking
   * less than a quarter of the ack wait leaves none to be redelivered (16 ahead needed one under
   * a sixteenth); batches, for two rounds of batches, at least 16 events.
   */
  private prefetch(): number {
    const { concurrency, maxAckPending } = this.parts.settings;
    const { mode } = this.parts;
    const ahead =
      mode.kind === 'batch'
        ? Math.max(16, 2 * concurrency * mode.maxBatchSize)
        : Math.max(4, 2 * concurrency);
    return Math.min(maxAckPending, ahead);
  }

  /** Consumes until the iterator ends; returns the rewind a cumulative consumption asked for. */
  private async consumeUntilEnd(): Promise<RewindRequest | undefined> {
    const { settings, client } = this.parts;
    this.rewindRequest = undefined;
    this.frontier = undefined;
    this.uncounted = [];
    // A stream deleted and declared again numbers its events from 1 again.
    this.failures.clear();
    if (this.isCumulative()) this.deliveredBefore = await this.settledDeliveries();
    const consumer = await client.consumers.get(settings.stream, settings.durable);
    const messages = await consumer.consume({
      max_messages: this.prefetch(),
      // End the iterator if the durable or stream disappears, so the supervisor recreates it.
      abort_on_missing_resource: true,
    });
    this.messages = messages;
    // Stopped while consumption was starting: close without awaiting, since close() settles only
    // once the iterator has been drained, which the loop below does.
    if (this.isStopping()) void messages.close();
    if (this.parts.mode.kind === 'batch') {
      // Kept after the iterator ends, so that batches still running when the subscription stops
      // are acknowledged as they finish; the next consumption or a rewind replaces it.
      if (this.isCumulative()) this.frontier = new AckFrontier();
      await this.consumeBatches(messages, this.parts.mode, this.frontier);
      return this.rewindRequest;
    }
    for await (const message of messages) {
      if (this.isStopping()) {
        // Pulled but not started: hand it back now rather than after the ack wait.
        message.nak();
        continue;
      }
      await this.slots.acquire();
      if (this.isStopping()) {
        this.slots.release();
        message.nak();
        continue;
      }
      void this.process(message).finally(() => {
        this.slots.release();
      });
    }
    return undefined;
  }

  /**
   * Cumulative acknowledgement: returns the durable's delivery sequence once none of its events
   * awaits acknowledgement, rewinding it when some still do. A cumulative acknowledgement covers
   * every earlier event, so one delivered to an earlier subscriber (a crashed process) and not
   * handled would otherwise be covered by the first acknowledgement of this one, and lost.
   */
  private async settledDeliveries(): Promise<number> {
    const { settings, client } = this.parts;
    for (let check = 1; ; check++) {
      const info = await (await client.consumers.get(settings.stream, settings.durable)).info();
      if (info.num_ack_pending === 0 || this.isStopping()) return info.delivered.consumer_seq;
      if (check >= UNACKNOWLEDGED_CHECKS) {
        await this.parts.rewind(`${info.num_ack_pending} events awaited acknowledgement`);
        return 0;
      }
      await this.stopSignal.wait(UNACKNOWLEDGED_CHECK_INTERVAL_MS);
    }
  }

  /**
   * Batch mode: decoded messages gather in a batch, which is handed out when it is full or when
   * the messages that have arrived so far are all in it (the next macrotask), each batch holding
   * one of `concurrency` slots while its handler runs. With cumulative acknowledgement each batch
   * also takes its place in `frontier`, skipped messages (filtered, undecodable) included, so that
   * acknowledging a later batch settles them.
   */
  private async consumeBatches(
    messages: ConsumerMessages,
    mode: Extract<HandlingMode<T>, { kind: 'batch' }>,
    frontier: AckFrontier<JsMsg> | undefined,
  ): Promise<void> {
    let batch: NatsDelivery<T>[] = [];
    let received = 0;
    let last: JsMsg | undefined;
    let flushScheduled = false;
    /** Acknowledging cumulatively, the undecodable messages among those `received`. */
    let undecodable: Undecodable[] | undefined = frontier === undefined ? undefined : [];
    /**
     * Acknowledging cumulatively, every message `received` (skipped ones included, which the
     * batch's acknowledgement settles): those whose ack timers its handler's progress resets.
     * (Acknowledged each, the skipped ones are settled already: the batch's own are reset.)
     */
    let pulled: JsMsg[] = [];
    /** True once this consumption should hand nothing more out: stopping, or rewinding. */
    const ending = (): boolean => this.isStopping() || this.frontier !== frontier;
    const dispatch = (): void => {
      flushScheduled = false;
      const taken = batch;
      const deliveries = received;
      const skipped = undecodable;
      const covered = pulled;
      batch = [];
      received = 0;
      pulled = [];
      if (undecodable !== undefined) undecodable = [];
      if (deliveries === 0 || last === undefined || (frontier !== undefined && ending())) return;
      const position = frontier?.add(deliveries, last);
      if (position !== undefined && skipped !== undefined && skipped.length > 0) {
        this.uncounted.push({
          through: position.through,
          count: () => {
            for (const { facts, error, headers } of skipped) {
              this.counters.recordPoison(facts, error, headers);
            }
          },
        });
      }
      if (taken.length === 0) {
        if (frontier !== undefined && position !== undefined) this.acknowledge(frontier, position);
        return;
      }
      void this.slots.acquire().then(() => {
        if (ending()) {
          // Handed back: now (each) or by the rewind or next start (cumulative).
          if (frontier === undefined) for (const { message } of taken) message.nak();
          this.slots.release();
          return;
        }
        void this.processBatch(mode.handler, taken, frontier, position, covered).finally(() => {
          this.slots.release();
        });
      });
    };
    for await (const message of messages) {
      if (ending()) {
        if (frontier === undefined) message.nak();
        continue;
      }
      received++;
      last = message;
      if (frontier !== undefined) pulled.push(message);
      const prepared = this.prepare(message, undecodable);
      if (prepared !== undefined) batch.push(prepared);
      if (batch.length >= mode.maxBatchSize) dispatch();
      else if (!flushScheduled) {
        flushScheduled = true;
        setImmediate(dispatch);
      }
    }
    dispatch();
  }

  /**
   * Decodes one message; returns undefined when a client-side filter skips it or it cannot be
   * decoded, after settling it at once (acknowledged each, so not when acknowledging
   * cumulatively: the acknowledgement of a later batch covers it). An undecodable one is counted
   * at once, or, acknowledging cumulatively, added to `undecodable`, counted once acknowledged
   * (a rewind before that brings it again).
   */
  private prepare(
    message: JsMsg,
    undecodable: Undecodable[] | undefined,
  ): NatsDelivery<T> | undefined {
    const { codec, clientFilter } = this.parts;
    if (clientFilter.length > 0 && !matchesAnySubject(clientFilter, message.subject)) {
      if (undecodable === undefined) message.ack();
      return undefined;
    }
    let event: T;
    try {
      event = codec.decode(message.data);
    } catch (error) {
      const headers = headersOf(message);
      const facts = {
        subject: message.subject,
        eventId: eventIdOf(headers, message),
        streamSequence: message.info.streamSequence,
      };
      if (undecodable === undefined) {
        message.term();
        this.counters.recordPoison(facts, error, headers);
      } else undecodable.push({ facts, error, headers });
      return undefined;
    }
    return new NatsDelivery(message, event, this.earlier);
  }

  /**
   * Runs the batch handler and settles the batch by its outcome. Never throws. While the handler
   * says it is working on the batch, the ack timers of its messages (acknowledging cumulatively,
   * of `covered`, which its acknowledgement settles) start again on the server, unless a rewind
   * has replaced the consumption meanwhile (its events come again anyway).
   */
  private async processBatch(
    handler: BatchHandler<T>,
    batch: readonly NatsDelivery<T>[],
    frontier: AckFrontier<JsMsg> | undefined,
    position: FrontierBatch<JsMsg> | undefined,
    covered: readonly JsMsg[],
  ): Promise<void> {
    const { settings } = this.parts;
    const working = (): void => {
      if (frontier === undefined) for (const { message } of batch) message.working();
      else if (this.frontier === frontier) for (const message of covered) message.working();
    };
    const outcome: HandlerOutcome = await runBatchHandler(settings, handler, batch, working);
    if (frontier !== undefined && position !== undefined) {
      this.settleCumulatively(outcome, batch, frontier, position);
      return;
    }
    if (outcome.kind === 'handled') {
      // The common case, without reading each message's delivery count.
      for (const delivered of batch) delivered.message.ack();
      if (this.failures.size > 0) {
        for (const delivered of batch) this.failures.forget(delivered.streamSequence);
      }
      this.counters.recordAcked(batch.length);
      return;
    }
    for (const delivered of batch) {
      const attempt = this.failures.attempt(delivered.streamSequence);
      const disposition = dispositionFor(settings, outcome, attempt, delivered.deliveryCount);
      this.failures.settled(delivered.streamSequence, attempt, disposition);
      settle(delivered.message, disposition);
      this.counters.record(disposition, outcome, delivered, 1, attempt);
    }
  }

  /**
   * Cumulative acknowledgement: a handled batch (or one given up on after `maxDeliver`) takes the
   * acknowledgement point forward; any other outcome rewinds the durable, after the back-off.
   */
  private settleCumulatively(
    outcome: HandlerOutcome,
    batch: readonly NatsDelivery<T>[],
    frontier: AckFrontier<JsMsg>,
    position: FrontierBatch<JsMsg>,
  ): void {
    // Rewound meanwhile: these events come again, whatever this run made of them.
    if (this.frontier !== frontier) return;
    if (outcome.kind === 'handled') {
      this.uncounted.push({
        through: position.through,
        count: () => {
          this.counters.recordAcked(batch.length);
        },
      });
    } else {
      let deliveryCount = 0;
      for (const delivered of batch) {
        deliveryCount = Math.max(deliveryCount, delivered.deliveryCount);
      }
      const disposition = dispositionFor(this.parts.settings, outcome, deliveryCount);
      const first = batch[0];
      if (disposition.kind === 'drop') {
        this.uncounted.push({
          through: position.through,
          count: () => {
            if (first !== undefined)
              this.counters.record(disposition, outcome, first, batch.length);
          },
        });
      } else {
        if (first !== undefined) this.counters.record(disposition, outcome, first, batch.length);
        for (const delivered of batch) {
          this.earlier.set(delivered.streamSequence, delivered.deliveryCount);
        }
        this.requestRewind(
          outcome.kind === 'failed' ? 'a batch handler failed' : 'a batch overran the ack wait',
          disposition.kind === 'retry' ? disposition.delayMs : 0,
        );
        return;
      }
    }
    this.acknowledge(frontier, position);
  }

  /**
   * Cumulative acknowledgement: marks `position` finished and acknowledges the new
   * acknowledgement point, if it moved, once sure that no delivery before it went missing.
   */
  private acknowledge(frontier: AckFrontier<JsMsg>, position: FrontierBatch<JsMsg>): void {
    const point = frontier.finish(position);
    if (point === undefined) return;
    const info = point.last.info;
    if (info.deliverySequence !== this.deliveredBefore + point.through) {
      // A delivery never reached this client (lost with a connection): acknowledging past it
      // would lose it.
      this.requestRewind(
        `deliveries went missing: delivery ${info.deliverySequence} was the ${point.through}th to arrive after delivery ${this.deliveredBefore}`,
        0,
      );
      return;
    }
    point.last.ack();
    const counting = this.uncounted;
    this.uncounted = [];
    for (const entry of counting) {
      if (entry.through <= point.through) entry.count();
      else this.uncounted.push(entry);
    }
    if (this.earlier.size > 0) {
      for (const sequence of this.earlier.keys()) {
        if (sequence <= info.streamSequence) this.earlier.delete(sequence);
      }
    }
  }

  /** Cumulative acknowledgement: ends this consumption so the supervisor rewinds the durable. */
  private requestRewind(reason: string, delayMs: number): void {
    if (this.rewindRequest !== undefined || this.isStopping()) return;
    this.rewindRequest = { reason, delayMs };
    this.frontier = undefined;
    this.uncounted = [];
    void this.messages?.close();
  }

  /** Decodes, runs the handler and settles one message. Never throws. */
  private async process(message: JsMsg): Promise<void> {
    const { settings, codec, mode, clientFilter } = this.parts;
    if (mode.kind !== 'each') return;
    const handler = mode.handler;
    const headers = headersOf(message);
    const facts = {
      subject: message.subject,
      eventId: eventIdOf(headers, message),
      deliveryCount: message.info.deliveryCount,
      streamSequence: message.info.streamSequence,
    };
    if (!matchesAnySubject(clientFilter, message.subject)) {
      message.ack();
      return;
    }
    let event: T;
    try {
      event = codec.decode(message.data);
    } catch (error) {
      message.term();
      this.counters.recordPoison(facts, error, headers);
      return;
    }
    const delivered: DeliveredEvent<T> = {
      ...facts,
      event,
      storedAt: message.time,
      headers,
    };
    const outcome = await runHandler(settings, handler, delivered);
    const attempt = this.failures.attempt(facts.streamSequence);
    const disposition = dispositionFor(settings, outcome, attempt, facts.deliveryCount);
    this.failures.settled(facts.streamSequence, attempt, disposition);
    settle(message, disposition);
    this.counters.record(disposition, outcome, facts, 1, attempt);
  }
}

function settle(message: JsMsg, disposition: Disposition): void {
  switch (disposition.kind) {
    case 'ack':
      message.ack();
      break;
    case 'retry':
      message.nak(disposition.delayMs);
      break;
    case 'drop':
      message.term();
      break;
    case 'await-redelivery':
      break;
  }
}
