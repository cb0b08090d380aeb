import { FailureCounts, dispositionFor } from '../../src/events/delivery';
import { consumerSettings, retryDelayMs } from '../../src/events/event-settings';
import { InvalidArgumentError } from '../../src/errors';

const codec = { encode: () => ({ finish: () => new Uint8Array() }), decode: () => null };
const settings = consumerSettings({ stream: 'S', durable: 'd', codec, maxDeliver: 3 });

describe('retryDelayMs', () => {
  it.each([
    [1, 1_000],
    [2, 2_000],
    [3, 4_000],
    [5, 16_000],
    [6, 30_000],
    [10_000, 30_000],
  ])('waits before redelivery %i for %i ms', (deliveryCount, expected) => {
    expect(retryDelayMs(settings, deliveryCount)).toBe(expected);
  });
});

describe('dispositionFor', () => {
  const failed = { kind: 'failed', error: new Error('x') } as const;

  it('acks a handled event, whatever its delivery count', () => {
    expect(dispositionFor(settings, { kind: 'handled' }, 3)).toEqual({ kind: 'ack' });
  });

  it('retries a failed event with the back-off until the last delivery, then drops it', () => {
    expect(dispositionFor(settings, failed, 1)).toEqual({ kind: 'retry', delayMs: 1_000 });
    expect(dispositionFor(settings, failed, 2)).toEqual({ kind: 'retry', delayMs: 2_000 });
    expect(dispositionFor(settings, failed, 3)).toEqual({ kind: 'drop' });
  });

  it('leaves an overrun to the stream, except on the last delivery', () => {
    expect(dispositionFor(settings, { kind: 'overran' }, 1)).toEqual({ kind: 'await-redelivery' });
    expect(dispositionFor(settings, { kind: 'overran' }, 3)).toEqual({ kind: 'drop' });
  });

  it("counts the handler's failed runs, not deliveries handed back, up to three times maxDeliver deliveries", () => {
    // The first run here of an event delivered four times (handed back at three stops).
    expect(dispositionFor(settings, failed, 1, 4)).toEqual({ kind: 'retry', delayMs: 1_000 });
    expect(dispositionFor(settings, failed, 2, 8)).toEqual({ kind: 'retry', delayMs: 2_000 });
    expect(dispositionFor(settings, failed, 1, 9)).toEqual({ kind: 'drop' });
    expect(dispositionFor(settings, { kind: 'handled' }, 1, 100)).toEqual({ kind: 'ack' });
  });
});

describe('FailureCounts', () => {
  it("numbers an event's runs by its failures, forgets it once settled, and holds at most its capacity", () => {
    const counts = new FailureCounts(2);
    expect(counts.attempt(7)).toBe(1);
    counts.settled(7, 1, { kind: 'retry', delayMs: 1 });
    expect(counts.attempt(7)).toBe(2);
    counts.settled(7, 2, { kind: 'await-redelivery' });
    expect(counts.attempt(7)).toBe(3);
    counts.settled(7, 3, { kind: 'drop' });
    expect(counts.attempt(7)).toBe(1);

    counts.settled(1, 1, { kind: 'retry', delayMs: 1 });
    counts.settled(2, 1, { kind: 'retry', delayMs: 1 });
    counts.settled(1, 2, { kind: 'retry', delayMs: 1 }); // now the newest
    counts.settled(3, 1, { kind: 'retry', delayMs: 1 });
    expect([counts.attempt(1), counts.attempt(2), counts.attempt(3)]).toEqual([3, 1, 2]);
    counts.forget(1);
    expect(counts.attempt(1)).toBe(1);
    expect(counts.size).toBe(1);
  });
});

describe('consumerSettings', () => {
  it('reports every invalid field at once', () => {
    let caught: unknown;
    try {
      consumerSettings({
        stream: 'a.b',
        durable: '',
        codec,
        maxDeliver: 0,
        concurrency: 1.5,
        inactiveThresholdMs: 0,
      });
    } catch (error) {
      caught = error;
    }
    expect(caught).toBeInstanceOf(InvalidArgumentError);
    expect((caught as InvalidArgumentError).violations.map((v) => v.field)).toEqual([
      'stream',
      'durable',
      'maxDeliver',
      'concurrency',
      'inactiveThresholdMs',
    ]);
  });

  it('leaves a durable without an inactivity threshold unless the spec sets one', () => {
    expect(consumerSettings({ stream: 'S', durable: 'd', codec }).inactiveThresholdMs).toBe(
      undefined,
    );
    expect(
      consumerSettings({ stream: 'S', durable: 'd', codec, inactiveThresholdMs: 60_000 })
        .inactiveThresholdMs,
    ).toBe(60_000);
  });
});
