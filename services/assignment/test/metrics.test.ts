/**
 * The Assignment service's metrics, read through a real OpenTelemetry metrics SDK registered
 * before it starts (as its start-up registers one when asked): Resolve's call durations and the
 * exposure publisher's counts, the figure an operator watches through a NATS outage.
 */
import {
  CreateExperimentRequest,
  StartExperimentRequest,
} from '../../../gen/ts/tandem/assignment/v1/assignment_service';
import type { Histogram } from '@opentelemetry/sdk-metrics';
import { installTestMetrics, type TestMetrics } from '../../platform/test/support/metrics';
import { experiment, resolveRequest } from './support/fixtures';
import { eventually, startTestAssignment, type TestAssignment } from './support/harness';

describe('the Assignment service metrics', () => {
  let testMetrics: TestMetrics;
  let service: TestAssignment;

  beforeAll(async () => {
    testMetrics = installTestMetrics();
    service = await startTestAssignment();
    await service.admin.createExperiment(
      CreateExperimentRequest.fromPartial({ experiment: experiment('measured') }),
    );
    await service.admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'measured' }));
  });

  afterAll(async () => {
    await service.stop();
    await testMetrics.shutdown();
  });

  it('counts Resolve calls and the exposures published, by publisher', async () => {
    await service.client.resolve({ ...resolveRequest('u-measured'), apply: true });
    const resolves = await testMetrics.points('rpc.server.call.duration');
    expect(
      resolves
        .filter(
          (p) =>
            p.attributes['rpc.method'] === 'Resolve' && p.attributes['rpc.grpc.status_code'] === 0,
        )
        .map((p) => (p.value as Histogram).count),
    ).toEqual([1]);
    await eventually(async () => {
      const published = await testMetrics.points('tandem.events.publisher.published');
      expect(published.map((p) => [p.attributes['tandem.publisher'], p.value])).toContainEqual([
        'exposures',
        1,
      ]);
    });
    const dropped = await testMetrics.points('tandem.events.publisher.dropped');
    expect(dropped.map((p) => p.attributes['tandem.publisher']).sort()).toEqual([
      'config-changes',
      'exposures',
    ]);
  });
});
