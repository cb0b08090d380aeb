/**
 * The buffered publisher against an in-process bus behind a switch that plays a NATS outage:
 * while it is off every publish fails with `UnavailableError`, as the NATS adapter's does.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { trace } from '@opentelemetry/api';
import { EchoRequest } from '../../../../gen/ts/tandem/echo/v1/echo_service';
import { UnavailableError } from '../../src/errors';
import {
  BufferedPublisher,
  type EventSpool,
  type PublishGate,
} from '../../src/events/buffered-publisher';
import type { EventCodec, Subscription } from '../../src/events/bus';
import { openEventSpool } from '../../src/events/event-spool';
import { createInProcessBus } from '../../src/events/in-process-bus';
import type { Collection, DocumentStore } from '../../src/storage/collection';
import { openEmbeddedStore } from '../../src/storage/embedded-store';
import { SwitchableBus } from '../support/switchable-bus';
import { installTestTracing, type TestTracing } from '../support/tracing';
import { eventually } from './event-bus-contract';

const SUBJECT = 'tandem.events.v1.exposure';

function echo(message: string): EchoRequest {
  return { message, failWithCode: 0, delay: undefined, requireMessage: false };
}

/** A spool taking `perBatch` events per 40 ms, adding their ids to `kept`. */
function slowSpool(perBatch: number, kept: string[]): EventSpool {
  return {
    async keep(events, options) {
      for (let i = 0; i < events.length; i += perBatch) {
        if (options?.signal?.aborted) return;
        await new Promise((resolve) => setTimeout(resolve, 40));
        const batch = events.slice(i, i + perBatch);
        kept.push(...batch.map((event) => event.eventId));
        options?.onKept?.(batch.length);
      }
    },
    peek: () => Promise.resolve([]),
    forget: () => Promise.resolve(),
  };
}

