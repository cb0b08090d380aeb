/**
 * A NATS outage, played with a nats-server of the test's own that it stops and starts again on
 * the same port and store: the bus must notice, fail publishes fast, reconnect by itself, and
 * its subscriptions and a buffered publisher must carry on afterwards.
 */
import { spawnSync } from 'node:child_process';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { EchoRequest } from '../../../../gen/ts/tandem/echo/v1/echo_service';
import { UnavailableError } from '../../src/errors';
import { BufferedPublisher } from '../../src/events/buffered-publisher';
import { connectNatsBus } from '../../src/events/nats-bus';
import { TestNatsServer } from '../support/nats-server';
import { eventually } from './event-bus-contract';

const hasServer = spawnSync('nats-server', ['--version']).status === 0;
const describeWithServerBinary = hasServer ? describe : describe.skip;

function echo(message: string): EchoRequest {
  return { message, failWithCode: 0, delay: undefined, requireMessage: false };
}

describeWithServerBinary('NATS event bus through a server outage', () => {
  let server: TestNatsServer;

  beforeAll(async () => {
    server = await TestNatsServer.create();
    server.start();
  });

  afterAll(async () => {
    await server.dispose();
  });

  it('reconnects by itself, and consumption and buffered publishing resume', async () => {
    const bus = await eventuallyConnected(server.url);
    const publisher = new BufferedPublisher(bus, { initialRetryDelayMs: 50, maxRetryDelayMs: 200 });
    await bus.declareStream({ name: 'OUTAGE', subjects: ['outage.>'] });
    const received: string[] = [];
    const subscription = await bus.subscribe(
      { stream: 'OUTAGE', durable: 'analysis', codec: EchoRequest },
      (delivered) => {
        received.push(delivered.event.message);
        return Promise.resolve();
      },
    );
    await bus.publish('outage.exposure', EchoRequest, echo('before'), { eventId: 'before' });
    await eventually(() => {
      expect(received).toEqual(['before']);
    });

    await server.stop();
    await eventually(() => {
      expect(bus.isConnected()).toBe(false);
    });
    const startedAt = Date.now();
    await expect(
      bus.publish('outage.exposure', EchoRequest, echo('refused'), { eventId: 'refused' }),
    ).rejects.toBeInstanceOf(UnavailableError);
    // Fails fast rather than waiting out the 5 s publish timeout.
    expect(Date.now() - startedAt).toBeLessThan(1_000);
    publisher.enqueue('outage.exposure', EchoRequest, echo('during'), 'during');
    await eventually(() => {
      expect(publisher.stats().failedAttempts).toBeGreaterThan(0);
    });

    server.start();
    await eventually(() => {
      expect(bus.isConnected()).toBe(true);
    }, 15_000);
    await expect(publisher.flush(10_000)).resolves.toBe(true);
    await eventually(() => {
      expect(received).toEqual(['before', 'during']);
    }, 15_000);

    await publisher.close();
    await subscription.stop();
    await bus.close();
    // Above the sum of the waits inside (~80 s), so a slow step fails with its own message.
  }, 120_000);

  it('loses no event of a cumulatively acknowledged batch subscription', async () => {
    const bus = await eventuallyConnected(server.url);
    await bus.declareStream({ name: 'OUTAGE_BATCHES', subjects: ['batches.>'] });
    const received = new Set<string>();
    const subscription = await bus.subscribeBatches!(
      {
        stream: 'OUTAGE_BATCHES',
        durable: 'aggregation',
        codec: EchoRequest,
        acknowledgement: 'cumulative',
        maxBatchSize: 10,
        concurrency: 2,
        ackWaitMs: 2_000,
      },
      async (batch) => {
        for (const delivered of batch) received.add(delivered.event.message);
        // Slow enough that batches are in flight, and acknowledgements on their way, when the
        // server goes.
        await new Promise((resolve) => setTimeout(resolve, 100));
      },
    );
    for (let i = 0; i < 100; i++) {
      await bus.publish('batches.play', EchoRequest, echo(`e${i}`), { eventId: `e${i}` });
    }
    expect(received.size).toBeLessThan(100);
    await server.stop();
    server.start();
    await eventually(() => {
      expect(bus.isConnected()).toBe(true);
    }, 15_000);
    // Connected is not yet JetStream ready: the restarted server may still be recovering the
    // stream (seconds on a loaded machine), so the publish is retried, as a publisher would; the
    // event id makes a repeat harmless.
    await eventually(async () => {
      await bus.publish('batches.play', EchoRequest, echo('after'), { eventId: 'after' });
    }, 30_000);

    await eventually(() => {
      expect(received.size).toBe(101);
    }, 20_000);
    const admin = await connect({ servers: server.url });
    const manager = await jetstreamManager(admin);
    // Everything acknowledged in the end: nothing is left to come again.
    await eventually(async () => {
      const info = await manager.consumers.info('OUTAGE_BATCHES', 'aggregation');
      expect([info.ack_floor.stream_seq, info.num_ack_pending]).toEqual([101, 0]);
    }, 20_000);
    await admin.close();
    await subscription.stop();
    await bus.close();
    // Above the sum of the waits inside (~95 s), so a slow step fails with its own message.
  }, 120_000);
});

/** Connects once the freshly spawned server listens. */
async function eventuallyConnected(
  url: string,
): Promise<Awaited<ReturnType<typeof connectNatsBus>>> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      return await connectNatsBus({
        servers: url,
        name: 'tandem-outage-test',
        connectTimeoutMs: 500,
        whenUnreachable: 'fail',
      });
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}
