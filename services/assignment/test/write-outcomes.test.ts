/**
 * Admin writes whose storage fails after their change is stored: the change is answered as made,
 * and a retry with the same `request_id` gets the first result (the contract: "a retry with the
 * same value returns the first result"), whichever of the writes after the change failed.
 */
import { status as GrpcCode } from '@grpc/grpc-js';
import {
  CreateExperimentRequest,
  UpdateLayerRequest,
  CreateLayerRequest,
} from '../../../gen/ts/tandem/assignment/v1/assignment_service';
import { UnavailableError } from '../../platform/src/errors';
import type { Collection } from '../../platform/src/storage/collection';
import { failure } from '../../platform/test/support/failure';
import { experiment } from './support/fixtures';
import { createInProcessBus } from '../../platform/src/events/in-process-bus';
import {
  eventually,
  startTestAssignment,
  temporaryDataDir,
  type TestAssignment,
} from './support/harness';

/** The collection a replica keeps its first responses in (private to the writes). */
function requestResultsOf(replica: TestAssignment): Collection<{ readonly id: string }> {
  const writes = replica.service.context.writes as unknown as {
    readonly results: { readonly collection: Collection<{ readonly id: string }> };
  };
  return writes.results.collection;
}

describe('an admin write whose response could not be stored after its change was', () => {
  it('answers its result, and a retry with the same request_id the same, not ALREADY_EXISTS', async () => {
    const replica = await startTestAssignment({ reloadInterval: '1h' });
    try {
      // Storage fails after the experiment is stored, for as long as the call lasts.
      const insert = jest
        .spyOn(requestResultsOf(replica), 'insert')
        .mockRejectedValue(new UnavailableError('storage is unreachable'));
      const create = () =>
        replica.admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment('first'),
            requestId: 'create-first',
          }),
        );
      // The experiment is created: the caller is told so, though its answer is not stored.
      const answered = await create();
      expect(answered.experiment?.etag).toBe('1');
      insert.mockRestore();
      // A retry (the answer lost on its way) gets the first result, not ALREADY_EXISTS.
      const retried = await create();
      expect(retried.experiment?.id).toBe('first');
      expect(retried.experiment?.etag).toBe('1');
    } finally {
      await replica.stop();
    }
  });

  it('answers it when the version bump failed too (storage down for the whole tail of the write)', async () => {
    const replica = await startTestAssignment({ reloadInterval: '1h' });
    try {
      await replica.admin.createLayer(CreateLayerRequest.fromPartial({ layer: { id: 'home' } }));
      const layer = (await replica.client.getLayer({ id: 'home' })).layer;
      jest
        .spyOn(replica.service.context.store, 'bumpVersion')
        .mockRejectedValueOnce(new UnavailableError('storage is unreachable'));
      const insert = jest
        .spyOn(requestResultsOf(replica), 'insert')
        .mockRejectedValue(new UnavailableError('storage is unreachable'));
      const update = () =>
        replica.admin.updateLayer(
          UpdateLayerRequest.fromPartial({
            layer: { id: 'home', etag: layer?.etag, description: 'checkout' },
            updateMask: ['description'],
            requestId: 'describe-home',
          }),
        );
      const unanswered = await failure(update());
      expect(unanswered.code).toBe(GrpcCode.UNAVAILABLE);
      insert.mockRestore();
      // The etag it sent is stale now (the update was stored): only the first result answers.
      const retried = await update();
      expect(retried.layer?.description).toBe('checkout');
    } finally {
      await replica.stop();
    }
  });

  it('answers a retry on another replica with the first result once storage is back', async () => {
    const dataDir = temporaryDataDir();
    const first = await startTestAssignment({
      dataDir,
      sharedBus: createInProcessBus(),
      reloadInterval: '100ms',
    });
    const second = await startTestAssignment({
      dataDir,
      sharedBus: createInProcessBus(),
      reloadInterval: '100ms',
    });
    try {
      const results = requestResultsOf(first);
      const insert = jest
        .spyOn(results, 'insert')
        .mockRejectedValue(new UnavailableError('storage is unreachable'));
      const request = CreateExperimentRequest.fromPartial({
        experiment: experiment('elsewhere'),
        requestId: 'create-elsewhere',
      });
      await first.admin.createExperiment(request);
      // Storage answers again: the first response is stored, and a retry reaching the other
      // replica gets it.
      insert.mockRestore();
      await eventually(async () => {
        expect(await results.get('CreateExperiment/create-elsewhere')).toBeDefined();
      }, 5_000);
      const retried = await second.admin.createExperiment(request);
      expect(retried.experiment?.id).toBe('elsewhere');
      expect(retried.experiment?.etag).toBe('1');
    } finally {
      await first.stop();
      await second.stop();
    }
  });
});
