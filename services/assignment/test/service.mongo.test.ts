/**
 * The same end-to-end suite against MongoDB, and configuration propagation between two replicas
 * sharing one database: through NATS notifications, and by the periodic reload alone.
 */
import { status as GrpcCode } from '@grpc/grpc-js';
import {
  CreateExperimentRequest,
  CreateLayerRequest,
  GetExperimentRequest,
  StartExperimentRequest,
} from '../../../gen/ts/tandem/assignment/v1/assignment_service';
import { InvalidArgumentError, UnavailableError } from '../../platform/src/errors';
import { createInProcessBus } from '../../platform/src/events/in-process-bus';
import {
  describeWithMongo,
  mongodbUri,
  natsUrl,
  uniqueName,
} from '../../platform/test/support/integration';
import { failure } from '../../platform/test/support/failure';
import { experiment, resolveRequest } from './support/fixtures';
import {
  dropDatabases,
  eventually,
  propagationMs,
  startTestAssignment,
  type TestAssignment,
} from './support/harness';
import { runServiceSuite } from './support/service-suite';

describeWithMongo('Assignment on MongoDB', () => {
  const uri = mongodbUri ?? '';
  const services: string[] = [];
  const database = (): string => {
    const service = uniqueName('assignment');
    services.push(service);
    return service;
  };

  afterAll(async () => {
    await dropDatabases(uri, services);
  });

  const suiteService = database();
  runServiceSuite('MongoDB', () => ({ mongo: { uri, service: suiteService } }));

  (natsUrl ? it : it.skip)(
    'a second replica serves a change within one second through NATS',
    async () => {
      const mongo = { uri, service: database() };
      const first = await startTestAssignment({ mongo, natsUrl, reloadInterval: '1h' });
      const second = await startTestAssignment({ mongo, natsUrl, reloadInterval: '1h' });
      try {
        // With polling effectively off, only the notification can carry the change.
        expect(await propagationMs(first, second, 'via-nats')).toBeLessThan(1000);
      } finally {
        await first.stop();
        await second.stop();
      }
    },
  );

  it('a second replica serves a change within one second by polling when notifications are lost', async () => {
    const mongo = { uri, service: database() };
    // Two separate in-process buses: no notification crosses between the replicas.
    const first = await startTestAssignment({ mongo, sharedBus: createInProcessBus() });
    const second = await startTestAssignment({ mongo, sharedBus: createInProcessBus() });
    try {
      // The 500 ms default interval is the promise (pinned); the bound leaves room for a loaded host.
      expect(second.config.reloadIntervalMs).toBe(500);
      expect(await propagationMs(first, second, 'via-polling')).toBeLessThan(2500);
    } finally {
      await first.stop();
      await second.stop();
    }
  });

  it('publishes an exposure once a day when replicas with no shared event stream both show it', async () => {
    const mongo = { uri, service: database() };
    // Separate in-process buses: no duplicate window is shared, only the ledger in MongoDB.
    const first = await startTestAssignment({ mongo, sharedBus: createInProcessBus() });
    const second = await startTestAssignment({ mongo, sharedBus: createInProcessBus() });
    try {
      await first.admin.createExperiment(
        CreateExperimentRequest.fromPartial({
          experiment: experiment('ledger', { surfaces: ['ledger'] }),
        }),
      );
      await first.admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'ledger' }));
      const show = (replica: TestAssignment, unit: string) =>
        eventually(async () => {
          const response = await replica.client.resolve(
            resolveRequest(unit, { surfaces: ['ledger'], apply: true }),
          );
          expect(response.exposures?.loggedCount).toBe(1);
        });
      for (const unit of ['ledger-1', 'ledger-2', 'ledger-3']) await show(first, unit);
      await eventually(() => {
        expect(first.service.exposureStats()).toMatchObject({ published: 3, queued: 0 });
      });
      // The second replica has not logged these itself, so it counts them logged, and its
      // publisher finds them in the ledger and skips them.
      for (const unit of ['ledger-1', 'ledger-2', 'ledger-3', 'ledger-4']) {
        await show(second, unit);
      }
      await eventually(() => {
        expect(second.service.exposureStats()).toMatchObject({
          published: 1,
          skipped: 3,
          queued: 0,
        });
      });
    } finally {
      await first.stop();
      await second.stop();
    }
  });

  it('lets only one of two overlapping experiments created at once on two replicas into a layer', async () => {
    const mongo = { uri, service: database() };
    // No notifications between them, and no reload in between: only the write lease (and the
    // reload under it) can make the second write see the first.
    const first = await startTestAssignment({
      mongo,
      sharedBus: createInProcessBus(),
      reloadInterval: '1h',
    });
    const layers = ['race-0', 'race-1', 'race-2'];
    for (const id of layers) {
      await first.admin.createLayer(CreateLayerRequest.fromPartial({ layer: { id } }));
    }
    // Started after the layers exist, so both replicas know them.
    const second = await startTestAssignment({
      mongo,
      sharedBus: createInProcessBus(),
      reloadInterval: '1h',
    });
    try {
      const create = (
        replica: TestAssignment,
        layer: string,
        id: string,
        range: [number, number],
      ) =>
        replica.admin
          .createExperiment(
            CreateExperimentRequest.fromPartial({
              experiment: experiment(id, {
                layerId: layer,
                layerRange: { start: range[0], end: range[1] },
              }),
            }),
          )
          .then(
            () => 'created',
            (error: unknown) =>
              error instanceof InvalidArgumentError
                ? error.violations.map((v) => v.field).join()
                : String(error),
          );
      for (const layer of layers) {
        // Without the lease, each replica validated against a layer without the other's.
        const outcomes = await Promise.all([
          create(first, layer, `${layer}-a`, [0, 0.6]),
          create(second, layer, `${layer}-b`, [0.4, 1]),
        ]);
        expect(outcomes.sort()).toEqual(['created', 'experiment.layer_range']);
      }
    } finally {
      await first.stop();
      await second.stop();
    }
  });

  it('announces a change whose version bump failed at the next check, so every replica serves it', async () => {
    const mongo = { uri, service: database() };
    const first = await startTestAssignment({ mongo, sharedBus: createInProcessBus() });
    const second = await startTestAssignment({ mongo, sharedBus: createInProcessBus() });
    try {
      // The document is stored, then the bump that announces it fails.
      jest
        .spyOn(first.service.context.store, 'bumpVersion')
        .mockRejectedValueOnce(new UnavailableError('storage is unreachable'));
      const refused = await failure(
        first.admin.createExperiment(
          CreateExperimentRequest.fromPartial({ experiment: experiment('unannounced') }),
        ),
      );
      expect(refused.code).toBe(GrpcCode.UNAVAILABLE);
      await eventually(async () => {
        for (const replica of [first, second]) {
          const got = await replica.client.getExperiment(
            GetExperimentRequest.fromPartial({ id: 'unannounced' }),
          );
          expect(got.experiment?.id).toBe('unannounced');
        }
      }, 5000);
    } finally {
      await first.stop();
      await second.stop();
    }
  });
});
