/**
 * Admin writes over gRPC, for what the end-to-end suite does not reach: a condition or payload
 * sent with its keys in another order (a Struct is a map, and encoders such as Go's shuffle its
 * entries) is the same value; deleting an experiment that never served leaves its id's sticky
 * assignments to whichever experiment takes the id next.
 */
import { AssignmentReason } from '../../../gen/ts/tandem/assignment/v1/assignment';
import {
  ConcludeExperimentRequest,
  CreateExperimentRequest,
  DeleteExperimentRequest,
  StartExperimentRequest,
  UpdateExperimentRequest,
} from '../../../gen/ts/tandem/assignment/v1/assignment_service';
import { ExperimentStatus } from '../../../gen/ts/tandem/assignment/v1/experiment';
import { experiment, resolveRequest, variant } from './support/fixtures';
import { startTestAssignment, type TestAssignment } from './support/harness';

describe('admin writes', () => {
  let service: TestAssignment;

  beforeAll(async () => {
    service = await startTestAssignment();
  });

  afterAll(async () => {
    await service.stop();
  });

  describe('UpdateExperiment of a condition or payload sent again with its keys in another order', () => {
    const condition = { country: { $in: ['SE', 'NO'] }, 'app.version': { $gte: 12, $lt: 20 } };
    const reordered = { 'app.version': { $lt: 20, $gte: 12 }, country: { $in: ['SE', 'NO'] } };
    const variants = (payload: Record<string, unknown>) => [
      variant('control', 0.5),
      variant('treatment', 0.5, payload),
    ];

    it('changes nothing: same etag, no new configuration version', async () => {
      const { admin, client } = service;
      const created = await admin.createExperiment(
        CreateExperimentRequest.fromPartial({
          experiment: experiment('unordered-draft', {
            surfaces: ['unordered-draft'],
            condition,
            variants: variants({ policy: 'p7', rank: 3 }),
          }),
        }),
      );
      const version = service.service.context.configuration.current().version;
      const updated = await admin.updateExperiment(
        UpdateExperimentRequest.fromPartial({
          experiment: {
            ...experiment('unordered-draft', {
              surfaces: ['unordered-draft'],
              condition: reordered,
              variants: variants({ rank: 3, policy: 'p7' }),
            }),
            etag: created.experiment?.etag ?? '',
          },
          updateMask: ['condition', 'variants'],
        }),
      );
      expect(updated.experiment?.etag).toBe(created.experiment?.etag);
      expect(updated.experiment?.updateTime).toEqual(created.experiment?.updateTime);
      expect(service.service.context.configuration.current().version).toBe(version);
      expect((await client.getExperiment({ id: 'unordered-draft' })).experiment).toEqual(
        created.experiment,
      );
    });

    it('is taken by a concluded experiment, with the description it changes', async () => {
      const { admin } = service;
      await admin.createExperiment(
        CreateExperimentRequest.fromPartial({
          experiment: experiment('unordered-concluded', {
            surfaces: ['unordered-concluded'],
            condition,
            variants: variants({ policy: 'p7', rank: 3 }),
          }),
        }),
      );
      await admin.startExperiment(
        StartExperimentRequest.fromPartial({ id: 'unordered-concluded' }),
      );
      const concluded = await admin.concludeExperiment(
        ConcludeExperimentRequest.fromPartial({ id: 'unordered-concluded' }),
      );
      // Read, changed and written back whole, as a client in another language sends it.
      const updated = await admin.updateExperiment(
        UpdateExperimentRequest.fromPartial({
          experiment: {
            ...concluded.experiment,
            description: 'shipped nothing',
            condition: reordered,
            variants: variants({ rank: 3, policy: 'p7' }),
          },
          updateMask: ['*'],
        }),
      );
      expect(updated.experiment).toMatchObject({
        status: ExperimentStatus.EXPERIMENT_STATUS_CONCLUDED,
        description: 'shipped nothing',
        condition,
      });
    });
  });
  describe('DeleteExperiment of an experiment that never served', () => {
    it('frees no sticky assignment of the experiment created again under its id', async () => {
      const { admin, client } = service;
      const sticky = service.service.context.sticky;
      // Freeing runs after the delete has answered; here it is held until the id is in use again.
      const forget = sticky.forget.bind(sticky);
      let resume = (): void => undefined;
      const resumed = new Promise<void>((resolve) => {
        resume = resolve;
      });
      const freeing: Promise<number>[] = [];
      const spy = jest.spyOn(sticky, 'forget').mockImplementation((id) => {
        const freed = resumed.then(() => forget(id));
        freeing.push(freed);
        return freed;
      });
      try {
        const draft = await admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment('reborn', { surfaces: ['reborn'], sticky: true }),
          }),
        );
        await admin.deleteExperiment(
          DeleteExperimentRequest.fromPartial({ id: 'reborn', etag: draft.experiment?.etag }),
        );
        // Never started: its id is free, and taken again at once.
        await admin.createExperiment(
          CreateExperimentRequest.fromPartial({
            experiment: experiment('reborn', { surfaces: ['reborn'], sticky: true }),
          }),
        );
        await admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'reborn' }));
        const first = await client.resolve(
          resolveRequest('reborn-unit', { surfaces: ['reborn'], apply: true }),
        );
        expect(first.assignments[0]?.reason).toBe(AssignmentReason.ASSIGNMENT_REASON_ASSIGNED);
        resume();
        await Promise.all(freeing);
        const again = await client.resolve(resolveRequest('reborn-unit', { surfaces: ['reborn'] }));
        expect(again.assignments[0]).toMatchObject({
          reason: AssignmentReason.ASSIGNMENT_REASON_STICKY,
          variantKey: first.assignments[0]?.variantKey,
        });
      } finally {
        resume();
        spy.mockRestore();
      }
    });
  });
});
