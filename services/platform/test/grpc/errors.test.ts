import {
  credentials,
  makeGenericClientConstructor,
  Metadata,
  Server,
  ServerCredentials,
  status as GrpcCode,
  type ServiceError,
} from '@grpc/grpc-js';
import { RetryInfo } from '../../../../gen/ts/google/rpc/error_details';
import { Status } from '../../../../gen/ts/google/rpc/status';
import {
  EchoServiceClient,
  EchoServiceService,
} from '../../../../gen/ts/tandem/echo/v1/echo_service';
import {
  AbortedError,
  decodeStatus,
  ERROR_DOMAIN,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  RemoteError,
  toStatus,
  UnavailableError,
} from '../../src/errors';
import { createClient, type TypedClient } from '../../src/grpc/client';
import { failure } from '../support/failure';
import { rawCallError } from '../support/raw-call';
import { startEcho, type RunningEcho } from '../support/echo';

describe('error mapping over a real gRPC hop', () => {
  let echo: RunningEcho;
  let client: TypedClient<typeof EchoServiceService>;

  beforeAll(async () => {
    echo = await startEcho();
    client = createClient(EchoServiceService, {
      address: echo.address,
      credentials: credentials.createInsecure(),
    });
  });

  afterAll(async () => {
    client.close();
    await echo.server.shutdown(1000);
  });

  const failWith = (code: GrpcCode) =>
    failure(client.echo({ message: 'x', failWithCode: code, requireMessage: false }));

  it.each([
    [GrpcCode.INVALID_ARGUMENT, 'message is malformed'],
    [GrpcCode.NOT_FOUND, 'experiment "checkout" not found'],
    [GrpcCode.ALREADY_EXISTS, 'layer "home" already exists'],
    [GrpcCode.FAILED_PRECONDITION, 'experiment is stopped'],
    [GrpcCode.ABORTED, 'etag "3" is stale; current is "4"'],
    [GrpcCode.UNAVAILABLE, 'storage is unreachable'],
    [GrpcCode.RESOURCE_EXHAUSTED, 'at most 1000 entities per call'],
    [GrpcCode.UNAUTHENTICATED, 'no token'],
    [GrpcCode.PERMISSION_DENIED, 'bad token'],
    [GrpcCode.DEADLINE_EXCEEDED, 'too slow'],
  ])(
    'a domain error with code %i reaches the client with its code and message',
    async (code, message) => {
      const error = await failWith(code);
      expect(error.code).toBe(code);
      expect(error.message).toBe(message);
    },
  );

  it('reports every field violation of an INVALID_ARGUMENT in BadRequest', async () => {
    const error = await failWith(GrpcCode.INVALID_ARGUMENT);
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect(error instanceof InvalidArgumentError && error.violations).toEqual([
      { field: 'message', description: 'must be lower case', reason: 'NOT_LOWER_CASE' },
      { field: 'delay', description: 'must be under 1 s', reason: 'TOO_LONG' },
    ]);
  });

  it('carries ErrorInfo reason, domain and metadata, and ResourceInfo', async () => {
    const aborted = await failWith(GrpcCode.ABORTED);
    expect(aborted).toBeInstanceOf(AbortedError);
    expect(aborted.reason).toBe('STALE_ETAG');
    expect(aborted.metadata).toEqual({ current_etag: '4' });
    const missing = await failWith(GrpcCode.NOT_FOUND);
    expect(missing).toBeInstanceOf(NotFoundError);
    expect(missing.resource).toEqual({ type: 'tandem.assignment.v1.Experiment', name: 'checkout' });
  });

  it('carries PreconditionFailure violations on FAILED_PRECONDITION', async () => {
    const error = await failWith(GrpcCode.FAILED_PRECONDITION);
    expect(error instanceof FailedPreconditionError && error.violations).toEqual([
      { type: 'STATUS', subject: 'experiments/checkout', description: 'is STOPPED' },
    ]);
  });

  it('carries the field that named a missing resource on NOT_FOUND', async () => {
    const echo2 = await startEcho({
      handlers: {
        echo: () =>
          Promise.reject(
            new NotFoundError('unknown feature view "nope"', {
              violations: [{ field: 'features[1]', description: 'no feature view "nope"' }],
            }),
          ),
      },
    });
    const other = createClient(EchoServiceService, {
      address: echo2.address,
      credentials: credentials.createInsecure(),
    });
    const error = await failure(
      other.echo({ message: 'x', failWithCode: 0, requireMessage: false }),
    );
    other.close();
    await echo2.server.shutdown(1000);
    expect(error).toBeInstanceOf(NotFoundError);
    expect(error instanceof NotFoundError && error.violations.map((v) => v.field)).toEqual([
      'features[1]',
    ]);
  });

  it('carries RetryInfo on UNAVAILABLE', async () => {
    const error = await failWith(GrpcCode.UNAVAILABLE);
    expect(error).toBeInstanceOf(UnavailableError);
    expect(error instanceof UnavailableError && error.retryDelayMs).toBe(1500);
  });

  it('turns an unexpected exception into INTERNAL without leaking its message', async () => {
    const error = await failWith(GrpcCode.DATA_LOSS);
    expect(error).toBeInstanceOf(RemoteError);
    expect(error.code).toBe(GrpcCode.INTERNAL);
    expect(error.message).toBe('internal error');
    expect(error.message).not.toContain('secret');
  });

  it.each([GrpcCode.UNKNOWN, GrpcCode.UNIMPLEMENTED, GrpcCode.DATA_LOSS, GrpcCode.INTERNAL])(
    "answers INTERNAL without the peer's message, not its code %i, for a peer's failure let through",
    async (peerCode) => {
      const relay = await startEcho({
        handlers: {
          echo: () => Promise.reject(new RemoteError(peerCode, 'the peer failed: secret')),
        },
      });
      const relayed = createClient(EchoServiceService, {
        address: relay.address,
        credentials: credentials.createInsecure(),
      });
      try {
        const error = await failure(
          relayed.echo({ message: 'x', failWithCode: 0, requireMessage: false }),
        );
        expect(error.code).toBe(GrpcCode.INTERNAL);
        expect(error.message).toBe('internal error');
      } finally {
        relayed.close();
        await relay.server.shutdown(1000);
      }
    },
  );

  it('validates at the edge with a field violation, never UNKNOWN', async () => {
    const error = await failure(
      client.echo({ message: '', failWithCode: 0, requireMessage: true }),
    );
    expect(error.code).toBe(GrpcCode.INVALID_ARGUMENT);
    expect(error instanceof InvalidArgumentError && error.violations[0]).toMatchObject({
      field: 'message',
      reason: 'REQUIRED',
    });
  });

  it('puts google.rpc.Status in grpc-status-details-bin for plain grpc-js clients too', async () => {
    const raw = new EchoServiceClient(echo.address, credentials.createInsecure());
    const error = await new Promise<ServiceError>((resolve) => {
      raw.echo(
        { message: 'x', failWithCode: GrpcCode.INVALID_ARGUMENT, requireMessage: false },
        new Metadata(),
        (e) => {
          resolve(e!);
        },
      );
    });
    raw.close();
    const decoded = decodeStatus(error);
    expect(decoded.code).toBe(GrpcCode.INVALID_ARGUMENT);
    expect(decoded.errorInfo).toMatchObject({ domain: ERROR_DOMAIN, reason: 'INVALID_ARGUMENT' });
    expect(decoded.violations.map((v) => v.field)).toEqual(['message', 'delay']);
  });
});

