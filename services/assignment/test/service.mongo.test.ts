/**
 * The same end-to-end suite against MongoDB, and configuration propagation between two replicas
 * sharing one database: through NATS notifications, and by the periodic reload alone.
 */
import { status as GrpcCode } from '@grpc/grpc-js';
import {
  CreateExperimentRequest,
  GetExperimentRequest,
  StartExperimentRequest,
} from '../../../gen/ts/tandem/assignment/v1/assignment_service';
import { UnavailableError } from '../../platform/src/errors';
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

  /** Creates and starts an experiment on `writer`; resolves when `reader` serves it. */
  async function propagationMs(
    writer: TestAssignment,
    reader: TestAssignment,
    id: string,
  ): Promise<number> {
    await writer.admin.createExperiment(
      CreateExperimentRequest.fromPartial({ experiment: experiment(id, { surfaces: [id] }) }),
    );
    await writer.admin.startExperiment(StartExperimentRequest.fromPartial({ id }));
    const started = Date.now();
    await eventually(async () => {
      const response = await reader.client.resolve(
        resolveRequest('replica-unit', { surfaces: [id] }),
      );
      expect(response.assignments.map((a) => a.experimentId)).toEqual([id]);
    }, 5000);
    return Date.now() - started;
  }

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
      expect(await propagationMs(first, second, 'via-polling')).toBeLessThan(1000);
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
