/**
 * In-process gRPC tests on the embedded store and the in-process bus, as `make dev` runs it, plus
 * what only that set-up shows: a replica whose storage fails at start refuses to serve, and two
 * replicas on one embedded store see each other's changes by polling when no notification reaches
 * them.
 */
import { UnavailableError } from '../../platform/src/errors';
import { bootstrap } from '../../platform/src/bootstrap';
import type { DocumentStore } from '../../platform/src/storage/collection';
import { startAssignment } from '../src/service';
import { BufferedPublisher } from '../../platform/src/events/buffered-publisher';
import { StickyAssignments } from '../src/store/sticky-assignments';
import { status as GrpcCode } from '@grpc/grpc-js';
import {
  ApplyRequest,
  CreateExperimentRequest,
  CreateHoldoutRequest,
  GetExperimentRequest,
  CreateLayerRequest,
  DeleteLayerRequest,
  GetLayerRequest,
  ListExperimentsRequest,
  ListExperimentsResponse,
  StartExperimentRequest,
} from '../../../gen/ts/tandem/assignment/v1/assignment_service';
import { createInProcessBus } from '../../platform/src/events/in-process-bus';
import { failure } from '../../platform/test/support/failure';
import { AllocationMode, ExperimentStatus } from '../../../gen/ts/tandem/assignment/v1/experiment';
import { AllocationUpdate } from '../../../gen/ts/tandem/events/v1/allocation_update';
import { ALLOCATION_SUBJECT } from '../src/events/streams';
import { experiment, holdout, resolveRequest } from './support/fixtures';
import { HoldoutStatus } from '../../../gen/ts/tandem/assignment/v1/holdout';
import {
  eventually,
  propagationMs,
  startTestAssignment,
  temporaryDataDir,
  testConfig,
  type TestAssignment,
} from './support/harness';
import { runServiceSuite } from './support/service-suite';

runServiceSuite('embedded store, in-process bus', () => ({ dataDir: temporaryDataDir() }));

/**
 * A replica on the embedded store in `dataDir`, on a bus of its own (no notification of another
 * replica reaches it), checking storage every `reloadInterval`.
 */
function replicaOn(dataDir: string, reloadInterval: string): Promise<TestAssignment> {
  return startTestAssignment({ dataDir, sharedBus: createInProcessBus(), reloadInterval });
}

/**
 * Sticky sweeps that do not finish until `finish()` (freeing a large experiment, storage hung),
 * and the 60 s timers of the replicas started meanwhile, to fire by hand (`tick()`).
 */
function heldSweeps() {
  const timers: (() => void)[] = [];
  const pending: (() => void)[] = [];
  const realSetInterval = global.setInterval;
  const intervals = jest
    .spyOn(global, 'setInterval')
    .mockImplementation((callback: () => void, ms?: number) => {
      if (ms === 60_000) timers.push(callback);
      return realSetInterval(callback, ms);
    });
  const sweep = jest.spyOn(StickyAssignments.prototype, 'sweepReleased').mockImplementation(
    () =>
      new Promise<number>((resolve) => {
        pending.push(() => {
          resolve(0);
        });
      }),
  );
  return {
    sweep,
    tick: () => {
      for (const timer of timers) timer();
    },
    finish: () => {
      for (const done of pending.splice(0)) done();
    },
    restore: () => {
      intervals.mockRestore();
      sweep.mockRestore();
    },
  };
}

describe('a replica whose storage is down at start', () => {
  it('fails to start, so it never binds or reports SERVING', async () => {
    const config = testConfig({});
    const runtime = await bootstrap(config.platform);
    const down: DocumentStore = {
      kind: 'mongodb',
      collection: () => Promise.reject(new UnavailableError('storage is unreachable')),
      ping: () => Promise.reject(new UnavailableError('storage is unreachable')),
      close: () => Promise.resolve(),
    };
    try {
      await expect(startAssignment({ ...runtime, store: down }, config)).rejects.toBeInstanceOf(
        UnavailableError,
      );
    } finally {
      await runtime.shutdown.run(5000);
    }
  });
});