describe('requests the server cannot decode', () => {
  let echo: RunningEcho;

  beforeAll(async () => {
    echo = await startEcho();
  });

  afterAll(async () => {
    await echo.server.shutdown(1000);
  });

  it('answers bytes that are not the request message with INVALID_ARGUMENT, not INTERNAL', async () => {
    // A client that sends its bytes as they are: field 1 (a string) announcing 5 bytes, then 1.
    const Raw = makeGenericClientConstructor(
      {
        echo: {
          ...EchoServiceService.echo,
          requestSerialize: (bytes: Buffer) => bytes,
        },
      },
      'EchoService',
    );
    const raw = new Raw(echo.address, credentials.createInsecure());
    const error = await new Promise<ServiceError>((resolve) => {
      raw.makeUnaryRequest(
        EchoServiceService.echo.path,
        (bytes: Buffer) => bytes,
        EchoServiceService.echo.responseDeserialize,
        Buffer.from([0x0a, 0x05, 0x78]),
        (e) => {
          resolve(e!);
        },
      );
    });
    raw.close();
    const decoded = decodeStatus(error);
    expect(decoded.code).toBe(GrpcCode.INVALID_ARGUMENT);
    expect(decoded.errorInfo).toMatchObject({ reason: 'UNDECODABLE_REQUEST' });
    expect(error.details).toMatch(/^the request is not a message this server can decode: /);
  });

  it('refuses what the generated decoder would read in part or lossily: a field number 0, a stray end-group tag, a string that is not UTF-8', async () => {
    const path = EchoServiceService.echo.path;
    const message = (bytes: number[]) => [0x0a, bytes.length, ...bytes];
    // What follows the bad tag (here `require_message`, field 4) the decoder would drop.
    for (const bad of [
      [...message([0x68, 0x69]), 0x00, 0x20, 0x01],
      [...message([0x68, 0x69]), 0x0c, 0x20, 0x01],
      // In a nested message too: `delay` (field 3, a Duration) holding a field number 0.
      [...message([0x68, 0x69]), 0x1a, 0x03, 0x08, 0x01, 0x00],
    ]) {
      const error = await rawCallError(echo.address, path, Buffer.from(bad));
      expect([error.code, decodeStatus(error).errorInfo?.reason]).toEqual([
        GrpcCode.INVALID_ARGUMENT,
        'UNDECODABLE_REQUEST',
      ]);
    }
    // Two different ids would both read as "u\uFFFD".
    const error = await rawCallError(echo.address, path, Buffer.from(message([0x75, 0xff])));
    const decoded = decodeStatus(error);
    expect(decoded.code).toBe(GrpcCode.INVALID_ARGUMENT);
    expect(decoded.errorInfo).toMatchObject({ reason: 'INVALID_UTF8' });
    expect(decoded.violations.map((v) => [v.field, v.reason])).toEqual([
      ['message', 'INVALID_UTF8'],
    ]);
    // Text beyond ASCII is of course fine.
    const client = createClient(EchoServiceService, {
      address: echo.address,
      credentials: credentials.createInsecure(),
    });
    const fine = await client.echo({ message: 'häj ☃ 🙂', failWithCode: 0, requireMessage: false });
    client.close();
    expect(fine.message).toBe('häj ☃ 🙂');
  });

  it('names the field of an integer beyond what the server can hold exactly', async () => {
    const client = createClient(EchoServiceService, {
      address: echo.address,
      credentials: credentials.createInsecure(),
    });
    // 2^60 is exact as a double, so the client encodes it; the server's int64 fields hold ±2^53.
    const error = await failure(
      client.echo({
        message: 'x',
        failWithCode: 0,
        requireMessage: false,
        delay: { seconds: 2 ** 60, nanos: 0 },
      }),
    );
    client.close();
    expect(error).toBeInstanceOf(InvalidArgumentError);
    expect(error.reason).toBe('UNDECODABLE_REQUEST');
    expect(error instanceof InvalidArgumentError && error.violations.map((v) => v.field)).toEqual([
      'delay.seconds',
    ]);
  });
});

