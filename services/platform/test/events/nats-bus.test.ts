/**
 * The event-bus contract against a real NATS JetStream server, plus what only NATS has: streams
 * and durables declared from specs as server config, and the connection lifecycle.
 */
import {
  jetstream,
  jetstreamManager,
  JetStreamApiError,
  type JetStreamManager,
} from '@nats-io/jetstream';
import { connect, nanos, type NatsConnection } from '@nats-io/transport-node';
import { EchoRequest } from '../../../../gen/ts/tandem/echo/v1/echo_service';
import { FailedPreconditionError, UnavailableError } from '../../src/errors';
import { BufferedPublisher } from '../../src/events/buffered-publisher';
import type { BatchConsumerSpec, EventBus } from '../../src/events/bus';
import { connectNatsBus, supportsMultipleFilters, toBusError } from '../../src/events/nats-bus';
import { describeWithNats, natsUrl, uniqueName } from '../support/integration';
import { describeEventBusContract, eventually } from './event-bus-contract';

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

    it("fails a publish nothing takes as UNAVAILABLE saying so, with NATS's own error as the cause", async () => {
      const failed = await bus
        .publish(`${stream}.nowhere`, EchoRequest, EchoRequest.fromPartial({ message: 'x' }), {
          eventId: 'nowhere-1',
          timeoutMs: 1_000,
        })
        .then(
          () => undefined,
          (error: unknown) => error,
        );
      expect(failed).toBeInstanceOf(UnavailableError);
      expect((failed as Error).message).toBe(
        `cannot publish to ${stream}.nowhere: NATS did not acknowledge it`,
      );
      const cause = (failed as Error).cause;
      expect(cause).toBeInstanceOf(Error);
      expect((failed as Error).message).not.toContain((cause as Error).message);
    });

    it("refuses an event larger than the server's max_payload as FAILED_PRECONDITION, not UNAVAILABLE", async () => {
      await bus.declareStream({ name: stream, subjects: [`${stream}.>`], storage: 'memory' });
      const tooLarge = { message: 'x'.repeat(admin.info!.max_payload + 1) };
      const refusal = bus.publish(
        `${stream}.large`,
        EchoRequest,
        EchoRequest.fromPartial(tooLarge),
        {
          eventId: 'large-1',
        },
      );
      // A retry would fail the same way: a buffered publisher drops it rather than retrying it
      // forever at the head of its queue.
      await expect(refusal).rejects.toBeInstanceOf(FailedPreconditionError);
      await expect(refusal).rejects.toThrow(/max_payload/);
      await expect(
        bus.publish(`${stream}.small`, EchoRequest, EchoRequest.fromPartial({ message: 'x' }), {
          eventId: 'small-1',
        }),
      ).resolves.toMatchObject({ duplicate: false });

      // Behind it in a buffered publisher's queue, the next event is published: the large one is
      // dropped and counted, not retried at the head of the queue.
      const buffered = new BufferedPublisher(bus, { initialRetryDelayMs: 10 });
      buffered.enqueue(
        `${stream}.large`,
        EchoRequest,
        EchoRequest.fromPartial(tooLarge),
        'large-2',
      );
      buffered.enqueue(`${stream}.small`, EchoRequest, EchoRequest.fromPartial({}), 'small-2');
      await eventually(() => {
        expect(buffered.stats()).toMatchObject({ published: 1, dropped: 1, queued: 0 });
      });
      await buffered.close();
    });

    it('drops, rather than retries forever at the head of a buffered queue, an event id NATS cannot carry', async () => {
      await bus.declareStream({ name: stream, subjects: [`${stream}.>`], storage: 'memory' });
      // An id with a line break cannot be a Nats-Msg-Id header: every try fails the same way, so
      // it must be dropped and counted like an event over max_payload, not held as UNAVAILABLE
      // at the head of the queue, delaying every event behind it by the back-off (and kept in
      // the spool at each close, to block the next start too).
      const buffered = new BufferedPublisher(bus, { initialRetryDelayMs: 10 });
      buffered.enqueue(`${stream}.bad`, EchoRequest, EchoRequest.fromPartial({}), 'bad\nid');
      buffered.enqueue(`${stream}.good`, EchoRequest, EchoRequest.fromPartial({}), 'good-id');
      await eventually(() => {
        expect(buffered.stats()).toMatchObject({ published: 1, dropped: 1, queued: 0 });
      });
      await buffered.close();
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
      // The client enforces maxDeliver: unlimited on the server.
      expect(config.max_deliver).toBe(-1);
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

    /** Whether the durable exists on the server. */
    async function exists(durable: string): Promise<boolean> {
      try {
        await manager.consumers.info(stream, durable);
        return true;
      } catch {
        return false;
      }
    }

    it('keeps a durable with an inactivity threshold while subscribed, and NATS deletes it once idle that long', async () => {
      await bus.declareStream({ name: stream, subjects: [`${stream}.>`], storage: 'memory' });
      const delivered: string[] = [];
      const subscription = await bus.subscribe(
        { stream, durable: 'replica-1', codec: EchoRequest, inactiveThresholdMs: 1_000 },
        (d) => {
          delivered.push(d.event.message);
          return Promise.resolve();
        },
      );
      expect((await manager.consumers.info(stream, 'replica-1')).config.inactive_threshold).toBe(
        nanos(1_000),
      );
      // Twice the threshold with a subscriber but no events: still there, still delivering.
      await new Promise((resolve) => setTimeout(resolve, 2_000));
      expect(await exists('replica-1')).toBe(true);
      await bus.publish(
        `${stream}.change`,
        EchoRequest,
        { message: 'a', failWithCode: 0, requireMessage: false },
        { eventId: 'a' },
      );
      await waitFor(() => subscription.stats().acked === 1);
      expect(delivered).toEqual(['a']);

      await subscription.stop();
      const deadline = Date.now() + 15_000;
      while ((await exists('replica-1')) && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
      expect(await exists('replica-1')).toBe(false);
    });

    it("changes an existing durable's filters: to another, to none, to several and back", async () => {
      await bus.declareStream({ name: stream, subjects: [`${stream}.>`], storage: 'memory' });
      const handler = (): Promise<void> => Promise.resolve();
      const several = supportsMultipleFilters(admin.info?.version);
      // Several filters on a server before 2.10 are applied by the client: none on the server.
      const steps: [string[], string[]][] = [
        [[`${stream}.a`], [`${stream}.a`]],
        [[`${stream}.b`], [`${stream}.b`]],
        [[], []],
        [[`${stream}.a`, `${stream}.b`], several ? [`${stream}.a`, `${stream}.b`] : []],
        [[`${stream}.a`], [`${stream}.a`]],
      ];
      for (const [filterSubjects, onServer] of steps) {
        const spec = { stream, durable: 'filtered', codec: EchoRequest, filterSubjects };
        await (await bus.subscribe(spec, handler)).stop();
        const { config } = await manager.consumers.info(stream, 'filtered');
        const filters = config.filter_subjects?.length
          ? config.filter_subjects
          : [config.filter_subject ?? ''].filter((f) => f !== '');
        expect([...filters].sort()).toEqual(onServer);
      }
    });

    it('never loses an event handed back unhandled at stop, however often that happens', async () => {
      await bus.declareStream({ name: stream, subjects: [`${stream}.>`], storage: 'memory' });
      for (const message of ['e1', 'e2', 'e3', 'e4']) {
        await bus.publish(
          `${stream}.x`,
          EchoRequest,
          { message, failWithCode: 0, requireMessage: false },
          { eventId: message },
        );
      }
      const handled = new Set<string>();
      // (One fetched as the subscription stops is not handed back: it comes after the ack wait.)
      const spec = {
        stream,
        durable: 'restarted',
        codec: EchoRequest,
        maxDeliver: 2,
        ackWaitMs: 1_000,
      };
      // Two restarts while one event is being handled and the next are fetched: those are
      // handed back, each time counted by JetStream as a delivery.
      for (let run = 0; run < 2; run++) {
        let release = () => {};
        const gate = new Promise<void>((resolve) => (release = resolve));
        const subscription = await bus.subscribe(spec, async (d) => {
          handled.add(d.event.message);
          await gate;
        });
        await waitFor(() => handled.size > run);
        await new Promise((resolve) => setTimeout(resolve, 200));
        const stopping = subscription.stop();
        release();
        await stopping;
      }
      const last = await bus.subscribe(spec, (d) => {
        handled.add(d.event.message);
        return Promise.resolve();
      });
      try {
        await waitFor(() => handled.size === 4);
      } finally {
        await last.stop();
      }
    });

    it('does not pull so far ahead of a slow handler that events waiting for it are redelivered', async () => {
      await bus.declareStream({ name: stream, subjects: [`${stream}.>`], storage: 'memory' });
      for (let i = 0; i < 12; i++) {
        await bus.publish(
          `${stream}.x`,
          EchoRequest,
          { message: `e${i}`, failWithCode: 0, requireMessage: false },
          { eventId: `e${i}` },
        );
      }
      const deliveries: number[] = [];
      // One at a time, 300 ms each: an event pulled a dozen places ahead would wait 3 s, past its
      // 2 s ack wait, and come again while it waits.
      const subscription = await bus.subscribe(
        { stream, durable: 'slow', codec: EchoRequest, ackWaitMs: 2_000 },
        async (d) => {
          deliveries.push(d.deliveryCount);
          await new Promise((resolve) => setTimeout(resolve, 300));
        },
      );
      try {
        await waitFor(() => subscription.stats().acked >= 12, 15_000);
        expect(Math.max(...deliveries)).toBe(1);
        expect(deliveries).toHaveLength(12);
      } finally {
        await subscription.stop();
      }
    });

    it('retries a failing handler until maxDeliver even when its event was handed back at stops before', async () => {
      await bus.declareStream({ name: stream, subjects: [`${stream}.>`], storage: 'memory' });
      for (const message of ['e1', 'e2', 'e3']) {
        await bus.publish(
          `${stream}.x`,
          EchoRequest,
          { message, failWithCode: 0, requireMessage: false },
          { eventId: message },
        );
      }
      const spec = {
        stream,
        durable: 'handed-back',
        codec: EchoRequest,
        maxDeliver: 2,
        ackWaitMs: 2_000,
        initialRetryDelayMs: 50,
        maxRetryDelayMs: 50,
      };
      // Twice: e1 is being handled while e2 and e3 are fetched, then the subscription stops and
      // hands them back unhandled, which JetStream counts as deliveries.
      for (let run = 0; run < 2; run++) {
        let release = () => {};
        const gate = new Promise<void>((resolve) => (release = resolve));
        let started = false;
        const stopped = await bus.subscribe(spec, async () => {
          started = true;
          await gate;
          throw new Error('stopping: not handled');
        });
        await waitFor(() => started);
        await eventually(async () => {
          expect((await manager.consumers.info(stream, 'handed-back')).num_ack_pending).toBe(3);
        });
        const stopping = stopped.stop();
        release();
        await stopping;
      }
      // Each event now fails its first run here once (a passing fault): it has one retry left.
      const runs: [string, number][] = [];
      const last = await bus.subscribe(spec, (d) => {
        runs.push([d.event.message, d.deliveryCount]);
        const first = runs.filter(([m]) => m === d.event.message).length === 1;
        return first ? Promise.reject(new Error('transient')) : Promise.resolve();
      });
      try {
        await waitFor(() => last.stats().acked === 3, 15_000);
        expect(last.stats()).toMatchObject({ acked: 3, retried: 3, dropped: 0 });
        // Delivered more often than maxDeliver, which counts the handler's runs.
        expect(Math.max(...runs.map(([, count]) => count))).toBeGreaterThan(2);
      } finally {
        await last.stop();
      }
    });

    it("counts a recreated stream's events afresh, though their sequences repeat", async () => {
      const streamSpec = { name: stream, subjects: [`${stream}.>`], storage: 'memory' as const };
      await bus.declareStream(streamSpec);
      const spec = {
        stream,
        durable: 'recreated',
        codec: EchoRequest,
        maxDeliver: 2,
        initialRetryDelayMs: 3_000,
        maxRetryDelayMs: 3_000,
      };
      // Every event fails its first run: with maxDeliver 2 it has exactly one retry.
      const runs: string[] = [];
      const subscription = await bus.subscribe(spec, (d) => {
        runs.push(d.event.message);
        const first = runs.filter((m) => m === d.event.message).length === 1;
        return first ? Promise.reject(new Error('transient')) : Promise.resolve();
      });
      const publish = (message: string) =>
        bus.publish(
          `${stream}.x`,
          EchoRequest,
          { message, failWithCode: 0, requireMessage: false },
          { eventId: message },
        );
      try {
        expect((await publish('old')).streamSequence).toBe(1);
        await waitFor(() => subscription.stats().retried === 1);
        // Deleted while 'old' waits for its retry, then declared again: 'new' is its sequence 1.
        await removeStream(stream);
        await bus.declareStream(streamSpec);
        expect((await publish('new')).streamSequence).toBe(1);
        await waitFor(() => subscription.stats().acked === 1, 20_000);
        expect(subscription.stats()).toMatchObject({ dropped: 0 });
        expect(runs.filter((m) => m === 'new')).toHaveLength(2);
      } finally {
        await subscription.stop();
      }
    });

    it('adds an inactivity threshold to an existing durable, and removes it again', async () => {
      await bus.declareStream({ name: stream, subjects: [`${stream}.>`], storage: 'memory' });
      const spec = { stream, durable: 'replica-2', codec: EchoRequest };
      const handler = (): Promise<void> => Promise.resolve();
      await (await bus.subscribe(spec, handler)).stop();
      expect(
        (await manager.consumers.info(stream, 'replica-2')).config.inactive_threshold ?? 0,
      ).toBe(0);

      await (await bus.subscribe({ ...spec, inactiveThresholdMs: 60_000 }, handler)).stop();
      expect((await manager.consumers.info(stream, 'replica-2')).config.inactive_threshold).toBe(
        nanos(60_000),
      );

      await (await bus.subscribe(spec, handler)).stop();
      expect(
        (await manager.consumers.info(stream, 'replica-2')).config.inactive_threshold ?? 0,
      ).toBe(0);
    });
  });

  describe('cumulative acknowledgement', () => {
    let bus: EventBus;
    let stream: string;
    const durable = 'aggregation';

    beforeEach(async () => {
      bus = await connectNatsBus({ servers: natsUrl!, name: 'tandem-test' });
      stream = uniqueName('CUMULATIVE');
      await bus.declareStream({ name: stream, subjects: [`${stream}.>`], storage: 'memory' });
    });

    afterEach(async () => {
      await bus.close();
      await removeStream(stream);
    });

    async function publish(...messages: string[]): Promise<void> {
      for (const message of messages) {
        await bus.publish(
          `${stream}.outcome`,
          EchoRequest,
          { message, failWithCode: 0, requireMessage: false },
          { eventId: `${message}-${uniqueName('id')}` },
        );
      }
    }

    function spec(overrides: Partial<BatchConsumerSpec<EchoRequest>> = {}) {
      return {
        stream,
        durable,
        codec: EchoRequest,
        acknowledgement: 'cumulative' as const,
        initialRetryDelayMs: 50,
        ...overrides,
      };
    }

    /** The durable's acknowledgement floor and what still awaits acknowledgement. */
    async function position(): Promise<{ ackFloor: number; unacknowledged: number }> {
      const info = await manager.consumers.info(stream, durable);
      return { ackFloor: info.ack_floor.stream_seq, unacknowledged: info.num_ack_pending };
    }

    it('acknowledges the events of a resolved batch with one acknowledgement of its last', async () => {
      await publish('a', 'b', 'c', 'd');
      const seen: string[] = [];
      const subscription = await bus.subscribeBatches!(spec(), (batch) => {
        seen.push(...batch.map((d) => d.event.message));
        return Promise.resolve();
      });

      await waitFor(() => subscription.stats().acked === 4);
      expect(seen).toEqual(['a', 'b', 'c', 'd']);
      expect((await manager.consumers.info(stream, durable)).config.ack_policy).toBe('all');
      await eventuallyEqual(position, { ackFloor: 4, unacknowledged: 0 });
      await subscription.stop();
    });

    it('acknowledges nothing past a batch still running, and all of it once that one resolves', async () => {
      let release: () => void = () => undefined;
      const held = new Promise<void>((resolve) => {
        release = resolve;
      });
      const handled: string[] = [];
      const subscription = await bus.subscribeBatches!(
        spec({ maxBatchSize: 1, concurrency: 3 }),
        async (batch) => {
          const message = batch[0]!.event.message;
          if (message === 'first') await held;
          handled.push(message);
        },
      );
      await publish('first', 'second', 'third');

      await waitFor(() => handled.length === 2);
      await new Promise((resolve) => setTimeout(resolve, 200));
      expect(await position()).toEqual({ ackFloor: 0, unacknowledged: 3 });
      release();
      await eventuallyEqual(position, { ackFloor: 3, unacknowledged: 0 });
      await subscription.stop();
    });

    it('acknowledges a batch that finishes while the subscription stops', async () => {
      await publish('a', 'b', 'c');
      let release: () => void = () => undefined;
      const held = new Promise<void>((resolve) => {
        release = resolve;
      });
      let started = false;
      const subscription = await bus.subscribeBatches!(spec(), async () => {
        started = true;
        await held;
      });
      await waitFor(() => started);
      const stopping = subscription.stop();
      release();
      await stopping;

      await eventuallyEqual(position, { ackFloor: 3, unacknowledged: 0 });
    });

    it('rewinds to events a crashed subscriber took without acknowledging them', async () => {
      const first = await bus.subscribeBatches!(spec(), () => Promise.resolve());
      await publish('a', 'b');
      await waitFor(() => first.stats().acked === 2);
      await first.stop();
      await eventuallyEqual(position, { ackFloor: 2, unacknowledged: 0 });
      await publish('c', 'd', 'e');
      // A subscriber that dies holding c and d: they await acknowledgement until the ack wait.
      const consumer = await jetstream(admin).consumers.get(stream, durable);
      const taken = await consumer.fetch({ max_messages: 2, expires: 1_000 });
      for await (const message of taken) expect(message.info.streamSequence).toBeLessThan(5);
      expect((await position()).unacknowledged).toBe(2);

      const seen: string[] = [];
      const second = await bus.subscribeBatches!(spec(), (batch) => {
        seen.push(...batch.map((d) => d.event.message));
        return Promise.resolve();
      });
      await waitFor(() => seen.length >= 3);
      expect(seen).toEqual(['c', 'd', 'e']);
      await eventuallyEqual(position, { ackFloor: 5, unacknowledged: 0 });
      await second.stop();
    });

    it('rewinds when a delivery never reached it, rather than acknowledging past it', async () => {
      const warnings: string[] = [];
      const logger = {
        info: () => undefined,
        warn: (fields: object) => {
          warnings.push(String((fields as { reason?: unknown }).reason));
        },
        error: () => undefined,
      };
      const watched = await connectNatsBus({ servers: natsUrl!, name: 'tandem-test', logger });
      try {
        const seen: string[] = [];
        const subscription = await watched.subscribeBatches!(spec(), (batch) => {
          seen.push(...batch.map((d) => d.event.message));
          return Promise.resolve();
        });
        await publish('a');
        await eventuallyEqual(position, { ackFloor: 1, unacknowledged: 0 });

        // Another client of the durable takes one delivery and never acknowledges it: to the
        // subscription, a delivery lost on the way (as one is with a dropped connection).
        const consumer = await jetstream(admin).consumers.get(stream, durable);
        let stolen: string | undefined;
        const taking = (async () => {
          for await (const message of await consumer.fetch({ max_messages: 1, expires: 5_000 })) {
            stolen = EchoRequest.decode(message.data).message;
          }
        })();
        const published = ['a'];
        for (let i = 0; stolen === undefined && i < 40; i++) {
          published.push(`m${i}`);
          await publish(`m${i}`);
          await new Promise((resolve) => setTimeout(resolve, 50));
        }
        await taking;
        expect(stolen).toBeDefined();
        // The subscription sees the gap at the first delivery after the stolen one, at the latest.
        published.push('z');
        await publish('z');

        await waitFor(() => published.every((m) => seen.includes(m)));
        expect(seen.filter((m) => m === stolen).length).toBeGreaterThanOrEqual(1);
        expect(warnings.some((reason) => reason.startsWith('deliveries went missing'))).toBe(true);
        await eventuallyEqual(position, { ackFloor: published.length, unacknowledged: 0 });
        await subscription.stop();
      } finally {
        await watched.close();
      }
    });

    it('replaces a durable acknowledged event by event at its acknowledged position', async () => {
      const each = await bus.subscribeBatches!(spec({ acknowledgement: 'each' }), () =>
        Promise.resolve(),
      );
      await publish('a', 'b');
      await waitFor(() => each.stats().acked === 2);
      await each.stop();
      expect((await manager.consumers.info(stream, durable)).config.ack_policy).toBe('explicit');
      await publish('c');

      const seen: string[] = [];
      const cumulative = await bus.subscribeBatches!(spec(), (batch) => {
        seen.push(...batch.map((d) => d.event.message));
        return Promise.resolve();
      });
      await waitFor(() => seen.length >= 1);
      expect(seen).toEqual(['c']);
      expect((await manager.consumers.info(stream, durable)).config.ack_policy).toBe('all');
      await eventuallyEqual(position, { ackFloor: 3, unacknowledged: 0 });
      await cumulative.stop();
    });

    it('comes back to a failed batch with everything after it, counting its deliveries on', async () => {
      const seen: [string, number][] = [];
      let failed = false;
      const subscription = await bus.subscribeBatches!(
        spec({ maxBatchSize: 1, concurrency: 2 }),
        (batch) => {
          const d = batch[0]!;
          seen.push([d.event.message, d.deliveryCount]);
          if (d.event.message === 'b' && !failed) {
            failed = true;
            return Promise.reject(new Error('checkpoint failed'));
          }
          return Promise.resolve();
        },
      );
      await publish('a', 'b', 'c');

      await eventuallyEqual(position, { ackFloor: 3, unacknowledged: 0 });
      expect(seen.filter(([m]) => m === 'b')).toEqual([
        ['b', 1],
        ['b', 2],
      ]);
      expect(seen.filter(([m]) => m === 'c').length).toBeGreaterThanOrEqual(1);
      expect(subscription.stats()).toMatchObject({ retried: 1, dropped: 0 });
      await subscription.stop();
    });

    it('counts an undecodable event once, however often a rewind brings it back', async () => {
      await bus.publish(
        `${stream}.outcome`,
        { encode: (bytes: Uint8Array) => ({ finish: () => bytes }), decode: (b: Uint8Array) => b },
        Uint8Array.from([0x0f]),
        { eventId: 'undecodable' },
      );
      await publish('ok');
      let failures = 0;
      const subscription = await bus.subscribeBatches!(spec(), () =>
        failures++ < 2 ? Promise.reject(new Error('checkpoint failed')) : Promise.resolve(),
      );
      try {
        await waitFor(() => subscription.stats().acked === 1);
        expect(subscription.stats()).toMatchObject({ acked: 1, retried: 2, poison: 1 });
      } finally {
        await subscription.stop();
      }
    });

    it('counts a batch held behind a failed one as acked once, when an acknowledgement covers it', async () => {
      let failed = false;
      let handledB = 0;
      const subscription = await bus.subscribeBatches!(
        spec({ maxBatchSize: 1, concurrency: 2 }),
        async (batch) => {
          const message = batch[0]!.event.message;
          if (message === 'b') handledB++;
          if (message === 'a' && !failed) {
            // Fails after 'b' has finished: 'b' is handled but not yet acknowledgeable.
            await waitFor(() => handledB > 0);
            failed = true;
            throw new Error('checkpoint failed');
          }
        },
      );
      await publish('a', 'b');

      await eventuallyEqual(position, { ackFloor: 2, unacknowledged: 0 });
      expect(handledB).toBe(2);
      expect(subscription.stats()).toMatchObject({ acked: 2, retried: 1, dropped: 0 });
      await subscription.stop();
    });
  });

  it('refuses a subscription whose durable was being declared as the bus closed, rather than leave it running', async () => {
    const closing = await connectNatsBus({ servers: natsUrl!, name: 'tandem-test' });
    const stream = uniqueName('CLOSING');
    await closing.declareStream({ name: stream, subjects: [`${stream}.>`], storage: 'memory' });
    // The close starts just as the durable's declaration answers.
    const internals = closing as unknown as {
      declareConsumer: (...args: unknown[]) => Promise<unknown>;
    };
    const declare = internals.declareConsumer.bind(closing);
    let closed: Promise<void> | undefined;
    internals.declareConsumer = async (...args: unknown[]) => {
      const declared = await declare(...args);
      closed = closing.close();
      return declared;
    };
    let handled = 0;
    await expect(
      closing.subscribe({ stream, durable: 'late', codec: EchoRequest }, () => {
        handled++;
        return Promise.resolve();
      }),
    ).rejects.toBeInstanceOf(UnavailableError);
    await closed;
    // Nothing consumes: an event published now stays pending on the durable.
    const publisher = await connectNatsBus({ servers: natsUrl!, name: 'tandem-test' });
    try {
      await publisher.publish(
        `${stream}.x`,
        EchoRequest,
        EchoRequest.fromPartial({ message: 'a' }),
        { eventId: 'a' },
      );
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(handled).toBe(0);
      expect((await manager.consumers.info(stream, 'late')).num_pending).toBe(1);
    } finally {
      await publisher.close();
      await removeStream(stream);
    }
  });

  it('fails to connect with UnavailableError when no server answers and it is told to', async () => {
    await expect(
      connectNatsBus({
        servers: 'nats://127.0.0.1:1',
        name: 'tandem-test',
        connectTimeoutMs: 500,
        whenUnreachable: 'fail',
      }),
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

describe('JetStream API errors', () => {
  // Codes and statuses as nats-server's errors.json defines them.
  it.each([
    ['JetStream system temporarily unavailable', 503, 10008, UnavailableError],
    ['JetStream cluster can not handle request', 500, 10009, UnavailableError],
    ['incomplete results', 503, 10004, UnavailableError],
    ['insufficient resources', 503, 10023, UnavailableError],
    ['subjects overlap with an existing stream', 400, 10065, FailedPreconditionError],
    ['JetStream not enabled', 503, 10076, FailedPreconditionError],
    [
      'consumer name in subject does not match durable name in request',
      400,
      10017,
      FailedPreconditionError,
    ],
  ])(
    '"%s" (%d, %d) is retried only when the cluster cannot answer yet',
    (description, code, errCode, expected) => {
      const error = toBusError(
        new JetStreamApiError({ code, err_code: errCode, description }),
        'cannot declare consumer s/d',
      );
      expect(error).toBeInstanceOf(expected);
      // The server's description stays in the cause (logged); the message names the code only.
      expect(error.message).toContain(`error ${errCode}`);
      expect(error.message).not.toContain(description);
      expect((error.cause as Error).message).toContain(description);
    },
  );

  it('keep what the server said out of the message, which a caller may be shown', () => {
    // JSStreamStoreFailedF ("{err}") quotes the server's own failure: its store's paths.
    const description = 'open /var/lib/nats/jetstream/$G/streams/OUTCOMES: permission denied';
    for (const cause of [
      new JetStreamApiError({ code: 500, err_code: 10077, description }),
      new Error(`connection to nats-0.internal:4222 lost: ${description}`),
    ]) {
      const error = toBusError(cause, 'cannot declare stream OUTCOMES');
      expect(error.message).toMatch(/^cannot declare stream OUTCOMES: NATS /);
      expect(error.message).not.toMatch(/nats-0|4222|\/var\/lib|permission denied/);
      expect(error.cause).toBe(cause);
    }
  });
});

async function waitFor(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  await eventually(() => {
    expect(condition()).toBe(true);
  }, timeoutMs);
}

/** Retries `read` until it resolves to `expected`; a read that fails (the durable is being replaced) counts as not yet. */
async function eventuallyEqual<V>(read: () => Promise<V>, expected: V): Promise<void> {
  await eventually(async () => {
    expect(await read()).toEqual(expected);
  });
}
