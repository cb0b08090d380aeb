/**
 * Admin writes whose own storage call failed after it took effect (a timeout): the first call
 * fails, and a retry with the same `request_id` finds the change its first call made and answers
 * it ("a retry with the same value returns the first result"), rather than ALREADY_EXISTS for a
 * create, ABORTED for the etag an update moved, NOT_FOUND for a delete or FAILED_PRECONDITION for
 * a start. A change another request made is still refused.
 */
import { status as GrpcCode } from '@grpc/grpc-js';
import {
  CreateExperimentRequest,
  DeleteExperimentRequest,
  StartExperimentRequest,
  UpdateExperimentRequest,
} from '../../../gen/ts/tandem/assignment/v1/assignment_service';
import { ExperimentStatus } from '../../../gen/ts/tandem/assignment/v1/experiment';
import { UnavailableError } from '../../platform/src/errors';
import { failure } from '../../platform/test/support/failure';
import { experiment } from './support/fixtures';
import { startTestAssignment, type TestAssignment } from './support/harness';

/**
 * Makes the replica's next `write` of an experiment take effect and then fail, as a storage call
 * whose answer is lost does.
 */
function failAfterEffect(replica: TestAssignment, write: 'insert' | 'replace' | 'delete'): void {
  const experiments = replica.service.context.store.experiments;
  const call = experiments[write].bind(experiments) as (...args: unknown[]) => Promise<unknown>;
  jest.spyOn(experiments, write).mockImplementationOnce(async (...args: unknown[]) => {
    await call(...args);
    throw new UnavailableError('storage did not answer in time');
  });
}

describe('an admin write whose storage call failed after it took effect', () => {
  let replica: TestAssignment;

  beforeEach(async () => {
    replica = await startTestAssignment({ reloadInterval: '1h' });
  });

  afterEach(async () => {
    await replica.stop();
  });

  it('answers the retry of a create with the experiment it created, not ALREADY_EXISTS', async () => {
    const create = (requestId: string) =>
      replica.admin.createExperiment(
        CreateExperimentRequest.fromPartial({ experiment: experiment('made'), requestId }),
      );
    failAfterEffect(replica, 'insert');
    expect((await failure(create('create-made'))).code).toBe(GrpcCode.UNAVAILABLE);

    const retried = await create('create-made');
    expect(retried.experiment).toMatchObject({ id: 'made', etag: '1' });
    expect(await create('create-made')).toEqual(retried);
    // Another request creating it finds it made by someone else.
    expect((await failure(create('create-made-again'))).code).toBe(GrpcCode.ALREADY_EXISTS);
  });

  it('answers the retry of an update with what it stored, not ABORTED for the etag it moved', async () => {
    const created = await replica.admin.createExperiment(
      CreateExperimentRequest.fromPartial({ experiment: experiment('moved') }),
    );
    const update = (description: string, requestId: string) =>
      replica.admin.updateExperiment(
        UpdateExperimentRequest.fromPartial({
          experiment: { ...experiment('moved', { description }), etag: created.experiment?.etag },
          updateMask: ['description'],
          requestId,
        }),
      );
    failAfterEffect(replica, 'replace');
    expect((await failure(update('renamed', 'rename'))).code).toBe(GrpcCode.UNAVAILABLE);

    const retried = await update('renamed', 'rename');
    expect(retried.experiment).toMatchObject({ description: 'renamed', etag: '2' });
    // Sent with the same stale etag by another request, it is refused.
    expect((await failure(update('renamed twice', 'rename-2'))).code).toBe(GrpcCode.ABORTED);
  });

  it('answers the retry of a start with the experiment it started, not FAILED_PRECONDITION', async () => {
    await replica.admin.createExperiment(
      CreateExperimentRequest.fromPartial({ experiment: experiment('started') }),
    );
    const start = () =>
      replica.admin.startExperiment(
        StartExperimentRequest.fromPartial({ id: 'started', requestId: 'start-1' }),
      );
    failAfterEffect(replica, 'replace');
    expect((await failure(start())).code).toBe(GrpcCode.UNAVAILABLE);

    const retried = await start();
    expect(retried.experiment?.status).toBe(ExperimentStatus.EXPERIMENT_STATUS_RUNNING);
  });

  it('answers the retry of a delete as done, not NOT_FOUND', async () => {
    const created = await replica.admin.createExperiment(
      CreateExperimentRequest.fromPartial({ experiment: experiment('gone') }),
    );
    const remove = (requestId: string) =>
      replica.admin.deleteExperiment(
        DeleteExperimentRequest.fromPartial({
          id: 'gone',
          etag: created.experiment?.etag,
          requestId,
        }),
      );
    failAfterEffect(replica, 'delete');
    expect((await failure(remove('delete-gone'))).code).toBe(GrpcCode.UNAVAILABLE);

    expect(await remove('delete-gone')).toEqual({});
    expect((await failure(remove('delete-gone-again'))).code).toBe(GrpcCode.NOT_FOUND);
  });

  it('refuses the retry of a delete that failed before the document went', async () => {
    const created = await replica.admin.createExperiment(
      CreateExperimentRequest.fromPartial({ experiment: experiment('kept') }),
    );
    const remove = () =>
      replica.admin.deleteExperiment(
        DeleteExperimentRequest.fromPartial({
          id: 'kept',
          etag: created.experiment?.etag,
          requestId: 'delete-kept',
        }),
      );
    // Its deletion counted and stamped, the document itself not deleted.
    jest
      .spyOn(replica.service.context.store.experiments, 'delete')
      .mockRejectedValueOnce(new UnavailableError('storage is unreachable'));
    expect((await failure(remove())).code).toBe(GrpcCode.UNAVAILABLE);
    // Started meanwhile: the retry's etag is stale, and the experiment is still there.
    await replica.admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'kept' }));

    expect((await failure(remove())).code).toBe(GrpcCode.ABORTED);
    expect((await replica.client.getExperiment({ id: 'kept' })).experiment?.status).toBe(
      ExperimentStatus.EXPERIMENT_STATUS_RUNNING,
    );
  });

  it('refuses the retry when another write changed the resource since', async () => {
    const created = await replica.admin.createExperiment(
      CreateExperimentRequest.fromPartial({ experiment: experiment('overtaken') }),
    );
    const update = (description: string, requestId: string, etag = created.experiment?.etag) =>
      replica.admin.updateExperiment(
        UpdateExperimentRequest.fromPartial({
          experiment: { ...experiment('overtaken', { description }), etag },
          updateMask: ['description'],
          requestId,
        }),
      );
    failAfterEffect(replica, 'replace');
    expect((await failure(update('first', 'first-write'))).code).toBe(GrpcCode.UNAVAILABLE);
    // Another write changes it before the retry: the first write's change is not what is stored.
    await update('second', 'second-write', '2');

    expect((await failure(update('first', 'first-write'))).code).toBe(GrpcCode.ABORTED);
  });
});
