/**
 * The echo service wired through the runtime kit, for the kit's own tests: it fails with any
 * canonical code on request, waits when asked, and reports the trace id it saw.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { status as GrpcCode, ServerCredentials } from '@grpc/grpc-js';
import { trace } from '@opentelemetry/api';
import { EchoServiceService } from '../../../../gen/ts/tandem/echo/v1/echo_service';
import {
  AbortedError,
  AlreadyExistsError,
  DeadlineExceededError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  PermissionDeniedError,
  ResourceExhaustedError,
  type TandemError,
  UnauthenticatedError,
  UnavailableError,
} from '../../src/errors';
import { implement, type Handlers } from '../../src/grpc/handlers';
import { GrpcServer } from '../../src/grpc/server';
import { createLogger, type Logger } from '../../src/logging';
import type { AdminAuth } from '../../src/grpc/auth';

/** The domain error a handler throws for each code the echo can be asked to fail with. */
const errorsByCode = new Map<number, () => TandemError>([
  [
    GrpcCode.INVALID_ARGUMENT,
    () =>
      new InvalidArgumentError('message is malformed', [
        { field: 'message', description: 'must be lower case', reason: 'NOT_LOWER_CASE' },
        { field: 'delay', description: 'must be under 1 s', reason: 'TOO_LONG' },
      ]),
  ],
  [
    GrpcCode.NOT_FOUND,
    () =>
      new NotFoundError('experiment "checkout" not found', {
        reason: 'EXPERIMENT_NOT_FOUND',
        resource: { type: 'tandem.assignment.v1.Experiment', name: 'checkout' },
      }),
  ],
  [
    GrpcCode.ALREADY_EXISTS,
    () => new AlreadyExistsError('layer "home" already exists', { reason: 'LAYER_EXISTS' }),
  ],
  [
    GrpcCode.FAILED_PRECONDITION,
    () =>
      new FailedPreconditionError('experiment is stopped', {
        reason: 'EXPERIMENT_STOPPED',
        violations: [
          { type: 'STATUS', subject: 'experiments/checkout', description: 'is STOPPED' },
        ],
      }),
  ],
  [
    GrpcCode.ABORTED,
    () =>
      new AbortedError('etag "3" is stale; current is "4"', {
        reason: 'STALE_ETAG',
        metadata: { current_etag: '4' },
      }),
  ],
  [
    GrpcCode.UNAVAILABLE,
    () => new UnavailableError('storage is unreachable', { retryDelayMs: 1500 }),
  ],
  [GrpcCode.RESOURCE_EXHAUSTED, () => new ResourceExhaustedError('at most 1000 entities per call')],
  [GrpcCode.UNAUTHENTICATED, () => new UnauthenticatedError('no token')],
  [GrpcCode.PERMISSION_DENIED, () => new PermissionDeniedError('bad token')],
  [GrpcCode.DEADLINE_EXCEEDED, () => new DeadlineExceededError('too slow')],
]);

/** The error for `code`; any other code yields a plain bug, which must reach callers as INTERNAL. */
export function errorForCode(code: number): Error {
  return (
    errorsByCode.get(code)?.() ??
    new TypeError('cannot read properties of undefined (secret internals)')
  );
}

export function echoHandlers(): Handlers<typeof EchoServiceService> {
  return {
    echo: async (request, ctx) => {
      if (request.requireMessage && request.message === '') {
        throw new InvalidArgumentError('message is required', [
          { field: 'message', description: 'must not be empty', reason: 'REQUIRED' },
        ]);
      }
      if (request.failWithCode !== 0) throw errorForCode(request.failWithCode);
      if (request.delay) {
        const ms = request.delay.seconds * 1000 + request.delay.nanos / 1e6;
        await sleep(ms, undefined, { signal: ctx.signal }).catch(() => undefined);
      }
      return {
        message: request.message,
        traceId: trace.getActiveSpan()?.spanContext().traceId ?? '',
      };
    },
  };
}

export interface RunningEcho {
  readonly server: GrpcServer;
  readonly port: number;
  readonly address: string;
  readonly logger: Logger;
}

/** A kit server for tests (insecure, unbound; silent unless given a logger), with its logger. */
export function testServer(
  maxMessageBytes = 4 * 1024 * 1024,
  logger: Logger = createLogger({ service: 'echo-test', level: 'silent' }),
): {
  server: GrpcServer;
  logger: Logger;
} {
  const server = new GrpcServer({
    logger,
    credentials: ServerCredentials.createInsecure(),
    maxMessageBytes,
    keepaliveTimeMs: 30_000,
    keepaliveTimeoutMs: 10_000,
  });
  return { server, logger };
}

/** Starts the echo service through the kit on localhost:0, serving. */
export async function startEcho(
  options: {
    auth?: AdminAuth;
    adminMethods?: 'echo'[];
    maxMessageBytes?: number;
    handlers?: Handlers<typeof EchoServiceService>;
    logger?: Logger;
  } = {},
): Promise<RunningEcho> {
  const { server, logger } = testServer(options.maxMessageBytes, options.logger);
  server.add(
    EchoServiceService,
    implement(EchoServiceService, options.handlers ?? echoHandlers(), {
      logger,
      ...(options.auth ? { auth: options.auth } : {}),
      adminMethods: options.adminMethods ?? [],
      ...(options.maxMessageBytes === undefined
        ? {}
        : { maxResponseBytes: options.maxMessageBytes }),
    }),
  );
  const port = await server.listen('127.0.0.1', 0);
  server.setServing(true);
  return { server, port, address: `127.0.0.1:${port}`, logger };
}
