/**
 * Responses the server cannot send, and calls nobody waits for any more: what the caller gets is
 * what the call's span, its `rpc.server.call.duration` point and the log record.
 */
import { Writable } from 'node:stream';
import { credentials, status as GrpcCode } from '@grpc/grpc-js';
import { SpanKind } from '@opentelemetry/api';
import { EchoServiceService } from '../../../../gen/ts/tandem/echo/v1/echo_service';
import { FeatureStoreServiceService } from '../../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import { createClient } from '../../src/grpc/client';
import { implement } from '../../src/grpc/handlers';
import { createLogger } from '../../src/logging';
import { failure } from '../support/failure';
import { installTestMetrics, type TestMetrics } from '../support/metrics';
import { installTestTracing, type TestTracing } from '../support/tracing';
import { startEcho, testServer } from '../support/echo';

/** A kit server whose log lines are kept in `lines`. */
function loggingServer(maxMessageBytes: number) {
  const lines: string[] = [];
  const logger = createLogger({
    service: 'responses-test',
    level: 'info',
    destination: new Writable({
      write(chunk, _encoding, done) {
        lines.push(String(chunk));
        done();
      },
    }),
  });
  return { ...testServer(maxMessageBytes, logger), lines };
}

describe('a response the server cannot send', () => {
  let tracing: TestTracing;
  let metrics: TestMetrics;

  // Once per file: the kit's tracer is taken from the provider registered first.
  beforeAll(() => {
    tracing = installTestTracing();
  });

  afterAll(async () => {
    await tracing.shutdown();
  });

  beforeEach(() => {
    tracing.exporter.reset();
    metrics = installTestMetrics();
  });

  afterEach(async () => {
    await metrics.shutdown();
  });

  const recorded = async (method: string): Promise<unknown[]> => [
    tracing.exporter
      .getFinishedSpans()
      .find((span) => span.kind === SpanKind.SERVER && span.name.endsWith(`/${method}`))
      ?.attributes['rpc.grpc.status_code'],
    ...(await metrics.points('rpc.server.call.duration')).map(
      (point) => point.attributes['rpc.grpc.status_code'],
    ),
  ];

  it('is INTERNAL with its ErrorInfo when it does not serialize, logged and recorded so', async () => {
    const { server, logger, lines } = loggingServer(4 * 1024 * 1024);
    const definition = { writeFeatures: FeatureStoreServiceService.writeFeatures };
    // A handler's bug: a fraction where the message holds an integer count.
    server.add(
      definition,
      implement(
        definition,
        { writeFeatures: () => Promise.resolve({ rowsWritten: 3 / 2, rowsSkippedOlder: 0 }) },
        { logger },
      ),
    );
    const port = await server.listen('127.0.0.1', 0);
    server.setServing(true);
    const client = createClient(definition, {
      address: `127.0.0.1:${port}`,
      credentials: credentials.createInsecure(),
    });
    try {
      const error = await failure(
        client.writeFeatures({ requestId: '', featureView: 'v', rows: [], columns: [] } as never),
      );
      expect([error.code, error.reason, error.message]).toEqual([
        GrpcCode.INTERNAL,
        'INTERNAL',
        'internal error',
      ]);
      expect(await recorded('WriteFeatures')).toEqual([GrpcCode.INTERNAL, GrpcCode.INTERNAL]);
      const logged = lines.filter((line) => line.includes('could not be serialized'));
      expect(logged).toHaveLength(1);
    } finally {
      client.close();
      await server.shutdown(1000);
    }
  });

  it('is RESOURCE_EXHAUSTED when it is larger than the server sends, recorded so', async () => {
    const echo = await startEcho({
      maxMessageBytes: 64 * 1024,
      handlers: {
        echo: (request) =>
          Promise.resolve({
            message: request.message === 'large' ? 'x'.repeat(100 * 1024) : request.message,
            traceId: '',
          }),
      },
    });
    const client = createClient(EchoServiceService, {
      address: echo.address,
      credentials: credentials.createInsecure(),
    });
    try {
      const error = await failure(
        client.echo({ message: 'large', failWithCode: 0, requireMessage: false }),
      );
      expect([error.code, error.reason]).toEqual([
        GrpcCode.RESOURCE_EXHAUSTED,
        'RESPONSE_TOO_LARGE',
      ]);
      expect(error.message).toMatch(/is 102404 bytes, more than the 65536 this server sends/);
      expect(await recorded('Echo')).toEqual([
        GrpcCode.RESOURCE_EXHAUSTED,
        GrpcCode.RESOURCE_EXHAUSTED,
      ]);
      // The connection goes on serving.
      const ok = await client.echo({ message: 'y', failWithCode: 0, requireMessage: false });
      expect(ok.message).toBe('y');
    } finally {
      client.close();
      await echo.server.shutdown(1000);
    }
  });
});