describe('a replica whose version bump failed once', () => {
  it('serves that change at once, answers its retry with the first result, and keeps it after its next write', async () => {
    const service = await startTestAssignment({ reloadInterval: '1h' });
    try {
      jest
        .spyOn(service.service.context.store, 'bumpVersion')
        .mockRejectedValueOnce(new UnavailableError('storage is unreachable'));
      const create = (id: string) =>
        service.admin.createExperiment(
          CreateExperimentRequest.fromPartial({ experiment: experiment(id), requestId: id }),
        );
      // Stored but not announced: UNAVAILABLE, so that the caller retries (the retry announces
      // it, on whichever replica), and the retry gets the first result, not ALREADY_EXISTS.
      const unannounced = await failure(create('unannounced'));
      expect(unannounced.code).toBe(GrpcCode.UNAVAILABLE);
      expect(unannounced.reason).toBe('CHANGE_NOT_ANNOUNCED');
      const stored = await service.client.getExperiment(
        GetExperimentRequest.fromPartial({ id: 'unannounced' }),
      );
      expect(stored.experiment?.id).toBe('unannounced');
      expect((await create('unannounced')).experiment).toEqual(stored.experiment);
      await create('next');
      // The next bump announced both; this replica's view must hold both too.
      const listed = await service.client.listExperiments(ListExperimentsRequest.fromPartial({}));
      expect(listed.experiments.map((e) => e.id).sort()).toEqual(['next', 'unannounced']);
    } finally {
      await service.stop();
    }
  });
});

describe('a replica whose version bump failed, left to its periodic check', () => {
  it('announces the change, once and for all, and settles the lease it left', async () => {
    const service = await startTestAssignment({ reloadInterval: '100ms' });
    try {
      const store = service.service.context.store;
      const before = await store.version();
      jest
        .spyOn(store, 'bumpVersion')
        .mockRejectedValueOnce(new UnavailableError('storage is unreachable'));
      const unannounced = await failure(
        service.admin.createExperiment(
          CreateExperimentRequest.fromPartial({ experiment: experiment('announced-once') }),
        ),
      );
      expect(unannounced.reason).toBe('CHANGE_NOT_ANNOUNCED');
      await eventually(async () => {
        expect(service.service.context.configuration.hasUnannouncedChange()).toBe(false);
        expect(await store.writeLeaseAbandoned()).toBe(false);
      });
      // Announced, and not again at every check. (Twice at most: a check that bumps the version
      // while the write is still failing leaves the lease unsettled all the same, and its
      // takeover bumps once more.)
      await new Promise((resolve) => setTimeout(resolve, 500));
      const announced = await store.version();
      expect(announced - before).toBeGreaterThanOrEqual(1);
      expect(announced - before).toBeLessThanOrEqual(2);
      await new Promise((resolve) => setTimeout(resolve, 500));
      expect(await store.version()).toBe(announced);
    } finally {
      await service.stop();
    }
  });

  it('runs one sweep of released sticky assignments at a time, and waits for it when stopped', async () => {
    const sweeps = heldSweeps();
    const service = await startTestAssignment({ reloadInterval: '1h' });
    const state = { stopped: false };
    try {
      // Two intervals pass while the first sweep (a large experiment's) is still freeing.
      sweeps.tick();
      sweeps.tick();
      expect(sweeps.sweep).toHaveBeenCalledTimes(1);
      const stopping = service.stop().then(() => (state.stopped = true));
      await new Promise((resolve) => setTimeout(resolve, 100));
      expect(state.stopped).toBe(false);
      sweeps.finish();
      await stopping;
    } finally {
      sweeps.finish();
      sweeps.restore();
      if (!state.stopped) await service.stop();
    }
  });
});

describe('a replica stopped while a sticky sweep and a configuration check hang on storage', () => {
  it('still flushes its exposures and ends within the shutdown margin', async () => {
    const sweeps = heldSweeps();
    const answers: (() => void)[] = [];
    const close = jest.spyOn(BufferedPublisher.prototype, 'close');
    const service = await startTestAssignment({ reloadInterval: '100ms' });
    const version = jest.spyOn(service.service.context.store, 'version').mockImplementation(
      () =>
        new Promise<number>((_resolve, reject) => {
          answers.push(() => {
            reject(new Error('storage is unreachable'));
          });
        }),
    );
    try {
      sweeps.tick();
      await eventually(() => {
        expect(version).toHaveBeenCalled();
        expect(sweeps.sweep).toHaveBeenCalled();
      });
      // The kit's margin after the gRPC drain is 5 s; this replica's steps must fit in 4.
      await expect(service.runtime.shutdown.run(4_000)).resolves.toBeUndefined();
      expect(close).toHaveBeenCalledTimes(2);
    } finally {
      service.client.close();
      service.admin.close();
      for (const answer of answers) answer();
      sweeps.finish();
      sweeps.restore();
      close.mockRestore();
      version.mockRestore();
    }
  });
});

