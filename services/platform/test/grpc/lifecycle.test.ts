import { execFile } from 'node:child_process';
import { getEventListeners } from 'node:events';
import { promisify } from 'node:util';
import { credentials, status as GrpcCode } from '@grpc/grpc-js';
import { EchoServiceService } from '../../../../gen/ts/tandem/echo/v1/echo_service';
import { bearerTokenAuth } from '../../src/grpc/auth';
import { createClient } from '../../src/grpc/client';
import { implement } from '../../src/grpc/handlers';
import { TandemError, UnavailableError } from '../../src/errors';
import { failure } from '../support/failure';
import { checkHealth, healthClient } from '../support/health';
import { echoHandlers, startEcho, testServer } from '../support/echo';
import { Metadata } from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';
import { loadPackageDefinition, type Client, type ClientReadableStream } from '@grpc/grpc-js';

const run = promisify(execFile);

const insecure = credentials.createInsecure();

type Reflection = Client & {
  ServerReflectionInfo(): NodeJS.ReadWriteStream & { write(m: unknown): boolean };
};

/** A client of grpc.reflection.v1 (as grpcurl and GUI tools use it) for the server at `address`. */
function reflectionClient(address: string): Reflection {
  const definition = loadSync(
    require.resolve('@grpc/reflection/build/proto/grpc/reflection/v1/reflection.proto'),
    { keepCase: true },
  );
  const pkg = loadPackageDefinition(definition) as unknown as {
    grpc: {
      reflection: { v1: { ServerReflection: new (a: string, c: typeof insecure) => Reflection } };
    };
  };
  return new pkg.grpc.reflection.v1.ServerReflection(address, insecure);
}
const seconds = (s: number) => ({ seconds: Math.floor(s), nanos: Math.round((s % 1) * 1e9) });

describe('graceful shutdown', () => {
  it('lets an in-flight call finish, then refuses new calls', async () => {
    const echo = await startEcho();
    const client = createClient(EchoServiceService, {
      address: echo.address,
      credentials: insecure,
    });
    const inFlight = client.echo({
      message: 'slow',
      failWithCode: 0,
      requireMessage: false,
      delay: seconds(0.4),
    });
    await new Promise((r) => setTimeout(r, 100));
    const stopping = echo.server.shutdown(5000);
    const late = await failure(
      client.echo({ message: 'late', failWithCode: 0, requireMessage: false }),
    );
    await expect(inFlight).resolves.toMatchObject({ message: 'slow' });
    await stopping;
    expect(late.code).toBe(GrpcCode.UNAVAILABLE);
    client.close();
  });

  it('tells health watchers NOT_SERVING and ends their streams, rather than wait for the deadline', async () => {
    const echo = await startEcho();
    const health = healthClient(echo.address) as ReturnType<typeof healthClient> & {
      watch(request: { service: string }): ClientReadableStream<{ status: string }>;
    };
    const watch = health.watch({ service: '' });
    const statuses: string[] = [];
    watch.on('data', (response: { status: string }) => statuses.push(response.status));
    const ended = new Promise<GrpcCode>((resolve) => {
      watch.on('status', (status: { code: GrpcCode }) => {
        resolve(status.code);
      });
    });
    watch.on('error', () => undefined);
    while (statuses.length === 0) await new Promise((r) => setTimeout(r, 10));
    await echo.server.shutdown(5000);
    expect(await ended).toBe(GrpcCode.OK);
    expect(statuses).toEqual(['SERVING', 'NOT_SERVING']);
    health.close();
  });

  it('ends open reflection streams rather than wait for the deadline, as it does health watchers', async () => {
    // A GUI client (Postman, Kreya) keeps its reflection stream open while it is connected:
    // tryShutdown waits for every stream, so the server would sit out the whole deadline and
    // then cancel whatever else was still in flight.
    const echo = await startEcho();
    const reflection = reflectionClient(echo.address);
    const call = reflection.ServerReflectionInfo();
    const answered = new Promise((resolve) => call.once('data', resolve));
    const ended = new Promise<GrpcCode>((resolve) => {
      call.on('status', (status: { code: GrpcCode }) => {
        resolve(status.code);
      });
    });
    call.on('error', () => undefined);
    call.on('data', () => undefined);
    call.write({ list_services: '' });
    await answered;
    const started = Date.now();
    await echo.server.shutdown(5000);
    expect(Date.now() - started).toBeLessThan(2000);
    expect(await ended).toBe(GrpcCode.OK);
    reflection.close();
  });

  it("aborts the handler's signal when the caller cancels, whether read before or after", async () => {
    const seen: { early?: AbortSignal; late?: AbortSignal } = {};
    let entered!: () => void;
    const bothEntered = new Promise<void>((resolve) => {
      let count = 0;
      entered = () => {
        if (++count === 2) resolve();
      };
    });
    let cancelledSeen!: () => void;
    const afterCancel = new Promise<void>((resolve) => (cancelledSeen = resolve));
    const echo = await startEcho({
      handlers: {
        echo: async (request, ctx) => {
          if (request.message === 'early') {
            seen.early = ctx.signal;
            entered();
            await new Promise((resolve) => {
              ctx.signal.addEventListener('abort', resolve);
            });
          } else {
            entered();
            await afterCancel;
            seen.late = ctx.signal;
          }
          return { message: request.message, traceId: '' };
        },
      },
    });
    const client = createClient(EchoServiceService, {
      address: echo.address,
      credentials: insecure,
    });
    const early = new AbortController();
    const late = new AbortController();
    const calls = [
      failure(
        client.echo(
          { message: 'early', failWithCode: 0, requireMessage: false },
          { signal: early.signal },
        ),
      ),
      failure(
        client.echo(
          { message: 'late', failWithCode: 0, requireMessage: false },
          { signal: late.signal },
        ),
      ),
    ];
    await bothEntered;
    early.abort();
    late.abort();
    expect((await calls[0])?.code).toBe(GrpcCode.CANCELLED);
    expect((await calls[1])?.code).toBe(GrpcCode.CANCELLED);
    await new Promise((r) => setTimeout(r, 50));
    cancelledSeen();
    await new Promise((r) => setTimeout(r, 50));
    for (const signal of [seen.early, seen.late]) {
      expect(signal?.aborted).toBe(true);
      expect(signal?.reason).toBeInstanceOf(TandemError);
      expect((signal?.reason as TandemError).code).toBe(GrpcCode.CANCELLED);
    }
    client.close();
    await echo.server.shutdown(1000);
  });

  it('cancels calls still running when the deadline passes', async () => {
    const echo = await startEcho();
    const client = createClient(EchoServiceService, {
      address: echo.address,
      credentials: insecure,
      defaultTimeoutMs: 10_000,
    });
    const stuck = failure(
      client.echo({ message: 'stuck', failWithCode: 0, requireMessage: false, delay: seconds(5) }),
    );
    await new Promise((r) => setTimeout(r, 100));
    const started = Date.now();
    await echo.server.shutdown(300);
    expect(Date.now() - started).toBeLessThan(2000);
    const error = await stuck;
    expect([GrpcCode.CANCELLED, GrpcCode.UNAVAILABLE]).toContain(error.code);
    client.close();
  });
});

