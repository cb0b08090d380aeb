/**
 * Starts the Assignment service on a runtime from `bootstrap()`: declares its streams, opens its
 * repositories, loads the configuration (before serving: a replica that cannot read its storage
 * throws here and never reports SERVING), registers the gRPC service and the event consumers, and
 * registers each shutdown step as it goes. The single-process dev launcher calls this too, with a
 * shared in-process bus.
 */
import { BufferedPublisher } from '../../platform/src/events/buffered-publisher';
import { openEventSpool } from '../../platform/src/events/event-spool';
import type { ServiceRuntime } from '../../platform/src/bootstrap';
import { implement } from '../../platform/src/grpc/handlers';
import { observePublisher } from '../../platform/src/telemetry/publisher-metrics';
import type { AssignmentContext } from './assignment-context';
import type { AssignmentConfig } from './config';
import { ConfigurationWrites, leftUnannounced } from './configuration-writes';
import { followAllocationUpdates } from './events/allocation-updates';
import { ConfigurationChanges, followConfigurationChanges } from './events/config-changes';
import { ExposureLog } from './events/exposure-log';
import { ALLOCATION_STREAM, CONFIG_STREAM, exposureStream } from './events/streams';
import { ADMIN_METHODS, assignmentHandlers } from './handlers';
import {
  ALLOCATION_REQUEST_MAX_BYTES,
  CONCLUDE_REQUEST_MAX_BYTES,
  EXPERIMENT_REQUEST_MAX_BYTES,
  HOLDOUT_REQUEST_MAX_BYTES,
  LAYER_REQUEST_MAX_BYTES,
  SMALL_REQUEST_MAX_BYTES,
} from './handlers/limits';
import { advanceSchedule } from './handlers/experiments';
import { recoverWrite } from './handlers/recovery';
import { resolveServiceDefinition } from './handlers/resolve-response';
import { maxPageBytes } from '../../platform/src/grpc/pages';
import { withTimeout } from '../../platform/src/timeout';
import { LiveConfiguration } from './live-configuration';
import { ResolveTokens } from './resolve-token';
import { ConfigurationStore } from './store/configuration-store';
import { ExposureLedger } from './store/exposure-ledger';
import { RequestResults } from './store/request-results';
import { StickyAssignments } from './store/sticky-assignments';

/**
 * How long an admin write may hold the configuration-write lease before another replica may
 * take it over (its holder died), and how long a write waits for it before answering ABORTED.
 */
const WRITE_LEASE_TTL_MS = 30_000;
const WRITE_LEASE_WAIT_MS = 10_000;
/**
 * How long a shutdown waits, after the last call, for buffered exposures and configuration
 * changes to be published: within the kit's margin after the gRPC drain, leaving time to close
 * storage. What is still buffered then (NATS unreachable throughout) is kept in storage for a
 * running replica to queue again (see `openEventSpool`).
 */
const EXPOSURE_FLUSH_MS = 3_000;
const CONFIG_CHANGE_FLUSH_MS = 1_000;
/** How long a shutdown waits for a configuration check, schedule step or sticky sweep under way. */
const BACKGROUND_STOP_MS = 2_000;
/** How long exposures kept at a shutdown wait for a replica to publish them. */
const EXPOSURE_SPOOL_TTL_MS = 24 * 60 * 60 * 1000;
/** How often a running replica looks for exposures another one kept at its shutdown. */
const SPOOL_RESTORE_INTERVAL_MS = 60_000;
/** How often a running replica frees what is left of deleted experiments' sticky assignments. */
const STICKY_SWEEP_INTERVAL_MS = 60_000;

/**
 * The most bytes a Resolve request may take (see `GrpcServer.add`), as the contract says. A valid
 * Resolve takes ~100 KiB at most (64 KiB of attributes, 256 surfaces): larger ones are refused
 * before their decoding, which any caller could make cost a second.
 */
export const RESOLVE_MAX_REQUEST_BYTES = 1024 * 1024;

/**
 * The most bytes a request of each method may take, refused before it is decoded (derived in
 * `handlers/limits.ts`). Every method is listed, so that a new one is given its limit; undefined
 * is the server's message limit (`TANDEM_GRPC_MAX_MESSAGE_BYTES`) alone.
 */
