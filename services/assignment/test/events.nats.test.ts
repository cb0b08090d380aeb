/**
 * The service's events on a real NATS JetStream server: exposures published once per day per
 * (experiment, unit) even across a restart, AllocationUpdate events from Analysis changing a
 * bandit's weights, and a NATS outage during which Resolve keeps answering and exposures are
 * buffered, then published.
 */
import { rmSync } from 'node:fs';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect, nanos } from '@nats-io/transport-node';
import { AllocationMethod } from '../../../gen/ts/tandem/assignment/v1/allocation';
import {
  ApplyRequest,
  CreateExperimentRequest,
  StartExperimentRequest,
} from '../../../gen/ts/tandem/assignment/v1/assignment_service';
import { AllocationMode } from '../../../gen/ts/tandem/assignment/v1/experiment';
import { AllocationUpdate } from '../../../gen/ts/tandem/events/v1/allocation_update';
import { ExposureEvent, ExposureKind } from '../../../gen/ts/tandem/events/v1/exposure_event';
import type { EventBus, Subscription } from '../../platform/src/events/bus';
import { AbortedError } from '../../platform/src/errors';
import { connectNatsBus } from '../../platform/src/events/nats-bus';
import { describeWithNats, natsUrl, uniqueName } from '../../platform/test/support/integration';
import { TestNatsServer } from '../../platform/test/support/nats-server';
import { withTimestampNanos } from '../../platform/test/support/timestamps';
import { ALLOCATION_SUBJECT, CONFIG_STREAM } from '../src/events/streams';
import { experiment, resolveRequest } from './support/fixtures';
import {
  clientFor,
  eventually,
  propagationMs,
  startTestAssignment,
  temporaryDataDir,
  type TestAssignment,
} from './support/harness';

/** Collects the exposures of this test's units from the exposure stream. */
async function watchExposures(
  bus: EventBus,
  unitPrefix: string,
  deliverPolicy: 'new' | 'all' = 'new',
): Promise<{ events: ExposureEvent[]; subscription: Subscription }> {
  const events: ExposureEvent[] = [];
  const subscription = await bus.subscribe(
    {
      stream: 'TANDEM_EXPOSURES',
      durable: uniqueName('exposure-watch'),
      codec: ExposureEvent,
      deliverPolicy,
    },
    ({ event }) => {
      if (event.unit?.id.startsWith(unitPrefix)) events.push(event);
      return Promise.resolve();
    },
  );
  return { events, subscription };
}

