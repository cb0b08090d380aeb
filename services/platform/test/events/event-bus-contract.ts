/**
 * The behaviour every `EventBus` adapter must show, as one suite run against each adapter (NATS
 * JetStream in `nats-bus.test.ts`, in-process in `in-process-bus.test.ts`). A behaviour the dev
 * mode relies on is only trustworthy if the same assertions pass on the production adapter.
 */
import { context, propagation, SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import {
  BasicTracerProvider,
  InMemorySpanExporter,
  SimpleSpanProcessor,
  type ReadableSpan,
} from '@opentelemetry/sdk-trace-base';
import { EchoRequest } from '../../../../gen/ts/tandem/echo/v1/echo_service';
import { InvalidArgumentError, NotFoundError, UnavailableError } from '../../src/errors';
import type {
  BatchConsumerSpec,
  BatchHandler,
  ConsumerSpec,
  DeliveredEvent,
  EventBus,
  EventCodec,
  EventHandler,
  Subscription,
} from '../../src/events/bus';
import { uniqueName } from '../support/integration';
import { installTestMetrics, type TestMetrics } from '../support/metrics';

/** How the suite gets a bus for one test and cleans up after it. */
export interface BusHarness {
  /** A fresh, connected bus; the suite closes it after each test. */
  connect(): Promise<EventBus>;
  /** Deletes a stream the test declared (NATS keeps streams after the bus closes). */
  removeStream(name: string): Promise<void>;
}

/**
 * Retries `assertion` (which may be async; a rejection counts as not yet) until it passes or
 * `timeoutMs` passes, then throws its last error.
 */
export async function eventually(
  assertion: () => void | Promise<void>,
  timeoutMs = 10_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      await assertion();
      return;
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }
}

async function pause(ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms));
}

/** Publishes bytes that are not an `EchoRequest`, to play a corrupt producer. */
const CORRUPT: EventCodec<Uint8Array> = {
  encode: (bytes) => ({ finish: () => bytes }),
  decode: (bytes) => bytes,
};
/** A protobuf field with wire type 7, which does not exist: decoding fails. */
const UNDECODABLE = Uint8Array.from([0x0f]);

function echo(message: string): EchoRequest {
  return { message, failWithCode: 0, delay: undefined, requireMessage: false };
}

/** A handler that records every delivery, then does `more` (which may throw or hang). */
function recorder(
  more: (delivered: DeliveredEvent<EchoRequest>) => void | Promise<void> = () => undefined,
): {
  handler: EventHandler<EchoRequest>;
  deliveries: DeliveredEvent<EchoRequest>[];
} {
  const deliveries: DeliveredEvent<EchoRequest>[] = [];
  return {
    deliveries,
    handler: async (delivered) => {
      deliveries.push(delivered);
      await more(delivered);
    },
  };
}

function messagesOf(deliveries: readonly DeliveredEvent<EchoRequest>[]): string[] {
  return deliveries.map((d) => d.event.message);
}