describe('two replicas, after one made a schedule step whose version bump failed and stopped', () => {
  it('shows the step on the other replica, which finds it made when it tries it', async () => {
    const dataDir = temporaryDataDir();
    const first = await replicaOn(dataDir, '100ms');
    const second = await replicaOn(dataDir, '100ms');
    let firstStopped = false;
    let releaseSecond = (): void => undefined;
    try {
      await first.admin.createExperiment(
        CreateExperimentRequest.fromPartial({
          experiment: experiment('scheduled-step', {
            scheduledStartTime: new Date(Date.now() + 1500),
          }),
        }),
      );
      await first.admin.startExperiment(
        StartExperimentRequest.fromPartial({ id: 'scheduled-step' }),
      );
      await eventually(async () => {
        const seen = await second.client.getExperiment({ id: 'scheduled-step' });
        expect(seen.experiment?.status).toBe(ExperimentStatus.EXPERIMENT_STATUS_SCHEDULED);
      });
      // The second replica's queue is held (a write of its own), so the first makes the step.
      const held = second.service.context.writes.serially(
        () => new Promise<void>((resolve) => (releaseSecond = resolve)),
      );
      jest
        .spyOn(first.service.context.store, 'bumpVersion')
        .mockRejectedValueOnce(new UnavailableError('storage is unreachable'));
      await eventually(async () => {
        const stored = await first.service.context.store.experiments.get('scheduled-step');
        expect(stored?.doc.status).toBe(ExperimentStatus.EXPERIMENT_STATUS_RUNNING);
      });
      // Stopped (a rolling update) before its next check could announce it.
      await first.stop();
      firstStopped = true;
      releaseSecond();
      await held;
      await eventually(async () => {
        const seen = await second.client.getExperiment({ id: 'scheduled-step' });
        expect(seen.experiment?.status).toBe(ExperimentStatus.EXPERIMENT_STATUS_RUNNING);
      }, 3000);
    } finally {
      releaseSecond();
      if (!firstStopped) await first.stop();
      await second.stop();
    }
  });
});