describe('health', () => {
  it('says NOT_SERVING until the service is ready, SERVING after, NOT_SERVING while shutting down', async () => {
    const echo = await startEcho();
    echo.server.setServing(false);
    const health = healthClient(echo.address);
    expect(await checkHealth(health, '')).toBe('NOT_SERVING');
    expect(await checkHealth(health, 'tandem.echo.v1.EchoService')).toBe('NOT_SERVING');
    echo.server.setServing(true);
    expect(await checkHealth(health, '')).toBe('SERVING');
    expect(await checkHealth(health, 'tandem.echo.v1.EchoService')).toBe('SERVING');
    await echo.server.shutdown(1000);
    health.close();
  });

  it('answers a reserved service with UNAVAILABLE until its implementation is added, decoding nothing', async () => {
    const { server, logger } = testServer();
    // Its requests are answered unread: no limit of `add` applies yet, and none is needed.
    const decode = jest.spyOn(EchoServiceService.echo, 'requestDeserialize');
    server.reserve(
      EchoServiceService,
      () =>
        new UnavailableError('echo is not serving yet: waiting', {
          reason: 'WAITING',
          retryDelayMs: 1500,
        }),
    );
    const port = await server.listen('127.0.0.1', 0);
    const client = createClient(EchoServiceService, {
      address: `127.0.0.1:${port}`,
      credentials: insecure,
    });
    const health = healthClient(`127.0.0.1:${port}`);
    try {
      const request = { message: 'hi', failWithCode: 0, requireMessage: false };
      const early = await failure(client.echo(request));
      expect(early.code).toBe(GrpcCode.UNAVAILABLE);
      expect(early.message).toContain('echo is not serving yet: waiting');
      expect(early.reason).toBe('WAITING');
      expect(early instanceof UnavailableError && early.retryDelayMs).toBe(1500);
      expect(await checkHealth(health, 'tandem.echo.v1.EchoService')).toBe('NOT_SERVING');
      expect(decode).not.toHaveBeenCalled();

      server.add(EchoServiceService, implement(EchoServiceService, echoHandlers(), { logger }));
      server.setServing(true);
      await expect(client.echo(request)).resolves.toMatchObject({ message: 'hi' });
      expect(await checkHealth(health, 'tandem.echo.v1.EchoService')).toBe('SERVING');
    } finally {
      decode.mockRestore();
      client.close();
      health.close();
      await server.shutdown(1000);
    }
  });
});