describeWithNats('Assignment events on NATS JetStream', () => {
  const url = natsUrl ?? '';
  let dataDir: string;
  let service: TestAssignment;
  let bus: EventBus;
  const surface = uniqueName('s').replace(/_/g, '-').toLowerCase();
  // Unique per run: the allocation stream, its shared durable and the duplicate window outlive a
  // run on a NATS server that is not started afresh.
  const banditId = uniqueName('bandit').replace(/_/g, '-').toLowerCase();

  beforeAll(async () => {
    dataDir = temporaryDataDir();
    service = await startTestAssignment({ dataDir, natsUrl: url });
    bus = await connectNatsBus({ servers: url, name: 'assignment-test-observer' });
    await service.admin.createExperiment(
      CreateExperimentRequest.fromPartial({
        experiment: experiment('exposed', { surfaces: [surface] }),
      }),
    );
    await service.admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'exposed' }));
  });

  afterAll(async () => {
    await service.stop();
    await bus.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('declares its configuration-change durable per replica with a one-hour inactive threshold (the deletion itself is tested on the bus)', async () => {
    const connection = await connect({ servers: url });
    try {
      const manager = await jetstreamManager(connection);
      const { config } = await manager.consumers.info(
        CONFIG_STREAM.name,
        `assignment-config-${service.config.replicaId}`,
      );
      expect(config.inactive_threshold).toBe(nanos(3_600_000));
      expect(config.deliver_policy).toBe('new');
    } finally {
      await connection.close();
    }
  });

  it('publishes one exposure per day per experiment and unit, even from a restarted replica', async () => {
    const unit = uniqueName('unit');
    const { events, subscription } = await watchExposures(bus, unit);
    try {
      for (let i = 0; i < 3; i++) {
        await service.client.resolve(resolveRequest(unit, { surfaces: [surface], apply: true }));
      }
      await eventually(() => {
        expect(events).toHaveLength(1);
      });
      expect(events[0]).toMatchObject({
        kind: ExposureKind.EXPOSURE_KIND_EXPERIMENT,
        experimentId: 'exposed',
        unit: { id: unit, type: 'user' },
        surfaces: [surface],
        configEtag: '2',
      });
      expect(events[0]?.eventId).toMatch(/^exposure-\d{4}-\d{2}-\d{2}-/);

      // A restarted replica has forgotten what it logged; the exposure ledger in its store has
      // not, so it does not publish it again (the stream's duplicate window would hide a repeat
      // only within the hour).
      await service.stop();
      service = await startTestAssignment({ dataDir, natsUrl: url });
      const applied = await service.client.resolve(
        resolveRequest(unit, { surfaces: [surface], apply: true }),
      );
      expect(applied.exposures?.loggedCount).toBe(1);
      await eventually(() => {
        expect(service.service.exposureStats()).toMatchObject({ skipped: 1, queued: 0 });
      });
      expect(service.service.exposureStats().published).toBe(0);
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(events).toHaveLength(1);
    } finally {
      await subscription.stop();
    }
  });

  it('applies an AllocationUpdate from Analysis and ignores a stale one', async () => {
    await service.admin.createExperiment(
      CreateExperimentRequest.fromPartial({
        experiment: experiment(banditId, {
          surfaces: [surface],
          allocationMode: AllocationMode.ALLOCATION_MODE_BANDIT,
          bandit: { minArmShare: 0.05 },
          sticky: true,
        }),
      }),
    );
    const update = (sequence: number, control: number): AllocationUpdate =>
      AllocationUpdate.fromPartial({
        eventId: `${banditId}-${sequence}`,
        eventTime: new Date(),
        experimentId: banditId,
        weights: [
          { variantKey: 'control', weight: control, unitCount: 10 },
          { variantKey: 'treatment', weight: 1 - control, unitCount: 10 },
        ],
        minArmShare: 0.05,
        sequence,
        method: AllocationMethod.ALLOCATION_METHOD_THOMPSON_SAMPLING,
        computeTime: new Date(),
        analysisPlanId: 'plan-1',
        totalUnitCount: 20,
      });
    await bus.publish(ALLOCATION_SUBJECT, AllocationUpdate, update(2000, 0.8), {
      eventId: `${banditId}-2000`,
    });
    await eventually(async () => {
      const { allocation } = await service.client.getAllocation({
        experimentId: banditId,
        sequence: 0,
      });
      expect(allocation).toMatchObject({
        sequence: 2000,
        source: 'analysis',
        analysisPlanId: 'plan-1',
      });
      expect(allocation?.weights.map((w) => w.weight)).toEqual([0.8, expect.closeTo(0.2, 10)]);
    });
    // Stale, without a sequence (0 is "the next one" only on UpdateAllocation), and far ahead of
    // the clock (it would order every later update as stale): all ignored, in stream order.
    for (const [sequence, eventId] of [
      [1000, `${banditId}-1000`],
      [0, `${banditId}-none`],
      [Date.now() + 30 * 86_400_000, `${banditId}-ahead`],
    ] as const) {
      await bus.publish(ALLOCATION_SUBJECT, AllocationUpdate, update(sequence, 0.1), { eventId });
    }
    await bus.publish(ALLOCATION_SUBJECT, AllocationUpdate, update(3000, 0.3), {
      eventId: `${banditId}-3000`,
    });
    await eventually(async () => {
      const { allocation } = await service.client.getAllocation({
        experimentId: banditId,
        sequence: 0,
      });
      expect(allocation?.sequence).toBe(3000);
      expect(allocation?.weights.map((w) => w.weight)).toEqual([0.3, 0.7]);
    });

    // A write that loses a race with another replica's is not dropped: the event comes again.
    const replace = jest
      .spyOn(service.service.context.store.allocations, 'replace')
      .mockRejectedValueOnce(new AbortedError('allocations "bandit" is at version 5, not 4'));
    try {
      await bus.publish(ALLOCATION_SUBJECT, AllocationUpdate, update(4000, 0.6), {
        eventId: `${banditId}-4000`,
      });
      await eventually(async () => {
        const { allocation } = await service.client.getAllocation({
          experimentId: banditId,
          sequence: 0,
        });
        expect(allocation?.sequence).toBe(4000);
      });
      expect(replace).toHaveBeenCalledTimes(2);
    } finally {
      replace.mockRestore();
    }

    // A newer producer's method and an arm with no mean reward do not cost the weights.
    const unreadable = update(5000, 0.45);
    await bus.publish(
      ALLOCATION_SUBJECT,
      AllocationUpdate,
      {
        ...unreadable,
        // eslint-disable-next-line @typescript-eslint/no-unsafe-enum-assignment -- on purpose
        method: 77 as AllocationMethod,
        weights: unreadable.weights.map((w, i) => (i === 0 ? { ...w, rewardMean: Number.NaN } : w)),
      },
      { eventId: `${banditId}-5000` },
    );
    await eventually(async () => {
      const { allocation } = await service.client.getAllocation({
        experimentId: banditId,
        sequence: 0,
      });
      expect(allocation).toMatchObject({
        sequence: 5000,
        method: AllocationMethod.ALLOCATION_METHOD_UNSPECIFIED,
      });
      expect(allocation?.weights.map((w) => [w.weight, w.rewardMean])).toEqual([
        [0.45, 0],
        [0.55, 0],
      ]);
    });
    // Nor an analysis plan id too long to store, or a compute time no Timestamp holds: cleared.
    await bus.publish(
      ALLOCATION_SUBJECT,
      AllocationUpdate,
      {
        ...update(6000, 0.35),
        analysisPlanId: 'p'.repeat(300),
        computeTime: new Date(Date.UTC(10_000, 0, 1)),
      },
      { eventId: `${banditId}-6000` },
    );
    await eventually(async () => {
      const { allocation } = await service.client.getAllocation({
        experimentId: banditId,
        sequence: 0,
      });
      expect(allocation).toMatchObject({ sequence: 6000, analysisPlanId: '' });
      expect(allocation?.computeTime).toBeUndefined();
      expect(allocation?.weights.map((w) => w.weight)).toEqual([0.35, 0.65]);
    });
    // Nor Timestamps with nanos out of range, which the generated decoder would move by two
    // seconds: cleared too, and the weights kept.
    const sent = AllocationUpdate.encode({
      ...update(7000, 0.3),
      computeTime: new Date(Date.UTC(2026, 0, 1)),
    }).finish();
    const badNanos = withTimestampNanos(
      'tandem.events.v1.AllocationUpdate',
      withTimestampNanos('tandem.events.v1.AllocationUpdate', sent, 'compute_time', 2_000_000_000),
      'event_time',
      -1,
    );
    await bus.publish(
      ALLOCATION_SUBJECT,
      { encode: () => ({ finish: () => badNanos }), decode: (b) => AllocationUpdate.decode(b) },
      AllocationUpdate.decode(badNanos),
      { eventId: `${banditId}-7000` },
    );
    await eventually(async () => {
      const { allocation } = await service.client.getAllocation({
        experimentId: banditId,
        sequence: 0,
      });
      expect(allocation).toMatchObject({ sequence: 7000, analysisPlanId: 'plan-1' });
      expect(allocation?.computeTime).toBeUndefined();
      expect(allocation?.weights.map((w) => w.weight)).toEqual([0.3, 0.7]);
    });
  });

  it('carries a change to a second replica on the same embedded store within one second, by notification', async () => {
    // Two replicas sharing one embedded store, as two processes on one machine do; with polling
    // effectively off, only the ConfigChangeEvent can carry the change.
    const shared = temporaryDataDir();
    const writer = await startTestAssignment({
      dataDir: shared,
      natsUrl: url,
      reloadInterval: '1h',
    });
    const reader = await startTestAssignment({
      dataDir: shared,
      natsUrl: url,
      reloadInterval: '1h',
    });
    try {
      const id = uniqueName('notified').replace(/_/g, '-').toLowerCase();
      expect(await propagationMs(writer, reader, id)).toBeLessThan(1000);
    } finally {
      await writer.stop();
      await reader.stop();
      rmSync(shared, { recursive: true, force: true });
    }
  });
});

