/**
 * Apply with a token whose resolve time lies ahead (a replica whose clock runs ahead signed it):
 * an exposure is never dated before its resolve, but not past the minute of skew a caller's own
 * exposure time is allowed either.
 */
import { ExposureEvent } from '../../../gen/ts/tandem/events/v1/exposure_event';
import {
  ApplyRequest,
  CreateExperimentRequest,
  StartExperimentRequest,
} from '../../../gen/ts/tandem/assignment/v1/assignment_service';
import type { Subscription } from '../../platform/src/events/bus';
import { createInProcessBus } from '../../platform/src/events/in-process-bus';
import { experiment, resolveRequest } from './support/fixtures';
import { eventually, startTestAssignment, type TestAssignment } from './support/harness';

describe('Apply with a token resolved by a clock running ahead', () => {
  const bus = createInProcessBus();
  const exposures: ExposureEvent[] = [];
  let service: TestAssignment;
  let subscription: Subscription;

  beforeAll(async () => {
    service = await startTestAssignment({ sharedBus: bus });
    subscription = await bus.subscribe(
      { stream: 'TANDEM_EXPOSURES', durable: 'watch', codec: ExposureEvent },
      ({ event }) => {
        exposures.push(event);
        return Promise.resolve();
      },
    );
    await service.admin.createExperiment(
      CreateExperimentRequest.fromPartial({ experiment: experiment('ahead') }),
    );
    await service.admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'ahead' }));
  });

  afterAll(async () => {
    await subscription.stop();
    await service.stop();
  });

  it('dates the exposure at most a minute ahead of this replica, not at the resolve time', async () => {
    const resolved = await service.client.resolve(resolveRequest('u-ahead'));
    const { tokens } = service.service.context;
    const record = tokens.verify(resolved.resolveToken, Date.now());
    // Signed as a replica three days ahead would have.
    const threeDays = 3 * 86_400_000;
    const ahead = tokens.sign({ ...record, resolveTime: record.resolveTime + threeDays });
    const before = Date.now();
    const applied = await service.client.apply(ApplyRequest.fromPartial({ resolveToken: ahead }));
    expect(applied.exposures?.loggedCount).toBe(1);
    await eventually(() => {
      expect(exposures.map((e) => e.unit?.id)).toEqual(['u-ahead']);
    });
    const eventTime = exposures[0]?.eventTime?.getTime() ?? 0;
    expect(eventTime).toBeGreaterThanOrEqual(before);
    expect(eventTime).toBeLessThanOrEqual(Date.now() + 60_000);
  });
});