describe('server reflection', () => {
  it('lists the services it serves and health, and describes their files, so grpcurl works without protos', async () => {
    const echo = await startEcho();
    const reflection = reflectionClient(echo.address);
    const call = reflection.ServerReflectionInfo();
    const responses: unknown[] = [];
    call.on('data', (m: unknown) => responses.push(m));
    const done = new Promise((resolve) => call.on('end', resolve));
    call.write({ list_services: '' });
    call.write({ file_containing_symbol: 'tandem.echo.v1.EchoService' });
    call.write({ file_containing_symbol: 'grpc.health.v1.Health' });
    call.end();
    await done;
    const names = (
      responses[0] as { list_services_response: { service: { name: string }[] } }
    ).list_services_response.service.map((s) => s.name);
    // Not the other contracts of the descriptor set (AssignmentService, …): this server does not
    // serve them.
    expect(names.sort()).toEqual(['grpc.health.v1.Health', 'tandem.echo.v1.EchoService']);
    for (const response of responses.slice(1)) {
      const files = (response as { file_descriptor_response?: { file_descriptor_proto: Buffer[] } })
        .file_descriptor_response?.file_descriptor_proto;
      expect(files?.length).toBeGreaterThan(0);
    }
    reflection.close();
    await echo.server.shutdown(1000);
  });

  it('is enough for buf curl to call a method and check health, with no proto files', async () => {
    const echo = await startEcho();
    const curl = async (path: string, body?: string): Promise<unknown> => {
      const { stdout } = await run(require.resolve('@bufbuild/buf/bin/buf'), [
        'curl',
        '--protocol',
        'grpc',
        '--http2-prior-knowledge',
        ...(body === undefined ? [] : ['-d', body]),
        `http://${echo.address}/${path}`,
      ]);
      return JSON.parse(stdout);
    };
    try {
      // Linking the echo contract needs its imports (google/protobuf/duration.proto): reflection
      // must serve each file with its dependency list.
      expect(
        await curl('tandem.echo.v1.EchoService/Echo', '{"message": "hi", "delay": "0.001s"}'),
      ).toMatchObject({ message: 'hi' });
      expect(await curl('grpc.health.v1.Health/Check')).toEqual({ status: 'SERVING' });
    } finally {
      await echo.server.shutdown(1000);
    }
  });
});

