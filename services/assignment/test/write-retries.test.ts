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
  CreateHoldoutRequest,
  CreateLayerRequest,
  UpdateAllocationRequest,
  DeleteExperimentRequest,
  StartExperimentRequest,
  UpdateExperimentRequest,
} from '../../../gen/ts/tandem/assignment/v1/assignment_service';
import { AllocationMode, ExperimentStatus } from '../../../gen/ts/tandem/assignment/v1/experiment';
import { UnavailableError } from '../../platform/src/errors';
import type { Collection } from '../../platform/src/storage/collection';
import { failure } from '../../platform/test/support/failure';
import { experiment, holdout } from './support/fixtures';
import { startTestAssignment, type TestAssignment } from './support/harness';

/**
 * Makes the replica's next `write` of an experiment take effect and then fail, as a storage call
 * whose answer is lost does.
 */
function failAfterEffect(
  replica: TestAssignment,
  write: 'insert' | 'replace' | 'delete',
  of: 'experiments' | 'layers' | 'holdouts' | 'allocations' = 'experiments',
): void {
  const collection = replica.service.context.store[of] as Collection<{ readonly id: string }>;
  const call = collection[write].bind(collection) as (...args: unknown[]) => Promise<unknown>;
  jest.spyOn(collection, write).mockImplementationOnce(async (...args: unknown[]) => {
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

  it('answers UNAVAILABLE, to be retried, when reading what the first call stored fails', async () => {
    const create = () =>
      replica.admin.createExperiment(
        CreateExperimentRequest.fromPartial({ experiment: experiment('unread'), requestId: 'c' }),
      );
    failAfterEffect(replica, 'insert');
    expect((await failure(create())).code).toBe(GrpcCode.UNAVAILABLE);
    // The retry is refused by the experiment made, and cannot read whose it is: not final.
    // (The create reads the id once itself, then recovery reads it.)
    const experiments = replica.service.context.store.experiments;
    const get = experiments.get.bind(experiments);
    const reads = jest.spyOn(experiments, 'get');
    reads.mockImplementationOnce(get);
    reads.mockRejectedValueOnce(new UnavailableError('storage is unreachable'));
    const retried = await failure(create());
    reads.mockRestore();
    expect(retried.code).toBe(GrpcCode.UNAVAILABLE);

    expect((await create()).experiment).toMatchObject({ id: 'unread', etag: '1' });
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

  it('answers the retry of a layer, a holdout and an allocation written, as of an experiment', async () => {
    const { admin } = replica;
    failAfterEffect(replica, 'insert', 'layers');
    const layer = () =>
      admin.createLayer(CreateLayerRequest.fromPartial({ layer: { id: 'l1' }, requestId: 'l1' }));
    expect((await failure(layer())).code).toBe(GrpcCode.UNAVAILABLE);
    expect((await layer()).layer).toMatchObject({ id: 'l1', etag: '1' });

    failAfterEffect(replica, 'insert', 'holdouts');
    const created = () =>
      admin.createHoldout(
        CreateHoldoutRequest.fromPartial({
          holdout: holdout('h1', { surfaces: ['home'] }),
          requestId: 'h1',
        }),
      );
    expect((await failure(created())).code).toBe(GrpcCode.UNAVAILABLE);
    expect((await created()).holdout).toMatchObject({ id: 'h1', etag: '1' });

    await admin.createExperiment(
      CreateExperimentRequest.fromPartial({
        experiment: experiment('armed', {
          allocationMode: AllocationMode.ALLOCATION_MODE_BANDIT,
          bandit: { minArmShare: 0 },
          sticky: true,
        }),
      }),
    );
    await admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'armed' }));
    failAfterEffect(replica, 'insert', 'allocations');
    const allocate = () =>
      admin.updateAllocation(
        UpdateAllocationRequest.fromPartial({
          allocation: {
            experimentId: 'armed',
            sequence: 7,
            weights: [
              { variantKey: 'control', weight: 0.9 },
              { variantKey: 'treatment', weight: 0.1 },
            ],
          },
          requestId: 'allocate-7',
        }),
      );
    expect((await failure(allocate())).code).toBe(GrpcCode.UNAVAILABLE);
    expect((await allocate()).allocation).toMatchObject({ experimentId: 'armed', sequence: 7 });
  });

  it('refuses the retry of a delete when another deleted the resource since', async () => {
    const created = await replica.admin.createExperiment(
      CreateExperimentRequest.fromPartial({ experiment: experiment('twice') }),
    );
    const remove = (etag: string | undefined, requestId: string) =>
      replica.admin.deleteExperiment(
        DeleteExperimentRequest.fromPartial({ id: 'twice', etag, requestId }),
      );
    // Its deletion counted and stamped, the document itself not deleted.
    jest
      .spyOn(replica.service.context.store.experiments, 'delete')
      .mockRejectedValueOnce(new UnavailableError('storage is unreachable'));
    expect((await failure(remove(created.experiment?.etag, 'delete-twice'))).code).toBe(
      GrpcCode.UNAVAILABLE,
    );
    // Changed, then deleted, by requests without a request_id.
    const changed = await replica.admin.updateExperiment(
      UpdateExperimentRequest.fromPartial({
        experiment: { ...experiment('twice', { description: 'changed' }), etag: '1' },
        updateMask: ['description'],
      }),
    );
    await remove(changed.experiment?.etag, '');

    expect((await failure(remove(created.experiment?.etag, 'delete-twice'))).code).toBe(
      GrpcCode.NOT_FOUND,
    );
  });

  it.each([
    ['with', 'second-write'],
    ['without', ''],
  ])(
    'refuses the retry when another write, %s a request_id, changed the resource since',
    async (how, secondRequestId) => {
      const id = `overtaken-${how}`;
      const created = await replica.admin.createExperiment(
        CreateExperimentRequest.fromPartial({ experiment: experiment(id) }),
      );
      const update = (description: string, requestId: string, etag = created.experiment?.etag) =>
        replica.admin.updateExperiment(
          UpdateExperimentRequest.fromPartial({
            experiment: { ...experiment(id, { description }), etag },
            updateMask: ['description'],
            requestId,
          }),
        );
      failAfterEffect(replica, 'replace');
      expect((await failure(update('first', 'first-write'))).code).toBe(GrpcCode.UNAVAILABLE);
      // Another write changes it before the retry: the first write's change is not what is
      // stored.
      await update('second', secondRequestId, '2');

      expect((await failure(update('first', 'first-write'))).code).toBe(GrpcCode.ABORTED);
    },
  );
});