/** Runs `run` with a spool in a fresh embedded store. */
async function withSpool(
  run: (spool: EventSpool, store: DocumentStore) => Promise<void>,
): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'tandem-spool-'));
  const store = await openEmbeddedStore({ path: dir });
  try {
    await run(await openEventSpool(store, 'exposures', 60_000), store);
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('BufferedPublisher', () => {
  let bus: SwitchableBus;
  let received: string[];
  let subscription: Subscription;
  let publisher: BufferedPublisher | undefined;

  beforeEach(async () => {
    bus = new SwitchableBus(createInProcessBus());
    await bus.declareStream({ name: 'EXPOSURES', subjects: [SUBJECT] });
    received = [];
    subscription = await bus.subscribe(
      { stream: 'EXPOSURES', durable: 'analysis', codec: EchoRequest },
      (delivered) => {
        received.push(delivered.event.message);
        return Promise.resolve();
      },
    );
  });

  afterEach(async () => {
    await publisher?.close(100);
    publisher = undefined;
    await subscription.stop();
    await bus.close();
  });

  function create(
    options: ConstructorParameters<typeof BufferedPublisher>[1] = {},
  ): BufferedPublisher {
    publisher = new BufferedPublisher(bus, {
      initialRetryDelayMs: 10,
      maxRetryDelayMs: 50,
      ...options,
    });
    return publisher;
  }

  it('publishes enqueued events in the background', async () => {
    const events = create();
    events.enqueue(SUBJECT, EchoRequest, echo('a'), 'a');
    events.enqueue(SUBJECT, EchoRequest, echo('b'), 'b');

    await expect(events.flush(5_000)).resolves.toBe(true);
    await eventually(() => {
      expect(received).toEqual(['a', 'b']);
    });
    expect(events.stats()).toEqual({
      queued: 0,
      published: 2,
      skipped: 0,
      dropped: 0,
      failedAttempts: 0,
      spooled: 0,
      restored: 0,
    });
  });

  it('buffers events while the bus is unavailable and publishes the backlog when it returns', async () => {
    bus.available = false;
    const events = create();
    for (const id of ['1', '2', '3', '4', '5']) events.enqueue(SUBJECT, EchoRequest, echo(id), id);

    await eventually(() => {
      expect(events.stats().failedAttempts).toBeGreaterThanOrEqual(10);
    });
    expect(events.stats()).toMatchObject({ queued: 5, published: 0, dropped: 0 });
    expect(received).toEqual([]);

    bus.available = true;
    await expect(events.flush(5_000)).resolves.toBe(true);
    await eventually(() => {
      expect(received).toEqual(['1', '2', '3', '4', '5']);
    });
    expect(events.stats()).toMatchObject({ queued: 0, published: 5, dropped: 0 });
  });

  it("logs what NATS said about an outage, which the publish error's message leaves out", async () => {
    bus.available = false;
    bus.outageCause = new Error('TIMEOUT after 5000 ms waiting for nats-0.internal:4222');
    const warnings: { fields: object; message: string }[] = [];
    const events = create({
      logger: {
        info: () => undefined,
        warn: (fields: object, message: string) => {
          warnings.push({ fields, message });
        },
        error: () => undefined,
      },
    });
    events.enqueue(SUBJECT, EchoRequest, echo('1'), '1');
    await eventually(() => {
      expect(warnings.map((w) => w.message)).toContain('event bus unavailable; buffering events');
    });
    expect(warnings[0]?.fields).toMatchObject({
      error: 'NATS is down: TIMEOUT after 5000 ms waiting for nats-0.internal:4222',
    });
  });

  it('drops new events beyond its capacity and counts them, keeping the earliest', async () => {
    bus.available = false;
    const events = create({ capacity: 3 });
    const queued = ['1', '2', '3', '4', '5'].map((id) =>
      events.enqueue(SUBJECT, EchoRequest, echo(id), id),
    );

    expect(queued).toEqual([true, true, true, false, false]);
    expect(events.stats()).toMatchObject({ queued: 3, dropped: 2 });
    bus.available = true;
    await events.flush(5_000);
    await eventually(() => {
      expect(received).toEqual(['1', '2', '3']);
    });
  });

  it('stores a retried event once when only its ack was lost', async () => {
    bus.loseNextAck = true;
    const events = create();
    events.enqueue(SUBJECT, EchoRequest, echo('once'), 'exposure-1');
    events.enqueue(SUBJECT, EchoRequest, echo('fence'), 'exposure-2');

    await events.flush(5_000);
    await eventually(() => {
      expect(received).toContain('fence');
    });
    expect(received).toEqual(['once', 'fence']);
    expect(events.stats()).toMatchObject({ published: 2, failedAttempts: 1, dropped: 0 });
  });

  it('publishes what is queued on close, then drops what is enqueued after', async () => {
    const events = create();
    for (let i = 0; i < 100; i++) events.enqueue(SUBJECT, EchoRequest, echo(`${i}`), `e${i}`);

    await events.close();
    events.enqueue(SUBJECT, EchoRequest, echo('late'), 'late');

    expect(events.stats()).toEqual({
      queued: 0,
      published: 100,
      skipped: 0,
      dropped: 1,
      failedAttempts: 0,
      spooled: 0,
      restored: 0,
    });
    await eventually(() => {
      expect(received).toHaveLength(100);
    });
  });

  it('gives up on close after its timeout, counts what is left as dropped and logs how many', async () => {
    bus.available = false;
    const logged: { level: string; fields: object; message: string }[] = [];
    const record =
      (level: string) =>
      (fields: object, message: string): void => {
        logged.push({ level, fields, message });
      };
    const events = create({
      capacity: 3,
      logger: { info: record('info'), warn: record('warn'), error: record('error') },
    });
    for (const id of ['s1', 's2', 's3', 's4']) events.enqueue(SUBJECT, EchoRequest, echo(id), id);
    // The fourth was dropped (queue full) and logged: the drop log is quiet for a while now.
    expect(logged.filter((l) => l.message.includes('dropped'))).toHaveLength(1);

    await events.close(100);

    expect(events.stats()).toMatchObject({ queued: 0, published: 0, dropped: 4 });
    expect(logged.filter((l) => l.level === 'error')).toEqual([
      {
        level: 'error',
        fields: { lost: 3, subjects: [SUBJECT], dropped: 4 },
        message: 'publisher closed with events not published; they are lost',
      },
    ]);
  });

  it('ends the publishes it starts while closing by the close deadline', async () => {
    bus.available = false;
    const events = create({ publishTimeoutMs: 5_000, initialRetryDelayMs: 100 });
    events.enqueue(SUBJECT, EchoRequest, echo('s1'), 's1');
    await eventually(() => {
      expect(bus.attempts).toBe(1);
    });
    // The next round starts after the back-off, while closing, and gets no answer.
    bus.available = true;
    bus.unanswered = true;
    const started = Date.now();
    await events.close(500);
    expect(bus.attempts).toBe(2);
    // Not the 5 s publish timeout: the round ended with the close's 500 ms.
    expect(Date.now() - started).toBeLessThan(2_500);
    expect(events.stats()).toMatchObject({ published: 0, dropped: 1 });
  });

  it('keeps what is left at close in a spool, for the next publisher to queue again', async () => {
    await withSpool(async (spool) => {
      bus.available = false;
      const first = create({ spool });
      for (const id of ['k1', 'k2', 'k3']) first.enqueue(SUBJECT, EchoRequest, echo(id), id);
      await first.close(100);
      expect(first.stats()).toMatchObject({ queued: 0, dropped: 0, spooled: 3 });

      bus.available = true;
      const next = create({ spool });
      expect(await next.restoreSpooled()).toBe(3);
      await eventually(() => {
        expect([...received].sort()).toEqual(['k1', 'k2', 'k3']);
      });
      expect(next.stats()).toMatchObject({ restored: 3, published: 3 });
      // Taken once: a third publisher finds nothing.
      expect(await create({ spool }).restoreSpooled()).toBe(0);
    });
  });

  it('counts what its spool kept before the spill timed out as kept, the rest as dropped', async () => {
    // A spool taking 2 events per 40 ms: 3 batches of the 10 fit in the spill's 100 ms.
    const kept: string[] = [];
    const spool = slowSpool(2, kept);
    bus.available = false;
    const events = create({ spool, spoolTimeoutMs: 100 });
    for (let i = 0; i < 10; i++) events.enqueue(SUBJECT, EchoRequest, echo(`e${i}`), `e${i}`);
    await events.close(10);
    // The batch in flight at the timeout may still land; none is started after it.
    await new Promise((resolve) => setTimeout(resolve, 300));
    const stats = events.stats();
    expect(stats.spooled + stats.dropped).toBe(10);
    expect(kept.length).toBeLessThanOrEqual(stats.spooled + 2);
    expect(stats.spooled).toBeGreaterThan(0);
    expect(kept.length).toBeLessThan(10);
  });

  it('with the bus down at close, gives the spool the time of the close instead of waiting for the bus', async () => {
    // A spool taking 2 events per 40 ms: the 10 need ~200 ms, more than its own 100 ms.
    const kept: string[] = [];
    const spool = slowSpool(2, kept);
    bus.available = false;
    const events = create({ spool, spoolTimeoutMs: 100 });
    for (let i = 0; i < 10; i++) events.enqueue(SUBJECT, EchoRequest, echo(`e${i}`), `e${i}`);
    await events.close(1_000);
    expect(events.stats()).toMatchObject({ spooled: 10, dropped: 0 });
    expect(kept).toHaveLength(10);
  });

  // JetStream not answering: connected, every publish times out. A spool taking 10 events per
  // 40 ms needs ~400 ms for the 100, more than its own 100 ms. With a publish timeout longer than
  // the close, as in production, a round started while closing times out by half the time left
  // (the bus failing already), not at the deadline, when nothing would be left to spill.
  it.each([
    { publishTimeoutMs: 100, closeMs: 2_000 },
    { publishTimeoutMs: 5_000, closeMs: 1_200 },
  ])(
    'with JetStream not answering, gives the spool the rest of the close (publish timeout $publishTimeoutMs ms)',
    async ({ publishTimeoutMs, closeMs }) => {
      const kept: string[] = [];
      const events = create({
        spool: slowSpool(10, kept),
        spoolTimeoutMs: 100,
        publishTimeoutMs,
        initialRetryDelayMs: 10_000,
        maxRetryDelayMs: 10_000,
      });
      bus.unanswered = true;
      bus.available = false;
      for (let i = 0; i < 100; i++) events.enqueue(SUBJECT, EchoRequest, echo(`e${i}`), `e${i}`);
      await eventually(() => {
        expect(events.stats().failedAttempts).toBeGreaterThan(0);
      });
      bus.available = true;
      await events.close(closeMs);
      expect(events.stats()).toMatchObject({ spooled: 100, dropped: 0 });
      expect(kept).toHaveLength(100);
    },
  );

  it('goes on publishing when a round while closing got some acks, with a spool', async () => {
    const kept: string[] = [];
    const spool = slowSpool(10, kept);
    let release = (): void => undefined;
    bus.slow = new Promise<void>((resolve) => (release = resolve));
    const events = create({ spool, spoolTimeoutMs: 100 });
    for (let i = 0; i < 200; i++) events.enqueue(SUBJECT, EchoRequest, echo(`e${i}`), `e${i}`);
    // A round of 32 in flight; one of its acks will be lost.
    await eventually(() => {
      expect(bus.attempts).toBeGreaterThan(0);
    });
    bus.loseNextAck = true;
    const closed = events.close(3_000);
    bus.slow = undefined;
    release();
    await closed;
    expect(events.stats()).toMatchObject({ published: 200, spooled: 0, dropped: 0 });
    expect(kept).toEqual([]);
  });

  it('with the bus down at close, starts no round (nor its gate check) before spooling', async () => {
    // A gate taking 1.5 s to answer (not failing, so not bypassed): a round spends that first.
    const gate: PublishGate = {
      alreadyPublished: () =>
        new Promise((resolve) =>
          setTimeout(() => {
            resolve(new Set<string>());
          }, 1_500),
        ),
      published: () => Promise.resolve(),
    };
    const kept: string[] = [];
    const spool = slowSpool(10, kept);
    bus.available = false;
    const events = create({
      spool,
      gate,
      spoolTimeoutMs: 200,
      initialRetryDelayMs: 10_000,
      maxRetryDelayMs: 10_000,
    });
    for (let i = 0; i < 500; i++) events.enqueue(SUBJECT, EchoRequest, echo(`e${i}`), `e${i}`);
    await eventually(() => {
      expect(events.stats().failedAttempts).toBeGreaterThan(0);
    }, 5_000);
    // ~2 s of spooling: the close's 3 s and the spool's own 200 ms, none spent on a round.
    await events.close(3_000);
    expect(events.stats()).toMatchObject({ spooled: 500, dropped: 0 });
  });

  it('does not take a healthy NATS slow to ack for an outage while closing', async () => {
    // Acked 1.2 s after each publish: in a 3 s close, two rounds of 32 fit.
    bus.ackDelayMs = 1_200;
    const kept: string[] = [];
    const events = create({ spool: slowSpool(100, kept), spoolTimeoutMs: 1_000 });
    for (let i = 0; i < 96; i++) events.enqueue(SUBJECT, EchoRequest, echo(`e${i}`), `e${i}`);
    await events.close(3_000);
    expect(events.stats().dropped).toBe(0);
    expect(events.stats().published).toBeGreaterThanOrEqual(64);
  });

  it('with the bus down at close, spools before telling a slow gate its backlog', async () => {
    // A slow gate (1.5 s a call of 1,024 ids), not a failing one: 6,000 acked ids to tell it.
    const gate: PublishGate = {
      alreadyPublished: () => Promise.resolve(new Set<string>()),
      published: () =>
        new Promise((resolve) => {
          setTimeout(resolve, 1_500);
        }),
    };
    const kept: string[] = [];
    const events = create({
      gate,
      spool: slowSpool(10, kept),
      spoolTimeoutMs: 200,
      initialRetryDelayMs: 10_000,
      maxRetryDelayMs: 10_000,
    });
    for (let i = 0; i < 6_000; i++) events.enqueue(SUBJECT, EchoRequest, echo(`p${i}`), `p${i}`);
    await eventually(() => {
      expect(events.stats().published).toBe(6_000);
    });
    bus.available = false;
    for (let i = 0; i < 300; i++) events.enqueue(SUBJECT, EchoRequest, echo(`e${i}`), `e${i}`);
    await eventually(() => {
      expect(events.stats().failedAttempts).toBeGreaterThan(0);
    });
    // 300 events at 10 per 40 ms: 1.2 s of spooling, within the close's 3 s.
    await events.close(3_000);
    expect(events.stats()).toMatchObject({ spooled: 300, dropped: 0 });
  }, 30_000);

  it('tries again at once when closed during a back-off, and publishes if the bus is back', async () => {
    bus.available = false;
    const events = create({ initialRetryDelayMs: 10_000, maxRetryDelayMs: 10_000 });
    events.enqueue(SUBJECT, EchoRequest, echo('after-outage'), 'after-outage');
    await eventually(() => {
      expect(events.stats().failedAttempts).toBe(1);
    });
    // Back now; the next try was due in 10 s.
    bus.available = true;
    await events.close(1_000);
    expect(events.stats()).toMatchObject({ published: 1, dropped: 0 });
    await eventually(() => {
      expect(received).toEqual(['after-outage']);
    });
  });

  it('takes from the spool in the order it was kept, only while the bus takes events', async () => {
    await withSpool(async (spool) => {
      bus.available = false;
      // Two replicas stop with three events each.
      for (const ids of [
        ['z1', 'z2', 'z3'],
        ['a1', 'a2', 'a3'],
      ]) {
        const stopping = new BufferedPublisher(bus, { spool, initialRetryDelayMs: 10 });
        for (const id of ids) stopping.enqueue(SUBJECT, EchoRequest, echo(id), id);
        await stopping.close(50);
      }
      // While the bus is down they stay kept, safe from a kill, and leave the buffer to new events.
      const next = create({ spool, capacity: 6 });
      expect(await next.restoreSpooled()).toBe(0);
      bus.available = true;
      // At most half the free room at a time, all of it in the end.
      let restored = 0;
      for (let n = await next.restoreSpooled(); n > 0; n = await next.restoreSpooled()) {
        restored += n;
      }
      expect(restored).toBe(6);
      expect(next.stats()).toMatchObject({ dropped: 0, restored: 6 });
      await eventually(() => {
        expect(received).toEqual(['z1', 'z2', 'z3', 'a1', 'a2', 'a3']);
      });
      expect(await next.restoreSpooled()).toBe(0);
    });
  });

  it('restores into half the buffer at most while the bus is slow: new events keep the rest', async () => {
    await withSpool(async (spool) => {
      await spool.keep(
        Array.from({ length: 40 }, (_, i) => ({
          subject: SUBJECT,
          data: EchoRequest.encode(echo(`old${i}`)).finish(),
          eventId: `old${i}`,
        })),
      );
      let release = () => {};
      bus.slow = new Promise((resolve) => (release = resolve));
      const next = create({ spool, capacity: 10 });
      try {
        expect(await next.restoreSpooled()).toBeLessThanOrEqual(5);
        const fresh = ['n1', 'n2', 'n3', 'n4', 'n5'];
        expect(fresh.map((id) => next.enqueue(SUBJECT, EchoRequest, echo(id), id))).toEqual(
          fresh.map(() => true),
        );
      } finally {
        bus.slow = undefined;
        release();
      }
      await eventually(() => {
        expect(received).toEqual(expect.arrayContaining(['n1', 'n2', 'n3', 'n4', 'n5']));
      });
    });
  });

  it('restores what was kept into a buffer of one event, the smallest the service allows', async () => {
    await withSpool(async (spool) => {
      bus.available = false;
      const stopping = create({ spool, capacity: 1 });
      stopping.enqueue(SUBJECT, EchoRequest, echo('only'), 'only');
      await stopping.close(50);
      expect(stopping.stats()).toMatchObject({ spooled: 1, dropped: 0 });

      bus.available = true;
      const next = create({ spool, capacity: 1 });
      expect(await next.restoreSpooled()).toBe(1);
      await eventually(() => {
        expect(received).toEqual(['only']);
      });
      expect(await spool.peek(10)).toEqual([]);
    });
  });

  it('loses nothing when it closes while restoring: what it queued is kept again', async () => {
    await withSpool(async (spool) => {
      bus.available = false;
      const first = create({ spool });
      for (const id of ['r1', 'r2', 'r3']) first.enqueue(SUBJECT, EchoRequest, echo(id), id);
      await first.close(50);
      bus.available = true;
      const second = new BufferedPublisher(bus, { spool, initialRetryDelayMs: 10 });
      const restoring = second.restoreSpooled();
      await second.close(50);
      await restoring;
      expect(second.stats().dropped).toBe(0);
      expect((await spool.peek(10)).map((e) => e.eventId).sort()).toEqual(['r1', 'r2', 'r3']);
    });
  });

  it('keeps an event kept again after it was peeked, whatever the clocks', async () => {
    await withSpool(async (spool) => {
      const event = {
        subject: SUBJECT,
        data: EchoRequest.encode(echo('e')).finish(),
        eventId: 'e',
      };
      await spool.keep([event]);
      const [peeked] = await spool.peek(10);
      // Kept again (a publisher that had queued it closed), by a replica whose clock is behind.
      const now = Date.now;
      const behind = jest.spyOn(Date, 'now').mockImplementation(() => now() - 10_000);
      try {
        await spool.keep([event]);
      } finally {
        behind.mockRestore();
      }
      // The restore that peeked it forgets the version it peeked: the new keeping stays.
      if (!peeked) throw new Error('nothing kept');
      await spool.forget([peeked]);
      expect((await spool.peek(10)).map((e) => e.eventId)).toEqual(['e']);
    });
  });

  it('peeks a page of the spool, not all of it', async () => {
    await withSpool(async (_, store) => {
      // Documents the spool reads from storage, counted.
      let read = 0;
      const counting: DocumentStore = {
        ...store,
        collection: async <T extends { readonly id: string }>(
          spec: Parameters<DocumentStore['collection']>[0],
        ): Promise<Collection<T>> => {
          const collection = await store.collection<T>(spec);
          return new Proxy(collection, {
            get: (target, property) => {
              if (property === 'list') {
                return async (options: Parameters<Collection<T>['list']>[0]) => {
                  const page = await target.list(options);
                  read += page.items.length;
                  return page;
                };
              }
              if (property === 'scan') {
                return async function* (where?: Parameters<Collection<T>['scan']>[0]) {
                  for await (const item of target.scan(where)) {
                    read++;
                    yield item;
                  }
                };
              }
              return Reflect.get(target, property) as unknown;
            },
          });
        },
      };
      const spool = await openEventSpool(counting, 'exposures', 60_000);
      const data = EchoRequest.encode(echo('e')).finish();
      await spool.keep(
        Array.from({ length: 2_000 }, (_, i) => ({ subject: SUBJECT, data, eventId: `e${i}` })),
      );
      const peeked = await spool.peek(10);
      expect(peeked.map((e) => e.eventId)).toEqual(Array.from({ length: 10 }, (_, i) => `e${i}`));
      expect(read).toBeLessThanOrEqual(10);
    });
  });

  it('keeps what two publishers keep in the same millisecond, and what an earlier build kept', async () => {
    await withSpool(async (spool, store) => {
      const data = EchoRequest.encode(echo('e')).finish();
      const frozen = jest.spyOn(Date, 'now').mockReturnValue(Date.now());
      try {
        await spool.keep([{ subject: SUBJECT, data, eventId: 'a' }]);
        await spool.keep([{ subject: SUBJECT, data, eventId: 'b' }]);
      } finally {
        frozen.mockRestore();
      }
      // A document as the previous build kept it: the event id as its id.
      const documents = await store.collection<{ id: string } & Record<string, unknown>>({
        name: 'spooled_exposures',
        expireAtField: 'expiresAt',
      });
      await documents.insert({
        id: 'legacy',
        subject: SUBJECT,
        data,
        keptAt: 0,
        position: 0,
        expiresAt: new Date(Date.now() + 60_000),
      });
      const peeked = await spool.peek(10);
      expect(peeked.map((e) => e.eventId).sort()).toEqual(['a', 'b', 'legacy']);
      await spool.forget(peeked);
      expect(await spool.peek(10)).toEqual([]);
    });
  });

  it('drops what is left at close when the spool cannot keep it', async () => {
    bus.available = false;
    const failing = {
      keep: () => Promise.reject(new Error('storage is down')),
      peek: () => Promise.resolve([]),
      forget: () => Promise.resolve(),
    };
    const events = create({ spool: failing });
    events.enqueue(SUBJECT, EchoRequest, echo('x'), 'x');
    await events.close(100);
    expect(events.stats()).toMatchObject({ dropped: 1, spooled: 0 });
  });

  describe('with tracing', () => {
    let tracing: TestTracing;

    beforeAll(() => {
      tracing = installTestTracing();
    });

    afterAll(async () => {
      await tracing.shutdown();
    });

    it('publishes each event in the trace of the request that enqueued it', async () => {
      const headers: Record<string, string>[] = [];
      const traced = await bus.subscribe(
        { stream: 'EXPOSURES', durable: 'traced', codec: EchoRequest },
        (delivered) => {
          headers.push({ ...delivered.headers });
          return Promise.resolve();
        },
      );
      bus.available = false;
      const events = create();
      const tracer = trace.getTracer('test');
      const requests = ['first', 'second'].map((name) =>
        tracer.startActiveSpan(name, (span) => {
          events.enqueue(SUBJECT, EchoRequest, echo(name), name);
          span.end();
          return span.spanContext();
        }),
      );
      // Published later, from the background loop, once the bus is back.
      await eventually(() => {
        expect(events.stats().failedAttempts).toBeGreaterThan(0);
      });
      bus.available = true;
      await expect(events.flush(5_000)).resolves.toBe(true);
      await eventually(() => {
        expect(headers).toHaveLength(2);
      });
      await traced.stop();
      expect(headers.map((h) => h.traceparent?.split('-')[1])).toEqual(
        requests.map((r) => r.traceId),
      );
      const publishes = tracing.exporter
        .getFinishedSpans()
        .filter((span) => span.name === `publish ${SUBJECT}`);
      expect(publishes.map((span) => span.parentSpanContext?.spanId).sort()).toEqual(
        requests.map((r) => r.spanId).sort(),
      );
    });
  });

  it('never throws from enqueue: unencodable events and empty ids are dropped', () => {
    const events = create();
    const broken: EventCodec<string> = {
      encode: () => {
        throw new Error('cannot encode');
      },
      decode: () => '',
    };

    expect(() => {
      events.enqueue(SUBJECT, broken, 'x', 'x');
      events.enqueue(SUBJECT, EchoRequest, echo('no id'), '');
    }).not.toThrow();
    expect(events.stats()).toMatchObject({ queued: 0, dropped: 2 });
  });

  it('drops an event the bus refuses for a reason retrying cannot fix', async () => {
    const events = create();
    events.enqueue('tandem.events.v1.*', EchoRequest, echo('wildcard'), 'w');

    await events.flush(5_000);
    expect(events.stats()).toMatchObject({
      queued: 0,
      published: 0,
      dropped: 1,
      failedAttempts: 0,
      spooled: 0,
      restored: 0,
    });
  });

  describe('with a publish gate', () => {
    /** A gate over a set, as the exposure ledger is over a collection; it can be made to fail. */
    class SetGate implements PublishGate {
      readonly recorded = new Set<string>();
      checks = 0;
      failing: 'no' | 'reject' | 'hang' = 'no';

      alreadyPublished(eventIds: readonly string[]): Promise<ReadonlySet<string>> {
        this.checks++;
        if (this.failing === 'reject') return Promise.reject(new UnavailableError('storage down'));
        if (this.failing === 'hang') return new Promise(() => undefined);
        return Promise.resolve(new Set(eventIds.filter((id) => this.recorded.has(id))));
      }

      published(eventIds: readonly string[]): Promise<void> {
        if (this.failing !== 'no') return Promise.reject(new UnavailableError('storage down'));
        for (const id of eventIds) this.recorded.add(id);
        return Promise.resolve();
      }
    }

    it('tells the gate, at close, what the stream acked while a bypass was still running', async () => {
      const gate = new SetGate();
      gate.failing = 'reject';
      // The service's defaults: a 5 s bypass after a failed gate call, a close of 3 s.
      const events = create({ gate });
      events.enqueue(SUBJECT, EchoRequest, echo('acked'), 'acked');
      await events.flush(5_000);
      await eventually(() => {
        expect(received).toEqual(['acked']);
      });
      // Storage answers again, and the replica shuts down (a rolling update) within the bypass.
      gate.failing = 'no';
      await events.close(3_000);
      // Told: another replica does not publish the same id again after the stream's window.
      expect([...gate.recorded]).toEqual(['acked']);
    });

    it('skips the events the gate knows were published and records those the stream acked', async () => {
      const gate = new SetGate();
      gate.recorded.add('seen-elsewhere');
      const events = create({ gate });
      events.enqueue(SUBJECT, EchoRequest, echo('new'), 'new');
      events.enqueue(SUBJECT, EchoRequest, echo('repeat'), 'seen-elsewhere');

      await expect(events.flush(5_000)).resolves.toBe(true);
      await eventually(() => {
        expect(received).toEqual(['new']);
      });
      expect(events.stats()).toMatchObject({ queued: 0, published: 1, skipped: 1, dropped: 0 });
      expect([...gate.recorded].sort()).toEqual(['new', 'seen-elsewhere']);

      // A later publisher (another replica, a restart) sharing the gate skips it too.
      await events.close();
      const later = create({ gate });
      later.enqueue(SUBJECT, EchoRequest, echo('new again'), 'new');
      await later.flush(5_000);
      expect(later.stats()).toMatchObject({ published: 0, skipped: 1 });
      expect(received).toEqual(['new']);
    });

    it('records nothing for an event the bus failed to take, and checks it again on the retry', async () => {
      const gate = new SetGate();
      bus.available = false;
      const events = create({ gate });
      events.enqueue(SUBJECT, EchoRequest, echo('late'), 'late');
      await eventually(() => {
        expect(events.stats().failedAttempts).toBeGreaterThanOrEqual(2);
      });
      expect(gate.recorded.size).toBe(0);
      const checksDuringOutage = gate.checks;
      expect(checksDuringOutage).toBeGreaterThanOrEqual(2);

      bus.available = true;
      await events.flush(5_000);
      await eventually(() => {
        expect(received).toEqual(['late']);
      });
      expect([...gate.recorded]).toEqual(['late']);
    });

    it('publishes everything when the gate fails, and leaves it alone for a while after', async () => {
      const gate = new SetGate();
      gate.recorded.add('would-be-skipped');
      gate.failing = 'reject';
      const events = create({ gate });
      events.enqueue(SUBJECT, EchoRequest, echo('a'), 'would-be-skipped');
      await events.flush(5_000);
      await eventually(() => {
        expect(received).toEqual(['a']);
      });
      expect(gate.checks).toBe(1);

      // Bypassed: no second check right after a failure, even once the gate works again.
      gate.failing = 'no';
      events.enqueue(SUBJECT, EchoRequest, echo('b'), 'b');
      await events.flush(5_000);
      await eventually(() => {
        expect(received).toEqual(['a', 'b']);
      });
      expect(gate.checks).toBe(1);
      expect(events.stats()).toMatchObject({ published: 2, skipped: 0, dropped: 0 });
    });

    it('tells the gate what it published while the gate was failing, once it answers again', async () => {
      const gate = new SetGate();
      gate.failing = 'reject';
      const events = create({ gate, gateBypassMs: 100 });
      events.enqueue(SUBJECT, EchoRequest, echo('during'), 'during');
      await events.flush(5_000);
      expect(gate.recorded.size).toBe(0);

      gate.failing = 'no';
      await new Promise((resolve) => setTimeout(resolve, 150));
      events.enqueue(SUBJECT, EchoRequest, echo('after'), 'after');
      await events.flush(5_000);
      expect([...gate.recorded].sort()).toEqual(['after', 'during']);

      // And on close, what is still untold.
      gate.failing = 'reject';
      events.enqueue(SUBJECT, EchoRequest, echo('late'), 'late');
      await events.flush(5_000);
      gate.failing = 'no';
      await new Promise((resolve) => setTimeout(resolve, 150));
      await events.close();
      expect([...gate.recorded].sort()).toEqual(['after', 'during', 'late']);
    });

    it('tells the gate what it published while the gate was failing even when nothing is published after', async () => {
      const gate = new SetGate();
      gate.failing = 'reject';
      const events = create({ gate, gateBypassMs: 100 });
      events.enqueue(SUBJECT, EchoRequest, echo('quiet'), 'quiet');
      await events.flush(5_000);
      expect(gate.recorded.size).toBe(0);
      // Still failing when the bypass first ends: tried again after the next one.
      await new Promise((resolve) => setTimeout(resolve, 150));
      gate.failing = 'no';
      await eventually(() => {
        expect([...gate.recorded]).toEqual(['quiet']);
      }, 2_000);
      await events.close();
    });

    it('goes on publishing while the gate records, and tells it in order what was acked meanwhile', async () => {
      const gate = new SetGate();
      const calls: string[][] = [];
      let finishFirst = (): void => undefined;
      const firstRecording = new Promise<void>((resolve) => {
        finishFirst = resolve;
      });
      const record = gate.published.bind(gate);
      gate.published = async (eventIds) => {
        calls.push([...eventIds]);
        // The first recording is held until the test lets it go.
        if (calls.length === 1) await firstRecording;
        return record(eventIds);
      };
      const events = create({ gate, maxInFlight: 1 });
      events.enqueue(SUBJECT, EchoRequest, echo('a'), 'a');
      await eventually(() => {
        expect(calls).toEqual([['a']]);
      });
      events.enqueue(SUBJECT, EchoRequest, echo('b'), 'b');
      events.enqueue(SUBJECT, EchoRequest, echo('c'), 'c');
      // Published while the first recording is still under way.
      await eventually(() => {
        expect(received).toEqual(['a', 'b', 'c']);
      });
      expect(calls).toEqual([['a']]);
      let flushed = false;
      const flushing = events.flush(5_000).then((done) => {
        flushed = done;
      });
      await new Promise((resolve) => setTimeout(resolve, 50));
      expect(flushed).toBe(false); // flush waits for the gate to be told

      finishFirst();
      await flushing;
      expect(flushed).toBe(true);
      expect(calls).toEqual([['a'], ['b', 'c']]);
      expect([...gate.recorded].sort()).toEqual(['a', 'b', 'c']);
      await events.close();
    });

    /**
     * A publisher whose gate holds its first call (for one event) until `release`, while 2,500
     * more events are published and their ids wait for the gate; `sizes` are the calls' sizes.
     */
    async function backlogBehindAHeldGateCall() {
      const gate = new SetGate();
      const sizes: number[] = [];
      let release = (): void => undefined;
      const held = new Promise<void>((resolve) => {
        release = resolve;
      });
      const record = gate.published.bind(gate);
      gate.published = async (eventIds) => {
        sizes.push(eventIds.length);
        if (sizes.length === 1) await held;
        return record(eventIds);
      };
      const events = create({ gate, maxInFlight: 256 });
      events.enqueue(SUBJECT, EchoRequest, echo('first'), 'first');
      await eventually(() => {
        expect(sizes).toEqual([1]);
      });
      for (let i = 0; i < 2_500; i++) events.enqueue(SUBJECT, EchoRequest, echo('x'), `e${i}`);
      await eventually(() => {
        expect(events.stats().published).toBe(2_501);
      });
      return { gate, sizes, release, events };
    }

    it('tells the gate a backlog in calls of at most 1,024 ids', async () => {
      const { gate, sizes, release, events } = await backlogBehindAHeldGateCall();
      release();
      await expect(events.flush(5_000)).resolves.toBe(true);
      expect(sizes.slice(1)).toEqual([1_024, 1_024, 452]);
      expect(gate.recorded.size).toBe(2_501);
      await events.close();
    });

    it('stops telling a slow gate its backlog once close() has run out of time', async () => {
      const { gate, sizes, release, events } = await backlogBehindAHeldGateCall();
      const closing = events.close(50);
      await new Promise((resolve) => setTimeout(resolve, 100));
      release();
      await closing;
      // Past the deadline: after the call under way, one more, not the whole backlog.
      expect(sizes).toEqual([1, 1_024]);
      expect(gate.recorded.size).toBe(1_025);
    });

    it('does not wait on a gate that never answers', async () => {
      const gate = new SetGate();
      gate.failing = 'hang';
      const events = create({ gate });
      events.enqueue(SUBJECT, EchoRequest, echo('stalled storage'), 'x');
      await expect(events.flush(10_000)).resolves.toBe(true);
      await eventually(() => {
        expect(received).toEqual(['stalled storage']);
      });
    });
  });
});
