/**
 * Starts the Assignment service the way `main.ts` does (bootstrap → startAssignment → serve) on
 * localhost:0, with a typed client for data-plane calls and one carrying the admin token.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { credentials, Metadata } from '@grpc/grpc-js';
import { MongoClient } from 'mongodb';
import {
  AssignmentServiceService,
  CreateExperimentRequest,
  StartExperimentRequest,
} from '../../../../gen/ts/tandem/assignment/v1/assignment_service';
import { bootstrap, type ServiceRuntime } from '../../../platform/src/bootstrap';
import type { EventBus } from '../../../platform/src/events/bus';
import { createClient, type TypedClient } from '../../../platform/src/grpc/client';
import { readAssignmentConfig, type AssignmentConfig } from '../../src/config';
import { startAssignment, type RunningAssignment } from '../../src/service';
import { experiment, resolveRequest } from './fixtures';

export const ADMIN_TOKEN = 'test-admin-token';

export type AssignmentClient = TypedClient<typeof AssignmentServiceService>;

export interface StorageChoice {
  /** Embedded store directory (default: a fresh temp dir). */
  readonly dataDir?: string;
  /** MongoDB URI and the service name that makes its database (`tandem_<service>`). */
  readonly mongo?: { readonly uri: string; readonly service: string };
}

export interface StartOptions extends StorageChoice {
  readonly natsUrl?: string;
  readonly sharedBus?: EventBus;
  readonly reloadInterval?: string;
  readonly replicaId?: string;
  readonly tokenSecret?: string;
  /** `TANDEM_ASSIGNMENT_STICKY_LOOKUP_TIMEOUT`, for example `50ms`. */
  readonly stickyLookupTimeout?: string;
  /** Exposures buffered while NATS is unavailable (the service's default when unset). */
  readonly exposureBuffer?: number;
  /** TANDEM_GRPC_MAX_MESSAGE_BYTES (the default when unset). */
  readonly maxMessageBytes?: number;
}

export interface TestAssignment {
  readonly runtime: ServiceRuntime;
  readonly service: RunningAssignment;
  readonly config: AssignmentConfig;
  readonly address: string;
  /** No admin token: for Resolve, Apply and reads. */
  readonly client: AssignmentClient;
  /** With the admin token. */
  readonly admin: AssignmentClient;
  /** Closes the clients and runs the shutdown steps. */
  stop(): Promise<void>;
}

export function temporaryDataDir(): string {
  return mkdtempSync(join(tmpdir(), 'tandem-assignment-test-'));
}

export function testConfig(options: StartOptions): AssignmentConfig {
  const config = readAssignmentConfig(
    {
      TANDEM_GRPC_HOST: '127.0.0.1',
      TANDEM_ASSIGNMENT_PORT: '0',
      TANDEM_ADMIN_TOKEN: ADMIN_TOKEN,
      TANDEM_DATA_DIR: options.dataDir ?? temporaryDataDir(),
      MONGODB_URI: options.mongo?.uri,
      NATS_URL: options.natsUrl,
      LOG_LEVEL: 'silent',
      TANDEM_SHUTDOWN_TIMEOUT: '2s',
      TANDEM_ASSIGNMENT_RELOAD_INTERVAL: options.reloadInterval,
      TANDEM_ASSIGNMENT_TOKEN_SECRET: options.tokenSecret,
      TANDEM_ASSIGNMENT_STICKY_LOOKUP_TIMEOUT: options.stickyLookupTimeout,
      TANDEM_ASSIGNMENT_EXPOSURE_BUFFER: options.exposureBuffer?.toString(),
      TANDEM_GRPC_MAX_MESSAGE_BYTES: options.maxMessageBytes?.toString(),
    },
    { replicaId: options.replicaId ?? `test-${Math.random().toString(36).slice(2, 10)}` },
  );
  return options.mongo
    ? { ...config, platform: { ...config.platform, service: options.mongo.service } }
    : config;
}

export function clientFor(address: string, token?: string): AssignmentClient {
  const metadata = new Metadata();
  if (token !== undefined) metadata.set('authorization', `Bearer ${token}`);
  return createClient(AssignmentServiceService, {
    address,
    credentials: credentials.createInsecure(),
    metadata,
  });
}

export async function startTestAssignment(options: StartOptions = {}): Promise<TestAssignment> {
  const config = testConfig(options);
  const runtime = await bootstrap(
    config.platform,
    options.sharedBus ? { sharedBus: options.sharedBus } : {},
  );
  let service: RunningAssignment;
  try {
    service = await startAssignment(runtime, config);
  } catch (error) {
    await runtime.shutdown.run(5000);
    throw error;
  }
  const port = await runtime.serve();
  const address = `127.0.0.1:${port}`;
  const client = clientFor(address);
  const admin = clientFor(address, ADMIN_TOKEN);
  return {
    runtime,
    service,
    config,
    address,
    client,
    admin,
    async stop() {
      client.close();
      admin.close();
      await runtime.shutdown.run(10_000);
    },
  };
}

/** Drops the databases a MongoDB suite made. */
export async function dropDatabases(uri: string, services: readonly string[]): Promise<void> {
  const client = new MongoClient(uri);
  try {
    for (const service of services) await client.db(`tandem_${service}`).dropDatabase();
  } finally {
    await client.close();
  }
}

/** Retries `assertion` until it passes or `timeoutMs` has passed (then throws its last error). */
export async function eventually(
  assertion: () => Promise<void> | void,
  timeoutMs = 10_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await assertion();
      return;
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }
}

/** Creates and starts a sticky 50/50 experiment on a surface of its own (named as it). */
export async function startSticky(admin: AssignmentClient, id: string): Promise<void> {
  await admin.createExperiment(
    CreateExperimentRequest.fromPartial({
      experiment: experiment(id, { surfaces: [id], sticky: true }),
    }),
  );
  await admin.startExperiment(StartExperimentRequest.fromPartial({ id }));
}

/**
 * Creates and starts an experiment `id` (on surface `id`) on `writer`; resolves with how long
 * after the start `reader` first served it.
 */
export async function propagationMs(
  writer: TestAssignment,
  reader: TestAssignment,
  id: string,
): Promise<number> {
  await writer.admin.createExperiment(
    CreateExperimentRequest.fromPartial({ experiment: experiment(id, { surfaces: [id] }) }),
  );
  await writer.admin.startExperiment(StartExperimentRequest.fromPartial({ id }));
  const started = Date.now();
  await eventually(async () => {
    const response = await reader.client.resolve(
      resolveRequest('replica-unit', { surfaces: [id] }),
    );
    expect(response.assignments.map((a) => a.experimentId)).toEqual([id]);
  }, 5000);
  return Date.now() - started;
}