export function describeEventBusContract(harness: BusHarness): void {
  const exporter = new InMemorySpanExporter();
  const contextManager = new AsyncLocalStorageContextManager();

  beforeAll(() => {
    context.setGlobalContextManager(contextManager.enable());
    propagation.setGlobalPropagator(new W3CTraceContextPropagator());
    trace.setGlobalTracerProvider(
      new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] }),
    );
  });

  afterAll(() => {
    trace.disable();
    propagation.disable();
    context.disable();
  });

  let bus: EventBus;
  let stream: string;
  /** Subjects of this test: `<prefix>.<anything>` is captured by its stream. */
  let prefix: string;
  let subscriptions: Subscription[];

  beforeEach(async () => {
    exporter.reset();
    bus = await harness.connect();
    stream = uniqueName('EVENTS');
    prefix = `test.${stream.toLowerCase()}`;
    subscriptions = [];
    await bus.declareStream({ name: stream, subjects: [`${prefix}.>`], storage: 'memory' });
  });

  afterEach(async () => {
    await Promise.all(subscriptions.map((s) => s.stop()));
    await bus.close();
    await harness.removeStream(stream);
  });

  /** A consumer on this test's stream with a fresh durable and quick retries. */
  function consumer(
    overrides: Partial<BatchConsumerSpec<EchoRequest>> = {},
  ): BatchConsumerSpec<EchoRequest> {
    return {
      stream,
      durable: uniqueName('durable'),
      codec: EchoRequest,
      initialRetryDelayMs: 50,
      maxRetryDelayMs: 200,
      ...overrides,
    };
  }

  async function subscribe(
    spec: ConsumerSpec<EchoRequest>,
    handler: EventHandler<EchoRequest>,
  ): Promise<Subscription> {
    const subscription = await bus.subscribe(spec, handler);
    subscriptions.push(subscription);
    return subscription;
  }

  async function publish(subject: string, message: string, eventId = uniqueName('event')) {
    return bus.publish(`${prefix}.${subject}`, EchoRequest, echo(message), { eventId });
  }

  it('delivers a published event with its id, subject, sequence, time and headers', async () => {
    const { handler, deliveries } = recorder();
    await subscribe(consumer(), handler);
    const before = Date.now();
    const ack = await bus.publish(`${prefix}.exposure`, EchoRequest, echo('hello'), {
      eventId: 'event-1',
      headers: { 'tandem-source': 'test' },
    });

    expect(ack).toEqual({ streamSequence: 1, duplicate: false });
    await eventually(() => {
      expect(deliveries).toHaveLength(1);
    });
    const delivered = deliveries[0]!;
    expect(delivered.event).toEqual(echo('hello'));
    expect(delivered.eventId).toBe('event-1');
    expect(delivered.subject).toBe(`${prefix}.exposure`);
    expect(delivered.deliveryCount).toBe(1);
    expect(delivered.streamSequence).toBe(1);
    expect(delivered.storedAt.getTime()).toBeGreaterThanOrEqual(before - 1000);
    expect(delivered.storedAt.getTime()).toBeLessThanOrEqual(Date.now() + 1000);
    expect(delivered.headers['tandem-source']).toBe('test');
  });

  it('stores an event id once within the duplicate window', async () => {
    const first = await publish('exposure', 'once', 'same-id');
    const second = await publish('exposure', 'once again', 'same-id');
    await publish('exposure', 'fence');
    const { handler, deliveries } = recorder();
    await subscribe(consumer(), handler);

    expect(first.duplicate).toBe(false);
    expect(second).toEqual({ streamSequence: first.streamSequence, duplicate: true });
    await eventually(() => {
      expect(messagesOf(deliveries)).toContain('fence');
    });
    expect(messagesOf(deliveries)).toEqual(['once', 'fence']);
  });

  it('redelivers an event whose handler threw, with the next delivery count', async () => {
    const { handler, deliveries } = recorder((delivered) => {
      if (delivered.deliveryCount === 1) throw new Error('peer unavailable');
    });
    const subscription = await subscribe(consumer(), handler);
    await publish('outcome', 'retry me', 'retried-event');

    await eventually(() => {
      expect(deliveries).toHaveLength(2);
    });
    expect(deliveries.map((d) => [d.eventId, d.deliveryCount])).toEqual([
      ['retried-event', 1],
      ['retried-event', 2],
    ]);
    await eventually(() => {
      expect(subscription.stats()).toEqual({ acked: 1, retried: 1, dropped: 0, poison: 0 });
    });
  });

  it('redelivers an event whose handler overran the ack wait', async () => {
    const { handler, deliveries } = recorder((delivered) =>
      // The first delivery never finishes; the bus must give up on it after the ack wait.
      delivered.deliveryCount === 1 ? new Promise<void>(() => undefined) : Promise.resolve(),
    );
    const subscription = await subscribe(consumer({ ackWaitMs: 1_000 }), handler);
    await publish('outcome', 'slow');

    await eventually(() => {
      expect(deliveries.map((d) => d.deliveryCount)).toEqual([1, 2]);
    });
    await eventually(() => {
      expect(subscription.stats()).toMatchObject({ acked: 1, retried: 1 });
    });
  });

  it('drops an event after maxDeliver failed deliveries and moves on', async () => {
    const { handler, deliveries } = recorder((delivered) => {
      if (delivered.event.message === 'bad') throw new Error('always fails');
    });
    const subscription = await subscribe(consumer({ maxDeliver: 2 }), handler);
    await publish('outcome', 'bad');
    await publish('outcome', 'good');

    await eventually(() => {
      expect(subscription.stats()).toEqual({ acked: 1, retried: 1, dropped: 1, poison: 0 });
    });
    await pause(500);
    const bad = deliveries.filter((d) => d.event.message === 'bad');
    expect(bad.map((d) => d.deliveryCount)).toEqual([1, 2]);
  });

  it('resumes a durable where it left off after stop and subscribe again', async () => {
    const spec = consumer();
    const first = recorder();
    const subscription = await subscribe(spec, first.handler);
    for (const message of ['a', 'b', 'c']) await publish('exposure', message);
    await eventually(() => {
      expect(messagesOf(first.deliveries)).toEqual(['a', 'b', 'c']);
    });
    await eventually(() => {
      expect(subscription.stats().acked).toBe(3);
    });
    await subscription.stop();

    for (const message of ['d', 'e']) await publish('exposure', message);
    const second = recorder();
    await subscribe(spec, second.handler);
    await publish('exposure', 'fence');

    await eventually(() => {
      expect(messagesOf(second.deliveries)).toContain('fence');
    });
    expect(messagesOf(second.deliveries)).toEqual(['d', 'e', 'fence']);
    expect(first.deliveries).toHaveLength(3);
  });

  it('stops at once when stopped right after subscribing, one by one or in batches', async () => {
    /** Resolves `stop()` or fails after `ms`, so a hang fails this test, not a later hook. */
    const stopsWithin = async (subscription: Subscription, ms: number): Promise<void> => {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => {
          reject(new Error(`stop() did not resolve within ${ms} ms`));
        }, ms);
      });
      try {
        await Promise.race([subscription.stop(), timeout]);
      } finally {
        clearTimeout(timer);
      }
    };
    const each = consumer();
    await stopsWithin(await bus.subscribe(each, recorder().handler), 5_000);
    const batched = consumer({ acknowledgement: 'cumulative' });
    if (bus.subscribeBatches === undefined) throw new Error('the adapter has no batches');
    await stopsWithin(await bus.subscribeBatches(batched, () => Promise.resolve()), 5_000);

    // Nothing was lost: the durable hands the next subscriber what was published meanwhile.
    await publish('exposure', 'a');
    const next = recorder();
    await subscribe(each, next.handler);
    await eventually(() => {
      expect(messagesOf(next.deliveries)).toEqual(['a']);
    });
  });

  it('starts a new durable with deliverPolicy new after the events already stored', async () => {
    await publish('exposure', 'old');
    const { handler, deliveries } = recorder();
    await subscribe(consumer({ deliverPolicy: 'new' }), handler);
    await publish('exposure', 'new');

    await eventually(() => {
      expect(messagesOf(deliveries)).toEqual(['new']);
    });
  });

  it('terminates and counts an event it cannot decode, then handles the next', async () => {
    const { handler, deliveries } = recorder();
    const subscription = await subscribe(consumer(), handler);
    await bus.publish(`${prefix}.exposure`, CORRUPT, UNDECODABLE, { eventId: 'poison' });
    await publish('exposure', 'after poison');

    await eventually(() => {
      expect(messagesOf(deliveries)).toEqual(['after poison']);
    });
    await eventually(() => {
      expect(subscription.stats()).toEqual({ acked: 1, retried: 0, dropped: 0, poison: 1 });
    });
  });

  it('delivers only the subjects a consumer filters on', async () => {
    const { handler, deliveries } = recorder();
    const filterSubjects = [`${prefix}.exposure`, `${prefix}.outcome.*`];
    await subscribe(consumer({ filterSubjects }), handler);
    await publish('exposure', 'exposure');
    await publish('decision', 'decision');
    await publish('outcome.play', 'play');
    await publish('outcome.play.extra', 'too deep');
    await publish('outcome.skip', 'skip');

    await eventually(() => {
      expect(messagesOf(deliveries)).toContain('skip');
    });
    expect(messagesOf(deliveries)).toEqual(['exposure', 'play', 'skip']);
  });

  it('runs up to `concurrency` handlers at once', async () => {
    let running = 0;
    let mostAtOnce = 0;
    const { handler, deliveries } = recorder(async () => {
      running++;
      mostAtOnce = Math.max(mostAtOnce, running);
      await pause(150);
      running--;
    });
    const subscription = await subscribe(consumer({ concurrency: 2 }), handler);
    for (const message of ['1', '2', '3', '4', '5']) await publish('exposure', message);

    await eventually(() => {
      expect(subscription.stats().acked).toBe(5);
    });
    expect(mostAtOnce).toBe(2);
    expect([...messagesOf(deliveries)].sort()).toEqual(['1', '2', '3', '4', '5']);
  });

  it('lets an in-flight handler finish before stop resolves, and delivers nothing after', async () => {
    let release: () => void = () => undefined;
    let finished = false;
    const { handler, deliveries } = recorder(async () => {
      await new Promise<void>((resolve) => {
        release = resolve;
      });
      finished = true;
    });
    const subscription = await subscribe(consumer(), handler);
    await publish('exposure', 'in flight');
    await eventually(() => {
      expect(deliveries).toHaveLength(1);
    });

    const stopping = subscription.stop();
    await pause(100);
    expect(finished).toBe(false);
    release();
    await stopping;
    expect(finished).toBe(true);
    expect(subscription.stats().acked).toBe(1);
    await publish('exposure', 'after stop');
    await pause(300);
    expect(deliveries).toHaveLength(1);
  });

  it('carries the publisher trace into a consumer span that is a child of the publish span', async () => {
    const { handler, deliveries } = recorder();
    await subscribe(consumer(), handler);
    const tracer = trace.getTracer('test');
    const request = await tracer.startActiveSpan('request', async (span) => {
      await publish('exposure', 'traced', 'traced-event');
      span.end();
      return span.spanContext();
    });

    await eventually(() => {
      expect(deliveries).toHaveLength(1);
    });
    expect(deliveries[0]!.headers.traceparent).toMatch(new RegExp(`^00-${request.traceId}-`));
    let spans: ReadableSpan[] = [];
    await eventually(() => {
      spans = exporter.getFinishedSpans();
      expect(spans.map((s) => s.name)).toContain(`process ${prefix}.exposure`);
    });
    const producer = spans.find((s) => s.name === `publish ${prefix}.exposure`)!;
    const consumerSpan = spans.find((s) => s.name === `process ${prefix}.exposure`)!;
    expect(producer.kind).toBe(SpanKind.PRODUCER);
    expect(producer.parentSpanContext?.spanId).toBe(request.spanId);
    const event = {
      'messaging.system': 'nats',
      'messaging.destination.name': `${prefix}.exposure`,
      'messaging.message.id': 'traced-event',
    };
    expect(producer.attributes).toMatchObject({
      ...event,
      'messaging.operation.type': 'send',
      'messaging.operation.name': 'publish',
    });
    expect(consumerSpan.kind).toBe(SpanKind.CONSUMER);
    expect(consumerSpan.attributes).toMatchObject({
      ...event,
      'messaging.operation.type': 'process',
      'messaging.operation.name': 'process',
    });
    expect(consumerSpan.spanContext().traceId).toBe(request.traceId);
    expect(consumerSpan.parentSpanContext?.spanId).toBe(producer.spanContext().spanId);
  });

  it('records a failed handler on its consumer span', async () => {
    const { handler, deliveries } = recorder((delivered) => {
      if (delivered.deliveryCount === 1) throw new Error('handler failed');
    });
    await subscribe(consumer(), handler);
    await publish('exposure', 'fails once');

    await eventually(() => {
      expect(deliveries).toHaveLength(2);
    });
    await eventually(() => {
      const processed = exporter.getFinishedSpans().filter((s) => s.name.startsWith('process '));
      expect(processed).toHaveLength(2);
    });
    const [failed, succeeded] = exporter
      .getFinishedSpans()
      .filter((s) => s.name.startsWith('process '))
      .sort(
        (a, b) =>
          Number(a.attributes['tandem.events.delivery_count']) -
          Number(b.attributes['tandem.events.delivery_count']),
      );
    expect(failed!.status).toEqual({ code: SpanStatusCode.ERROR, message: 'handler failed' });
    expect(failed!.events.map((e) => e.name)).toContain('exception');
    expect(succeeded!.status.code).not.toBe(SpanStatusCode.ERROR);
  });

  it('declares a stream idempotently and applies a changed spec', async () => {
    const spec = { name: stream, subjects: [`${prefix}.>`], storage: 'memory' as const };
    await bus.declareStream(spec);
    await expect(publish('exposure', 'x')).resolves.toMatchObject({ duplicate: false });

    const other = `${prefix}x`;
    await bus.declareStream({ ...spec, subjects: [`${prefix}.>`, `${other}.*`] });
    await expect(
      bus.publish(`${other}.exposure`, EchoRequest, echo('y'), { eventId: 'y' }),
    ).resolves.toMatchObject({ streamSequence: 2 });
  });

  it('refuses a publish no stream captures with UnavailableError', async () => {
    await expect(
      bus.publish(`nowhere.${prefix}`, EchoRequest, echo('lost'), {
        eventId: 'lost',
        timeoutMs: 1_000,
      }),
    ).rejects.toBeInstanceOf(UnavailableError);
  });

  it('refuses an empty event id and a wildcard subject with InvalidArgumentError', async () => {
    await expect(publish('exposure', 'x', '')).rejects.toBeInstanceOf(InvalidArgumentError);
    await expect(
      bus.publish(`${prefix}.*`, EchoRequest, echo('x'), { eventId: 'x' }),
    ).rejects.toBeInstanceOf(InvalidArgumentError);
  });

  it('refuses an event id with a line break and a subject with whitespace with InvalidArgumentError, which NATS cannot carry', async () => {
    // The id travels as the Nats-Msg-Id header and the subject in the PUB line: NATS refuses
    // both on every try, so a retry cannot help and the adapters must agree on refusing them.
    await expect(publish('exposure', 'x', 'id\r\nNats-Expected-Stream: X')).rejects.toBeInstanceOf(
      InvalidArgumentError,
    );
    await expect(publish('exposure', 'x', 'id\nsecond-line')).rejects.toBeInstanceOf(
      InvalidArgumentError,
    );
    for (const subject of [`${prefix}.play list`, `${prefix}.play\tlist`]) {
      await expect(
        bus.publish(subject, EchoRequest, echo('x'), { eventId: 'x' }),
      ).rejects.toBeInstanceOf(InvalidArgumentError);
    }
  });

  it('refuses to subscribe to a stream that was never declared', async () => {
    await expect(
      bus.subscribe(consumer({ stream: uniqueName('MISSING') }), () => Promise.resolve()),
    ).rejects.toBeInstanceOf(NotFoundError);
  });

  it('reports itself connected until closed, then refuses to publish', async () => {
    expect(bus.isConnected()).toBe(true);
    await bus.close();
    expect(bus.isConnected()).toBe(false);
    await expect(publish('exposure', 'late')).rejects.toBeInstanceOf(UnavailableError);
  });

  describe('consumer metrics', () => {
    let testMetrics: TestMetrics;

    beforeEach(() => {
      testMetrics = installTestMetrics();
    });

    afterEach(async () => {
      await testMetrics.shutdown();
    });

    /** The values of `tandem.events.consumer.*` collected now for this test's stream and `durable`. */
    async function consumerMetrics(durable: string): Promise<Record<string, unknown[]>> {
      const counts: Record<string, unknown[]> = {};
      for (const name of ['acked', 'retried', 'dropped', 'poison']) {
        const points = await testMetrics.points(`tandem.events.consumer.${name}`);
        counts[name] = points
          .filter(
            (p) =>
              p.attributes['tandem.stream'] === stream &&
              p.attributes['tandem.durable'] === durable,
          )
          .map((p) => p.value);
      }
      return counts;
    }

    it('reports retried and dropped deliveries of a failing handler, and acked ones', async () => {
      const { handler } = recorder((delivered) => {
        if (delivered.event.message === 'bad') throw new Error('always fails');
      });
      const spec = consumer({ maxDeliver: 3 });
      const subscription = await subscribe(spec, handler);
      await publish('outcome', 'bad');
      for (const message of ['good 1', 'good 2', 'good 3']) await publish('outcome', message);

      await eventually(() => {
        expect(subscription.stats()).toEqual({ acked: 3, retried: 2, dropped: 1, poison: 0 });
      });
      expect(await consumerMetrics(spec.durable)).toEqual({
        acked: [3],
        retried: [2],
        dropped: [1],
        poison: [0],
      });
    });

    it('reports the events it cannot decode as poison', async () => {
      if (bus.subscribeBatches === undefined) throw new Error('the adapter has no batches');
      const spec = consumer();
      // In batches: a subscription of either kind is reported.
      subscriptions.push(await bus.subscribeBatches(spec, () => Promise.resolve()));
      await bus.publish(`${prefix}.exposure`, CORRUPT, UNDECODABLE, { eventId: 'poison-1' });
      await bus.publish(`${prefix}.exposure`, CORRUPT, UNDECODABLE, { eventId: 'poison-2' });
      await publish('exposure', 'after poison');

      await eventually(async () => {
        expect(await consumerMetrics(spec.durable)).toEqual({
          acked: [1],
          retried: [0],
          dropped: [0],
          poison: [2],
        });
      });
    });

    it('no longer reports a stopped subscription, and one subscribed again from zero', async () => {
      const spec = consumer();
      const first = await subscribe(spec, recorder().handler);
      for (const message of ['a', 'b']) await publish('exposure', message);
      await eventually(async () => {
        expect((await consumerMetrics(spec.durable)).acked).toEqual([2]);
      });
      await first.stop();
      jest
        .spyOn(first, 'stats')
        .mockReturnValue({ acked: 99, retried: 99, dropped: 99, poison: 99 });
      // The counter keeps its last value, and the stopped subscription is not asked again.
      expect((await consumerMetrics(spec.durable)).acked).toEqual([2]);

      const second = await subscribe(spec, recorder().handler);
      await publish('exposure', 'c');
      await eventually(() => {
        expect(second.stats().acked).toBe(1);
      });
      // Reported once, by the running subscription alone: a counter reset for the backend.
      expect(await consumerMetrics(spec.durable)).toEqual({
        acked: [1],
        retried: [0],
        dropped: [0],
        poison: [0],
      });
    });
  });

  describe.each(['each', 'cumulative'] as const)(
    'subscribeBatches, acknowledging %s',
    (acknowledgement) => {
      /** A batch consumer acknowledging as this block says. */
      function batchConsumer(
        overrides: Partial<BatchConsumerSpec<EchoRequest>> = {},
      ): BatchConsumerSpec<EchoRequest> {
        return consumer({ acknowledgement, ...overrides });
      }

      async function subscribeBatches(
        spec: BatchConsumerSpec<EchoRequest>,
        handler: BatchHandler<EchoRequest>,
      ): Promise<Subscription> {
        if (bus.subscribeBatches === undefined) throw new Error('the adapter has no batches');
        const subscription = await bus.subscribeBatches(spec, handler);
        subscriptions.push(subscription);
        return subscription;
      }

      it('hands events over in batches of at most maxBatchSize, in stream order, and acks them', async () => {
        for (let i = 0; i < 25; i++) await publish('outcome', `m${i}`);
        const batches: DeliveredEvent<EchoRequest>[][] = [];
        const subscription = await subscribeBatches(
          batchConsumer({ maxBatchSize: 10 }),
          (batch) => {
            batches.push([...batch]);
            return Promise.resolve();
          },
        );

        await eventually(() => {
          expect(subscription.stats()).toEqual({ acked: 25, retried: 0, dropped: 0, poison: 0 });
        });
        expect(batches.every((b) => b.length >= 1 && b.length <= 10)).toBe(true);
        const all = batches.flat();
        expect(messagesOf(all)).toEqual(Array.from({ length: 25 }, (_, i) => `m${i}`));
        expect(all[0]).toMatchObject({ subject: `${prefix}.outcome`, deliveryCount: 1 });
        expect(all[0]?.storedAt).toBeInstanceOf(Date);
        expect(all[0]?.eventId).toEqual(all[0]?.headers['Nats-Msg-Id']);
        // Acked: a new subscription of the same durable gets nothing again.
      });

      it('redelivers every event of a batch whose handler threw, then moves on', async () => {
        const seen: [string, number][] = [];
        // Both events are stored before the subscription starts, so they come as one batch: were
        // they split, acknowledging cumulatively would also (rightly) redeliver `b` after `a`'s
        // batch failed, and count one more retry.
        await publish('outcome', 'a');
        await publish('outcome', 'b');
        const subscription = await subscribeBatches(batchConsumer({ maxBatchSize: 5 }), (batch) => {
          for (const d of batch) seen.push([d.event.message, d.deliveryCount]);
          if (batch.some((d) => d.deliveryCount === 1)) throw new Error('checkpoint failed');
          return Promise.resolve();
        });

        await eventually(() => {
          expect(subscription.stats()).toMatchObject({ acked: 2, dropped: 0 });
        });
        expect(
          seen
            .filter(([, count]) => count === 1)
            .map(([m]) => m)
            .sort(),
        ).toEqual(['a', 'b']);
        expect(
          seen
            .filter(([, count]) => count === 2)
            .map(([m]) => m)
            .sort(),
        ).toEqual(['a', 'b']);
        expect(subscription.stats().retried).toBe(2);
      });

      it('keeps a batch whose handler says it is still working past the ack wait', async () => {
        await publish('outcome', 'a');
        await publish('outcome', 'b');
        const seen: [string, number][] = [];
        const subscription = await subscribeBatches(
          batchConsumer({ ackWaitMs: 1_000 }),
          async (batch, progress) => {
            for (const d of batch) seen.push([d.event.message, d.deliveryCount]);
            // Two and a half ack waits, telling the bus every 400 ms that it is still working.
            for (let i = 0; i < 6; i++) {
              await new Promise((resolve) => setTimeout(resolve, 400));
              progress?.working();
            }
          },
        );

        await eventually(() => {
          expect(subscription.stats()).toEqual({ acked: 2, retried: 0, dropped: 0, poison: 0 });
        });
        // Neither here nor on the server did the ack wait run out: nothing came again.
        await new Promise((resolve) => setTimeout(resolve, 1_500));
        expect(seen.map(([m]) => m).sort()).toEqual(['a', 'b']);
        expect(seen.every(([, count]) => count === 1)).toBe(true);
        expect(subscription.stats()).toEqual({ acked: 2, retried: 0, dropped: 0, poison: 0 });
      });

      it('resumes after stop without redelivering acked events', async () => {
        const spec = batchConsumer({ maxBatchSize: 4 });
        const first: string[] = [];
        for (let i = 0; i < 6; i++) await publish('outcome', `first${i}`);
        const one = await subscribeBatches(spec, (batch) => {
          first.push(...messagesOf(batch));
          return Promise.resolve();
        });
        await eventually(() => {
          expect(one.stats().acked).toBe(6);
        });
        await one.stop();
        await publish('outcome', 'later');
        const second: string[] = [];
        await subscribeBatches(spec, (batch) => {
          second.push(...messagesOf(batch));
          return Promise.resolve();
        });
        await eventually(() => {
          expect(second).toEqual(['later']);
        });
        await pause(300);
        expect(second).toEqual(['later']);
        expect(first).toHaveLength(6);
      });

      it('terminates an event it cannot decode and hands the rest over', async () => {
        await bus.publish(`${prefix}.outcome`, CORRUPT, UNDECODABLE, { eventId: 'corrupt' });
        await publish('outcome', 'fine');
        const got: string[] = [];
        const subscription = await subscribeBatches(batchConsumer(), (batch) => {
          got.push(...messagesOf(batch));
          return Promise.resolve();
        });
        await eventually(() => {
          expect(subscription.stats()).toEqual({ acked: 1, retried: 0, dropped: 0, poison: 1 });
        });
        expect(got).toEqual(['fine']);
      });

      it("runs a batch inside a consumer span that continues a single event's trace", async () => {
        const tracer = trace.getTracer('test');
        await tracer.startActiveSpan('producer', async (span) => {
          await publish('outcome', 'traced');
          span.end();
        });
        const subscription = await subscribeBatches(batchConsumer(), () => Promise.resolve());
        await eventually(() => {
          expect(subscription.stats().acked).toBe(1);
        });
        await eventually(() => {
          const spans = exporter.getFinishedSpans();
          const producer = spans.find((s) => s.name === 'producer');
          const consumerSpan = spans.find(
            (s) => s.kind === SpanKind.CONSUMER && s.name === `process ${prefix}.outcome`,
          );
          expect(consumerSpan?.spanContext().traceId).toBe(producer?.spanContext().traceId);
        });
      });

      it('drops a batch after maxDeliver failed deliveries and moves on', async () => {
        const seen: [string, number][] = [];
        const subscription = await subscribeBatches(
          batchConsumer({ maxBatchSize: 1, maxDeliver: 2 }),
          (batch) => {
            for (const d of batch) seen.push([d.event.message, d.deliveryCount]);
            if (batch.some((d) => d.event.message === 'bad')) throw new Error('always fails');
            return Promise.resolve();
          },
        );
        await publish('outcome', 'bad');
        await publish('outcome', 'good');

        await eventually(() => {
          expect(subscription.stats()).toEqual({ acked: 1, retried: 1, dropped: 1, poison: 0 });
        });
        await pause(500);
        expect(seen.filter(([m]) => m === 'bad').map(([, count]) => count)).toEqual([1, 2]);
        expect(subscription.stats()).toEqual({ acked: 1, retried: 1, dropped: 1, poison: 0 });
      });

      it('refuses a maxBatchSize below 1', async () => {
        await expect(
          subscribeBatches(batchConsumer({ maxBatchSize: 0 }), () => Promise.resolve()),
        ).rejects.toBeInstanceOf(InvalidArgumentError);
      });
    },
  );
}
