/**
 * The `statuses` filter of ListExperiments and ListHoldouts, sent by any caller (no admin token):
 * a packed enum takes a byte a value, so a request within its limit holds thousands (and held
 * millions within the message limit, before lists had one of their own). Values that are no
 * status are named up to a bound, not one violation each, which took seconds of the event loop
 * and gigabytes of heap for a 16 MiB request.
 */
import { status as GrpcCode } from '@grpc/grpc-js';
import {
  ListExperimentsRequest,
  ListHoldoutsRequest,
} from '../../../gen/ts/tandem/assignment/v1/assignment_service';
import { ExperimentStatus } from '../../../gen/ts/tandem/assignment/v1/experiment';
import { InvalidArgumentError } from '../../platform/src/errors';
import { failure } from '../../platform/test/support/failure';
import { SMALL_REQUEST_MAX_BYTES } from '../src/handlers/limits';
import { MAX_STATUS_VIOLATIONS } from '../src/handlers/requests';
import { startTestAssignment, type TestAssignment } from './support/harness';

/** Nearly as many bytes as a list request may take: values that are no status (9), one a byte. */
const MANY = SMALL_REQUEST_MAX_BYTES - 16;

describe('list status filters with many values', () => {
  let service: TestAssignment;

  beforeAll(async () => {
    service = await startTestAssignment();
  });

  afterAll(async () => {
    await service.stop();
  });

  it.each([
    [
      'ListExperiments',
      (s: TestAssignment) =>
        s.client.listExperiments(
          ListExperimentsRequest.fromPartial({ statuses: new Array<never>(MANY).fill(9 as never) }),
        ),
    ],
    [
      'ListHoldouts',
      (s: TestAssignment) =>
        s.client.listHoldouts(
          ListHoldoutsRequest.fromPartial({ statuses: new Array<never>(MANY).fill(9 as never) }),
        ),
    ],
  ])('%s names only the first values that are no status', async (_name, call) => {
    const error = await failure(call(service));
    expect(error.code).toBe(GrpcCode.INVALID_ARGUMENT);
    const violations = error instanceof InvalidArgumentError ? error.violations : [];
    expect(violations[0]).toMatchObject({ field: 'statuses[0]', reason: 'UNKNOWN_STATUS' });
    // Listed and counted as left out together: what the server built, bounded.
    const omitted = Number(error.metadata.omitted_violations ?? '0');
    expect(violations.length + omitted).toBeLessThanOrEqual(MAX_STATUS_VIOLATIONS);
  });

  it('still takes a filter repeating a status', async () => {
    const page = await service.client.listExperiments(
      ListExperimentsRequest.fromPartial({
        statuses: new Array<ExperimentStatus>(MANY).fill(
          ExperimentStatus.EXPERIMENT_STATUS_RUNNING,
        ),
      }),
    );
    expect(page.experiments).toEqual([]);
  });
});