export const ASSIGNMENT_REQUEST_LIMITS: {
  readonly [M in keyof typeof resolveServiceDefinition]: number | undefined;
} = {
  createLayer: LAYER_REQUEST_MAX_BYTES,
  getLayer: SMALL_REQUEST_MAX_BYTES,
  listLayers: SMALL_REQUEST_MAX_BYTES,
  updateLayer: LAYER_REQUEST_MAX_BYTES,
  deleteLayer: SMALL_REQUEST_MAX_BYTES,
  createExperiment: EXPERIMENT_REQUEST_MAX_BYTES,
  getExperiment: SMALL_REQUEST_MAX_BYTES,
  listExperiments: SMALL_REQUEST_MAX_BYTES,
  updateExperiment: EXPERIMENT_REQUEST_MAX_BYTES,
  deleteExperiment: SMALL_REQUEST_MAX_BYTES,
  startExperiment: SMALL_REQUEST_MAX_BYTES,
  stopExperiment: SMALL_REQUEST_MAX_BYTES,
  concludeExperiment: CONCLUDE_REQUEST_MAX_BYTES,
  createHoldout: HOLDOUT_REQUEST_MAX_BYTES,
  getHoldout: SMALL_REQUEST_MAX_BYTES,
  listHoldouts: SMALL_REQUEST_MAX_BYTES,
  updateHoldout: HOLDOUT_REQUEST_MAX_BYTES,
  deleteHoldout: SMALL_REQUEST_MAX_BYTES,
  resolve: RESOLVE_MAX_REQUEST_BYTES,
  // A resolve token records every in-experiment assignment of its Resolve, as many as the
  // experiments running on the resolved surfaces, which nothing bounds: a Resolve's response,
  // token included, may take the whole message limit, and so may the Apply of its token.
  apply: undefined,
  getAllocation: SMALL_REQUEST_MAX_BYTES,
  updateAllocation: ALLOCATION_REQUEST_MAX_BYTES,
};

/** A started Assignment service. */
export interface RunningAssignment {
  /** What the handlers share (for tests and the bench seeder). */
  readonly context: AssignmentContext;
  /** Exposures published, buffered and dropped so far. */
  exposureStats(): ReturnType<BufferedPublisher['stats']>;
  /**
   * Stops serving (drains the gRPC server), then consumers and polling, then flushes buffered
   * events (also a shutdown step).
   */
  stop(): Promise<void>;
}

