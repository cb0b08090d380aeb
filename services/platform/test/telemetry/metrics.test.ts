/**
 * The kit's metrics, read through a real OpenTelemetry metrics SDK: each call's duration by
 * method and status code, a buffered publisher's counts, and a subscription's (as the bus
 * adapters register them; `event-bus-contract.ts` checks that they do).
 */
import { credentials, status as GrpcCode } from '@grpc/grpc-js';
import type { Histogram } from '@opentelemetry/sdk-metrics';
import { EchoServiceService } from '../../../../gen/ts/tandem/echo/v1/echo_service';
import type { SubscriptionStats } from '../../src/events/bus';
import type { BufferedPublisherStats } from '../../src/events/buffered-publisher';
import { createClient } from '../../src/grpc/client';
import { observeSubscription } from '../../src/telemetry/consumer-metrics';
import { observePublisher } from '../../src/telemetry/publisher-metrics';
import { UnavailableError } from '../../src/errors';
import { startEcho, testServer } from '../support/echo';
import { installTestMetrics, type TestMetrics } from '../support/metrics';

describe('the kit metrics', () => {
  let testMetrics: TestMetrics;

  beforeEach(() => {
    testMetrics = installTestMetrics();
  });

  afterEach(async () => {
    await testMetrics.shutdown();
  });

  it('records each call in rpc.server.call.duration, in seconds, by method and status code', async () => {
    const echo = await startEcho();
    const client = createClient(EchoServiceService, {
      address: echo.address,
      credentials: credentials.createInsecure(),
    });
    const request = { message: 'a', failWithCode: 0, requireMessage: false };
    try {
      await client.echo(request);
      await client.echo({ ...request, delay: { seconds: 0, nanos: 100_000_000 } });
      await expect(client.echo({ ...request, failWithCode: GrpcCode.NOT_FOUND })).rejects.toThrow();
      // The handler sleeps on past the caller's deadline (it stops at the cancellation and
      // returns): the caller got DEADLINE_EXCEEDED from grpc-js, and that is what is recorded.
      await expect(
        client.echo({ ...request, delay: { seconds: 1, nanos: 0 } }, { timeoutMs: 100 }),
      ).rejects.toThrow();
    } finally {
      client.close();
      await echo.server.shutdown(1000);
    }
    const points = await testMetrics.points('rpc.server.call.duration');
    const byCode = new Map(
      points.map((point) => [point.attributes['rpc.grpc.status_code'], point.value as Histogram]),
    );
    expect([...byCode.keys()].sort()).toEqual([
      GrpcCode.OK,
      GrpcCode.DEADLINE_EXCEEDED,
      GrpcCode.NOT_FOUND,
    ]);
    for (const point of points) {
      expect(point.attributes).toMatchObject({
        'rpc.system': 'grpc',
        'rpc.service': 'tandem.echo.v1.EchoService',
        'rpc.method': 'Echo',
      });
    }
    const ok = byCode.get(GrpcCode.OK);
    expect(ok?.count).toBe(2);
    // Seconds: the slower call slept 100 ms.
    expect(ok?.max).toBeGreaterThanOrEqual(0.09);
    expect(ok?.max).toBeLessThan(1);
    expect(byCode.get(GrpcCode.NOT_FOUND)?.count).toBe(1);
    expect(byCode.get(GrpcCode.DEADLINE_EXCEEDED)?.count).toBe(1);
  });

  it('counts the calls a reserved service refuses while it starts', async () => {
    const { server } = testServer();
    server.reserve(EchoServiceService, () => new UnavailableError('starting'));
    const port = await server.listen('127.0.0.1', 0);
    const client = createClient(EchoServiceService, {
      address: `127.0.0.1:${port}`,
      credentials: credentials.createInsecure(),
    });
    try {
      const request = { message: 'a', failWithCode: 0, requireMessage: false };
      await expect(client.echo(request)).rejects.toMatchObject({ code: GrpcCode.UNAVAILABLE });
      await expect(client.echo(request)).rejects.toMatchObject({ code: GrpcCode.UNAVAILABLE });
    } finally {
      client.close();
      await server.shutdown(1000);
    }
    const points = await testMetrics.points('rpc.server.call.duration');
    expect(
      points.map((point) => [
        point.attributes['rpc.method'],
        point.attributes['rpc.grpc.status_code'],
        (point.value as Histogram).count,
      ]),
    ).toEqual([['Echo', GrpcCode.UNAVAILABLE, 2]]);
  });

  it("reports a publisher's counts under its name until it is unregistered", async () => {
    let stats: BufferedPublisherStats = {
      queued: 3,
      published: 10,
      skipped: 0,
      dropped: 2,
      failedAttempts: 5,
      spooled: 7,
      restored: 4,
    };
    const stop = observePublisher('exposures', { stats: () => stats });
    const value = async (name: string) => {
      const points = await testMetrics.points(name);
      return points.map((p) => [p.attributes['tandem.publisher'], p.value]);
    };
    expect(await value('tandem.events.publisher.queued')).toEqual([['exposures', 3]]);
    expect(await value('tandem.events.publisher.published')).toEqual([['exposures', 10]]);
    expect(await value('tandem.events.publisher.dropped')).toEqual([['exposures', 2]]);
    expect(await value('tandem.events.publisher.failed_attempts')).toEqual([['exposures', 5]]);
    expect(await value('tandem.events.publisher.spooled')).toEqual([['exposures', 7]]);
    expect(await value('tandem.events.publisher.restored')).toEqual([['exposures', 4]]);
    stats = { ...stats, queued: 0, published: 13 };
    expect(await value('tandem.events.publisher.queued')).toEqual([['exposures', 0]]);
    expect(await value('tandem.events.publisher.published')).toEqual([['exposures', 13]]);
    stop();
    stats = { ...stats, published: 99 };
    // No longer observed: the counter keeps its last value and the callback is not called.
    expect(await value('tandem.events.publisher.published')).not.toContainEqual(['exposures', 99]);
  });

  it("reports a subscription's counts by stream and durable until it stops", async () => {
    let stats: SubscriptionStats = { acked: 7, retried: 3, dropped: 1, poison: 2 };
    const stop = observeSubscription(
      { stream: 'TANDEM_EXPOSURES', durable: 'exposure-log' },
      { stats: () => stats },
    );
    const value = async (name: string) => {
      const points = await testMetrics.points(name);
      return points.map((p) => [
        p.attributes['tandem.stream'],
        p.attributes['tandem.durable'],
        p.value,
      ]);
    };
    const durable = ['TANDEM_EXPOSURES', 'exposure-log'];
    expect(await value('tandem.events.consumer.acked')).toEqual([[...durable, 7]]);
    expect(await value('tandem.events.consumer.retried')).toEqual([[...durable, 3]]);
    expect(await value('tandem.events.consumer.dropped')).toEqual([[...durable, 1]]);
    expect(await value('tandem.events.consumer.poison')).toEqual([[...durable, 2]]);
    stats = { ...stats, acked: 9, dropped: 4 };
    expect(await value('tandem.events.consumer.acked')).toEqual([[...durable, 9]]);
    expect(await value('tandem.events.consumer.dropped')).toEqual([[...durable, 4]]);
    stop();
    stats = { ...stats, acked: 99 };
    // No longer observed: the counter keeps its last value and the callback is not called.
    expect(await value('tandem.events.consumer.acked')).not.toContainEqual([...durable, 99]);
  });

  it('reports the subscriptions of one durable running at once as one sum', async () => {
    const consumer = { stream: 'TANDEM_OUTCOMES', durable: 'shared' };
    let first: SubscriptionStats = { acked: 5, retried: 1, dropped: 0, poison: 0 };
    let second: SubscriptionStats = { acked: 2, retried: 0, dropped: 1, poison: 0 };
    const stopFirst = observeSubscription(consumer, { stats: () => first });
    const stopSecond = observeSubscription(consumer, { stats: () => second });
    const value = async (name: string) =>
      (await testMetrics.points(name)).map((p) => [p.attributes['tandem.durable'], p.value]);
    expect(await value('tandem.events.consumer.acked')).toEqual([['shared', 7]]);
    expect(await value('tandem.events.consumer.dropped')).toEqual([['shared', 1]]);
    // The first stops: its counts stay in the sum, and it is no longer asked.
    stopFirst();
    first = { ...first, acked: 50 };
    second = { ...second, acked: 3 };
    expect(await value('tandem.events.consumer.acked')).toEqual([['shared', 8]]);
    expect(await value('tandem.events.consumer.retried')).toEqual([['shared', 1]]);
    stopSecond();
    second = { ...second, acked: 30 };
    expect(await value('tandem.events.consumer.acked')).toEqual([['shared', 8]]);
    // A subscription of the durable again starts afresh (a counter reset), reported once.
    const stopThird = observeSubscription(consumer, {
      stats: () => ({ acked: 1, retried: 0, dropped: 0, poison: 0 }),
    });
    expect(await value('tandem.events.consumer.acked')).toEqual([['shared', 1]]);
    stopThird();
  });
});
