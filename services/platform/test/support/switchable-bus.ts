/**
 * An event bus in front of another (the in-process one) that plays NATS's failures: switched off,
 * every publish fails with `UnavailableError`, as the NATS adapter's does; it can also lose an
 * ack, answer slowly or not at all.
 */
import { UnavailableError } from '../../src/errors';
import type { EventBus, EventCodec, PublishAck, PublishOptions } from '../../src/events/bus';

/** An event bus that can be switched off, and can lose the ack of a stored event once. */
export class SwitchableBus implements EventBus {
  readonly kind = 'in-process' as const;
  available = true;
  /** When set, the next publish is stored but its ack is "lost" (the caller sees a failure). */
  loseNextAck = false;
  /** When set, publishes wait for it (NATS connected, but slow to ack). */
  slow: Promise<void> | undefined;
  /** When set, publishes get no ack and fail at their timeout, as NATS's do. */
  unanswered = false;
  /** When set, an event is stored at once and acked this much later (or fails at its timeout). */
  ackDelayMs = 0;
  /** What NATS said while the bus is off: the cause of the publish error, as the adapter's. */
  outageCause: Error | undefined;
  attempts = 0;

  constructor(private readonly inner: EventBus) {}

  declareStream = (spec: Parameters<EventBus['declareStream']>[0]) =>
    this.inner.declareStream(spec);
  subscribe: EventBus['subscribe'] = (spec, handler) => this.inner.subscribe(spec, handler);
  isConnected = () => this.available;
  close = () => this.inner.close();

  async publish<T>(
    subject: string,
    codec: EventCodec<T>,
    event: T,
    options: PublishOptions,
  ): Promise<PublishAck> {
    this.attempts++;
    if (!this.available) throw new UnavailableError('NATS is down', { cause: this.outageCause });
    if (this.unanswered) {
      await new Promise((resolve) => setTimeout(resolve, options.timeoutMs));
      throw new UnavailableError('publish ack timed out');
    }
    await this.slow;
    const ack = await this.inner.publish(subject, codec, event, options);
    if (this.ackDelayMs > 0) {
      await new Promise((resolve) =>
        setTimeout(resolve, Math.min(this.ackDelayMs, options.timeoutMs ?? Infinity)),
      );
      if (this.ackDelayMs > (options.timeoutMs ?? Infinity))
        throw new UnavailableError('publish ack timed out');
    }
    if (this.loseNextAck) {
      this.loseNextAck = false;
      throw new UnavailableError('publish ack timed out');
    }
    return ack;
  }
}
