import { credentials } from '@grpc/grpc-js';
import { context, propagation, SpanKind, trace } from '@opentelemetry/api';
import { EchoServiceService } from '../../../../gen/ts/tandem/echo/v1/echo_service';
import { UnavailableError } from '../../src/errors';
import { createClient, serverAttributes } from '../../src/grpc/client';
import { startEcho, type RunningEcho } from '../support/echo';
import { failure } from '../support/failure';
import { installTestTracing, type TestTracing } from '../support/tracing';

describe('tracing across a gRPC hop', () => {
  let tracing: TestTracing;
  let echo: RunningEcho;

  beforeAll(async () => {
    tracing = installTestTracing();
    echo = await startEcho();
  });

  afterAll(async () => {
    await echo.server.shutdown(1000);
    await tracing.shutdown();
  });

  beforeEach(() => {
    tracing.exporter.reset();
  });

  it('continues the caller trace in a SERVER span that is the child of the CLIENT span', async () => {
    const client = createClient(EchoServiceService, {
      address: echo.address,
      credentials: credentials.createInsecure(),
    });
    const tracer = trace.getTracer('test');
    const { traceId, response } = await tracer.startActiveSpan('backend request', async (root) => {
      const r = await client.echo({ message: 'hi', failWithCode: 0, requireMessage: false });
      root.end();
      return { traceId: root.spanContext().traceId, response: r };
    });
    client.close();

    expect(response.traceId).toBe(traceId);
    const spans = tracing.exporter.getFinishedSpans();
    const clientSpan = spans.find((s) => s.kind === SpanKind.CLIENT);
    const serverSpan = spans.find((s) => s.kind === SpanKind.SERVER);
    expect(clientSpan?.name).toBe('tandem.echo.v1.EchoService/Echo');
    expect(clientSpan?.attributes).toMatchObject({
      'rpc.system': 'grpc',
      'server.address': '127.0.0.1',
      'server.port': echo.port,
    });
    expect(serverSpan?.spanContext().traceId).toBe(traceId);
    expect(serverSpan?.parentSpanContext?.spanId).toBe(clientSpan?.spanContext().spanId);
    expect(serverSpan?.attributes).toMatchObject({
      'rpc.system': 'grpc',
      'rpc.service': 'tandem.echo.v1.EchoService',
      'rpc.method': 'Echo',
      'rpc.grpc.status_code': 0,
    });
  });

  it("hands the caller's baggage to the handler, with the trace", async () => {
    let seen: string | undefined;
    const echoing = await startEcho({
      handlers: {
        echo: (request) => {
          seen = propagation.getBaggage(context.active())?.getEntry('tenant')?.value;
          return Promise.resolve({ message: request.message, traceId: '' });
        },
      },
    });
    const client = createClient(EchoServiceService, {
      address: echoing.address,
      credentials: credentials.createInsecure(),
    });
    try {
      const baggage = propagation.createBaggage({ tenant: { value: 'acme' } });
      await context.with(propagation.setBaggage(context.active(), baggage), () =>
        trace.getTracer('test').startActiveSpan('backend request', async (root) => {
          await client.echo({ message: 'hi', failWithCode: 0, requireMessage: false });
          root.end();
        }),
      );
      expect(seen).toBe('acme');
    } finally {
      client.close();
      await echoing.server.shutdown(1000);
    }
  });

  it('marks a server fault as an error span but not a caller mistake', async () => {
    const client = createClient(EchoServiceService, {
      address: echo.address,
      credentials: credentials.createInsecure(),
    });
    await failure(client.echo({ message: '', failWithCode: 0, requireMessage: true }));
    await failure(client.echo({ message: 'x', failWithCode: 15, requireMessage: false }));
    client.close();
    const servers = tracing.exporter.getFinishedSpans().filter((s) => s.kind === SpanKind.SERVER);
    expect(servers.map((s) => s.attributes['rpc.grpc.status_code'])).toEqual([3, 13]);
    expect(servers.map((s) => s.status.code)).toEqual([0, 2]);
    expect(servers[1]?.events.some((e) => e.name === 'exception')).toBe(true);
  });

  it("records a server fault's cause, which the caller is not told", async () => {
    // As the MongoDB adapter maps an unreachable server: the driver's message names the host.
    const driverError = new Error('connect ECONNREFUSED 10.0.0.5:27017');
    const failing = await startEcho({
      handlers: {
        echo: () =>
          Promise.reject(
            new UnavailableError('storage is unavailable; retry with backoff', {
              cause: driverError,
            }),
          ),
      },
    });
    const client = createClient(EchoServiceService, {
      address: failing.address,
      credentials: credentials.createInsecure(),
    });
    try {
      const error = await failure(
        client.echo({ message: 'x', failWithCode: 0, requireMessage: false }),
      );
      expect(error.message).toBe('storage is unavailable; retry with backoff');
    } finally {
      client.close();
      await failing.server.shutdown(1000);
    }
    const server = tracing.exporter.getFinishedSpans().find((s) => s.kind === SpanKind.SERVER);
    const exceptions = (server?.events ?? [])
      .filter((e) => e.name === 'exception')
      .map((e) => e.attributes?.['exception.message']);
    expect(exceptions).toEqual([
      'storage is unavailable; retry with backoff',
      'connect ECONNREFUSED 10.0.0.5:27017',
    ]);
  });
});

describe("a client span's server attributes", () => {
  it('name the host and port of every form of target', () => {
    expect(
      [
        'assignment:50051',
        'dns:///assignment.tandem.svc:50051',
        'dns:assignment:50051',
        '[::1]:50051',
        'localhost',
        'unix:/run/tandem.sock',
      ].map(serverAttributes),
    ).toEqual([
      { 'server.address': 'assignment', 'server.port': 50051 },
      { 'server.address': 'assignment.tandem.svc', 'server.port': 50051 },
      { 'server.address': 'assignment', 'server.port': 50051 },
      { 'server.address': '::1', 'server.port': 50051 },
      { 'server.address': 'localhost' },
      { 'server.address': '/run/tandem.sock' },
    ]);
  });
});