describe('request limits', () => {
  it('rejects a request over the message-size limit with RESOURCE_EXHAUSTED', async () => {
    const echo = await startEcho({ maxMessageBytes: 4096 });
    const client = createClient(EchoServiceService, {
      address: echo.address,
      credentials: credentials.createInsecure(),
    });
    const error = await failure(
      client.echo({ message: 'x'.repeat(10_000), failWithCode: 0, requireMessage: false }),
    );
    expect(error.code).toBe(GrpcCode.RESOURCE_EXHAUSTED);
    const ok = await client.echo({ message: 'small', failWithCode: 0, requireMessage: false });
    expect(ok.message).toBe('small');
    client.close();
    await echo.server.shutdown(1000);
  });
});

describe('an error quoting a large request', () => {
  // The handler echoes the caller's input into its error, as a NOT_FOUND for an unknown id does.
  const hugeId = 'x'.repeat(30_000);
  const handlers = {
    echo: (request: { message: string }): Promise<never> => {
      if (request.message === 'not-found') {
        throw new NotFoundError(`no layer named ${hugeId}`, {
          reason: 'LAYER_NOT_FOUND',
          resource: { type: 'tandem.assignment.v1.Layer', name: hugeId },
          metadata: { id: hugeId },
        });
      }
      if (request.message === 'violations') {
        throw new InvalidArgumentError(
          'invalid rows',
          Array.from({ length: 2_000 }, (_, i) => ({
            field: `rows[${i}].values.${'k'.repeat(1_000)}`,
            description: `must be finite, not ${'é'.repeat(2_000)}`,
            reason: 'NOT_FINITE',
          })),
        );
      }
      throw new FailedPreconditionError('in use', {
        violations: Array.from({ length: 500 }, (_, i) => ({
          type: 'IN_USE',
          subject: `views/${i}-${'v'.repeat(500)}`,
          description: 'references it',
        })),
      });
    },
  };
  let echo: RunningEcho;
  let client: TypedClient<typeof EchoServiceService>;

  beforeAll(async () => {
    echo = await startEcho({ handlers });
    client = createClient(EchoServiceService, {
      address: echo.address,
      credentials: credentials.createInsecure(),
    });
  });

  afterAll(async () => {
    client.close();
    await echo.server.shutdown(1000);
  });

  /** The failure of an echo of `message`, within a deadline a hung call would miss. */
  const failureOf = (message: string) =>
    failure(client.echo({ message, failWithCode: 0, requireMessage: false }, { timeoutMs: 5_000 }));

  it('reaches the client with its code and reason, the message and names cut short', async () => {
    const error = await failureOf('not-found');
    expect(error.code).toBe(GrpcCode.NOT_FOUND);
    expect(error.reason).toBe('LAYER_NOT_FOUND');
    expect(error.message.startsWith(`no layer named ${'x'.repeat(400)}`)).toBe(true);
    expect(error.message.endsWith('…')).toBe(true);
    expect(Buffer.byteLength(error.message)).toBeLessThanOrEqual(512);
    expect(error.resource?.name.startsWith('x'.repeat(200))).toBe(true);
    expect(Buffer.byteLength(error.resource?.name ?? '')).toBeLessThanOrEqual(256);
    expect(Buffer.byteLength(error.metadata.id ?? '')).toBeLessThanOrEqual(256);
  });

  it('lists the violations that fit, and says how many it left out', async () => {
    const error = await failureOf('violations');
    expect(error.code).toBe(GrpcCode.INVALID_ARGUMENT);
    expect(error).toBeInstanceOf(InvalidArgumentError);
    const listed = error instanceof InvalidArgumentError ? error.violations : [];
    expect(listed.length).toBeGreaterThan(0);
    expect(listed.length).toBeLessThan(2_000);
    expect(listed[0]).toMatchObject({ reason: 'NOT_FINITE' });
    expect(listed[0]?.field.startsWith('rows[0].values.kkk')).toBe(true);
    expect(listed[0]?.field.endsWith('…')).toBe(true);
    expect(Buffer.byteLength(listed[0]?.field ?? '')).toBeLessThanOrEqual(256);
    expect(listed[0]?.description.startsWith('must be finite, not éé')).toBe(true);
    expect(Buffer.byteLength(listed[0]?.description ?? '')).toBeLessThanOrEqual(512);
    const omitted = 2_000 - listed.length;
    expect(error.metadata.omitted_violations).toBe(String(omitted));
    expect(error.message).toBe(`invalid rows (${omitted} more violations not listed)`);

    const precondition = await failureOf('precondition');
    expect(precondition.code).toBe(GrpcCode.FAILED_PRECONDITION);
    expect(precondition).toBeInstanceOf(FailedPreconditionError);
    const violations =
      precondition instanceof FailedPreconditionError ? precondition.violations : [];
    expect(violations.length).toBeGreaterThan(0);
    expect(violations.length).toBeLessThan(500);
    expect(precondition.metadata.omitted_violations).toBe(String(500 - violations.length));
  });

  it('leaves the connection serving the calls after it', async () => {
    await failureOf('not-found');
    await failureOf('violations');
    const again = await failureOf('not-found');
    expect(again.code).toBe(GrpcCode.NOT_FOUND);
  });
});

