/**
 * The start-up every service shares, in the order DESIGN.md gives: config → logger → event bus →
 * storage → gRPC server (health NOT_SERVING). The gRPC server object is made first, unbound: it
 * reads the TLS files and the reflection descriptor set, so a bad path fails before anything is
 * opened. The service then registers its handlers and
 * consumers, loads what it serves from memory, and calls `serve()`: bind (checking the error),
 * SERVING. Each resource registers its shutdown step as it is created, so shutdown is the same
 * list in reverse: health NOT_SERVING → drain in-flight calls → stop consumers and drain NATS →
 * close storage.
 */
import type { ChannelCredentials } from '@grpc/grpc-js';
import type { PlatformConfig } from './config';
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
  /** Binds the gRPC server, reports SERVING and returns the bound port. */
  serve(): Promise<number>;
}

export interface BootstrapOptions {
  /** A bus shared by several services in one process (dev mode); not closed by this service. */
  readonly sharedBus?: EventBus;
  readonly logger?: Logger;
}

/** Connects the service's dependencies and creates its (not yet serving) gRPC server. */
export async function bootstrap(
  config: PlatformConfig,
  options: BootstrapOptions = {},
): Promise<ServiceRuntime> {
  const logger =
    options.logger ?? createLogger({ service: config.service, level: config.logLevel });
  const shutdown = new Shutdown(logger);

  // What can fail on configuration alone (TLS files, the reflection descriptor set) comes before
  // anything is opened, so such a failure never exits from under an open store.
  const server = new GrpcServer({
    logger,
    credentials: serverCredentials(config.tls),
    maxMessageBytes: config.grpc.maxMessageBytes,
    keepaliveTimeMs: config.grpc.keepaliveTimeMs,
    keepaliveTimeoutMs: config.grpc.keepaliveTimeoutMs,
  });
  const clientCredentials = channelCredentials(config.tls);

  const bus = options.sharedBus ?? (await connectBus(config, logger));
  if (!options.sharedBus) shutdown.add('event bus', () => bus.close());

  const store = await openStore({
    service: config.service,
    mongodbUri: config.mongodbUri,
    dataDir: config.dataDir,
  });
  shutdown.add('storage', () => store.close());
  logger.info({ storage: store.kind, bus: bus.kind }, 'dependencies connected');
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
    async serve() {
      const port = await server.listen(config.grpc.host, config.grpc.port);
      server.setServing(true);
      return port;
    },
  };
}

/** NATS when configured (failing fast when it cannot be reached), else the in-process bus. */
async function connectBus(config: PlatformConfig, logger: Logger): Promise<EventBus> {
  if (config.natsUrl === undefined) {
    logger.warn('NATS_URL is not set: events stay inside this process (in-process bus)');
    return createInProcessBus({ logger });
  }
  return connectNatsBus({ servers: config.natsUrl, name: `tandem-${config.service}`, logger });
}
