/**
 * The Assignment service's metrics, read through a real OpenTelemetry metrics SDK registered
 * before it starts (as its start-up registers one when asked): Resolve's call durations and the
 * exposure publisher's counts, the figure an operator watches through a NATS outage; sticky
 * lookups and writes that fail, and allocation updates that cannot be applied, which would
 * otherwise show only in the logs.
 */
import {
  ConcludeExperimentRequest,
  CreateExperimentRequest,
  StartExperimentRequest,
} from '../../../gen/ts/tandem/assignment/v1/assignment_service';
import { AssignmentReason } from '../../../gen/ts/tandem/assignment/v1/assignment';
import { AllocationUpdate } from '../../../gen/ts/tandem/events/v1/allocation_update';
import type { DataPoint, Histogram } from '@opentelemetry/sdk-metrics';
import { AbortedError, UnavailableError } from '../../platform/src/errors';
import { installTestMetrics, type TestMetrics } from '../../platform/test/support/metrics';
import { ALLOCATION_SUBJECT } from '../src/events/streams';
import { draftBandit, experiment, resolveRequest } from './support/fixtures';
import {
  eventually,
  startSticky,
  startTestAssignment,
  type TestAssignment,
} from './support/harness';

describe('the Assignment service metrics', () => {
  let testMetrics: TestMetrics;
  let service: TestAssignment;

  beforeAll(async () => {
    testMetrics = installTestMetrics();
    service = await startTestAssignment();
    await service.admin.createExperiment(
      CreateExperimentRequest.fromPartial({ experiment: experiment('measured') }),
    );
    await service.admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'measured' }));
  });

  afterAll(async () => {
    await service.stop();
    await testMetrics.shutdown();
  });

  /** The counter `name`'s values now, by the attribute values `keyOf` names its points by. */
  async function counts(
    name: string,
    keyOf: (point: DataPoint<unknown>) => string,
  ): Promise<Record<string, number>> {
    const points = await testMetrics.points(name);
    return Object.fromEntries(points.map((p) => [keyOf(p), p.value as number]));
  }

  /** What was counted from `before` to `after`, leaving out what did not change. */
  function since(
    before: Record<string, number>,
    after: Record<string, number>,
  ): Record<string, number> {
    return Object.fromEntries(
      Object.entries(after)
        .map(([key, value]): [string, number] => [key, value - (before[key] ?? 0)])
        .filter(([, value]) => value !== 0),
    );
  }

  it('counts Resolve calls and the exposures published, by publisher', async () => {
    await service.client.resolve({ ...resolveRequest('u-measured'), apply: true });
    const resolves = await testMetrics.points('rpc.server.call.duration');
    expect(
      resolves
        .filter(
          (p) =>
            p.attributes['rpc.method'] === 'Resolve' && p.attributes['rpc.grpc.status_code'] === 0,
        )
        .map((p) => (p.value as Histogram).count),
    ).toEqual([1]);
    await eventually(async () => {
      const published = await testMetrics.points('tandem.events.publisher.published');
      expect(published.map((p) => [p.attributes['tandem.publisher'], p.value])).toContainEqual([
        'exposures',
        1,
      ]);
    });
    const dropped = await testMetrics.points('tandem.events.publisher.dropped');
    expect(dropped.map((p) => p.attributes['tandem.publisher']).sort()).toEqual([
      'config-changes',
      'exposures',
    ]);
  });

  it('counts sticky lookups by outcome: from the cache, read, timed out or failed', async () => {
    const { admin, client } = service;
    await startSticky(admin, 'metered-sticky');
    const resolve = (unitId: string, apply = false) =>
      client.resolve(resolveRequest(unitId, { surfaces: ['metered-sticky'], apply }));
    const lookups = () =>
      counts('tandem.assignment.sticky.lookups', (p) => String(p.attributes['tandem.outcome']));
    const before = await lookups();
    // Read from storage (nothing stored yet), then stored; from the cache from then on.
    await resolve('sticky-1', true);
    await resolve('sticky-1');
    // Shown at once, a variant held (STICKY) is looked at again before it is logged: one lookup.
    await resolve('sticky-1', true);
    const getMany = jest.spyOn(service.service.context.sticky['collection'], 'getMany');
    const unavailable: AssignmentReason[] = [];
    try {
      // Storage stalling past the lookup's 500 ms, as MongoDB without a primary does; then failing.
      getMany.mockImplementationOnce(
        () =>
          new Promise((settle) => {
            setTimeout(() => {
              settle(new Map());
            }, 5_000).unref();
          }),
      );
      getMany.mockRejectedValueOnce(new UnavailableError('storage is unreachable'));
      for (const unitId of ['sticky-2', 'sticky-3']) {
        unavailable.push(...(await resolve(unitId)).assignments.map((a) => a.reason));
      }
    } finally {
      getMany.mockRestore();
    }
    expect(unavailable).toEqual([
      AssignmentReason.ASSIGNMENT_REASON_STICKY_UNAVAILABLE,
      AssignmentReason.ASSIGNMENT_REASON_STICKY_UNAVAILABLE,
    ]);
    expect(since(before, await lookups())).toEqual({
      read: 1,
      cached: 2,
      timed_out: 1,
      failed: 1,
    });
  });

  it('reads no sticky variant for a tester its override decides', async () => {
    const { admin, client } = service;
    const id = 'metered-override';
    await admin.createExperiment(
      CreateExperimentRequest.fromPartial({
        experiment: experiment(id, {
          surfaces: [id],
          sticky: true,
          overrides: [{ unitId: 'qa-anna', variantKey: 'treatment' }],
        }),
      }),
    );
    await admin.startExperiment(StartExperimentRequest.fromPartial({ id }));
    const lookups = () =>
      counts('tandem.assignment.sticky.lookups', (p) => String(p.attributes['tandem.outcome']));
    const before = await lookups();
    const getMany = jest.spyOn(service.service.context.sticky['collection'], 'getMany');
    try {
      // Storage failing would serve the sticky experiment's control to anyone it is read for.
      getMany.mockRejectedValue(new UnavailableError('storage is unreachable'));
      const resolved = await client.resolve(
        resolveRequest('qa-anna', { surfaces: [id], apply: true }),
      );
      expect(resolved.assignments.map((a) => [a.variantKey, a.reason])).toEqual([
        ['treatment', AssignmentReason.ASSIGNMENT_REASON_OVERRIDE],
      ]);
      expect(getMany).not.toHaveBeenCalled();
    } finally {
      getMany.mockRestore();
    }
    expect(since(before, await lookups())).toEqual({});
  });

  it('counts the first sticky variants Resolve(apply=true) could not store, by reason', async () => {
    const { admin, client } = service;
    await startSticky(admin, 'metered-unstored');
    const resolve = (unitId: string) =>
      client.resolve(resolveRequest(unitId, { surfaces: ['metered-unstored'], apply: true }));
    const failedWrites = () =>
      counts('tandem.assignment.sticky.failed_writes', (p) =>
        String(p.attributes['tandem.reason']),
      );
    const before = await failedWrites();
    const store = jest
      .spyOn(service.service.context.sticky, 'store')
      .mockRejectedValueOnce(new UnavailableError('storage is unreachable'))
      .mockRejectedValueOnce(
        new AbortedError('the sticky assignment kept changing', {
          reason: 'STICKY_WRITE_CONFLICT',
        }),
      );
    const reasons: AssignmentReason[] = [];
    try {
      for (const unitId of ['unstored-1', 'unstored-2', 'unstored-3']) {
        reasons.push(...(await resolve(unitId)).assignments.map((a) => a.reason));
      }
    } finally {
      store.mockRestore();
    }
    // The third one stored: not counted.
    expect(reasons).toEqual([
      AssignmentReason.ASSIGNMENT_REASON_STICKY_UNAVAILABLE,
      AssignmentReason.ASSIGNMENT_REASON_STICKY_UNAVAILABLE,
      AssignmentReason.ASSIGNMENT_REASON_ASSIGNED,
    ]);
    expect(since(before, await failedWrites())).toEqual({ unavailable: 1, conflict: 1 });
  });

  it('counts AllocationUpdate events by outcome, and those rejected by reason', async () => {
    const { admin } = service;
    await admin.createExperiment(
      CreateExperimentRequest.fromPartial({ experiment: draftBandit('metered-bandit') }),
    );
    await admin.createExperiment(
      CreateExperimentRequest.fromPartial({ experiment: draftBandit('metered-concluded') }),
    );
    await admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'metered-concluded' }));
    await admin.concludeExperiment(
      ConcludeExperimentRequest.fromPartial({ id: 'metered-concluded' }),
    );
    await admin.createExperiment(
      CreateExperimentRequest.fromPartial({
        experiment: experiment('metered-fixed', { surfaces: ['metered-fixed'] }),
      }),
    );
    const updates = () =>
      counts('tandem.assignment.allocation.updates', (p) =>
        [p.attributes['tandem.outcome'], p.attributes['tandem.reason']]
          .filter((value) => value !== undefined)
          .join(':'),
      );
    const before = await updates();
    let published = 0;
    const publish = (experimentId: string, sequence: number, arms = ['control', 'treatment']) => {
      const eventId = `metered-update-${++published}`;
      return service.runtime.bus.publish(
        ALLOCATION_SUBJECT,
        AllocationUpdate,
        AllocationUpdate.fromPartial({
          eventId,
          experimentId,
          sequence,
          weights: arms.map((variantKey) => ({ variantKey, weight: 1 / arms.length })),
        }),
        { eventId },
      );
    };
    await publish('metered-bandit', 100);
    await eventually(async () => {
      expect(since(before, await updates())).toEqual({ applied: 1 });
    });
    await publish('metered-bandit', 100); // delivered again
    await publish('metered-bandit', 50);
    await publish('metered-bandit', 0);
    await publish('metered-bandit', 200, ['control', 'other']);
    await publish('metered-none', 200);
    await publish('metered-fixed', 200);
    await publish('metered-concluded', 200);
    await eventually(async () => {
      expect(since(before, await updates())).toEqual({
        applied: 1,
        duplicate: 1,
        stale: 1,
        'rejected:no_sequence': 1,
        'rejected:invalid_allocation': 1,
        'rejected:unknown_experiment': 1,
        'rejected:not_a_bandit': 1,
        concluded: 1,
      });
    });
  });
});