describe('deadline and cancellation propagation', () => {
  it('keeps no listener on a long-lived signal once its calls are done', async () => {
    const echo = await startEcho();
    const client = createClient(EchoServiceService, {
      address: echo.address,
      credentials: insecure,
    });
    const shutdown = new AbortController();
    try {
      for (let i = 0; i < 20; i++) {
        await client
          .echo(
            {
              message: 'm',
              failWithCode: i % 2 === 0 ? 0 : GrpcCode.NOT_FOUND,
              requireMessage: false,
            },
            { signal: shutdown.signal },
          )
          .catch(() => undefined);
      }
      expect(getEventListeners(shutdown.signal, 'abort')).toHaveLength(0);
    } finally {
      client.close();
      await echo.server.shutdown(1000);
    }
  });

  it('gives an outbound call made for an inbound one no more than what is left of its deadline', async () => {
    const downstream = await startEcho();
    const downstreamClient = createClient(EchoServiceService, {
      address: downstream.address,
      credentials: insecure,
      defaultTimeoutMs: 60_000,
    });
    let seenDeadline: Date | undefined;
    const upstream = await startEcho({
      handlers: {
        echo: async (request, ctx) => {
          seenDeadline = ctx.deadline;
          // Asks downstream to wait 3 s; the inbound budget of 300 ms must cut it short.
          return downstreamClient.echo({ ...request, delay: seconds(3) }, { parent: ctx });
        },
      },
    });
    const client = createClient(EchoServiceService, {
      address: upstream.address,
      credentials: insecure,
    });
    const started = Date.now();
    const error = await failure(
      client.echo({ message: 'hop', failWithCode: 0, requireMessage: false }, { timeoutMs: 300 }),
    );
    expect(error.code).toBe(GrpcCode.DEADLINE_EXCEEDED);
    expect(Date.now() - started).toBeLessThan(2000);
    expect(seenDeadline).toBeInstanceOf(Date);
    client.close();
    downstreamClient.close();
    await Promise.all([upstream.server.shutdown(1000), downstream.server.shutdown(1000)]);
  });
  it('sends a timeout of weeks as one a grpc-js server reads, not as an instant deadline', async () => {
    const echo = await startEcho();
    const client = createClient(EchoServiceService, {
      address: echo.address,
      credentials: insecure,
    });
    try {
      // 30 days: sent as is, a grpc-js server wraps it past 2^31 ms and fails the call at once.
      const reply = await client.echo(
        { message: 'later', failWithCode: 0, requireMessage: false, delay: seconds(0.1) },
        { timeoutMs: 30 * 86_400_000 },
      );
      expect(reply.message).toBe('later');
    } finally {
      client.close();
      await echo.server.shutdown(1000);
    }
  });

  it('cancels an outbound call made for an inbound one when its caller cancels', async () => {
    let downstreamCancelled!: () => void;
    const cancelledDownstream = new Promise<void>((resolve) => {
      downstreamCancelled = resolve;
    });
    let enteredDownstream!: () => void;
    const inDownstream = new Promise<void>((resolve) => {
      enteredDownstream = resolve;
    });
    const downstream = await startEcho({
      handlers: {
        echo: async (request, ctx) => {
          enteredDownstream();
          ctx.signal.addEventListener('abort', () => {
            downstreamCancelled();
          });
          await new Promise((resolve) => setTimeout(resolve, 3000));
          return { message: request.message, traceId: '' };
        },
      },
    });
    const downstreamClient = createClient(EchoServiceService, {
      address: downstream.address,
      credentials: insecure,
      defaultTimeoutMs: 60_000,
    });
    const upstream = await startEcho({
      handlers: {
        echo: (request, ctx) => downstreamClient.echo(request, { parent: ctx }),
      },
    });
    const client = createClient(EchoServiceService, {
      address: upstream.address,
      credentials: insecure,
      defaultTimeoutMs: 60_000,
    });
    const caller = new AbortController();
    const call = failure(
      client.echo(
        { message: 'hop', failWithCode: 0, requireMessage: false },
        { signal: caller.signal },
      ),
    );
    // Cancelled once the call has reached the second hop.
    await inDownstream;
    const started = Date.now();
    caller.abort();
    expect((await call).code).toBe(GrpcCode.CANCELLED);
    await cancelledDownstream;
    expect(Date.now() - started).toBeLessThan(2000);
    client.close();
    downstreamClient.close();
    await Promise.all([upstream.server.shutdown(1000), downstream.server.shutdown(1000)]);
  });
});

describe('admin token', () => {
  it('refuses admin RPCs without the token or with a wrong one, and accepts the right one', async () => {
    const echo = await startEcho({ auth: bearerTokenAuth('s3cret'), adminMethods: ['echo'] });
    const call = (token?: string, scheme = 'Bearer') => {
      const metadata = new Metadata();
      if (token !== undefined) metadata.set('authorization', `${scheme} ${token}`);
      const client = createClient(EchoServiceService, {
        address: echo.address,
        credentials: insecure,
        metadata,
      });
      return client
        .echo({ message: 'admin', failWithCode: 0, requireMessage: false })
        .then(
          (r) => r.message,
          (e: unknown) => (e instanceof TandemError ? e.code : 'unexpected'),
        )
        .finally(() => {
          client.close();
        });
    };
    try {
      expect(await call()).toBe(GrpcCode.UNAUTHENTICATED);
      expect(await call('wrong')).toBe(GrpcCode.PERMISSION_DENIED);
      expect(await call('s3cret')).toBe('admin');
      // The scheme is case-insensitive (RFC 7235 §2.1); the token is not.
      expect(await call('s3cret', 'bearer')).toBe('admin');
      expect(await call('S3CRET', 'BEARER')).toBe(GrpcCode.PERMISSION_DENIED);
      expect(await call('s3cret', 'Basic')).toBe(GrpcCode.UNAUTHENTICATED);
    } finally {
      await echo.server.shutdown(1000);
    }
  });
});

describe('implement()', () => {
  it('refuses to build a service with a missing handler instead of serving UNIMPLEMENTED', () => {
    const logger = { error: () => undefined } as never;
    expect(() => implement(EchoServiceService, {} as never, { logger })).toThrow(/no handler/);
  });
});
