/**
 * Starts FeatureStore on a runtime from `bootstrap()`: opens its repositories, loads the registry
 * and every online view fully into memory before serving, registers the gRPC service, and starts
 * the loops that keep this replica in step with storage (row sync, registry reload, TTL sweep),
 * and resumes re-timings of records to a changed TTL that a stopped replica left unfinished.
 * `main.ts` calls it, and so does the single-process dev launcher (with a shared in-process bus).
 */
import type { ServiceRuntime } from '../../platform/src/bootstrap';
import { implement } from '../../platform/src/grpc/handlers';
import type { FeatureStoreConfig } from './config';
import { OUTCOME_STREAM } from '../../platform/src/events/streams';
import { CONFIG_STREAM, FeatureRegistry, REGISTRY_WRITE_LEASE } from './feature-registry';
import { WriteLease } from '../../platform/src/storage/write-lease';
import { ExpiryRetiming } from './expiry-retiming';
import { featureStoreHandlers } from './handlers';
import {
  MAX_ENTITY_BYTES,
  MAX_ETAG_BYTES,
  MAX_FEATURE_VIEW_BYTES,
  MAX_NAME_BYTES,
} from './domain/registry';
import {
  fieldBytes,
  requestLimit,
  SCALAR_FIELD_BYTES,
  utf16UnitsBytes,
} from '../../platform/src/grpc/request-bytes';
import { MAX_REQUEST_ID_LENGTH } from './store/request-results';
import { maxPageBytes } from '../../platform/src/grpc/pages';
import { OnlineViews } from './online-views';
import { FeatureStoreServiceDefinition } from './online-response';
import { AggregationCheckpoints } from './store/aggregation-checkpoints';
import { observeAggregations } from './aggregation-metrics';
import { FeatureRowRepository } from './store/feature-rows';
import { openRegistryRepository } from './store/registry-repository';
import { RequestResults } from './store/request-results';

/** The outcome events streaming views aggregate; every service that reads them declares it alike. */
export const OUTCOME_SUBJECTS = OUTCOME_STREAM.subjects;

const EXPIRY_SWEEP_INTERVAL_MS = 60_000;

/*
 * Request limits (see `GrpcServer.add`): the most bytes a request of a method may take, refused
 * RESOURCE_EXHAUSTED (`REQUEST_TOO_LARGE`) before it is decoded. Each is `requestLimit` (twice,
 * at least 16 KiB) of what its largest valid request holds; the contract states them
 * (featurestore_service.proto).
 */

const REQUEST_ID_BYTES = utf16UnitsBytes(MAX_REQUEST_ID_LENGTH);
/** A page token: base64url JSON of the list, its entity filter and the last name (~200 bytes). */
const PAGE_TOKEN_BYTES = 1024;

/** ApplyEntity: an entity at its limits (see `MAX_ENTITY_BYTES`) and a request id. */
export const APPLY_ENTITY_MAX_REQUEST_BYTES = requestLimit(
  fieldBytes(MAX_ENTITY_BYTES) + fieldBytes(REQUEST_ID_BYTES),
);
/** ApplyFeatureView: a view at its limits (see `MAX_FEATURE_VIEW_BYTES`), request id, flag. */
export const APPLY_FEATURE_VIEW_MAX_REQUEST_BYTES = requestLimit(
  fieldBytes(MAX_FEATURE_VIEW_BYTES) + fieldBytes(REQUEST_ID_BYTES) + SCALAR_FIELD_BYTES,
);
/**
 * The reads and deletes of the registry (Get, List, Delete, GetAggregationStatus): a name, an
 * etag, a request id, a page size and token, an entity filter, all at once.
 */
export const REGISTRY_READ_MAX_REQUEST_BYTES = requestLimit(
  2 * fieldBytes(MAX_NAME_BYTES) +
    fieldBytes(MAX_ETAG_BYTES) +
    fieldBytes(REQUEST_ID_BYTES) +
    fieldBytes(PAGE_TOKEN_BYTES) +
    SCALAR_FIELD_BYTES,
);

/**
 * The most bytes a request of each method may take. Every method is listed, so that a new one is
 * given its limit; undefined is the server's message limit (`TANDEM_GRPC_MAX_MESSAGE_BYTES`) alone.
 */
export const FEATURE_STORE_REQUEST_LIMITS: {
  readonly [M in keyof typeof FeatureStoreServiceDefinition]: number | undefined;
} = {
  applyEntity: APPLY_ENTITY_MAX_REQUEST_BYTES,
  getEntity: REGISTRY_READ_MAX_REQUEST_BYTES,
  listEntities: REGISTRY_READ_MAX_REQUEST_BYTES,
  deleteEntity: REGISTRY_READ_MAX_REQUEST_BYTES,
  applyFeatureView: APPLY_FEATURE_VIEW_MAX_REQUEST_BYTES,
  getFeatureView: REGISTRY_READ_MAX_REQUEST_BYTES,
  listFeatureViews: REGISTRY_READ_MAX_REQUEST_BYTES,
  deleteFeatureView: REGISTRY_READ_MAX_REQUEST_BYTES,
  // Entity key columns are counted in rows (TANDEM_FEATURESTORE_MAX_ENTITY_ROWS), not bytes: one
  // column of 10,000 keys of 400 bytes (the longest a write stores) takes 4 MB, a read of views
  // of other entities a column each, and columns no requested view uses are ignored whatever
  // their length. A valid read may take the whole message limit.
  getOnlineFeatures: undefined,
  // A bulk write: 10,000 rows (TANDEM_FEATURESTORE_MAX_ROWS_PER_WRITE), each up to ~16 MiB.
  writeFeatures: undefined,
  getAggregationStatus: REGISTRY_READ_MAX_REQUEST_BYTES,
};