describe('two replicas, after a write on one stored its change but could not announce it', () => {
  // Separate buses and a slow check on the first replica: the change stays unannounced (no
  // notification, no version bump) while the second replica writes.
  const startReplicas = async () => {
    const dataDir = temporaryDataDir();
    const first = await replicaOn(dataDir, '1h');
    const layer = await first.admin.createLayer(
      CreateLayerRequest.fromPartial({ layer: { id: 'checkout' } }),
    );
    const second = await replicaOn(dataDir, '1h');
    return { first, second, layerEtag: layer.layer?.etag ?? '' };
  };
  const inCheckout = (id: string, start: number, end: number) =>
    CreateExperimentRequest.fromPartial({
      experiment: experiment(id, { layerId: 'checkout', layerRange: { start, end } }),
    });

  it('refuses on the other replica a layer range overlapping it (its version bump failed)', async () => {
    const { first, second } = await startReplicas();
    try {
      jest
        .spyOn(first.service.context.store, 'bumpVersion')
        .mockRejectedValueOnce(new UnavailableError('storage is unreachable'));
      const unannounced = await failure(first.admin.createExperiment(inCheckout('left', 0, 0.6)));
      expect(unannounced.code).toBe(GrpcCode.UNAVAILABLE);
      const overlapping = await failure(second.admin.createExperiment(inCheckout('right', 0.4, 1)));
      expect(overlapping.code).toBe(GrpcCode.INVALID_ARGUMENT);
      // Once announced, every replica serves the stored experiment alone in the layer.
      await first.service.context.configuration.refresh();
      for (const replica of [first, second]) {
        const layer = await replica.client.getLayer(
          GetLayerRequest.fromPartial({ id: 'checkout' }),
        );
        expect(layer.layer?.allocations.map((a) => a.experimentId)).toEqual(['left']);
      }
    } finally {
      await first.stop();
      await second.stop();
    }
  });

  it('refuses on the other replica to delete the layer it put an experiment in (its version bump failed)', async () => {
    const { first, second, layerEtag } = await startReplicas();
    try {
      jest
        .spyOn(first.service.context.store, 'bumpVersion')
        .mockRejectedValueOnce(new UnavailableError('storage is unreachable'));
      const unannounced = await failure(
        first.admin.createExperiment(inCheckout('in-layer', 0, 0.5)),
      );
      expect(unannounced.code).toBe(GrpcCode.UNAVAILABLE);
      const deleted = await failure(
        second.admin.deleteLayer(
          DeleteLayerRequest.fromPartial({ id: 'checkout', etag: layerEtag }),
        ),
      );
      expect(deleted.code).toBe(GrpcCode.FAILED_PRECONDITION);
      expect((await second.client.getExperiment({ id: 'in-layer' })).experiment?.layerId).toBe(
        'checkout',
      );
    } finally {
      await first.stop();
      await second.stop();
    }
  });

  it('answers a retry on the other replica with the first result, and announces the change', async () => {
    const { first, second } = await startReplicas();
    try {
      const before = await first.service.context.store.version();
      jest
        .spyOn(first.service.context.store, 'bumpVersion')
        .mockRejectedValueOnce(new UnavailableError('storage is unreachable'));
      const request = CreateExperimentRequest.fromPartial({
        experiment: experiment('retried-elsewhere'),
        requestId: 'retried-elsewhere-1',
      });
      const unannounced = await failure(first.admin.createExperiment(request));
      expect([unannounced.code, unannounced.reason]).toEqual([
        GrpcCode.UNAVAILABLE,
        'CHANGE_NOT_ANNOUNCED',
      ]);
      const served = await first.client.getExperiment({ id: 'retried-elsewhere' });
      // The retry takes over the lease released unsettled: it reloads everything, bumps the
      // version, and finds the result the first call kept.
      const retried = await second.admin.createExperiment(request);
      expect(retried.experiment).toEqual(served.experiment);
      expect(await second.service.context.store.version()).toBe(before + 1);
      expect((await second.client.getExperiment({ id: 'retried-elsewhere' })).experiment).toEqual(
        served.experiment,
      );
    } finally {
      await first.stop();
      await second.stop();
    }
  });

  it('is announced by the other replica, without a retry or another write, once the first one stops', async () => {
    const dataDir = temporaryDataDir();
    const first = await replicaOn(dataDir, '1h');
    const second = await replicaOn(dataDir, '100ms');
    const third = await replicaOn(dataDir, '100ms');
    try {
      const before = await first.service.context.store.version();
      jest
        .spyOn(first.service.context.store, 'bumpVersion')
        .mockRejectedValueOnce(new UnavailableError('storage is unreachable'));
      const unannounced = await failure(
        first.admin.createExperiment(
          CreateExperimentRequest.fromPartial({ experiment: experiment('orphaned') }),
        ),
      );
      expect(unannounced.reason).toBe('CHANGE_NOT_ANNOUNCED');
      // Gone before its next check (killed, say), and the caller gave up: only the lease it
      // released unsettled tells of the change.
      await first.stop();
      for (const replica of [second, third]) {
        await eventually(async () => {
          const served = await replica.client.getExperiment({ id: 'orphaned' });
          expect(served.experiment?.id).toBe('orphaned');
        });
      }
      // One of them took the lease over and bumped the version once; the lease is settled since.
      expect(await second.service.context.store.version()).toBe(before + 1);
      expect(await second.service.context.store.writeLeaseAbandoned()).toBe(false);
    } finally {
      await first.stop();
      await second.stop();
      await third.stop();
    }
  });

  it('logs on the other replica the exposure of a holdout the first one serves unannounced', async () => {
    const { first, second } = await startReplicas();
    try {
      jest
        .spyOn(first.service.context.store, 'bumpVersion')
        .mockRejectedValueOnce(new UnavailableError('storage is unreachable'));
      const created = await failure(
        first.admin.createHoldout(
          CreateHoldoutRequest.fromPartial({
            holdout: holdout('unannounced-holdout', {
              surfaces: ['unannounced-shelf'],
              status: HoldoutStatus.HOLDOUT_STATUS_RUNNING,
            }),
          }),
        ),
      );
      expect(created.code).toBe(GrpcCode.UNAVAILABLE);
      // The first replica serves it under the version both hold; the second does not know it.
      const resolved = await first.client.resolve(
        resolveRequest('user-1', { surfaces: ['unannounced-shelf'] }),
      );
      expect(resolved.holdouts.map((h) => h.holdoutId)).toEqual(['unannounced-holdout']);
      expect(resolved.configVersion).toBe(second.service.context.configuration.current().version);
      const applied = await second.client.apply(
        ApplyRequest.fromPartial({ resolveToken: resolved.resolveToken }),
      );
      expect(applied.exposures).toMatchObject({ loggedCount: 1, notRunningCount: 0 });
    } finally {
      await first.stop();
      await second.stop();
    }
  });

  /**
   * Creates experiment `left` through `replica`, which storage makes but answers as failed (a
   * timeout after the write landed, say).
   */
  const createLeftUnanswered = async (replica: TestAssignment) => {
    const experiments = replica.service.context.store.experiments;
    const insert = experiments.insert.bind(experiments);
    jest.spyOn(experiments, 'insert').mockImplementationOnce(async (doc) => {
      await insert(doc);
      throw new UnavailableError('storage did not answer in time');
    });
    const unanswered = await failure(replica.admin.createExperiment(inCheckout('left', 0, 0.6)));
    expect(unanswered.code).toBe(GrpcCode.UNAVAILABLE);
  };

  it('refuses on the other replica a layer range overlapping it (storage failed after storing it)', async () => {
    const { first, second } = await startReplicas();
    try {
      await createLeftUnanswered(first);
      const overlapping = await failure(second.admin.createExperiment(inCheckout('right', 0.4, 1)));
      expect(overlapping.code).toBe(GrpcCode.INVALID_ARGUMENT);
    } finally {
      await first.stop();
      await second.stop();
    }
  });

  it('does not announce a change at each takeover while reading the configuration fails', async () => {
    const { first, second } = await startReplicas();
    try {
      // The next holder of the lease reads everything again.
      await createLeftUnanswered(first);
      // That read keeps failing on the other replica: each of its writes takes the lease over
      // again, and none bumps the version (every replica would reload for nothing).
      const store = second.service.context.store;
      const version = await store.version();
      const readAll = jest
        .spyOn(store, 'readAll')
        .mockRejectedValue(new UnavailableError('storage did not answer in time'));
      for (let attempt = 0; attempt < 3; attempt++) {
        const failed = await failure(second.admin.createExperiment(inCheckout('right', 0.6, 1)));
        expect(failed.code).toBe(GrpcCode.UNAVAILABLE);
      }
      expect(readAll).toHaveBeenCalledTimes(3);
      expect(await store.version()).toBe(version);
      // Once it reads, the change is announced and the write validated against it.
      readAll.mockRestore();
      await second.admin.createExperiment(inCheckout('right', 0.6, 1));
      expect(await store.version()).toBe(version + 2);
      for (const replica of [first, second]) {
        await replica.service.context.configuration.refresh();
        const layer = await replica.client.getLayer(
          GetLayerRequest.fromPartial({ id: 'checkout' }),
        );
        expect(layer.layer?.allocations.map((a) => a.experimentId)).toEqual(['left', 'right']);
      }
    } finally {
      await first.stop();
      await second.stop();
    }
  });

  it('lets the other replica write as usual after a write refused for what it asked', async () => {
    const { first, second } = await startReplicas();
    try {
      await first.admin.createExperiment(inCheckout('left', 0, 0.5));
      const refused = await failure(first.admin.createExperiment(inCheckout('right', 0.4, 1)));
      expect(refused.code).toBe(GrpcCode.INVALID_ARGUMENT);
      const version = second.service.context.configuration.current().version;
      const created = await second.admin.createExperiment(inCheckout('right', 0.5, 1));
      expect(created.experiment?.layerRange).toEqual({ start: 0.5, end: 1 });
      // One reload for the first replica's change (its version moved) and one bump for this one's.
      expect(second.service.context.configuration.current().version).toBe(version + 2);
    } finally {
      await first.stop();
      await second.stop();
    }
  });
});

