/**
 * Spans are exported to a collector (often a hosted backend, read by more people than the
 * service's logs): what a dependency said, which the kit records on the span as the failure's
 * cause, must lose the credentials of any URL in it there too, as it does in the logs
 * (`logging.ts`). Checked for a call's SERVER span and for a consumer's CONSUMER span.
 */
import { credentials } from '@grpc/grpc-js';
import { SpanKind, trace } from '@opentelemetry/api';
import type { ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { EchoRequest, EchoServiceService } from '../../../../gen/ts/tandem/echo/v1/echo_service';
import { UnavailableError } from '../../src/errors';
import { createInProcessBus } from '../../src/events/in-process-bus';
import { createClient } from '../../src/grpc/client';
import { eventually } from '../events/event-bus-contract';
import { startEcho } from '../support/echo';
import { failure } from '../support/failure';
import { installTestTracing, type TestTracing } from '../support/tracing';

const SECRETS = ['s3cret', 'hunter2'];

/** Everything a span carries as text: status, attributes, events' attributes. */
function spanText(span: ReadableSpan): string {
  return JSON.stringify({
    status: span.status,
    attributes: span.attributes,
    events: span.events.map((event) => ({ name: event.name, attributes: event.attributes })),
  });
}

function dependencyError(): Error {
  return new Error('connect ECONNREFUSED 10.0.0.5:27017 (mongodb://app:s3cret@db:27017)', {
    cause: new Error('via nats://operator:hunter2@nats-0:4222'),
  });
}

describe('spans of failures whose cause quotes a URL with credentials', () => {
  let tracing: TestTracing;

  beforeAll(() => {
    tracing = installTestTracing();
  });

  afterAll(async () => {
    await tracing.shutdown();
  });

  beforeEach(() => {
    tracing.exporter.reset();
  });

  it('record the cause on the SERVER span without the credentials', async () => {
    const failing = await startEcho({
      handlers: {
        echo: () =>
          Promise.reject(
            new UnavailableError('storage is unavailable; retry with backoff', {
              cause: dependencyError(),
            }),
          ),
      },
    });
    const client = createClient(EchoServiceService, {
      address: failing.address,
      credentials: credentials.createInsecure(),
    });
    try {
      await trace.getTracer('test').startActiveSpan('caller', async (span) => {
        await failure(client.echo({ message: 'x', failWithCode: 0, requireMessage: false }));
        span.end();
      });
    } finally {
      client.close();
      await failing.server.shutdown(1000);
    }
    const server = tracing.exporter.getFinishedSpans().find((s) => s.kind === SpanKind.SERVER);
    expect(server).toBeDefined();
    const text = spanText(server!);
    // The cause is still recorded, host and all: only the credentials go.
    expect(text).toContain('mongodb://***@db:27017');
    expect(text).toContain('nats://***@nats-0:4222');
    for (const secret of SECRETS) expect(text).not.toContain(secret);
    // `exception.type` is the error's class, not the numeric gRPC code a TandemError carries.
    expect(server!.events[0]?.attributes?.['exception.type']).toBe('UnavailableError');
  });

  it('record a failed handler on the CONSUMER span without the credentials', async () => {
    const bus = createInProcessBus();
    const subject = 'tandem.test.secrets';
    await bus.declareStream({ name: 'SECRETS', subjects: [subject], storage: 'memory' });
    const subscription = await bus.subscribe(
      {
        stream: 'SECRETS',
        durable: 'secrets',
        filterSubjects: [subject],
        codec: EchoRequest,
        maxDeliver: 1,
      },
      () => Promise.reject(dependencyError()),
    );
    try {
      await bus.publish(subject, EchoRequest, EchoRequest.fromPartial({ message: 'x' }), {
        eventId: 'secrets-1',
      });
      await eventually(() => {
        expect(
          tracing.exporter.getFinishedSpans().filter((s) => s.kind === SpanKind.CONSUMER),
        ).toHaveLength(1);
      });
    } finally {
      await subscription.stop();
      await bus.close();
    }
    const consumer = tracing.exporter.getFinishedSpans().find((s) => s.kind === SpanKind.CONSUMER);
    const text = spanText(consumer!);
    expect(text).toContain('mongodb://***@db:27017');
    for (const secret of SECRETS) expect(text).not.toContain(secret);
  });
});