/**
 * Runs `run` every `intervalMs`, skipping the ticks while its last run is unsettled: storage that
 * hangs (a half-open connection) then holds one read, not one more per tick.
 */
function everyInterval(intervalMs: number, run: () => Promise<void>): NodeJS.Timeout {
  let running = false;
  return setInterval(() => {
    if (running) return;
    running = true;
    void run().finally(() => {
      running = false;
    });
  }, intervalMs);
}

export interface RunningFeatureStore {
  /**
   * Stops serving (the gRPC server drains), then the loops and aggregations (also registered as
   * a shutdown step).
   */
  stop(): Promise<void>;
}

export async function startFeatureStore(
  runtime: ServiceRuntime,
  config: FeatureStoreConfig,
): Promise<RunningFeatureStore> {
  const { logger, bus, store } = runtime;
  const registryRepository = await openRegistryRepository(store, config.idempotencyRetentionMs);
  const rows = await FeatureRowRepository.open(store, config.changeLogRetentionMs);
  const checkpoints = await AggregationCheckpoints.open(store);
  const requestResults = await RequestResults.open(store, config.idempotencyRetentionMs);

  await bus.declareStream({ ...OUTCOME_STREAM, name: config.outcomeStream });
  await bus.declareStream(CONFIG_STREAM).catch((error: unknown) => {
    logger.warn({ err: error }, 'config change stream not declared; changes are not announced');
  });

  const registry = new FeatureRegistry(
    registryRepository,
    bus,
    logger,
    config.replicaId,
    await WriteLease.open(store, REGISTRY_WRITE_LEASE, {
      what: 'the registry',
      reason: 'REGISTRY_WRITE_IN_PROGRESS',
    }),
    (view, registration) => rows.deleteView(view, registration),
  );
  await registry.reload();
  const views = new OnlineViews({ config, registry, rows, checkpoints, bus, logger });
  await views.load();
  const retiming = await ExpiryRetiming.open(store, rows, registry, logger);
  // Re-timings of records to a changed TTL that a stopped replica left unfinished.
  retiming.resume().catch((error: unknown) => {
    logger.warn({ err: error }, 'unfinished re-timings of records to a TTL not resumed');
  });
  registry.onViewsChanged((changed) => {
    void views.reconcile(changed);
  });
  // Kept to the end: the last export at shutdown reads the final counts.
  observeAggregations(views);

  runtime.server.add(
    FeatureStoreServiceDefinition,
    implement(
      FeatureStoreServiceDefinition,
      featureStoreHandlers({
        registry,
        views,
        requestResults,
        rows,
        checkpoints,
        retiming,
        bus,
        logger,
        maxPageBytes: maxPageBytes(runtime.config.grpc.maxMessageBytes),
      }),
      {
        logger,
        auth: runtime.auth,
        adminMethods: ['applyEntity', 'deleteEntity', 'applyFeatureView', 'deleteFeatureView'],
        maxResponseBytes: runtime.config.grpc.maxMessageBytes,
      },
    ),
    FEATURE_STORE_REQUEST_LIMITS,
  );

  let storageReachable = true;
  const report = (what: string) => (error: unknown) => {
    if (storageReachable) logger.warn({ err: error }, `${what} failed; serving from memory`);
    storageReachable = false;
  };
  const timers = [
    everyInterval(config.syncIntervalMs, () =>
      views.syncChanges().then(() => {
        if (!storageReachable) logger.info('storage reachable again');
        storageReachable = true;
      }, report('feature row sync')),
    ),
    everyInterval(config.registryReloadIntervalMs, () =>
      registry.reload().catch(report('registry reload')),
    ),
    setInterval(() => {
      views.removeExpired(Date.now());
    }, EXPIRY_SWEEP_INTERVAL_MS),
  ];
  for (const timer of timers) timer.unref();

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> => {
    stopping ??= (async () => {
      // Serving ends first (NOT_SERVING, in-flight calls finished): registered after the kit's
      // gRPC server step, this step runs before it, and a write waiting for its view's load would
      // otherwise be answered NOT_FOUND when stopping ends that load.
      await runtime.server.shutdown(config.platform.grpc.shutdownTimeoutMs);
      for (const timer of timers) clearInterval(timer);
      requestResults.close();
      await Promise.all([views.stop(), retiming.stop()]);
    })();
    return stopping;
  };
  runtime.shutdown.add('feature store', stop);
  logger.info(
    { replica: config.replicaId, views: registry.allViews().size },
    'feature store ready',
  );
  return { stop };
}
