/**
 * FeatureStore's configuration: the shared platform settings plus its own variables, each with a
 * documented default. Nothing else in the service reads `process.env`.
 */
import { hostname } from 'node:os';
import { EnvReader, readPlatformConfig, type PlatformConfig } from '../../platform/src/config';

/** The longest the row change log and request_id results are kept (stored; not timers). */
const MAX_RETENTION_MS = 365 * 86_400_000;

export interface FeatureStoreConfig {
  readonly platform: PlatformConfig;
  /**
   * This replica's identity: names its durable consumers and aggregation checkpoints, so each
   * replica keeps a complete aggregation state of its own. Stable across restarts of the replica.
   * @default the host name
   */
  readonly replicaId: string;
  /** How often a replica reads the rows other replicas wrote (visibility within one second). @default 200ms */
  readonly syncIntervalMs: number;
  /** How often the registry is reloaded from storage, covering lost change notifications. @default 500ms */
  readonly registryReloadIntervalMs: number;
  /** How often streaming aggregation state is checkpointed; events are acked after it. @default 250ms */
  readonly checkpointIntervalMs: number;
  /** Events of one stream-sourced view handled and awaiting their checkpoint at once. @default 20000 */
  readonly aggregationInFlight: number;
  /** How long written change-log entries are kept for replicas to catch up. @default 1h */
  readonly changeLogRetentionMs: number;
  /** How long a request_id's response is remembered. @default 24h */
  readonly idempotencyRetentionMs: number;
  /** The NATS stream that captures outcome events. @default TANDEM_OUTCOMES */
  readonly outcomeStream: string;
  /** Limits of GetOnlineFeatures and WriteFeatures (featurestore_service.proto). */
  readonly limits: {
    readonly maxEntityRows: number;
    readonly maxFeatureRefs: number;
    readonly maxValuesPerRead: number;
    readonly maxRowsPerWrite: number;
  };
}

/** Reads FeatureStore's configuration; throws `ConfigError` listing every problem. */
export function readFeatureStoreConfig(
  env: Readonly<Record<string, string | undefined>>,
): FeatureStoreConfig {
  const reader = new EnvReader(env);
  const platform = readPlatformConfig(reader, 'featurestore', 50052);
  const replicaId = reader.string('TANDEM_FEATURESTORE_REPLICA_ID', {
    default: hostname(),
    description:
      'Identity of this replica: names its durable consumers and aggregation checkpoints (stable across restarts)',
  });
  const config: FeatureStoreConfig = {
    platform,
    replicaId: replicaId.replace(/[^A-Za-z0-9_-]/g, '_').slice(0, 64),
    syncIntervalMs: reader.durationMs('TANDEM_FEATURESTORE_SYNC_INTERVAL', {
      default: 200,
      min: 10,
      description: 'How often a replica reads the feature rows other replicas wrote',
    }),
    registryReloadIntervalMs: reader.durationMs('TANDEM_FEATURESTORE_REGISTRY_RELOAD_INTERVAL', {
      default: 500,
      min: 10,
      description: 'How often entity and feature-view definitions are reloaded from storage',
    }),
    checkpointIntervalMs: reader.durationMs('TANDEM_FEATURESTORE_CHECKPOINT_INTERVAL', {
      default: 250,
      min: 10,
      description:
        'How often streaming aggregation state is checkpointed to storage; events are acked once checkpointed',
    }),
    aggregationInFlight: reader.integer('TANDEM_FEATURESTORE_AGGREGATION_IN_FLIGHT', {
      default: 20_000,
      min: 1,
      max: 1_000_000,
      description:
        'Outcome events per stream-sourced view folded into memory and awaiting their checkpoint at once',
    }),
    changeLogRetentionMs: reader.durationMs('TANDEM_FEATURESTORE_CHANGE_LOG_RETENTION', {
      default: 3_600_000,
      min: 10_000,
      max: MAX_RETENTION_MS,
      description: 'How long the log of written rows that replicas sync from is kept',
    }),
    idempotencyRetentionMs: reader.durationMs('TANDEM_FEATURESTORE_REQUEST_ID_RETENTION', {
      default: 86_400_000,
      min: 1_000,
      max: MAX_RETENTION_MS,
      description: 'How long the response to a request_id is remembered for retries',
    }),
    outcomeStream: reader.string('TANDEM_FEATURESTORE_OUTCOME_STREAM', {
      default: 'TANDEM_OUTCOMES',
      description: 'NATS JetStream stream capturing tandem.events.v1.outcome.>',
    }),
    limits: {
      maxEntityRows: reader.integer('TANDEM_FEATURESTORE_MAX_ENTITY_ROWS', {
        default: 10_000,
        min: 1,
        description: 'Most entity rows per GetOnlineFeatures',
      }),
      maxFeatureRefs: reader.integer('TANDEM_FEATURESTORE_MAX_FEATURE_REFS', {
        default: 1_000,
        min: 1,
        description: 'Most feature references per GetOnlineFeatures',
      }),
      maxValuesPerRead: reader.integer('TANDEM_FEATURESTORE_MAX_VALUES_PER_READ', {
        default: 1_000_000,
        min: 1,
        description: 'Most values (rows × features) per GetOnlineFeatures',
      }),
      maxRowsPerWrite: reader.integer('TANDEM_FEATURESTORE_MAX_ROWS_PER_WRITE', {
        default: 10_000,
        min: 1,
        description: 'Most rows per WriteFeatures',
      }),
    },
  };
  // JetStream refuses such a stream name; found only when the stream is declared (after storage
  // opened, in an error naming no variable, or in the background while NATS is unreachable).
  if (/[\s.*>/\\]/.test(config.outcomeStream)) {
    reader.problem(
      `TANDEM_FEATURESTORE_OUTCOME_STREAM must be a JetStream stream name, without whitespace, ".", "*", ">", "/" or "\\"; got "${config.outcomeStream}"`,
    );
  }
  reader.finish();
  return config;
}
