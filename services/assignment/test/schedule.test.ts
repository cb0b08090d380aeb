/**
 * Scheduled experiments: StartExperiment with a future start makes the experiment SCHEDULED, it
 * serves only within [scheduled_start_time, scheduled_end_time) while its status follows (RUNNING,
 * then STOPPED), the schedule cannot be edited to contradict what was served, and oversized
 * requests are refused with a clear status.
 */
import { status as GrpcCode } from '@grpc/grpc-js';
import { ExperimentStatus } from '../../../gen/ts/tandem/assignment/v1/experiment';
import { AssignmentReason } from '../../../gen/ts/tandem/assignment/v1/assignment';
import { ApplyRequest } from '../../../gen/ts/tandem/assignment/v1/assignment_service';
import { FailedPreconditionError, type TandemError } from '../../platform/src/errors';
import { failure } from '../../platform/test/support/failure';
import { ExperimentStatus as DomainStatus, START_MARGIN_MS } from '../src/domain';
import { advanceSchedule } from '../src/handlers/experiments';
import { createInProcessBus } from '../../platform/src/events/in-process-bus';
import {
  eventually,
  startTestAssignment,
  temporaryDataDir,
  type TestAssignment,
} from './support/harness';
import { experiment, resolveRequest } from './support/fixtures';
import { RESOLVE_MAX_REQUEST_BYTES } from '../src/service';