describe('two replicas on one embedded store, with no notification between them', () => {
  it("serve each other's changes within one second by the periodic check", async () => {
    const dataDir = temporaryDataDir();
    // Separate in-process buses: no ConfigChangeEvent crosses; the default interval (500 ms) does.
    const writer = await startTestAssignment({ dataDir, sharedBus: createInProcessBus() });
    const reader = await startTestAssignment({ dataDir, sharedBus: createInProcessBus() });
    try {
      // The promise is the 500 ms default interval (pinned here); the time measured adds a check
      // and a Resolve, which a loaded host can stretch past the 500 ms left of a one-second bound.
      expect(reader.config.reloadIntervalMs).toBe(500);
      expect(await propagationMs(writer, reader, 'polled')).toBeLessThan(2500);
    } finally {
      await writer.stop();
      await reader.stop();
    }
  });
});

describe('Apply on a replica that has not yet loaded the configuration its token was resolved with', () => {
  it('loads it, and logs the exposure of an experiment started since its last check', async () => {
    const dataDir = temporaryDataDir();
    // No notification between them and no periodic check within the test.
    const resolver = await replicaOn(dataDir, '1h');
    const applier = await replicaOn(dataDir, '1h');
    try {
      await resolver.admin.createExperiment(
        CreateExperimentRequest.fromPartial({
          experiment: experiment('just-started', { surfaces: ['just-started'] }),
        }),
      );
      await resolver.admin.startExperiment(
        StartExperimentRequest.fromPartial({ id: 'just-started' }),
      );
      const resolved = await resolver.client.resolve(
        resolveRequest('lagging-1', { surfaces: ['just-started'] }),
      );
      expect(resolved.assignments[0]?.inExperiment).toBe(true);
      expect(applier.service.context.configuration.current().version).toBeLessThan(
        resolved.configVersion,
      );
      const applied = await applier.client.apply(
        ApplyRequest.fromPartial({ resolveToken: resolved.resolveToken }),
      );
      expect(applied.exposures).toMatchObject({ loggedCount: 1, notRunningCount: 0 });
    } finally {
      await resolver.stop();
      await applier.stop();
    }
  });

  /**
   * Starts experiment `id` through `writer` while `resolver` reads the configuration between the
   * start's document and its version bump (so it holds the start under the version before), then
   * resolves a unit into it there, with the resolver's clock `clockLagMs` behind.
   */
  async function halfAnnounced(
    writer: TestAssignment,
    resolver: TestAssignment,
    id: string,
    clockLagMs = 0,
  ) {
    const store = writer.service.context.store;
    const bump = store.bumpVersion.bind(store);
    let stored = () => {};
    const startStored = new Promise<void>((resolve) => (stored = resolve));
    let release = () => {};
    const held = new Promise<void>((resolve) => (release = resolve));
    jest.spyOn(store, 'bumpVersion').mockImplementationOnce(async () => {
      stored();
      await held;
      return bump();
    });
    const started = writer.admin.startExperiment(StartExperimentRequest.fromPartial({ id }));
    await startStored;
    await resolver.service.context.configuration.refresh();
    release();
    await started;
    const now = Date.now.bind(Date);
    const clock = jest.spyOn(Date, 'now').mockImplementation(() => now() - clockLagMs);
    const resolved = await resolver.client.resolve(resolveRequest(`u-${id}`, { surfaces: [id] }));
    clock.mockRestore();
    expect(resolved.assignments[0]?.inExperiment).toBe(true);
    return resolved;
  }

  it('reads it again for tokens labelled with the version before a start (read before its bump)', async () => {
    const dataDir = temporaryDataDir();
    const start = () => replicaOn(dataDir, '1h');
    const writer = await start();
    const resolver = await start();
    const applier = await start();
    try {
      const ids = ['first', 'second', 'third', 'fourth'];
      for (const id of ids) {
        await writer.admin.createExperiment(
          CreateExperimentRequest.fromPartial({ experiment: experiment(id, { surfaces: [id] }) }),
        );
      }
      // The applier has them as DRAFTs.
      await applier.service.context.configuration.refresh();
      const apply = async (id: string, clockLagMs = 0) => {
        const resolved = await halfAnnounced(writer, resolver, id, clockLagMs);
        expect(resolved.configVersion).toBe(
          applier.service.context.configuration.current().version,
        );
        return () =>
          applier.client.apply(ApplyRequest.fromPartial({ resolveToken: resolved.resolveToken }));
      };
      // Two in quick succession: the second needs a read of its own.
      for (const id of ['first', 'second']) {
        expect((await (await apply(id))()).exposures).toMatchObject({
          loggedCount: 1,
          notRunningCount: 0,
        });
      }
      // A read that fails answers UNAVAILABLE, and the retry reads.
      const third = await apply('third');
      jest
        .spyOn(applier.service.context.store, 'readAll')
        .mockRejectedValueOnce(new UnavailableError('storage is unreachable'));
      expect((await failure(third())).code).toBe(GrpcCode.UNAVAILABLE);
      expect((await third()).exposures).toMatchObject({ loggedCount: 1, notRunningCount: 0 });
      // The resolver's clock 2 s behind: its resolve time before the applier's last read.
      expect((await (await apply('fourth', 2_000))()).exposures).toMatchObject({
        loggedCount: 1,
        notRunningCount: 0,
      });
    } finally {
      await writer.stop();
      await resolver.stop();
      await applier.stop();
    }
  });

  it('does not read everything for each token of a version storage does not hold', async () => {
    // Two deployments with the same token secret: the second's storage is behind the first's (a
    // restore from a backup, say) and has no experiment "ahead".
    const tokenSecret = 'a-secret-both-deployments-share-0123456789';
    const ahead = await startTestAssignment({ tokenSecret, reloadInterval: '1h' });
    const behind = await startTestAssignment({ tokenSecret, reloadInterval: '1h' });
    try {
      await ahead.admin.createExperiment(
        CreateExperimentRequest.fromPartial({
          experiment: experiment('ahead', { surfaces: ['ahead'] }),
        }),
      );
      await ahead.admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'ahead' }));
      const readAll = jest.spyOn(behind.service.context.store, 'readAll');
      for (let i = 0; i < 20; i++) {
        const resolved = await ahead.client.resolve(
          resolveRequest(`u-${i}`, { surfaces: ['ahead'] }),
        );
        const applied = await behind.client.apply(
          ApplyRequest.fromPartial({ resolveToken: resolved.resolveToken }),
        );
        expect(applied.exposures).toMatchObject({ loggedCount: 0, notRunningCount: 1 });
      }
      expect(readAll.mock.calls.length).toBeLessThanOrEqual(2);
    } finally {
      await ahead.stop();
      await behind.stop();
    }
  });
});

