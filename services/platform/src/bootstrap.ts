/**
 * The start-up every service shares, in the order DESIGN.md gives: config → logger → event bus →
 * storage → gRPC server (health NOT_SERVING). The gRPC server object is made first, unbound: it
 * reads the TLS files and the reflection descriptor set, so a bad path fails before anything is
 * opened. The service then registers its handlers and
 * consumers, loads what it serves from memory, and calls `serve()`: bind (checking the error),
 * SERVING. A service that names its gRPC services does not exit when MongoDB is unreachable at
 * start-up: it binds early, reports NOT_SERVING and waits for storage (`openStoreOrWait`). Nor
 * does any service exit when NATS is unreachable at start-up: the bus keeps connecting in the
 * background (see `connectNatsBus`) and the service serves meanwhile, SERVING included, since
 * its answers do not wait for events (publishes are buffered or fail with UNAVAILABLE,
 * consumers start once NATS answers). Each resource registers its shutdown step as it is
 * created, so shutdown is the same list in reverse: health NOT_SERVING → drain in-flight calls →
 * stop consumers and drain NATS → close storage.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { ChannelCredentials, ServiceDefinition } from '@grpc/grpc-js';
import type { PlatformConfig } from './config';
import { UnavailableError } from './errors';
import type { EventBus } from './events/bus';
import { createInProcessBus } from './events/in-process-bus';
import { connectNatsBus } from './events/nats-bus';
import {
  bearerTokenAuth,
  channelCredentials,
  serverCredentials,
  type AdminAuth,
} from './grpc/auth';
import { GrpcServer } from './grpc/server';
import { setHandlerSlice } from './grpc/handlers';
import { Shutdown } from './lifecycle';
import { createLogger, type Logger } from './logging';
import type { DocumentStore } from './storage/collection';
import { openStore } from './storage/open-store';

/** What a service is given to run on. */
export interface ServiceRuntime {
  readonly config: PlatformConfig;
  readonly logger: Logger;
  readonly bus: EventBus;
  readonly store: DocumentStore;
  readonly server: GrpcServer;
  /** The admin-token check for admin RPCs; undefined when no token is configured. */
  readonly auth: AdminAuth | undefined;
  /** Credentials for clients of peer services (TLS when configured). */
  readonly clientCredentials: ChannelCredentials;
  readonly shutdown: Shutdown;
  /**
   * How long a shutdown may take: the gRPC server's drain timeout, plus time for the steps after
   * it (flushing events, checkpoints, closing storage).
   */
  readonly shutdownDeadlineMs: number;
  /** Binds the gRPC server (unless it is bound already), reports SERVING, returns the port. */
  serve(): Promise<number>;
}

export interface BootstrapOptions {
  /** A bus shared by several services in one process (dev mode); not closed by this service. */
  readonly sharedBus?: EventBus;
  readonly logger?: Logger;
  /**
   * The services the process will host. When they are given and MongoDB cannot be reached at
   * start-up, the process does not exit: the gRPC server binds with health NOT_SERVING, calls to
   * these services get UNAVAILABLE, and the connection is retried with back-off until it succeeds
   * (start-up then goes on) or a signal shuts the process down. Without them, an unreachable
   * store fails start-up.
   */
  readonly services?: readonly ServiceDefinition[];
  /**
   * Flushes and stops telemetry: registered as the last shutdown step before anything is opened,
   * so a signal at any point of start-up (while waiting for storage too) still exports what was
   * recorded.
   */
  readonly flushTelemetry?: () => Promise<void>;
}

/** Margin after the gRPC drain timeout for the shutdown steps that follow it. */
const SHUTDOWN_MARGIN_MS = 5_000;
/** Back-off between attempts to reach storage at start-up: doubling from the first to the cap. */
const STORAGE_RETRY_FIRST_MS = 1_000;
const STORAGE_RETRY_CAP_MS = 30_000;

/** Connects the service's dependencies and creates its (not yet serving) gRPC server. */
export async function bootstrap(
  config: PlatformConfig,
  options: BootstrapOptions = {},
): Promise<ServiceRuntime> {
  const logger =
    options.logger ?? createLogger({ service: config.service, level: config.logLevel });
  // Open admin RPCs are a dev default an operator must not deploy by mistake: whoever reaches the
  // port may then create, change, start and delete anything, and nothing else says so.
  if (config.adminToken === undefined) {
    logger.warn(
      'TANDEM_ADMIN_TOKEN is not set: admin RPCs (creating, changing, starting and deleting configuration) are open to any caller',
    );
  }
  const shutdown = new Shutdown(logger);
  if (options.flushTelemetry) shutdown.addFinal('telemetry', options.flushTelemetry);
  const shutdownDeadlineMs = config.grpc.shutdownTimeoutMs + SHUTDOWN_MARGIN_MS;
  // A service process handles signals from here on: connecting to NATS and the first attempt to
  // reach storage (the driver's whole server-selection timeout) are then ended by a signal
  // through the shutdown, which closes what is open, instead of by Node's default action.
  if ((options.services ?? []).length > 0) shutdown.onSignals(shutdownDeadlineMs);

  // What can fail on configuration alone (TLS files, the reflection descriptor set) comes before
  // anything is opened, so such a failure never exits from under an open store.
  setHandlerSlice(config.grpc.handlerSliceUs / 1000);
  const server = new GrpcServer({
    logger,
    credentials: serverCredentials(config.tls),
    maxMessageBytes: config.grpc.maxMessageBytes,
    keepaliveTimeMs: config.grpc.keepaliveTimeMs,
    keepaliveTimeoutMs: config.grpc.keepaliveTimeoutMs,
  });
  const clientCredentials = channelCredentials(config.tls);

  const { bus, store } = await unlessShutDown(shutdown, async () => {
    const connected = options.sharedBus ?? (await connectBus(config, logger));
    if (!options.sharedBus) shutdown.add('event bus', () => connected.close());
    const opened = await openStoreOrWait(config, options.services ?? [], {
      server,
      shutdown,
      logger,
    });
    return { bus: connected, store: opened };
  });
  shutdown.add('storage', () => store.close());
  logger.info({ storage: store.kind, bus: bus.kind }, 'dependencies connected');
  // After storage, so it runs before storage closes (when the server was bound while waiting
  // for storage, the step registered then finds this one done).
  shutdown.add('gRPC server', () => server.shutdown(config.grpc.shutdownTimeoutMs));

  return {
    config,
    logger,
    bus,
    store,
    server,
    auth: bearerTokenAuth(config.adminToken),
    clientCredentials,
    shutdown,
    shutdownDeadlineMs,
    async serve() {
      const port = server.boundPort ?? (await server.listen(config.grpc.host, config.grpc.port));
      server.setServing(true);
      return port;
    },
  };
}

