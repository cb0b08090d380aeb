/**
 * A batch consumer span (several events) with the parent-based ratio sampler the deployment ships
 * (`parentbased_traceidratio`, 5%): sampled on its own as a new trace, a sampled request's outcome
 * event would be processed in a span that is almost never recorded, and the request's trace would
 * have no consumer leg. Here the root decision is deterministic: requests (`backend request`) are
 * sampled, every other root (a batch's own trace) is not, as a 5% ratio does for 95% of them.
 */
import { context, propagation, SpanKind, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  ParentBasedSampler,
  SamplingDecision,
  SimpleSpanProcessor,
  type Sampler,
} from '@opentelemetry/sdk-trace-base';
import { EchoRequest } from '../../../../gen/ts/tandem/echo/v1/echo_service';
import { createInProcessBus } from '../../src/events/in-process-bus';

const requestsOnly: Sampler = {
  shouldSample: (_ctx, _traceId, spanName) => ({
    decision:
      spanName === 'backend request'
        ? SamplingDecision.RECORD_AND_SAMPLED
        : SamplingDecision.NOT_RECORD,
  }),
  toString: () => 'requestsOnly',
};

describe('a batch of events from sampled requests', () => {
  const exporter = new InMemorySpanExporter();
  const provider = new BasicTracerProvider({
    sampler: new ParentBasedSampler({ root: requestsOnly }),
    spanProcessors: [new SimpleSpanProcessor(exporter)],
  });

  beforeAll(() => {
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    propagation.setGlobalPropagator(new W3CTraceContextPropagator());
    trace.setGlobalTracerProvider(provider);
  });

  afterAll(async () => {
    await provider.shutdown();
    trace.disable();
    propagation.disable();
    context.disable();
  });

  it('is processed in a recorded span linked to each sampled producer', async () => {
    const bus = createInProcessBus();
    const subject = 'test.batch.outcome';
    await bus.declareStream({ name: 'BATCH_SAMPLING', subjects: [subject], storage: 'memory' });
    const producers: string[] = [];
    for (let i = 0; i < 3; i++) {
      await trace.getTracer('test').startActiveSpan('backend request', async (span) => {
        await bus.publish(subject, EchoRequest, EchoRequest.fromPartial({ message: `m${i}` }), {
          eventId: `event-${i}`,
        });
        producers.push(span.spanContext().spanId);
        span.end();
      });
    }
    const sizes: number[] = [];
    const subscription = await bus.subscribeBatches!(
      { stream: 'BATCH_SAMPLING', durable: 'batch-sampling', codec: EchoRequest },
      (batch) => {
        sizes.push(batch.length);
        return Promise.resolve();
      },
    );
    for (let i = 0; i < 100 && sizes.reduce((a, b) => a + b, 0) < 3; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    await subscription.stop();
    await bus.close();
    expect(sizes).toEqual([3]);

    const publishSpans = exporter.getFinishedSpans().filter((s) => s.kind === SpanKind.PRODUCER);
    expect(publishSpans).toHaveLength(3);
    const consumers = exporter.getFinishedSpans().filter((s) => s.kind === SpanKind.CONSUMER);
    expect(consumers).toHaveLength(1);
    const [consumer] = consumers;
    // Every sampled publish is followed by the processing it caused: linked from the batch's
    // span, which continues the first one's trace.
    expect(consumer?.links.map((l) => l.context.spanId)).toEqual(
      publishSpans.map((s) => s.spanContext().spanId),
    );
    expect(consumer?.spanContext().traceId).toBe(publishSpans[0]?.spanContext().traceId);
    expect(consumer?.parentSpanContext?.spanId).toBe(publishSpans[0]?.spanContext().spanId);
    expect(consumer?.attributes['messaging.batch.message_count']).toBe(3);
    expect(consumer?.attributes['messaging.message.id']).toBeUndefined();
  });
});
