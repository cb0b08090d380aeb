import { credentials } from '@grpc/grpc-js';
import { SpanKind, trace } from '@opentelemetry/api';
import { EchoRequest, EchoServiceService } from '../../../../gen/ts/tandem/echo/v1/echo_service';
import type { EventBus } from '../../src/events/bus';
import { connectNatsBus } from '../../src/events/nats-bus';
import { createClient } from '../../src/grpc/client';
import { startEcho, type RunningEcho } from '../support/echo';
import { describeWithNats, natsUrl, uniqueName } from '../support/integration';
import { installTestTracing, type TestTracing } from '../support/tracing';

describeWithNats('a trace started by a client', () => {
  let tracing: TestTracing;
  let bus: EventBus;
  let echo: RunningEcho;
  const stream = uniqueName('TRACE').toUpperCase();
  const subject = `tandem.test.${stream.toLowerCase()}`;

  beforeAll(async () => {
    tracing = installTestTracing();
    bus = await connectNatsBus({ servers: natsUrl!, name: 'trace-test' });
    await bus.declareStream({ name: stream, subjects: [subject], storage: 'memory' });
    // The gRPC handler publishes an event: the hop from gRPC to NATS.
    echo = await startEcho({
      handlers: {
        echo: async (request) => {
          await bus.publish(subject, EchoRequest, request, { eventId: uniqueName('evt') });
          return {
            message: request.message,
            traceId: trace.getActiveSpan()?.spanContext().traceId ?? '',
          };
        },
      },
    });
  });

  afterAll(async () => {
    await echo.server.shutdown(1000);
    await bus.close();
    await tracing.shutdown();
  });

  it('continues through a gRPC hop and a NATS hop to the consumer', async () => {
    let consumerTraceId: string | undefined;
    const consumed = new Promise<void>((resolve) => {
      void bus.subscribe(
        { stream, durable: uniqueName('trace_consumer'), codec: EchoRequest },
        () => {
          consumerTraceId = trace.getActiveSpan()?.spanContext().traceId;
          resolve();
          return Promise.resolve();
        },
      );
    });
    const client = createClient(EchoServiceService, {
      address: echo.address,
      credentials: credentials.createInsecure(),
    });
    const rootTraceId = await trace
      .getTracer('test')
      .startActiveSpan('backend request', async (root) => {
        await client.echo({ message: 'traced', failWithCode: 0, requireMessage: false });
        root.end();
        return root.spanContext().traceId;
      });
    await consumed;
    client.close();
    // The consumer span ends once the handler's promise settles, just after it resolved ours; the
    // producer span when the publisher has the stream's ack, which may come later still.
    const ended = (kind: SpanKind): boolean =>
      tracing.exporter.getFinishedSpans().some((s) => s.kind === kind);
    for (let i = 0; i < 100 && !(ended(SpanKind.CONSUMER) && ended(SpanKind.PRODUCER)); i++) {
      await new Promise((r) => setTimeout(r, 20));
    }

    expect(consumerTraceId).toBe(rootTraceId);
    const spans = tracing.exporter.getFinishedSpans();
    const byKind = (kind: SpanKind) =>
      spans.find((s) => s.kind === kind && s.spanContext().traceId === rootTraceId);
    const server = byKind(SpanKind.SERVER);
    const producer = byKind(SpanKind.PRODUCER);
    const consumer = byKind(SpanKind.CONSUMER);
    expect(server).toBeDefined();
    expect(producer?.parentSpanContext?.spanId).toBe(server?.spanContext().spanId);
    expect(consumer?.parentSpanContext?.spanId).toBe(producer?.spanContext().spanId);
  });
});