export async function startAssignment(
  runtime: ServiceRuntime,
  config: AssignmentConfig,
): Promise<RunningAssignment> {
  const { bus, logger } = runtime;
  await bus.declareStream(exposureStream(config.exposureDuplicateWindowMs));
  await bus.declareStream(ALLOCATION_STREAM);
  await bus.declareStream(CONFIG_STREAM);

  const store = await ConfigurationStore.open(runtime.store, config.idempotencyTtlMs);
  const configuration = new LiveConfiguration(store, logger);
  await configuration.load();
  const tokenSecret = config.tokenSecret ?? (await store.tokenSecret());

  const exposurePublisher = new BufferedPublisher(bus, {
    capacity: config.exposureBufferCapacity,
    maxInFlight: 128,
    logger,
    gate: await ExposureLedger.open(runtime.store),
    // What a shutdown could not publish (NATS unreachable) is kept, and queued again by a running
    // replica; a token may be applied for a day, so an exposure is kept for as long.
    spool: await openEventSpool(runtime.store, 'exposures', EXPOSURE_SPOOL_TTL_MS),
  });
  const configPublisher = new BufferedPublisher(bus, { capacity: 1000, logger });
  // Kept to the end: the last export at shutdown reads what closing the publishers dropped.
  observePublisher('exposures', exposurePublisher);
  observePublisher('config-changes', configPublisher);
  // Every write runs under the write lease, one replica at a time.
  const requestResults = await RequestResults.open(runtime.store, config.idempotencyTtlMs, {
    serialized: true,
  });
  const context: AssignmentContext = {
    configuration,
    store,
    changes: new ConfigurationChanges(configuration, configPublisher, config.replicaId),
    writes: new ConfigurationWrites(
      requestResults,
      {
        lease: (waitMs = WRITE_LEASE_WAIT_MS) =>
          store.acquireWriteLease(config.replicaId, { ttlMs: WRITE_LEASE_TTL_MS, waitMs }),
        refresh: (everything) => configuration.refresh(everything),
        unsettled: (failure) => leftUnannounced(configuration, failure),
        abandoned: () => store.writeLeaseAbandoned(),
      },
      () => configuration.hasUnannouncedChange(),
      (method, request, stamp) => recoverWrite(context, method, request, stamp),
    ),
    sticky: await StickyAssignments.open(
      runtime.store,
      config.stickyCacheCapacity,
      config.stickyLookupTimeoutMs,
    ),
    exposures: new ExposureLog(exposurePublisher, config.exposureMemoryCapacity),
    tokens: new ResolveTokens(tokenSecret),
    logger,
    defaultStickyTtlMs: config.stickyTtlMs,
    maxPageBytes: maxPageBytes(config.platform.grpc.maxMessageBytes),
  };

  // The generated definition with a Resolve serializer that reuses pre-encoded assignments.
  runtime.server.add(
    resolveServiceDefinition,
    implement(resolveServiceDefinition, assignmentHandlers(context), {
      logger,
      auth: runtime.auth,
      adminMethods: [...ADMIN_METHODS],
      maxResponseBytes: config.platform.grpc.maxMessageBytes,
    }),
    // Larger requests are refused before their decoding, which any caller (admin methods check
    // the token only after it) could make cost up to a second for 16 MiB of nested Structs.
    ASSIGNMENT_REQUEST_LIMITS,
  );

  const subscriptions = [
    await followAllocationUpdates(bus, context),
    await followConfigurationChanges(bus, configuration, config.replicaId, logger),
  ];
  // Before each check: a write lease left past its time (its holder died, or its write stored a
  // change it could not announce) is taken over, which reloads and announces what that holder
  // stored without waiting for the next write (and the check then finds it done); after it, the
  // schedule moves on.
  configuration.startPolling(
    config.reloadIntervalMs,
    () => advanceSchedule(context, Date.now(), () => configuration.isPolling()),
    async () => {
      try {
        if (await context.writes.takeOverAbandoned()) {
          logger.info({}, 'took the configuration-write lease its holder left past its time');
        }
      } catch (error) {
        logger.warn(
          { err: error },
          'could not take over the configuration-write lease its holder left; trying again next check',
        );
      }
    },
  );
  logger.info(
    {
      configVersion: configuration.current().version,
      experiments: configuration.current().experiments.size,
    },
    'assignment configuration loaded',
  );

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      // Serving ends first (NOT_SERVING, in-flight calls finished): registered after the kit's
      // gRPC server step, this step runs before it, and closing the publishers while calls were
      // still answered would drop every exposure they applied, each answered as dropped.
      await runtime.server.shutdown(config.platform.grpc.shutdownTimeoutMs);
      clearInterval(spoolTimer);
      clearInterval(stickySweepTimer);
      requestResults.close();
      // Exposures come from calls only, all answered by now: they are flushed (or kept) at once,
      // whatever else this waits for.
      const exposuresClosed = exposurePublisher.close(EXPOSURE_FLUSH_MS);
      // A check, schedule step or sweep under way (one may hold the write lease) ends before
      // storage closes, within a bound: one stuck on storage must not keep the rest from
      // closing within the kit's margin. A sweep left midway is taken up by the next one.
      await withTimeout(
        Promise.all([configuration.stopPolling(), sweeping]),
        BACKGROUND_STOP_MS,
        () => new Error('timed out'),
      ).catch((error: unknown) => {
        logger.warn(
          { err: error },
          'a configuration check, schedule step or sticky sweep was still running at shutdown',
        );
      });
      await Promise.all(subscriptions.map((s) => s.stop()));
      await Promise.all([exposuresClosed, configPublisher.close(CONFIG_CHANGE_FLUSH_MS)]);
    })();
    return stopping;
  };
  runtime.shutdown.add('assignment consumers and exposure publisher', stop);
  // Once the publisher is sure to be closed (what it queued is then spilled again), at start and
  // every minute after: a replica stopped during a rolling update spills after its successors
  // have started, and one of them takes what it kept (while NATS takes events).
  const restoreSpooled = (): void => {
    exposurePublisher.restoreSpooled().catch((error: unknown) => {
      logger.warn(
        { err: error },
        'could not queue the exposures a stopped replica kept; trying again',
      );
    });
  };
  restoreSpooled();
  const spoolTimer = setInterval(restoreSpooled, SPOOL_RESTORE_INTERVAL_MS);
  spoolTimer.unref();
  // A deleted experiment's sticky assignments stored after its deletion freed them (an Apply
  // under way), or left by a failed freeing (see `StickyAssignments.release`).
  let sweeping: Promise<void> | undefined;
  const stickySweepTimer = setInterval(() => {
    // One sweep at a time: freeing a large experiment's assignments can outlast the interval.
    sweeping ??= context.sticky
      .sweepReleased(Date.now())
      .then(
        () => undefined,
        (error: unknown) => {
          logger.warn(
            { err: error },
            "could not free deleted experiments' sticky assignments; trying again",
          );
        },
      )
      .finally(() => (sweeping = undefined));
  }, STICKY_SWEEP_INTERVAL_MS);
  stickySweepTimer.unref();
  return { context, exposureStats: () => exposurePublisher.stats(), stop };
}