describe('the trailers of a status', () => {
  it('stay within 8 KiB for the largest error, in any script', () => {
    const cjk = (n: number): string => '漢'.repeat(n);
    for (const error of [
      new NotFoundError(cjk(5_000), {
        reason: 'LAYER_NOT_FOUND',
        resource: { type: cjk(1_000), name: cjk(1_000) },
        metadata: { id: cjk(1_000), etag: cjk(1_000) },
        violations: Array.from({ length: 1_000 }, () => ({
          field: cjk(1_000),
          description: cjk(1_000),
          reason: 'NOT_FOUND',
        })),
      }),
      new FailedPreconditionError(cjk(5_000), {
        violations: Array.from({ length: 1_000 }, () => ({
          type: cjk(1_000),
          subject: cjk(1_000),
          description: cjk(1_000),
        })),
      }),
    ]) {
      const status = toStatus(error);
      const details = status.metadata.get('grpc-status-details-bin')[0] as Buffer;
      // grpc-message is percent-encoded (at most what encodeURIComponent makes), details base64.
      const trailerBytes =
        encodeURIComponent(status.details).length + Math.ceil(details.length / 3) * 4;
      expect(trailerBytes).toBeLessThanOrEqual(8 * 1024);
      const decoded = decodeStatus({
        code: status.code,
        details: status.details,
        metadata: status.metadata,
      });
      // One violation at least, and the count of the rest.
      expect(decoded.violations.length + decoded.preconditionViolations.length).toBeGreaterThan(0);
      expect(decoded.message).toMatch(/\(\d+ more violations not listed\)$/);
    }
  });
});

