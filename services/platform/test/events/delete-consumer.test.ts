/**
 * `EventBus.deleteConsumer` on both adapters: a durable subscribed again after its deletion starts
 * afresh from its deliver policy instead of where the deleted one left off. And
 * `EventBus.consumerPending`, a durable's lag.
 */
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { EchoRequest } from '../../../../gen/ts/tandem/echo/v1/echo_service';
import type { EventBus } from '../../src/events/bus';
import { createInProcessBus } from '../../src/events/in-process-bus';
import { connectNatsBus } from '../../src/events/nats-bus';
import { describeWithNats, natsUrl, uniqueName } from '../support/integration';
import { eventually, type BusHarness } from './event-bus-contract';

function echo(message: string): EchoRequest {
  return { message, failWithCode: 0, delay: undefined, requireMessage: false };
}

function deleteConsumerSuite(harness: BusHarness): void {
  let bus: EventBus;
  let stream: string;
  let subject: string;

  beforeEach(async () => {
    bus = await harness.connect();
    stream = uniqueName('DELETE_CONSUMER');
    subject = `test.${stream.toLowerCase()}.play`;
    await bus.declareStream({ name: stream, subjects: [subject], storage: 'memory' });
  });

  afterEach(async () => {
    await bus.close();
    await harness.removeStream(stream);
  });

  /** Subscribes `durable` until it has received `count` events; returns their messages. */
  async function receive(durable: string, count: number): Promise<string[]> {
    const received: string[] = [];
    const subscription = await bus.subscribe(
      { stream, durable, codec: EchoRequest },
      (delivered) => {
        received.push(delivered.event.message);
        return Promise.resolve();
      },
    );
    await eventually(() => {
      expect(received).toHaveLength(count);
      expect(subscription.stats().acked).toBe(count);
    });
    await subscription.stop();
    return received;
  }

  it('makes a durable subscribed again start from the stream start', async () => {
    for (const message of ['a', 'b']) {
      await bus.publish(subject, EchoRequest, echo(message), { eventId: uniqueName(message) });
    }
    expect(await receive('aggregation', 2)).toEqual(['a', 'b']);
    await bus.publish(subject, EchoRequest, echo('c'), { eventId: uniqueName('c') });

    await expect(bus.deleteConsumer!(stream, 'aggregation')).resolves.toBe(true);

    expect(await receive('aggregation', 3)).toEqual(['a', 'b', 'c']);
  });

  it('counts the events a durable has not been delivered yet', async () => {
    await bus.publish(subject, EchoRequest, echo('a'), { eventId: uniqueName('a') });
    expect(await receive('lagging', 1)).toEqual(['a']);
    await expect(bus.consumerPending!(stream, 'lagging')).resolves.toBe(0);
    for (const message of ['b', 'c', 'd']) {
      await bus.publish(subject, EchoRequest, echo(message), { eventId: uniqueName(message) });
    }
    await expect(bus.consumerPending!(stream, 'lagging')).resolves.toBe(3);
    await expect(bus.consumerPending!(stream, 'never-subscribed')).resolves.toBeUndefined();
  });

  it('resolves false for a durable that does not exist', async () => {
    await expect(bus.deleteConsumer!(stream, 'never-subscribed')).resolves.toBe(false);
    await expect(bus.deleteConsumer!(uniqueName('NO_STREAM'), 'never-subscribed')).resolves.toBe(
      false,
    );
  });
}

describe('deleting a durable on the in-process bus', () => {
  deleteConsumerSuite({
    connect: () => Promise.resolve(createInProcessBus()),
    removeStream: () => Promise.resolve(),
  });
});

describeWithNats('deleting a durable on NATS JetStream', () => {
  deleteConsumerSuite({
    connect: () => connectNatsBus({ servers: natsUrl!, name: 'tandem-test' }),
    removeStream: async (name) => {
      const admin = await connect({ servers: natsUrl! });
      try {
        await (await jetstreamManager(admin)).streams.delete(name);
      } finally {
        await admin.close();
      }
    },
  });
});
