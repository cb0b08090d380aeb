import { dispositionFor } from '../../src/events/delivery';
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
