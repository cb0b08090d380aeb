/**
 * The event-bus contract against a real NATS JetStream server, plus what only NATS has: streams
 * and durables declared from specs as server config, and the connection lifecycle.
 */
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { connect, nanos, type NatsConnection } from '@nats-io/transport-node';
import { EchoRequest } from '../../../../gen/ts/tandem/echo/v1/echo_service';
import { UnavailableError } from '../../src/errors';
import type { EventBus } from '../../src/events/bus';
import { connectNatsBus, supportsMultipleFilters } from '../../src/events/nats-bus';
import { describeWithNats, natsUrl, uniqueName } from '../support/integration';
import { describeEventBusContract } from './event-bus-contract';

describeWithNats('NATS JetStream event bus', () => {
  let admin: NatsConnection;
  let manager: JetStreamManager;

  beforeAll(async () => {
    admin = await connect({ servers: natsUrl! });
    manager = await jetstreamManager(admin);
  });

  afterAll(async () => {
    await admin.drain();
  });

  async function removeStream(name: string): Promise<void> {
    try {
      await manager.streams.delete(name);
    } catch {
      // never created, or already gone
    }
  }

  describe('contract', () => {
    describeEventBusContract({
      connect: () => connectNatsBus({ servers: natsUrl!, name: 'tandem-test' }),
      removeStream,
    });
  });

  describe('declared configuration', () => {
    let bus: EventBus;
    let stream: string;

    beforeEach(async () => {
      bus = await connectNatsBus({ servers: natsUrl!, name: 'tandem-test' });
      stream = uniqueName('DECLARED');
    });

    afterEach(async () => {
      await bus.close();
      await removeStream(stream);
    });

    it('creates the stream with the limits of its spec', async () => {
      await bus.declareStream({
        name: stream,
        subjects: [`${stream}.>`],
        maxAgeMs: 3_600_000,
        duplicateWindowMs: 60_000,
        maxBytes: 1_000_000,
        storage: 'memory',
      });

      const { config } = await manager.streams.info(stream);
      expect(config.subjects).toEqual([`${stream}.>`]);
      expect(config.max_age).toBe(nanos(3_600_000));
      expect(config.duplicate_window).toBe(nanos(60_000));
      expect(config.max_bytes).toBe(1_000_000);
      expect(config.storage).toBe('memory');
    });

    it('updates a durable whose limits changed and keeps its position', async () => {
      await bus.declareStream({ name: stream, subjects: [`${stream}.>`], storage: 'memory' });
      const spec = {
        stream,
        durable: 'analysis',
        codec: EchoRequest,
        ackWaitMs: 5_000,
        maxDeliver: 3,
      };
      const delivered: string[] = [];
      const first = await bus.subscribe(spec, (d) => {
        delivered.push(d.event.message);
        return Promise.resolve();
      });
      await bus.publish(
        `${stream}.exposure`,
        EchoRequest,
        { message: 'a', failWithCode: 0, requireMessage: false },
        { eventId: 'a' },
      );
      await waitFor(() => first.stats().acked === 1);
      await first.stop();

      const second = await bus.subscribe({ ...spec, ackWaitMs: 7_000, maxDeliver: 4 }, (d) => {
        delivered.push(d.event.message);
        return Promise.resolve();
      });
      const { config } = await manager.consumers.info(stream, 'analysis');
      expect(config.ack_wait).toBe(nanos(7_000));
      expect(config.max_deliver).toBe(4);
      expect(config.ack_policy).toBe('explicit');
      await bus.publish(
        `${stream}.exposure`,
        EchoRequest,
        { message: 'b', failWithCode: 0, requireMessage: false },
        { eventId: 'b' },
      );
      await waitFor(() => second.stats().acked === 1);
      expect(delivered).toEqual(['a', 'b']);
    });
  });

  it('fails to connect with UnavailableError when no server answers', async () => {
    await expect(
      connectNatsBus({ servers: 'nats://127.0.0.1:1', name: 'tandem-test', connectTimeoutMs: 500 }),
    ).rejects.toBeInstanceOf(UnavailableError);
  });
});

describe('supportsMultipleFilters', () => {
  it.each([
    ['2.9.10', false],
    ['2.10.0', true],
    ['2.11.3', true],
    ['3.0.0', true],
    [undefined, false],
  ])('server %s → %s', (version, expected) => {
    expect(supportsMultipleFilters(version)).toBe(expected);
  });
});

async function waitFor(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}
