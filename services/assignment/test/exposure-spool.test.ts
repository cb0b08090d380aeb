/**
 * Exposures kept in storage by a replica that stopped while NATS was unreachable, and queued again
 * by the next one, on the embedded store and the in-process bus behind a switch that plays the
 * outage (while it is off, every publish fails with `UnavailableError`, as the NATS adapter's do).
 */
import { rmSync } from 'node:fs';
import {
  CreateExperimentRequest,
  StartExperimentRequest,
} from '../../../gen/ts/tandem/assignment/v1/assignment_service';
import { ExposureEvent } from '../../../gen/ts/tandem/events/v1/exposure_event';
import { createInProcessBus } from '../../platform/src/events/in-process-bus';
import { SwitchableBus } from '../../platform/test/support/switchable-bus';
import { experiment, resolveRequest } from './support/fixtures';
import { eventually, startTestAssignment, temporaryDataDir } from './support/harness';

describe('exposures kept at shutdown', () => {
  it('are published by the next replica whatever its buffer size, even the smallest allowed (1)', async () => {
    const dataDir = temporaryDataDir();
    const bus = new SwitchableBus(createInProcessBus());
    const first = await startTestAssignment({ dataDir, sharedBus: bus, exposureBuffer: 1 });
    let next: Awaited<ReturnType<typeof startTestAssignment>> | undefined;
    const seen: string[] = [];
    try {
      await first.admin.createExperiment(
        CreateExperimentRequest.fromPartial({
          experiment: experiment('kept', { surfaces: ['kept'] }),
        }),
      );
      await first.admin.startExperiment(StartExperimentRequest.fromPartial({ id: 'kept' }));
      const watch = await bus.subscribe(
        { stream: 'TANDEM_EXPOSURES', durable: 'kept-watch', codec: ExposureEvent },
        ({ event }) => {
          seen.push(event.unit?.id ?? '');
          return Promise.resolve();
        },
      );
      try {
        bus.available = false;
        const shown = await first.client.resolve(
          resolveRequest('kept-1', { surfaces: ['kept'], apply: true }),
        );
        expect(shown.exposures).toMatchObject({ loggedCount: 1, droppedCount: 0 });
        await first.stop();
        expect(first.service.exposureStats()).toMatchObject({ spooled: 1, dropped: 0 });

        // NATS is back; the next replica takes what the first one kept, at its start.
        bus.available = true;
        next = await startTestAssignment({ dataDir, sharedBus: bus, exposureBuffer: 1 });
        const started = next;
        await eventually(() => {
          expect(started.service.exposureStats().restored).toBe(1);
        }, 3_000);
        await eventually(() => {
          expect(seen).toEqual(['kept-1']);
        }, 3_000);
      } finally {
        await watch.stop();
      }
    } finally {
      // Idempotent: a failure before the first replica's stop still stops it.
      await first.stop();
      await next?.stop();
      await bus.close();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