describe('RetryInfo', () => {
  it('carries a retry delay given in fractions of a millisecond, or below zero, as whole ones', () => {
    for (const [given, carried] of [
      [1500.6, 1501],
      [0.25, 0],
      [-30, 0],
    ]) {
      const status = toStatus(new UnavailableError('busy', { retryDelayMs: given }));
      const decoded = decodeStatus({
        code: status.code,
        details: status.details,
        metadata: status.metadata,
      });
      expect([given, decoded.retryDelayMs]).toEqual([given, carried]);
    }
  });
});

describe('a peer whose error details do not decode', () => {
  it('fails the call with the status code and message, and the details that decode', async () => {
    // A peer (or a proxy) that sends a known detail type truncated, beside a good one.
    const server = new Server();
    server.addService(EchoServiceService, {
      echo: (_call: unknown, callback: (error: Partial<ServiceError>) => void) => {
        const metadata = new Metadata();
        const details = Status.encode({
          code: GrpcCode.UNAVAILABLE,
          message: 'down for maintenance',
          details: [
            {
              typeUrl: `type.googleapis.com/google.rpc.ErrorInfo`,
              value: Buffer.from([0x0a, 0x20, 0x41]),
            },
            {
              typeUrl: `type.googleapis.com/google.rpc.RetryInfo`,
              value: Buffer.from(
                RetryInfo.encode({ retryDelay: { seconds: 2, nanos: 0 } }).finish(),
              ),
            },
          ],
        }).finish();
        metadata.set('grpc-status-details-bin', Buffer.from(details));
        callback({ code: GrpcCode.UNAVAILABLE, details: 'down for maintenance', metadata });
      },
    });
    const port = await new Promise<number>((resolve, reject) => {
      server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (error, bound) => {
        if (error) reject(error);
        else resolve(bound);
      });
    });
    const client = createClient(EchoServiceService, {
      address: `127.0.0.1:${port}`,
      credentials: credentials.createInsecure(),
    });
    try {
      const error = await failure(
        client.echo({ message: 'x', failWithCode: 0, requireMessage: false }, { timeoutMs: 5000 }),
      );
      if (!(error instanceof UnavailableError))
        throw new Error(`not UNAVAILABLE: ${String(error)}`);
      expect(error.message).toBe('down for maintenance');
      expect(error.retryDelayMs).toBe(2000);
    } finally {
      client.close();
      server.forceShutdown();
    }
  });
});
