/**
 * The spans around publishing and processing an event, shared by both adapters so a trace looks
 * the same whichever bus carried it. Attribute names follow the OpenTelemetry messaging semantic
 * conventions; no payload data is recorded (events may carry user data).
 */
import {
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Context,
  type Link,
  type Span,
  type Tracer,
} from '@opentelemetry/api';
import { recordExceptionWithCauses, statusMessageOf } from '../telemetry/exceptions';

/** The instrumentation scope of every event span. */
export const EVENTS_TRACER_NAME = 'tandem.events';

/** Looked up per call so a tracer provider registered after import is still used. */
function eventsTracer(): Tracer {
  return trace.getTracer(EVENTS_TRACER_NAME);
}

/** Marks `span` as failed with `error` (and its causes), as the semantic conventions ask. */
export function recordFailure(span: Span, error: unknown): void {
  if (error instanceof Error) recordExceptionWithCauses(span, error);
  span.setStatus({ code: SpanStatusCode.ERROR, message: statusMessageOf(error) });
}

/**
 * Runs `publish` inside a PRODUCER span `publish <subject>`. The span is active while `publish`
 * runs, so the `traceparent` it injects names this span as the consumer's parent.
 */
export async function withPublishSpan<R>(
  subject: string,
  eventId: string,
  publish: () => Promise<R>,
): Promise<R> {
  const attributes: Attributes = {
    'messaging.system': 'nats',
    'messaging.operation.type': 'send',
    'messaging.operation.name': 'publish',
    'messaging.destination.name': subject,
    'messaging.message.id': eventId,
  };
  return eventsTracer().startActiveSpan(
    `publish ${subject}`,
    { kind: SpanKind.PRODUCER, attributes },
    async (span) => {
      try {
        return await publish();
      } catch (error) {
        recordFailure(span, error);
        throw error;
      } finally {
        span.end();
      }
    },
  );
}

/** What a consumer span describes. */
export interface ProcessSpanFacts {
  readonly subject: string;
  /** The event's id; none for a batch (the conventions set it for a single message only). */
  readonly eventId?: string;
  readonly durable: string;
  readonly deliveryCount: number;
  /** Extra attributes, known before the span starts (a batch's size). */
  readonly attributes?: Attributes;
  /** Links known before the span starts, so the sampler sees them (a batch's producers). */
  readonly links?: Link[];
}

/**
 * Runs `process` inside a CONSUMER span `process <subject>` whose parent is `parent` (the
 * producer's context extracted from the headers). `process` gets the span so it can record an
 * outcome that is not an exception (an overrun of the ack wait).
 */
export async function withProcessSpan<R>(
  facts: ProcessSpanFacts,
  parent: Context,
  process: (span: Span) => Promise<R>,
): Promise<R> {
  const attributes: Attributes = {
    'messaging.system': 'nats',
    'messaging.operation.type': 'process',
    'messaging.operation.name': 'process',
    'messaging.destination.name': facts.subject,
    'messaging.destination.subscription.name': facts.durable,
    'tandem.events.delivery_count': facts.deliveryCount,
    ...facts.attributes,
  };
  if (facts.eventId !== undefined) attributes['messaging.message.id'] = facts.eventId;
  return eventsTracer().startActiveSpan(
    `process ${facts.subject}`,
    { kind: SpanKind.CONSUMER, attributes, ...(facts.links ? { links: facts.links } : {}) },
    parent,
    async (span) => {
      try {
        return await process(span);
      } finally {
        span.end();
      }
    },
  );
}
