/**
 * The Assignment service's configuration: the platform's shared settings plus its own, each with a
 * documented default. Nothing else in the service reads `process.env`.
 */
import { hostname } from 'node:os';
import { EnvReader, readPlatformConfig, type PlatformConfig } from '../../platform/src/config';
import { MAX_STICKY_TTL_MS } from './domain/configuration';
import { EXPOSURE_RETENTION_MS } from './events/streams';
import { STICKY_LOOKUP_TIMEOUT_MS } from './store/sticky-assignments';

/**
 * The shortest token secret taken, in bytes: an HMAC-SHA256 key shorter than the hash output
 * (32 bytes) weakens the MAC (RFC 2104, section 3). The generated one is 32 random bytes.
 */
export const MIN_TOKEN_SECRET_BYTES = 32;

/** The longest a request_id's first result is kept (stored with an expiry; not a timer). */
const MAX_REQUEST_ID_TTL_MS = 365 * 86_400_000;

export interface AssignmentConfig {
  readonly platform: PlatformConfig;
  /**
   * The HMAC key resolve tokens are signed with; every replica must share it. When unset, a random
   * key is created once and kept in the service's own storage, so replicas sharing the storage
   * agree on it without configuration (dev, and production when the database is trusted).
   */
  readonly tokenSecret: string | undefined;
  /**
   * How often each replica checks storage for a configuration change. Half a second, so a change
   * is served everywhere within one second even when the NATS notification is lost.
   * @default 500 ms
   */
  readonly reloadIntervalMs: number;
  /** Exposures kept in memory while NATS is unavailable; beyond this new ones are dropped. @default 100 000 */
  readonly exposureBufferCapacity: number;
  /** (experiment or holdout, unit) pairs remembered as already exposed today. @default 1 000 000 */
  readonly exposureMemoryCapacity: number;
  /** Window within which JetStream drops a repeated exposure id (across replicas). @default 1 h */
  readonly exposureDuplicateWindowMs: number;
  /** How long a sticky assignment is kept when the experiment does not say. @default 90 d */
  readonly stickyTtlMs: number;
  /** Sticky assignments cached in memory (least recently used are evicted). @default 100 000 */
  readonly stickyCacheCapacity: number;
  /** How long Resolve waits for a unit's stored sticky variants (see `StickyAssignments`). */
  readonly stickyLookupTimeoutMs: number;
  /** How long a request_id keeps returning the first result of a mutation. @default 24 h */
  readonly idempotencyTtlMs: number;
  /** This replica's id in config-change events and its config consumer's name. @default host-pid */
  readonly replicaId: string;
}

/** Reads the configuration, throwing one `ConfigError` that lists every problem. */
export function readAssignmentConfig(
  env: Readonly<Record<string, string | undefined>>,
  defaults: { readonly replicaId: string },
): AssignmentConfig {
  const reader = new EnvReader(env);
  const platform = readPlatformConfig(reader, 'assignment', 50051);
  const config: AssignmentConfig = {
    platform,
    tokenSecret: reader.optionalString('TANDEM_ASSIGNMENT_TOKEN_SECRET', {
      description:
        'HMAC key of resolve tokens (at least 32 bytes), shared by every replica; when unset a random key is created once and kept in storage',
    }),
    reloadIntervalMs: reader.durationMs('TANDEM_ASSIGNMENT_RELOAD_INTERVAL', {
      default: 500,
      min: 50,
      description:
        'How often a replica checks storage for configuration changes (missed NATS notifications)',
    }),
    exposureBufferCapacity: reader.integer('TANDEM_ASSIGNMENT_EXPOSURE_BUFFER', {
      default: 100_000,
      min: 1,
      description:
        'Exposures buffered while NATS is unavailable; further ones are dropped and counted',
    }),
    exposureMemoryCapacity: reader.integer('TANDEM_ASSIGNMENT_EXPOSURE_MEMORY', {
      default: 1_000_000,
      min: 1,
      description: '(experiment or holdout, unit) pairs remembered as exposed today, per replica',
    }),
    exposureDuplicateWindowMs: reader.durationMs('TANDEM_ASSIGNMENT_EXPOSURE_DEDUPE_WINDOW', {
      default: 3_600_000,
      // A publish that timed out (5 s) after the stream stored it is sent again within seconds,
      // before the ledger knows of it: only the window keeps that copy out.
      min: 60_000,
      // JetStream refuses a duplicate window longer than the stream's retention (7 days).
      max: EXPOSURE_RETENTION_MS,
      description:
        'JetStream duplicate window of the exposure stream: repeated exposure ids within it are stored once',
    }),
    stickyTtlMs: reader.durationMs('TANDEM_ASSIGNMENT_STICKY_TTL', {
      default: 90 * 86_400_000,
      min: 1000,
      max: MAX_STICKY_TTL_MS,
      description: 'How long sticky assignments are kept when an experiment sets no sticky_ttl',
    }),
    stickyCacheCapacity: reader.integer('TANDEM_ASSIGNMENT_STICKY_CACHE', {
      default: 100_000,
      min: 1,
      description: 'Sticky assignments cached in memory per replica',
    }),
    stickyLookupTimeoutMs: reader.durationMs('TANDEM_ASSIGNMENT_STICKY_LOOKUP_TIMEOUT', {
      default: STICKY_LOOKUP_TIMEOUT_MS,
      min: 10,
      // Past the callers' deadlines anyway: a stalled read then fails every sticky Resolve.
      max: 10_000,
      description:
        "How long Resolve waits for a unit's stored sticky variants before its sticky experiments answer STICKY_UNAVAILABLE",
    }),
    idempotencyTtlMs: reader.durationMs('TANDEM_ASSIGNMENT_REQUEST_ID_TTL', {
      default: 86_400_000,
      min: 1000,
      max: MAX_REQUEST_ID_TTL_MS,
      description: 'How long a mutation request_id returns its first result',
    }),
    replicaId: reader.string('TANDEM_ASSIGNMENT_REPLICA_ID', {
      default: defaults.replicaId,
      description:
        'This replica’s id (config-change origin and config consumer name); host-pid by default',
    }),
  };
  // UTF-8 bytes, as the key is taken (see `ResolveTokens`).
  const secretBytes =
    config.tokenSecret === undefined ? undefined : Buffer.byteLength(config.tokenSecret);
  if (secretBytes !== undefined && secretBytes < MIN_TOKEN_SECRET_BYTES) {
    reader.problem(
      `TANDEM_ASSIGNMENT_TOKEN_SECRET must be at least ${MIN_TOKEN_SECRET_BYTES} bytes (the HMAC-SHA256 key of resolve tokens), got ${secretBytes}; for example \`openssl rand -base64 32\``,
    );
  }
  if (!/^[A-Za-z0-9_-]{1,64}$/.test(config.replicaId)) {
    reader.problem('TANDEM_ASSIGNMENT_REPLICA_ID must be 1-64 letters, digits, "_" or "-"');
  }
  reader.finish();
  return config;
}

/**
 * This host's name as part of a default replica id: the characters an id cannot hold (the dots
 * of `host.local` or `ip-10-0-0-1.ec2.internal`) become "-", and it is cut to `length`.
 */
export function hostIdPart(length: number, host = hostname()): string {
  return host.replace(/[^A-Za-z0-9_-]/g, '-').slice(0, length);
}