interface Waiting {
  readonly server: GrpcServer;
  readonly shutdown: Shutdown;
  readonly logger: Logger;
}

/**
 * Opens the service's store. When MongoDB is unreachable and the process names its `services`,
 * binds the server first (NOT_SERVING; calls get UNAVAILABLE) and retries until the store opens.
 * Once a signal has started the shutdown, the returned promise never settles: the shutdown closes
 * what is open and ends the process.
 */
async function openStoreOrWait(
  config: PlatformConfig,
  services: readonly ServiceDefinition[],
  { server, shutdown, logger }: Waiting,
): Promise<DocumentStore> {
  /**
   * One attempt: the store, or why storage cannot be reached when the process waits for it. A
   * signal during the attempt ends start-up there: the shutdown ends the process, and closes a
   * store the attempt opened.
   */
  const attempt = async (): Promise<DocumentStore | UnavailableError> => {
    let store: DocumentStore;
    try {
      store = await openStore({
        service: config.service,
        mongodbUri: config.mongodbUri,
        dataDir: config.dataDir,
      });
    } catch (error) {
      if (shutdown.started) return abandoned();
      if (error instanceof UnavailableError && services.length > 0) return error;
      throw error;
    }
    if (!shutdown.started) return store;
    shutdown.add('storage', () => store.close());
    return abandoned();
  };
  let outcome = await attempt();
  if (!(outcome instanceof UnavailableError)) return outcome;
  let retryAt = Date.now();
  for (const definition of services) {
    server.reserve(
      definition,
      () =>
        new UnavailableError(
          `${config.service} is not serving yet: its storage cannot be reached (retrying)`,
          {
            reason: 'STORAGE_UNAVAILABLE',
            retryDelayMs: Math.max(STORAGE_RETRY_FIRST_MS, retryAt - Date.now()),
          },
        ),
    );
  }
  await server.listen(config.grpc.host, config.grpc.port);
  shutdown.add('gRPC server', () => server.shutdown(config.grpc.shutdownTimeoutMs));
  for (
    let delayMs = STORAGE_RETRY_FIRST_MS;
    ;
    delayMs = Math.min(delayMs * 2, STORAGE_RETRY_CAP_MS)
  ) {
    logger.warn(
      { err: outcome, retryInMs: delayMs },
      'storage unreachable: NOT_SERVING until it answers',
    );
    retryAt = Date.now() + delayMs;
    await sleep(delayMs, undefined, { ref: false });
    if (shutdown.started) return abandoned();
    outcome = await attempt();
    if (!(outcome instanceof UnavailableError)) return outcome;
  }
}

/**
 * `work`, unless a signal started the shutdown first: then a failure of `work` (NATS refusing a
 * connection the shutdown closed, the port taken while waiting) is the shutdown's to report, and
 * start-up never goes on (the shutdown ends the process with its own exit code).
 */
async function unlessShutDown<T>(shutdown: Shutdown, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    if (shutdown.started) return abandoned();
    throw error;
  }
}

/** A start-up overtaken by the shutdown: it never goes on, the shutdown ends the process. */
function abandoned(): Promise<never> {
  return new Promise<never>(() => undefined);
}

/**
 * NATS when configured, else the in-process bus. An unreachable NATS does not fail start-up: the
 * bus connects in the background (health stays independent of it: taking every replica out of
 * service during a NATS outage is what "degraded, never down" rules out). A URL that cannot be
 * used, a server refusing the credentials, or one without JetStream still fails start-up.
 */
async function connectBus(config: PlatformConfig, logger: Logger): Promise<EventBus> {
  if (config.natsUrl === undefined) {
    logger.warn('NATS_URL is not set: events stay inside this process (in-process bus)');
    return createInProcessBus({ logger });
  }
  return connectNatsBus({
    servers: config.natsUrl,
    name: `tandem-${config.service}`,
    logger,
    whenUnreachable: 'connect-in-background',
  });
}
