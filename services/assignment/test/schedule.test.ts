/**
 * Scheduled experiments: StartExperiment with a future start makes the experiment SCHEDULED, it
 * serves only within [scheduled_start_time, scheduled_end_time), and oversized requests are refused
 * with a clear status.
 */
import { status as GrpcCode } from '@grpc/grpc-js';
import { ExperimentStatus } from '../../../gen/ts/tandem/assignment/v1/experiment';
import { AssignmentReason } from '../../../gen/ts/tandem/assignment/v1/assignment';
import { failure } from '../../platform/test/support/failure';
import { eventually, startTestAssignment, type TestAssignment } from './support/harness';
import { experiment, resolveRequest } from './support/fixtures';

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
    const start = new Date(Date.now() + 1500);
    const end = new Date(Date.now() + 3000);
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
    await eventually(async () => {
      expect(await reasonFor('timed')).toBe(AssignmentReason.ASSIGNMENT_REASON_NOT_RUNNING);
    }, 5000);
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
});