describe('an AllocationUpdate event while another replica holds the configuration-write lease', () => {
  it('waits for the lease, as an admin write does, and is applied once it is released', async () => {
    const service = await startTestAssignment({});
    try {
      await service.admin.createExperiment(
        CreateExperimentRequest.fromPartial({
          experiment: experiment('leased-bandit', {
            surfaces: ['leased-bandit'],
            allocationMode: AllocationMode.ALLOCATION_MODE_BANDIT,
            bandit: { minArmShare: 0.1 },
            sticky: true,
          }),
        }),
      );
      // Another replica's write (say, deleting this experiment) is in progress.
      const release = await service.service.context.store.acquireWriteLease('other-replica', {
        ttlMs: 60_000,
        waitMs: 0,
      });
      await service.runtime.bus.publish(
        ALLOCATION_SUBJECT,
        AllocationUpdate,
        AllocationUpdate.fromPartial({
          eventId: 'leased-bandit-7',
          experimentId: 'leased-bandit',
          weights: [
            { variantKey: 'control', weight: 0.7 },
            { variantKey: 'treatment', weight: 0.3 },
          ],
          sequence: 7,
        }),
        { eventId: 'leased-bandit-7' },
      );
      await new Promise((resolve) => setTimeout(resolve, 300));
      const during = await service.client.getAllocation({
        experimentId: 'leased-bandit',
        sequence: 0,
      });
      expect(during.allocation?.sequence).toBe(0);
      await release();
      await eventually(async () => {
        const after = await service.client.getAllocation({
          experimentId: 'leased-bandit',
          sequence: 0,
        });
        expect(after.allocation?.sequence).toBe(7);
      });
    } finally {
      await service.stop();
    }
  });
});

describe('a replica sending messages of 4 KiB at most (TANDEM_GRPC_MAX_MESSAGE_BYTES)', () => {
  it('ends its list pages within that limit, and pages on from there', async () => {
    const service = await startTestAssignment({ maxMessageBytes: 4096 });
    try {
      const ids = ['small-1', 'small-2', 'small-3'];
      for (const id of ids) {
        await service.admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment(id, { description: 'd'.repeat(2_000) }),
          }),
        );
      }
      const listed: string[] = [];
      let pageToken = '';
      do {
        const response = await service.client.listExperiments(
          ListExperimentsRequest.fromPartial({ pageToken }),
        );
        expect(ListExperimentsResponse.encode(response).finish().length).toBeLessThanOrEqual(4096);
        listed.push(...response.experiments.map((e) => e.id));
        pageToken = response.nextPageToken;
      } while (pageToken !== '');
      expect(listed).toEqual(ids);
    } finally {
      await service.stop();
    }
  });
});
