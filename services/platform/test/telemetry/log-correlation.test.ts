/**
 * Log correlation on a service that exports no spans (no tracer provider,
 * the default), as the NodeSDK sets it up: W3C trace context and baggage propagators, no provider.
 * A caller that sends `baggage` but no `traceparent` (a gateway adding a tenant) must not get log
 * lines stamped with the all-zero invalid trace id, which every such line would then share.
 * And on one that records spans, the lines an event consumer writes about a failed handler.
 */
import { credentials, Metadata } from '@grpc/grpc-js';
import { context, propagation, SpanKind, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import {
  CompositePropagator,
  W3CBaggagePropagator,
  W3CTraceContextPropagator,
} from '@opentelemetry/core';
import { EchoRequest, EchoServiceService } from '../../../../gen/ts/tandem/echo/v1/echo_service';
import type { EventCodec } from '../../src/events/bus';
import { createInProcessBus } from '../../src/events/in-process-bus';
import { createClient } from '../../src/grpc/client';
import { capturedLogger } from '../support/captured-logger';
import { startEcho } from '../support/echo';
import { eventually } from '../events/event-bus-contract';
import { installTestTracing, type TestTracing } from '../support/tracing';

describe('log lines of a call that brings baggage but no trace', () => {
  beforeAll(() => {
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    propagation.setGlobalPropagator(
      new CompositePropagator({
        propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()],
      }),
    );
  });

  afterAll(() => {
    propagation.disable();
    context.disable();
  });

  it('carry no trace id, rather than the invalid all-zero one', async () => {
    const { lines, logger } = capturedLogger('echo-test');
    const echo = await startEcho({
      logger,
      handlers: {
        echo: (request, ctx) => {
          ctx.logger.info('handling');
          return Promise.resolve({ message: request.message, traceId: '' });
        },
      },
    });
    const client = createClient(EchoServiceService, {
      address: echo.address,
      credentials: credentials.createInsecure(),
    });
    try {
      const metadata = new Metadata();
      metadata.set('baggage', 'tenant=acme');
      await client.echo({ message: 'hi', failWithCode: 0, requireMessage: false }, { metadata });
      const handled = lines.find((line) => line.msg === 'handling');
      expect(handled).toBeDefined();
      expect(handled?.trace_id).not.toBe('00000000000000000000000000000000');
      expect(handled?.span_id).not.toBe('0000000000000000');
    } finally {
      client.close();
      await echo.server.shutdown(1000);
    }
  });
});

/**
 * A consumer's handler failing: the lines that say the event will be redelivered, or is dropped,
 * are the ones an operator is alerted on, and must lead to the CONSUMER span that recorded the
 * failure (and through it to the producer's trace). They are written once the handler's span has
 * ended, by the adapter settling the event.
 */
describe('log lines of an event whose handler fails', () => {
  let tracing: TestTracing;

  beforeAll(() => {
    tracing = installTestTracing();
  });

  afterAll(async () => {
    await tracing.shutdown();
  });

  it('carry the trace and span of the consumer span that failed', async () => {
    const { lines, logger } = capturedLogger('bus-test');
    const bus = createInProcessBus({ logger });
    const subject = 'tandem.test.failing';
    await bus.declareStream({ name: 'FAILING', subjects: [subject], storage: 'memory' });
    const subscription = await bus.subscribe(
      {
        stream: 'FAILING',
        durable: 'failing',
        filterSubjects: [subject],
        codec: EchoRequest,
        maxDeliver: 2,
        initialRetryDelayMs: 1,
        maxRetryDelayMs: 1,
      },
      () => Promise.reject(new Error('cannot apply it')),
    );
    try {
      await trace.getTracer('test').startActiveSpan('backend request', async (span) => {
        await bus.publish(subject, EchoRequest, EchoRequest.fromPartial({ message: 'x' }), {
          eventId: 'failing-1',
        });
        span.end();
      });
      const message = (line: Record<string, unknown>): string => String(line.msg);
      await eventually(() => {
        expect(lines.map(message)).toContainEqual(expect.stringMatching(/^event dropped/));
      });
      const consumers = tracing.exporter
        .getFinishedSpans()
        .filter((s) => s.kind === SpanKind.CONSUMER);
      expect(consumers).toHaveLength(2);
      const retried = lines.find((line) => message(line).startsWith('event handler failed'));
      const dropped = lines.find((line) => message(line).startsWith('event dropped'));
      for (const [line, span] of [
        [retried, consumers[0]],
        [dropped, consumers[1]],
      ] as const) {
        expect(line).toMatchObject({
          trace_id: span?.spanContext().traceId,
          span_id: span?.spanContext().spanId,
        });
      }
    } finally {
      await subscription.stop();
      await bus.close();
    }
  });

  it("carry the producer's trace for an event that cannot be decoded", async () => {
    const { lines, logger } = capturedLogger('bus-test');
    const bus = createInProcessBus({ logger });
    const subject = 'tandem.test.poison';
    await bus.declareStream({ name: 'POISON', subjects: [subject], storage: 'memory' });
    const subscription = await bus.subscribe(
      { stream: 'POISON', durable: 'poison', filterSubjects: [subject], codec: EchoRequest },
      () => Promise.resolve(),
    );
    /** Bytes that are no protobuf message: a field of wire type 7, which does not exist. */
    const raw: EventCodec<Uint8Array> = {
      encode: (bytes) => ({ finish: () => bytes }),
      decode: (bytes) => bytes,
    };
    try {
      let traceId = '';
      await trace.getTracer('test').startActiveSpan('backend request', async (span) => {
        traceId = span.spanContext().traceId;
        await bus.publish(subject, raw, Uint8Array.from([0x0f]), { eventId: 'poison-1' });
        span.end();
      });
      const terminated = (): Record<string, unknown> | undefined =>
        lines.find((line) => line.msg === 'undecodable event terminated');
      await eventually(() => {
        expect(terminated()).toBeDefined();
      });
      // No consumer span ran for it: the line leads to the producer's trace.
      expect(terminated()).toMatchObject({ trace_id: traceId, eventId: 'poison-1' });
    } finally {
      await subscription.stop();
      await bus.close();
    }
  });
});
