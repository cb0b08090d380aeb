/**
 * A bandit as run in production: its split moves only as a new allocation sequence (so exposures'
 * `allocation_sequence` and GetAllocation name one split each), and a sticky lookup that storage
 * does not answer in time costs only the sticky experiments, not the whole Resolve.
 */
import { status as GrpcCode } from '@grpc/grpc-js';
import {
  CreateExperimentRequest,
  StartExperimentRequest,
  UpdateAllocationRequest,
  UpdateExperimentRequest,
} from '../../../gen/ts/tandem/assignment/v1/assignment_service';
import { AssignmentReason } from '../../../gen/ts/tandem/assignment/v1/assignment';
import { AllocationMode } from '../../../gen/ts/tandem/assignment/v1/experiment';
import { failure } from '../../platform/test/support/failure';
import { experiment, resolveRequest } from './support/fixtures';
import { startTestAssignment, type TestAssignment } from './support/harness';

let service: TestAssignment;
beforeAll(async () => {
  service = await startTestAssignment();
});
afterAll(() => service.stop());

it("refuses to change a running bandit's minimum arm share, which would move its split under the same sequence and etag", async () => {
  const { admin, client } = service;
  await admin.createExperiment(
    CreateExperimentRequest.fromPartial({
      experiment: experiment('floored', {
        surfaces: ['floored'],
        allocationMode: AllocationMode.ALLOCATION_MODE_BANDIT,
        bandit: { minArmShare: 0.05 },
        sticky: true,
      }),
    }),
  );
  await admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'floored' }));
  await admin.updateAllocation(
    UpdateAllocationRequest.fromPartial({
      allocation: {
        experimentId: 'floored',
        weights: [
          { variantKey: 'control', weight: 1 },
          { variantKey: 'treatment', weight: 0 },
        ],
        sequence: 100,
      },
    }),
  );
  const before = (await client.getAllocation({ experimentId: 'floored', sequence: 0 })).allocation;
  const { experiment: current } = await admin.getExperiment({ id: 'floored' });
  const refused = await failure(
    admin.updateExperiment(
      UpdateExperimentRequest.fromPartial({
        experiment: { id: 'floored', etag: current?.etag ?? '', bandit: { minArmShare: 0.5 } },
        updateMask: ['bandit'],
      }),
    ),
  );
  expect(refused.code).toBe(GrpcCode.FAILED_PRECONDITION);
  const after = (await client.getAllocation({ experimentId: 'floored', sequence: 0 })).allocation;
  // The split a sequence and an etag name stays the split they named.
  expect(after).toEqual(before);
});

/**
 * Resolves a unit on a surface with a sticky and a plain experiment while the sticky read stalls
 * (MongoDB without a primary, an election or a lost node, answers reads only after its server
 * selection timeout, 10 s by default), with a caller's deadline of `deadlineMs`.
 */
async function resolveWhileStickyReadStalls(on: TestAssignment, deadlineMs: number) {
  const { admin, client } = on;
  for (const [id, sticky] of [
    ['stalled-sticky', true],
    ['stalled-plain', false],
  ] as const) {
    await admin.createExperiment(
      CreateExperimentRequest.fromPartial({
        experiment: experiment(id, { surfaces: ['stalled'], sticky }),
      }),
    );
    await admin.startExperiment(StartExperimentRequest.fromPartial({ id }));
  }
  const read = jest.spyOn(on.service.context.sticky['collection'], 'getMany').mockImplementation(
    () =>
      new Promise((resolve) => {
        setTimeout(() => {
          resolve(new Map());
        }, 10_000).unref();
      }),
  );
  try {
    const resolved = await client.resolve(resolveRequest('stalled-1', { surfaces: ['stalled'] }), {
      timeoutMs: deadlineMs,
    });
    return resolved.assignments.map((a) => [a.experimentId, a.reason]);
  } finally {
    read.mockRestore();
  }
}

const SERVED_WHILE_STALLED = [
  ['stalled-plain', AssignmentReason.ASSIGNMENT_REASON_ASSIGNED],
  ['stalled-sticky', AssignmentReason.ASSIGNMENT_REASON_STICKY_UNAVAILABLE],
];

it('serves the rest of a Resolve, and STICKY_UNAVAILABLE for the sticky experiments, when the sticky read stalls', async () => {
  expect(await resolveWhileStickyReadStalls(service, 2_000)).toEqual(SERVED_WHILE_STALLED);
});

it('waits for a stalled sticky read as long as TANDEM_ASSIGNMENT_STICKY_LOOKUP_TIMEOUT says', async () => {
  // A caller whose deadline is shorter than the default bound (500 ms) is served all the same.
  const impatient = await startTestAssignment({ stickyLookupTimeout: '50ms' });
  try {
    expect(await resolveWhileStickyReadStalls(impatient, 300)).toEqual(SERVED_WHILE_STALLED);
  } finally {
    await impatient.stop();
  }
});
