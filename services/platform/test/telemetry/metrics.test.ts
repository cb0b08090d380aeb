/**
 * The kit's metrics, read through a real OpenTelemetry metrics SDK: each call's duration by
 * method and status code, and a buffered publisher's counts.
 */
import { credentials, status as GrpcCode } from '@grpc/grpc-js';
import type { Histogram } from '@opentelemetry/sdk-metrics';
import { EchoServiceService } from '../../../../gen/ts/tandem/echo/v1/echo_service';
import type { BufferedPublisherStats } from '../../src/events/buffered-publisher';
import { createClient } from '../../src/grpc/client';
import { observePublisher } from '../../src/telemetry/publisher-metrics';
import { startEcho } from '../support/echo';
import { installTestMetrics, type TestMetrics } from '../support/metrics';

describe('the kit metrics', () => {
  let testMetrics: TestMetrics;

  beforeEach(() => {
    testMetrics = installTestMetrics();
  });

  afterEach(async () => {
    await testMetrics.shutdown();
  });

  it('records each call in rpc.server.call.duration, by method and status code', async () => {
    const echo = await startEcho();
    const client = createClient(EchoServiceService, {
      address: echo.address,
      credentials: credentials.createInsecure(),
    });
    try {
      await client.echo({ message: 'a', failWithCode: 0, requireMessage: false });
      await client.echo({ message: 'b', failWithCode: 0, requireMessage: false });
      await expect(
        client.echo({ message: 'c', failWithCode: GrpcCode.NOT_FOUND, requireMessage: false }),
      ).rejects.toThrow();
    } finally {
      client.close();
      await echo.server.shutdown(1000);
    }
    const points = await testMetrics.points('rpc.server.call.duration');
    const byCode = new Map(
      points.map((point) => [point.attributes['rpc.grpc.status_code'], point]),
    );
    expect([...byCode.keys()].sort()).toEqual([GrpcCode.OK, GrpcCode.NOT_FOUND]);
    for (const point of points) {
      expect(point.attributes).toMatchObject({
        'rpc.system': 'grpc',
        'rpc.service': 'tandem.echo.v1.EchoService',
        'rpc.method': 'Echo',
      });
    }
    const ok = byCode.get(GrpcCode.OK)?.value as Histogram;
    expect(ok.count).toBe(2);
    // Seconds, not milliseconds: two local calls take well under a second.
    expect(ok.sum).toBeGreaterThan(0);
    expect(ok.sum).toBeLessThan(1);
    expect((byCode.get(GrpcCode.NOT_FOUND)?.value as Histogram).count).toBe(1);
  });

  it("reports a publisher's counts under its name until it is unregistered", async () => {
    let stats: BufferedPublisherStats = {
      queued: 3,
      published: 10,
      skipped: 0,
      dropped: 2,
      failedAttempts: 5,
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
    stats = { ...stats, queued: 0, published: 13 };
    expect(await value('tandem.events.publisher.queued')).toEqual([['exposures', 0]]);
    expect(await value('tandem.events.publisher.published')).toEqual([['exposures', 13]]);
    stop();
    stats = { ...stats, published: 99 };
    // No longer observed: the counter keeps its last value and the callback is not called.
    expect(await value('tandem.events.publisher.published')).not.toContainEqual(['exposures', 99]);
  });
});
