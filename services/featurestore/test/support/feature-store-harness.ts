/**
 * Starts FeatureStore in-process on `localhost:0` (embedded store in a temp dir unless a MongoDB
 * URI is given; in-process bus unless a NATS URL is given) and returns a generated-stub client.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials, Metadata } from '@grpc/grpc-js';
import { bootstrap, type ServiceRuntime } from '../../../platform/src/bootstrap';
import type { EventBus } from '../../../platform/src/events/bus';
import { createClient, type TypedClient } from '../../../platform/src/grpc/client';
import { createLogger } from '../../../platform/src/logging';
import type { DocumentStore } from '../../../platform/src/storage/collection';
import { FeatureStoreServiceService } from '../../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import { readFeatureStoreConfig } from '../../src/config';
import { startFeatureStore } from '../../src/service';

export const ADMIN_TOKEN = 'test-admin-token';

export interface HarnessOptions {
  readonly dataDir?: string;
  readonly mongodbUri?: string;
  readonly natsUrl?: string;
  readonly sharedBus?: EventBus;
  readonly replicaId?: string;
  readonly env?: Readonly<Record<string, string>>;
  /** Wraps the runtime's store, for outage tests. */
  readonly wrapStore?: (store: DocumentStore) => DocumentStore;
}

export interface RunningHarness {
  readonly client: TypedClient<typeof FeatureStoreServiceService>;
  /** Where the service listens (`127.0.0.1:port`). */
  readonly address: string;
  /** A client without the admin token. */
  readonly anonymous: TypedClient<typeof FeatureStoreServiceService>;
  readonly runtime: ServiceRuntime;
  readonly dataDir: string;
  stop(): Promise<void>;
}

export function temporaryDataDir(): string {
  return mkdtempSync(join(tmpdir(), 'tandem-featurestore-'));
}

export async function startHarness(options: HarnessOptions = {}): Promise<RunningHarness> {
  const dataDir = options.dataDir ?? temporaryDataDir();
  const config = readFeatureStoreConfig({
    TANDEM_FEATURESTORE_PORT: '0',
    TANDEM_GRPC_HOST: '127.0.0.1',
    TANDEM_DATA_DIR: dataDir,
    TANDEM_ADMIN_TOKEN: ADMIN_TOKEN,
    TANDEM_FEATURESTORE_REPLICA_ID: options.replicaId ?? 'replica-a',
    TANDEM_SHUTDOWN_TIMEOUT: '5s',
    TANDEM_FEATURESTORE_CHECKPOINT_INTERVAL: '50ms',
    LOG_LEVEL: 'silent',
    ...(options.mongodbUri ? { MONGODB_URI: options.mongodbUri } : {}),
    ...(options.natsUrl ? { NATS_URL: options.natsUrl } : {}),
    ...options.env,
  });
  const logger = createLogger({
    service: 'featurestore',
    level: (process.env.TEST_LOG_LEVEL ?? 'silent') as 'silent',
  });
  const base = await bootstrap(config.platform, {
    logger,
    ...(options.sharedBus ? { sharedBus: options.sharedBus } : {}),
  });
  const runtime: ServiceRuntime = options.wrapStore
    ? { ...base, store: options.wrapStore(base.store), serve: () => base.serve() }
    : base;
  await startFeatureStore(runtime, config);
  const port = await runtime.serve();
  const metadata = new Metadata();
  metadata.set('authorization', `Bearer ${ADMIN_TOKEN}`);
  const client = createClient(FeatureStoreServiceService, {
    address: `127.0.0.1:${port}`,
    credentials: credentials.createInsecure(),
    metadata,
  });
  const anonymous = createClient(FeatureStoreServiceService, {
    address: `127.0.0.1:${port}`,
    credentials: credentials.createInsecure(),
  });
  return {
    client,
    address: `127.0.0.1:${port}`,
    anonymous,
    runtime,
    dataDir,
    async stop() {
      client.close();
      anonymous.close();
      await runtime.shutdown.run(10_000);
    },
  };
}

/** Polls `check` until it stops throwing, or rethrows its last error after `timeoutMs`. */
export async function eventually<T>(check: () => Promise<T>, timeoutMs = 5_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await check();
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  }
}

/**
 * A `wrapStore` that gives a second replica another handle on `store`, whose close() leaves it
 * open for its owner: replicas sharing one storage, as they would share a database.
 */
export function sharing(store: DocumentStore): () => DocumentStore {
  return () => ({
    ...store,
    collection: (spec) => store.collection(spec),
    close: () => Promise.resolve(),
  });
}

/** A `wrapStore` that gives each test its own collections in the service's (shared) database. */
export function isolated(store: DocumentStore): DocumentStore {
  const prefix = `t${Math.random().toString(36).slice(2, 8)}`;
  return {
    kind: store.kind,
    collection: (spec) => store.collection({ ...spec, name: `${prefix}_${spec.name}` }),
    ping: () => store.ping(),
    close: () => store.close(),
  };
}

/** Two replicas, `replica-a` and `replica-b`, sharing one storage (the first's). */
export async function startReplicaPair(): Promise<{
  first: RunningHarness;
  second: RunningHarness;
  stop(): Promise<void>;
}> {
  const first = await startHarness({ replicaId: 'replica-a' });
  const second = await startHarness({
    replicaId: 'replica-b',
    wrapStore: sharing(first.runtime.store),
  });
  return {
    first,
    second,
    async stop() {
      await second.stop();
      await first.stop();
    },
  };
}

/** What `call` settled as within `ms`, or 'waiting'. */
export async function within<T>(call: Promise<T>, ms: number): Promise<T | 'waiting'> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      call,
      new Promise<'waiting'>((resolve) => {
        timer = setTimeout(() => {
          resolve('waiting');
        }, ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