describe('scheduled experiments', () => {
  let assignment: TestAssignment;

  beforeAll(async () => {
    assignment = await startTestAssignment();
  });

  afterAll(async () => {
    await assignment.stop();
  });

  const reasonFor = async (experimentId: string): Promise<AssignmentReason | undefined> => {
    const resolved = await assignment.client.resolve(resolveRequest('user-1', { explain: true }));
    return resolved.assignments.find((a) => a.experimentId === experimentId)?.reason;
  };

  it('is SCHEDULED until its start time, serves within its window, and stops serving at its end', async () => {
    // A window of 3.5 s: the status's step to RUNNING (the next periodic check, 500 ms apart)
    // must be seen before the end's step, also on a loaded host.
    const start = new Date(Date.now() + 1500);
    const end = new Date(Date.now() + 5000);
    await assignment.admin.createExperiment({
      experiment: experiment('timed', { scheduledStartTime: start, scheduledEndTime: end }),
      requestId: '',
    });
    const started = await assignment.admin.startExperiment({
      id: 'timed',
      etag: '',
      requestId: '',
    });
    expect(started.experiment?.status).toBe(ExperimentStatus.EXPERIMENT_STATUS_SCHEDULED);

    expect(await reasonFor('timed')).toBe(AssignmentReason.ASSIGNMENT_REASON_NOT_RUNNING);
    await eventually(async () => {
      expect([AssignmentReason.ASSIGNMENT_REASON_ASSIGNED]).toContain(await reasonFor('timed'));
    }, 5000);
    // The status catches up with the schedule, dated by it.
    await eventually(async () => {
      const { experiment: running } = await assignment.client.getExperiment({ id: 'timed' });
      expect(running).toMatchObject({
        status: ExperimentStatus.EXPERIMENT_STATUS_RUNNING,
        startTime: start,
      });
    }, 5000);
    await eventually(async () => {
      expect(await reasonFor('timed')).toBe(AssignmentReason.ASSIGNMENT_REASON_NOT_RUNNING);
    }, 8000);
    await eventually(async () => {
      const { experiment: stopped } = await assignment.client.getExperiment({ id: 'timed' });
      expect(stopped).toMatchObject({
        status: ExperimentStatus.EXPERIMENT_STATUS_STOPPED,
        startTime: start,
        stopTime: end,
      });
    }, 5000);
  });

  it('refuses schedule edits that contradict what was served', async () => {
    const hour = 3_600_000;
    const update = (
      id: string,
      etag: string,
      times: { scheduledStartTime?: Date; scheduledEndTime?: Date },
    ) =>
      assignment.admin.updateExperiment({
        experiment: { ...experiment(id, times), etag },
        updateMask: ['scheduled_start_time', 'scheduled_end_time'],
        requestId: '',
      });
    const preconditions = async (call: Promise<unknown>): Promise<string[]> => {
      const error: TandemError = await failure(call);
      expect(error.code).toBe(GrpcCode.FAILED_PRECONDITION);
      return error instanceof FailedPreconditionError ? error.violations.map((v) => v.type) : [];
    };

    // SCHEDULED: the start may move within the future; cleared, it would have to start now.
    const start = new Date(Date.now() + hour);
    const end = new Date(Date.now() + 2 * hour);
    await assignment.admin.createExperiment({
      experiment: experiment('later', { scheduledStartTime: start, scheduledEndTime: end }),
      requestId: '',
    });
    const scheduled = await assignment.admin.startExperiment({
      id: 'later',
      etag: '',
      requestId: '',
    });
    const scheduledEtag = scheduled.experiment?.etag ?? '';
    expect(await preconditions(update('later', scheduledEtag, { scheduledEndTime: end }))).toEqual([
      'SCHEDULE_PASSED',
    ]);
    const moved = await update('later', scheduledEtag, {
      scheduledStartTime: new Date(start.getTime() + hour),
      scheduledEndTime: new Date(end.getTime() + hour),
    });
    expect(moved.experiment?.status).toBe(ExperimentStatus.EXPERIMENT_STATUS_SCHEDULED);

    // RUNNING: the start is history; the end moves only within the future.
    await assignment.admin.createExperiment({
      experiment: experiment('now-on', { scheduledEndTime: end }),
      requestId: '',
    });
    const running = await assignment.admin.startExperiment({
      id: 'now-on',
      etag: '',
      requestId: '',
    });
    const runningEtag = running.experiment?.etag ?? '';
    expect(running.experiment?.status).toBe(ExperimentStatus.EXPERIMENT_STATUS_RUNNING);
    expect(
      await preconditions(
        update('now-on', runningEtag, {
          scheduledStartTime: new Date(Date.now() - hour),
          scheduledEndTime: new Date(Date.now() - 1000),
        }),
      ),
    ).toEqual(['IMMUTABLE_ONCE_STARTED', 'SCHEDULE_PASSED']);
    const extended = await update('now-on', runningEtag, {
      scheduledEndTime: new Date(end.getTime() + hour),
    });
    expect(extended.experiment?.scheduledEndTime).toEqual(new Date(end.getTime() + hour));

    // STOPPED: the schedule is closed.
    const stopped = await assignment.admin.stopExperiment({
      id: 'now-on',
      etag: '',
      requestId: '',
    });
    expect(
      await preconditions(
        update('now-on', stopped.experiment?.etag ?? '', { scheduledEndTime: end }),
      ),
    ).toEqual(['IMMUTABLE_ONCE_STOPPED']);
  });

  it('stops a SCHEDULED experiment whose start has come as a running one', async () => {
    // No periodic step: the status stays SCHEDULED after the start, while the window serves.
    const paused = await startTestAssignment({ reloadInterval: '1h' });
    try {
      // Far enough ahead that it is still in the future when StartExperiment runs.
      const start = new Date(Date.now() + 1500);
      await paused.admin.createExperiment({
        experiment: experiment('due', { scheduledStartTime: start }),
        requestId: '',
      });
      const started = await paused.admin.startExperiment({ id: 'due', etag: '', requestId: '' });
      expect(started.experiment?.status).toBe(ExperimentStatus.EXPERIMENT_STATUS_SCHEDULED);
      await new Promise((resolve) => setTimeout(resolve, start.getTime() - Date.now() + 50));
      const resolved = await paused.client.resolve(resolveRequest('user-1'));
      expect(resolved.assignments.find((a) => a.experimentId === 'due')?.reason).toBe(
        AssignmentReason.ASSIGNMENT_REASON_ASSIGNED,
      );
      const { experiment: stopped } = await paused.admin.stopExperiment({
        id: 'due',
        etag: '',
        requestId: '',
      });
      expect(stopped?.status).toBe(ExperimentStatus.EXPERIMENT_STATUS_STOPPED);
      expect(stopped?.startTime).toEqual(start);
      expect(stopped?.stopTime).toBeInstanceOf(Date);
      // Shown before the stop but applied after it: not logged.
      const applied = await paused.client.apply(
        ApplyRequest.fromPartial({ resolveToken: resolved.resolveToken }),
      );
      expect(applied.exposures).toMatchObject({ loggedCount: 0, notRunningCount: 1 });
    } finally {
      await paused.stop();
    }
  });

  it('concludes by the schedule as it stops: a SCHEDULED one whose start has come, one past its end', async () => {
    // No periodic step: the statuses stay SCHEDULED and RUNNING after the schedule's times.
    const paused = await startTestAssignment({ reloadInterval: '1h' });
    try {
      const start = new Date(Date.now() + 1500);
      const end = new Date(Date.now() + 1500);
      await paused.admin.createExperiment({
        experiment: experiment('due-concluded', { scheduledStartTime: start }),
        requestId: '',
      });
      await paused.admin.createExperiment({
        experiment: experiment('ended-concluded', { scheduledEndTime: end }),
        requestId: '',
      });
      await paused.admin.createExperiment({
        experiment: experiment('later-concluded', {
          scheduledStartTime: new Date(Date.now() + 3_600_000),
        }),
        requestId: '',
      });
      for (const id of ['due-concluded', 'ended-concluded', 'later-concluded'])
        await paused.admin.startExperiment({ id, etag: '', requestId: '' });
      await new Promise((resolve) => setTimeout(resolve, start.getTime() - Date.now() + 50));
      const conclude = (id: string) =>
        paused.admin.concludeExperiment({
          id,
          etag: '',
          shippedVariantKey: '',
          summary: '',
          requestId: '',
        });
      const due = (await conclude('due-concluded')).experiment;
      expect(due?.status).toBe(ExperimentStatus.EXPERIMENT_STATUS_CONCLUDED);
      expect(due?.startTime).toEqual(start);
      expect(due?.stopTime?.getTime()).toBeGreaterThanOrEqual(start.getTime());
      // Stopped serving at its scheduled end, before the conclusion.
      const ended = (await conclude('ended-concluded')).experiment;
      expect(ended?.status).toBe(ExperimentStatus.EXPERIMENT_STATUS_CONCLUDED);
      expect(ended?.stopTime).toEqual(end);
      const later = await failure(conclude('later-concluded'));
      expect(later.code).toBe(GrpcCode.FAILED_PRECONDITION);
    } finally {
      await paused.stop();
    }
  });

  it('returns a SCHEDULED experiment to DRAFT only while its start is far enough away', async () => {
    const stopScheduled = async (id: string, startInMs: number) => {
      await assignment.admin.createExperiment({
        experiment: experiment(id, { scheduledStartTime: new Date(Date.now() + startInMs) }),
        requestId: '',
      });
      await assignment.admin.startExperiment({ id, etag: '', requestId: '' });
      return (await assignment.admin.stopExperiment({ id, etag: '', requestId: '' })).experiment;
    };
    const far = await stopScheduled('far-off', 3_600_000);
    expect(far).toMatchObject({ status: ExperimentStatus.EXPERIMENT_STATUS_DRAFT });
    expect(far?.startTime).toBeUndefined();
    // Within the margin: another replica may start serving it before it learns of the stop.
    const near = await stopScheduled('imminent', START_MARGIN_MS - 500);
    expect(near?.status).toBe(ExperimentStatus.EXPERIMENT_STATUS_STOPPED);
    expect(near?.startTime).toEqual(near?.scheduledStartTime);
    expect(near?.stopTime).toEqual(near?.scheduledStartTime);
  });

  it('refuses an end before the start', async () => {
    const error = await failure(
      assignment.admin.createExperiment({
        experiment: experiment('backwards', {
          scheduledStartTime: new Date(Date.now() + 60_000),
          scheduledEndTime: new Date(Date.now() + 1000),
        }),
        requestId: '',
      }),
    );
    expect(error.code).toBe(GrpcCode.INVALID_ARGUMENT);
  });

  it('answers a request over the message-size limit with RESOURCE_EXHAUSTED, not UNKNOWN', async () => {
    const huge = 'x'.repeat(assignment.config.platform.grpc.maxMessageBytes + 1024);
    const error = await failure(
      assignment.client.resolve(resolveRequest('user-1', { attributes: { blob: huge } })),
    );
    expect(error.code).toBe(GrpcCode.RESOURCE_EXHAUSTED);
  });

  it('refuses a Resolve over 1 MiB before decoding it, whatever its attributes hold', async () => {
    // 300,000 numbers: ~2.7 MB, which would decode into a list of as many Values first.
    const numbers = Array.from({ length: 300_000 }, (_, i) => i);
    const error = await failure(
      assignment.client.resolve(resolveRequest('user-1', { attributes: { numbers } })),
    );
    expect(error.code).toBe(GrpcCode.RESOURCE_EXHAUSTED);
    expect(error.reason).toBe('REQUEST_TOO_LARGE');
    expect(error.metadata.limit_bytes).toBe(String(RESOLVE_MAX_REQUEST_BYTES));
  });

  it('takes the other steps when an experiment due for one was deleted since the view was read', async () => {
    // The steps come from this replica's view, which may still hold an experiment another
    // replica has just deleted: saving it finds nothing there, and the other steps go on.
    const start = new Date(Date.now() + 60_000);
    for (const id of ['gone-first', 'kept-second']) {
      await assignment.admin.createExperiment({
        experiment: experiment(id, { scheduledStartTime: start }),
        requestId: '',
      });
      await assignment.admin.startExperiment({ id, etag: '', requestId: '' });
    }
    const { context } = assignment.service;
    // Deleted behind the view's back: no change is announced, so the view keeps it.
    expect(await context.store.experiments.delete('gone-first')).toBe(true);
    expect(context.configuration.current().experiments.has('gone-first')).toBe(true);

    await advanceSchedule(context, start.getTime() + 1);

    const kept = await context.store.experiments.get('kept-second');
    expect(kept?.doc.status).toBe(DomainStatus.RUNNING);
  });

  it('never writes back, from a view behind storage, an experiment deleted since, over the one created again under its id', async () => {
    const dataDir = temporaryDataDir();
    const replica = () =>
      startTestAssignment({ dataDir, sharedBus: createInProcessBus(), reloadInterval: '1h' });
    const first = await replica();
    let second: TestAssignment | undefined;
    try {
      const start = Date.now() + 60_000;
      await first.admin.createExperiment({
        experiment: experiment('reborn', {
          description: 'old',
          scheduledStartTime: new Date(start),
        }),
        requestId: '',
      });
      await first.admin.startExperiment({ id: 'reborn', etag: '', requestId: '' });
      // The second replica's view holds it SCHEDULED, at version 2, and is not told of what follows.
      second = await replica();
      expect(
        second.service.context.configuration.current().experiments.get('reborn')?.version,
      ).toBe(2);
      const stopped = await first.admin.stopExperiment({ id: 'reborn', etag: '', requestId: '' });
      expect(stopped.experiment?.status).toBe(ExperimentStatus.EXPERIMENT_STATUS_DRAFT);
      await first.admin.deleteExperiment({
        id: 'reborn',
        etag: stopped.experiment?.etag ?? '',
        requestId: '',
      });
      const again = await first.admin.createExperiment({
        experiment: experiment('reborn', { description: 'new' }),
        requestId: '',
      });
      // Version 2 again, of the experiment created again.
      const edited = await first.admin.updateExperiment({
        experiment: { ...again.experiment!, owner: 'new-owner' },
        updateMask: ['owner'],
        requestId: '',
      });
      expect(edited.experiment?.etag).toBe('2.2');

      await advanceSchedule(second.service.context, start + 1);

      const stored = await first.service.context.store.experiments.get('reborn');
      expect(stored?.doc).toMatchObject({
        status: DomainStatus.DRAFT,
        description: 'new',
        incarnation: 2,
      });
    } finally {
      await first.stop();
      await second?.stop();
    }
  });

  it('leaves the step to the next check while another replica holds the write lease, and when stopping', async () => {
    const dataDir = temporaryDataDir();
    const replica = () =>
      startTestAssignment({ dataDir, sharedBus: createInProcessBus(), reloadInterval: '1h' });
    const first = await replica();
    const second = await replica();
    try {
      const start = Date.now() + 60_000;
      await first.admin.createExperiment({
        experiment: experiment('waits', { scheduledStartTime: new Date(start) }),
        requestId: '',
      });
      await first.admin.startExperiment({ id: 'waits', etag: '', requestId: '' });
      await second.service.context.configuration.refresh();
      const status = async () =>
        (await first.service.context.store.experiments.get('waits'))?.doc.status;

      // Stopping: no step, and no lease taken.
      await advanceSchedule(second.service.context, start + 1, () => false);
      expect(await status()).toBe(DomainStatus.SCHEDULED);

      // The first replica holds the lease (a long write): the step gives up quietly.
      let release = (): void => undefined;
      let holding = false;
      const held = first.service.context.writes.exclusively(() => {
        holding = true;
        return new Promise<void>((resolve) => (release = resolve));
      });
      await eventually(() => {
        expect(holding).toBe(true);
        return Promise.resolve();
      });
      await expect(advanceSchedule(second.service.context, start + 1)).resolves.toBeUndefined();
      expect(await status()).toBe(DomainStatus.SCHEDULED);
      release();
      await held;
      await advanceSchedule(second.service.context, start + 1);
      expect(await status()).toBe(DomainStatus.RUNNING);
    } finally {
      await first.stop();
      await second.stop();
    }
  });
});
