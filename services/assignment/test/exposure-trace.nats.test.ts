/**
 * An exposure event continues the trace of the call that applied it (DESIGN.md, Events): the
 * caller's span → the service's Resolve span → the publish span, whose context travels in the
 * event's `traceparent` header. The exposure is published later, from the buffered publisher's
 * background loop, so this holds only because the event keeps the context it was logged in.
 */
import { rmSync } from 'node:fs';
import { trace } from '@opentelemetry/api';
import {
  CreateExperimentRequest,
  StartExperimentRequest,
} from '../../../gen/ts/tandem/assignment/v1/assignment_service';
import { ExposureEvent } from '../../../gen/ts/tandem/events/v1/exposure_event';
import type { EventBus } from '../../platform/src/events/bus';
import { connectNatsBus } from '../../platform/src/events/nats-bus';
import { describeWithNats, natsUrl, uniqueName } from '../../platform/test/support/integration';
import { installTestTracing, type TestTracing } from '../../platform/test/support/tracing';
import { exposureStream } from '../src/events/streams';
import { experiment, resolveRequest } from './support/fixtures';
import {
  eventually,
  startTestAssignment,
  temporaryDataDir,
  type TestAssignment,
} from './support/harness';

describeWithNats('Exposure events and tracing on NATS JetStream', () => {
  const url = natsUrl ?? '';
  let tracing: TestTracing;
  const surface = uniqueName('traced').replace(/_/g, '-').toLowerCase();
  let dataDir: string;
  let service: TestAssignment;
  let bus: EventBus;

  beforeAll(async () => {
    tracing = installTestTracing();
    dataDir = temporaryDataDir();
    service = await startTestAssignment({ dataDir, natsUrl: url });
    bus = await connectNatsBus({ servers: url, name: 'assignment-trace-observer' });
    await service.admin.createExperiment(
      CreateExperimentRequest.fromPartial({
        experiment: experiment('traced', { surfaces: [surface] }),
      }),
    );
    await service.admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'traced' }));
  });

  afterAll(async () => {
    await service.stop();
    await bus.close();
    rmSync(dataDir, { recursive: true, force: true });
    await tracing.shutdown();
  });

  it('publishes the exposure of Resolve(apply) in the caller’s trace', async () => {
    const unit = uniqueName('traced-unit');
    const received: { headers: Readonly<Record<string, string>> }[] = [];
    const subscription = await bus.subscribe(
      {
        stream: exposureStream(0).name,
        durable: uniqueName('trace-watch'),
        codec: ExposureEvent,
        deliverPolicy: 'new',
      },
      (delivered) => {
        if (delivered.event.unit?.id === unit) received.push({ headers: delivered.headers });
        return Promise.resolve();
      },
    );
    try {
      const caller = await trace.getTracer('test').startActiveSpan('caller', async (span) => {
        const response = await service.client.resolve(
          resolveRequest(unit, { surfaces: [surface], apply: true }),
        );
        expect(response.exposures?.loggedCount).toBe(1);
        span.end();
        return span.spanContext();
      });
      await eventually(() => {
        expect(received).toHaveLength(1);
      });
      const [, traceId, spanId] = (received[0]?.headers.traceparent ?? '').split('-');
      expect(traceId).toBe(caller.traceId);
      // The publish span ends when the publisher has the stream's ack, which may come after the
      // observer (on another connection) has the message.
      await eventually(() => {
        const ended = tracing.exporter.getFinishedSpans();
        expect(ended.find((span) => span.spanContext().spanId === spanId)?.name).toMatch(
          /^publish /,
        );
      });
      const spans = tracing.exporter.getFinishedSpans();
      const publish = spans.find((span) => span.spanContext().spanId === spanId);
      const resolve = spans.find(
        (span) => span.spanContext().spanId === publish?.parentSpanContext?.spanId,
      );
      expect(resolve?.name).toBe('tandem.assignment.v1.AssignmentService/Resolve');
    } finally {
      await subscription.stop();
    }
  });
});