describeWithNats('Assignment through a NATS outage', () => {
  let server: TestNatsServer;

  beforeAll(async () => {
    server = await TestNatsServer.create();
    server.start();
  });

  afterAll(async () => {
    await server.dispose();
  });

  it('keeps resolving while NATS is down, buffers exposures and publishes them when it returns', async () => {
    const { url } = server;
    const service = await startTestAssignment({ natsUrl: url, exposureBuffer: 3 });
    const observer = await connectNatsBus({ servers: url, name: 'outage-observer' });
    // The service serves before its bus has reached the freshly started NATS and declared the
    // exposure stream: the observer's durable can be declared once it has.
    let watched: Awaited<ReturnType<typeof watchExposures>> | undefined;
    await eventually(async () => {
      watched = await watchExposures(observer, 'outage-');
    });
    if (!watched) throw new Error('the exposure stream was never declared');
    const { events, subscription } = watched;
    try {
      await service.admin.createExperiment(
        CreateExperimentRequest.fromPartial({
          experiment: experiment('outage', { surfaces: ['outage'] }),
        }),
      );
      await service.admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'outage' }));

      await server.stop();
      await eventually(() => {
        expect(service.runtime.bus.isConnected()).toBe(false);
      });
      // Three fit the buffer; the other two are dropped, and say so.
      for (let i = 0; i < 4; i++) {
        const response = await service.client.resolve(
          resolveRequest(`outage-${i}`, { surfaces: ['outage'], apply: true }),
        );
        expect(response.assignments).toHaveLength(1);
        expect(response.exposures).toMatchObject(
          i < 3 ? { loggedCount: 1, droppedCount: 0 } : { loggedCount: 0, droppedCount: 1 },
        );
      }
      const last = await service.client.resolve(
        resolveRequest('outage-4', { surfaces: ['outage'] }),
      );
      const applyLast = () =>
        service.client.apply(
          ApplyRequest.fromPartial({ resolveToken: last.resolveToken, requestId: 'apply-last' }),
        );
      expect((await applyLast()).exposures).toMatchObject({ loggedCount: 0, droppedCount: 1 });
      await eventually(() => {
        expect(service.service.exposureStats().failedAttempts).toBeGreaterThan(0);
      });
      expect(service.service.exposureStats()).toMatchObject({ queued: 3, dropped: 2 });

      server.start();
      await eventually(() => {
        expect(new Set(events.map((e) => e.unit?.id)).size).toBe(3);
        // Seen by the observer is not yet acked to the publisher: wait for the room too.
        expect(service.service.exposureStats().queued).toBe(0);
      }, 20_000);
      // A dropped exposure was not remembered as logged: showing it again logs it, and so does
      // a retry of the Apply that dropped it (its result was not kept for its request id).
      const again = await service.client.resolve(
        resolveRequest('outage-3', { surfaces: ['outage'], apply: true }),
      );
      expect(again.exposures).toMatchObject({ loggedCount: 1, alreadyLoggedCount: 0 });
      expect((await applyLast()).exposures).toMatchObject({ loggedCount: 1, droppedCount: 0 });
      await eventually(() => {
        expect(new Set(events.map((e) => e.unit?.id)).size).toBe(5);
        // As above: the observer may see the last one before its ack reaches the publisher.
        expect(service.service.exposureStats().queued).toBe(0);
      }, 20_000);
      expect(events.every((e) => e.experimentId === 'outage')).toBe(true);
    } finally {
      await subscription.stop();
      await observer.close();
      await service.stop();
    }
    // Above the sum of the waits inside (~70 s), so a slow step fails with its own message.
  }, 90_000);

  it('stops answering before it stops buffering, and keeps what it could not publish for the next replica', async () => {
    // Running, whatever the test before left.
    await server.stop();
    server.start();
    const dataDir = temporaryDataDir();
    const service = await startTestAssignment({ natsUrl: server.url, dataDir });
    const client = clientFor(service.address);
    let next: TestAssignment | undefined;
    let observer: EventBus | undefined;
    try {
      await service.admin.createExperiment(
        CreateExperimentRequest.fromPartial({
          experiment: experiment('shutdown', { surfaces: ['shutdown'] }),
        }),
      );
      await service.admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'shutdown' }));
      await server.stop();
      await eventually(() => {
        expect(service.runtime.bus.isConnected()).toBe(false);
      });
      // Callers applying exposures without pause until the service refuses them.
      const answers: { unit: string; droppedCount: number; loggedCount: number }[] = [];
      let unit = 0;
      const caller = async (): Promise<void> => {
        for (;;) {
          const id = `shutdown-${unit++}`;
          let response;
          try {
            response = await client.resolve(
              resolveRequest(id, { surfaces: ['shutdown'], apply: true }),
            );
          } catch {
            return;
          }
          answers.push({
            unit: id,
            droppedCount: response.exposures?.droppedCount ?? 0,
            loggedCount: response.exposures?.loggedCount ?? 0,
          });
        }
      };
      const callers = [caller(), caller(), caller()];
      await eventually(() => {
        expect(answers.length).toBeGreaterThan(20);
      });
      await service.stop();
      await Promise.all(callers);
      // Every answer said its exposure was logged (buffered); none was answered as dropped, and
      // what the flush could not publish was kept in storage, not dropped.
      expect(answers.filter((a) => a.droppedCount > 0)).toEqual([]);
      expect(answers.every((a) => a.loggedCount === 1)).toBe(true);
      expect(service.service.exposureStats()).toMatchObject({
        dropped: 0,
        spooled: answers.length,
      });

      // NATS is back, and the next replica on the same storage publishes them.
      server.start();
      next = await startTestAssignment({ natsUrl: server.url, dataDir });
      const bus = await connectNatsBus({ servers: server.url, name: 'shutdown-observer' });
      observer = bus;
      let watched: Awaited<ReturnType<typeof watchExposures>> | undefined;
      await eventually(async () => {
        // From the start of the stream: the replica may publish them before this subscribes.
        watched = await watchExposures(bus, 'shutdown-', 'all');
      });
      if (!watched) throw new Error('the exposure stream was never declared');
      const { events, subscription } = watched;
      try {
        await eventually(() => {
          expect(new Set(events.map((e) => e.unit?.id))).toEqual(
            new Set(answers.map((a) => a.unit)),
          );
        }, 20_000);
        expect(events).toHaveLength(answers.length);
        expect(next.service.exposureStats().restored).toBe(answers.length);
      } finally {
        await subscription.stop();
      }
    } finally {
      client.close();
      await service.stop();
      await next?.stop();
      await observer?.close();
      rmSync(dataDir, { recursive: true, force: true });
    }
    // Above the sum of the waits inside (~50 s), so a slow step fails with its own message.
  }, 90_000);
});
