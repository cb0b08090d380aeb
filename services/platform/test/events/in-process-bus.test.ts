/**
 * The event-bus contract against the in-process adapter, plus the limits it applies itself
 * (JetStream's are the server's, checked in nats-bus.test.ts).
 */
import { EchoRequest } from '../../../../gen/ts/tandem/echo/v1/echo_service';
import { FailedPreconditionError } from '../../src/errors';
import { createInProcessBus } from '../../src/events/in-process-bus';
import { describeEventBusContract, eventually } from './event-bus-contract';

function echo(message: string): EchoRequest {
  return { message, failWithCode: 0, delay: undefined, requireMessage: false };
}

describe('in-process event bus', () => {
  describe('contract', () => {
    describeEventBusContract({
      connect: () => Promise.resolve(createInProcessBus()),
      removeStream: () => Promise.resolve(),
    });
  });

  it('refuses a stream whose subjects overlap another stream', async () => {
    const bus = createInProcessBus();
    await bus.declareStream({ name: 'EXPOSURES', subjects: ['tandem.events.v1.exposure'] });

    await expect(
      bus.declareStream({ name: 'ALL', subjects: ['tandem.events.v1.>'] }),
    ).rejects.toBeInstanceOf(FailedPreconditionError);
    await bus.close();
  });

  it('discards the oldest events beyond maxBytes, so a new durable starts after them', async () => {
    const bus = createInProcessBus();
    await bus.declareStream({ name: 'SMALL', subjects: ['small.>'], maxBytes: 200 });
    for (let i = 0; i < 10; i++) {
      await bus.publish('small.event', EchoRequest, echo(`event ${i}`), { eventId: `e${i}` });
    }
    const received: string[] = [];
    const subscription = await bus.subscribe(
      { stream: 'SMALL', durable: 'reader', codec: EchoRequest },
      (d) => {
        received.push(d.event.message);
        return Promise.resolve();
      },
    );

    await eventually(() => {
      expect(received).toContain('event 9');
    });
    expect(received.length).toBeLessThan(10);
    expect(received[0]).not.toBe('event 0');
    await subscription.stop();
    await bus.close();
  });

  it('forgets an event id once the duplicate window has passed', async () => {
    const bus = createInProcessBus();
    await bus.declareStream({ name: 'WINDOW', subjects: ['window.>'], duplicateWindowMs: 50 });
    const first = await bus.publish('window.e', EchoRequest, echo('1'), { eventId: 'same' });
    await new Promise((resolve) => setTimeout(resolve, 80));
    const second = await bus.publish('window.e', EchoRequest, echo('2'), { eventId: 'same' });

    expect(first).toEqual({ streamSequence: 1, duplicate: false });
    expect(second).toEqual({ streamSequence: 2, duplicate: false });
    await bus.close();
  });
});
