/**
 * Admin writes whose storage fails after their change is stored: the change is answered as made,
 * and a retry with the same `request_id` gets the first result (the contract: "a retry with the
 * same value returns the first result"), whichever of the writes after the change failed.
 */
import { status as GrpcCode } from '@grpc/grpc-js';
import {
  CreateExperimentRequest,
  UpdateAllocationRequest,
  UpdateExperimentRequest,
  UpdateLayerRequest,
  CreateLayerRequest,
} from '../../../gen/ts/tandem/assignment/v1/assignment_service';
import { AllocationMode } from '../../../gen/ts/tandem/assignment/v1/experiment';
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
    const first = await replicaOn(dataDir, '100ms');
    const second = await replicaOn(dataDir, '100ms');
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

/** A sticky BANDIT experiment `bandit` with an allocation of 90/10; returns its etag. */
async function banditAt90To10(replica: TestAssignment): Promise<string> {
  const created = await replica.admin.createExperiment(
    CreateExperimentRequest.fromPartial({
      experiment: experiment('bandit', {
        allocationMode: AllocationMode.ALLOCATION_MODE_BANDIT,
        bandit: { minArmShare: 0.05 },
        sticky: true,
      }),
    }),
  );
  await replica.admin.updateAllocation(
    UpdateAllocationRequest.fromPartial({
      allocation: {
        experimentId: 'bandit',
        weights: [
          { variantKey: 'control', weight: 0.9 },
          { variantKey: 'treatment', weight: 0.1 },
        ],
      },
    }),
  );
  return created.experiment?.etag ?? '';
}

/** Switches `bandit` to `allocationMode` through `replica`; returns the new etag. */
async function switchMode(
  replica: TestAssignment,
  etag: string,
  allocationMode: AllocationMode,
): Promise<string> {
  const bandit =
    allocationMode === AllocationMode.ALLOCATION_MODE_BANDIT ? { minArmShare: 0.05 } : undefined;
  const updated = await replica.admin.updateExperiment(
    UpdateExperimentRequest.fromPartial({
      experiment: { id: 'bandit', etag, allocationMode, bandit },
      updateMask: ['allocation_mode', 'bandit'],
    }),
  );
  return updated.experiment?.etag ?? '';
}

/** The weights `replica` serves for `bandit`. */
async function weightsOf(replica: TestAssignment): Promise<number[] | undefined> {
  const served = await replica.client.getAllocation({ experimentId: 'bandit', sequence: 0 });
  return served.allocation?.weights.map((w) => w.weight);
}

/** A replica on `dataDir` with a bus of its own, checking storage every `reloadInterval`. */
function replicaOn(dataDir: string, reloadInterval: string): Promise<TestAssignment> {
  return startTestAssignment({ dataDir, sharedBus: createInProcessBus(), reloadInterval });
}

describe('an allocation drop whose storage failed after the allocation was deleted', () => {
  it('leaves the replica that dropped it serving what storage holds, as every other replica does', async () => {
    const dataDir = temporaryDataDir();
    const replica = await replicaOn(dataDir, '1h');
    // Another replica, running all along: it learns of changes by its periodic check alone.
    const other = await replicaOn(dataDir, '100ms');
    try {
      const etag = await banditAt90To10(replica);
      // Out of effect once the experiment is FIXED: dropped, but storage answers as failed.
      const allocations = replica.service.context.store.allocations;
      const remove = allocations.delete.bind(allocations);
      jest.spyOn(allocations, 'delete').mockImplementationOnce(async (id, version) => {
        await remove(id, version);
        throw new UnavailableError('storage did not answer in time');
      });
      const fixed = await switchMode(replica, etag, AllocationMode.ALLOCATION_MODE_FIXED);
      // Back to BANDIT: storage holds no allocation, so the variants' own weights apply.
      await switchMode(replica, fixed, AllocationMode.ALLOCATION_MODE_BANDIT);
      expect(await allocations.get('bandit')).toBeUndefined();
      await eventually(async () => {
        expect(await weightsOf(other)).toEqual([0.5, 0.5]);
      }, 5_000);
      expect(await weightsOf(replica)).toEqual([0.5, 0.5]);
    } finally {
      await replica.stop();
      await other.stop();
    }
  });

  it('leaves another replica serving what storage holds though the dropping replica stopped before its next check', async () => {
    const dataDir = temporaryDataDir();
    const dropping = await replicaOn(dataDir, '1h');
    const other = await replicaOn(dataDir, '1h');
    let droppingStopped = false;
    try {
      const etag = await banditAt90To10(dropping);
      const allocations = dropping.service.context.store.allocations;
      const remove = allocations.delete.bind(allocations);
      jest.spyOn(allocations, 'delete').mockImplementationOnce(async (id, version) => {
        // The other replica reads everything after the FIXED change's bump, before the drop.
        await other.service.context.configuration.refresh();
        await remove(id, version);
        throw new UnavailableError('storage did not answer in time');
      });
      const fixed = await switchMode(dropping, etag, AllocationMode.ALLOCATION_MODE_FIXED);
      // Stopped (a rolling deploy) before its next check: the lease it left tells the next writer.
      await dropping.stop();
      droppingStopped = true;
      await switchMode(other, fixed, AllocationMode.ALLOCATION_MODE_BANDIT);
      expect(await weightsOf(other)).toEqual([0.5, 0.5]);
    } finally {
      if (!droppingStopped) await dropping.stop();
      await other.stop();
    }
  });
});