describe('a call whose deadline passed while its handler ran', () => {
  it('has its response neither serialized nor logged as too large', async () => {
    const { server, logger, lines } = loggingServer(64 * 1024);
    let serialized = 0;
    const echo = EchoServiceService.echo;
    const definition = {
      echo: {
        ...echo,
        responseSerialize: (value: Parameters<typeof echo.responseSerialize>[0]) => {
          serialized++;
          return echo.responseSerialize(value);
        },
      },
    };
    let answered = (): void => undefined;
    const handlerAnswered = new Promise<void>((resolve) => (answered = resolve));
    server.add(
      definition,
      implement(
        definition,
        {
          echo: async () => {
            // Outlives the caller's deadline, then answers more than the server sends.
            await new Promise((resolve) => setTimeout(resolve, 300));
            setTimeout(answered, 50);
            return { message: 'x'.repeat(1024 * 1024), traceId: '' };
          },
        },
        { logger, maxResponseBytes: 64 * 1024 },
      ),
    );
    const port = await server.listen('127.0.0.1', 0);
    server.setServing(true);
    const client = createClient(EchoServiceService, {
      address: `127.0.0.1:${port}`,
      credentials: credentials.createInsecure(),
    });
    try {
      const error = await failure(
        client.echo({ message: 'a', failWithCode: 0, requireMessage: false }, { timeoutMs: 100 }),
      );
      expect(error.code).toBe(GrpcCode.DEADLINE_EXCEEDED);
      await handlerAnswered;
      expect(serialized).toBe(0);
      expect(lines.filter((line) => line.includes('larger than this server sends'))).toEqual([]);
    } finally {
      client.close();
      await server.shutdown(1000);
    }
  });
});

describe('a call whose deadline passed before it started', () => {
  it('does not run its handler', async () => {
    const ran: string[] = [];
    const echo = await startEcho({
      handlers: {
        echo: (request) => {
          ran.push(request.message);
          if (request.message === 'busy') {
            // A handler holding the loop (or a long collection): grpc-js's deadline timer waits too.
            const until = Date.now() + 200;
            while (Date.now() < until);
          }
          return Promise.resolve({ message: request.message, traceId: '' });
        },
      },
    });
    const client = createClient(EchoServiceService, {
      address: echo.address,
      credentials: credentials.createInsecure(),
    });
    try {
      await client.echo({ message: 'warm-up', failWithCode: 0, requireMessage: false });
      ran.length = 0;
      const outcome = (call: Promise<unknown>): Promise<string> =>
        call.then(
          () => 'OK',
          (error: unknown) => GrpcCode[(error as { code: number }).code] ?? String(error),
        );
      const results = await Promise.all([
        outcome(client.echo({ message: 'busy', failWithCode: 0, requireMessage: false })),
        outcome(
          client.echo(
            { message: 'late', failWithCode: 0, requireMessage: false },
            { timeoutMs: 50 },
          ),
        ),
      ]);
      expect(results).toEqual(['OK', 'DEADLINE_EXCEEDED']);
      expect(ran).toEqual(['busy']);
    } finally {
      client.close();
      await echo.server.shutdown(1000);
    }
  });
});
