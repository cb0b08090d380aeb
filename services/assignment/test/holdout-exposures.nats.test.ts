/**
 * Holdout exposures on a real NATS JetStream server, end to end through the gRPC service: applying
 * a resolve (Resolve with `apply`, or Apply with its token) publishes one ExposureEvent of kind
 * HOLDOUT per running holdout covering the resolved surfaces, with variant `held_out` (reason
 * HOLDOUT) or `not_held_out` (reason ASSIGNED), so the holdout can be analysed like a two-variant
 * experiment; at most once per (holdout, unit) per UTC day; and a DRAFT holdout holds nobody out
 * and logs nothing (exposure_event.proto, holdout.proto, assignment_service.proto).
 */
import { rmSync } from 'node:fs';
import {
  AssignmentReason,
  type ExposureCounts,
} from '../../../gen/ts/tandem/assignment/v1/assignment';
import {
  ApplyRequest,
  CreateExperimentRequest,
  CreateHoldoutRequest,
  StartExperimentRequest,
  type ResolveResponse,
} from '../../../gen/ts/tandem/assignment/v1/assignment_service';
import { HoldoutStatus } from '../../../gen/ts/tandem/assignment/v1/holdout';
import { ExposureEvent, ExposureKind } from '../../../gen/ts/tandem/events/v1/exposure_event';
import type { DeliveredEvent, EventBus, Subscription } from '../../platform/src/events/bus';
import { connectNatsBus } from '../../platform/src/events/nats-bus';
import { describeWithNats, natsUrl, uniqueName } from '../../platform/test/support/integration';
import { hash } from '../src/domain';
import { exposureEventId, utcDay } from '../src/events/exposure-log';
import { EXPOSURE_SUBJECT } from '../src/events/streams';
import { experiment, holdout, resolveRequest } from './support/fixtures';
import {
  eventually,
  startTestAssignment,
  temporaryDataDir,
  type TestAssignment,
} from './support/harness';

/** The running holdout and the experiment it covers. */
const SURFACE = 'shelf';
const HOLDOUT_ID = 'long-term';
const EXPERIMENT_ID = 'covered';
/** A draft holdout over another surface, and the experiment there. */
const DRAFT_SURFACE = 'drafts';
const DRAFT_HOLDOUT_ID = 'not-yet';
const DRAFT_EXPERIMENT_ID = 'uncovered';

const NOTHING_ELSE = {
  notInExperimentCount: 0,
  droppedCount: 0,
  notRunningCount: 0,
} satisfies Partial<ExposureCounts>;

describeWithNats('Holdout exposures on NATS JetStream', () => {
  const url = natsUrl ?? '';
  // Unit ids unique to this run: the stream and its duplicate window outlive a run on a NATS
  // server that is not started afresh, and event ids derive from the unit id.
  const unitPrefix = uniqueName('holdout-unit');
  const delivered: DeliveredEvent<ExposureEvent>[] = [];
  let dataDir: string;
  let service: TestAssignment;
  let bus: EventBus;
  let subscription: Subscription;
  let unitCount = 0;

  /**
   * A fresh unit of this run that the holdout `holdoutId` (fraction 0.5, the default seed
   * `holdout:<id>`, hash v2) holds out, or does not.
   */
  function unitWhere(holdoutId: string, heldOut: boolean): string {
    for (;;) {
      const unit = `${unitPrefix}-${unitCount++}`;
      if ((hash(`holdout:${holdoutId}`, unit, 2) ?? 1) < 0.5 === heldOut) return unit;
    }
  }

  /** The events delivered so far for `unit`, in stream order. */
  function eventsOf(unit: string): ExposureEvent[] {
    return delivered.filter((d) => d.event.unit?.id === unit).map((d) => d.event);
  }

  /** Waits until everything enqueued is published, then a little longer for stragglers. */
  async function settle(): Promise<void> {
    await eventually(() => {
      expect(service.service.exposureStats().queued).toBe(0);
    });
    await new Promise((resolve) => setTimeout(resolve, 300));
  }

  /** The holdout exposure the contract promises for `unit` from `response`. */
  function holdoutExposure(
    unit: string,
    heldOut: boolean,
    response: ResolveResponse,
    requestId: string,
    eventTime: Date,
  ): ExposureEvent {
    return {
      eventId: exposureEventId(
        ExposureKind.EXPOSURE_KIND_HOLDOUT,
        HOLDOUT_ID,
        'user',
        unit,
        utcDay(eventTime),
      ),
      eventTime,
      kind: ExposureKind.EXPOSURE_KIND_HOLDOUT,
      unit: { id: unit, type: 'user' },
      experimentId: '',
      holdoutId: HOLDOUT_ID,
      variantKey: heldOut ? 'held_out' : 'not_held_out',
      reason: heldOut
        ? AssignmentReason.ASSIGNMENT_REASON_HOLDOUT
        : AssignmentReason.ASSIGNMENT_REASON_ASSIGNED,
      layerId: '',
      surfaces: [SURFACE],
      configEtag: '1',
      configVersion: response.configVersion,
      allocationSequence: 0,
      resolveTime: response.resolveTime,
      resolveId: requestId,
    };
  }

  /** What Resolve returns for `unit` on SURFACE: its membership and the covered assignment. */
  function expectResolved(response: ResolveResponse, heldOut: boolean): void {
    expect(response.holdouts).toEqual([
      { holdoutId: HOLDOUT_ID, heldOut, surfaces: [SURFACE], holdoutEtag: '' },
    ]);
    expect(response.assignments).toHaveLength(1);
    expect(response.assignments[0]).toMatchObject(
      heldOut
        ? {
            experimentId: EXPERIMENT_ID,
            reason: AssignmentReason.ASSIGNMENT_REASON_HOLDOUT,
            holdoutId: HOLDOUT_ID,
            variantKey: 'control',
            inExperiment: false,
          }
        : {
            experimentId: EXPERIMENT_ID,
            reason: AssignmentReason.ASSIGNMENT_REASON_ASSIGNED,
            holdoutId: '',
            inExperiment: true,
          },
    );
  }

  beforeAll(async () => {
    dataDir = temporaryDataDir();
    service = await startTestAssignment({ dataDir, natsUrl: url });
    bus = await connectNatsBus({ servers: url, name: 'holdout-exposure-observer' });
    subscription = await bus.subscribe(
      {
        stream: 'TANDEM_EXPOSURES',
        durable: uniqueName('holdout-exposure-watch'),
        codec: ExposureEvent,
        deliverPolicy: 'new',
      },
      (event) => {
        if (event.event.unit?.id.startsWith(unitPrefix)) delivered.push(event);
        return Promise.resolve();
      },
    );
    const { admin } = service;
    for (const [id, surface] of [
      [EXPERIMENT_ID, SURFACE],
      [DRAFT_EXPERIMENT_ID, DRAFT_SURFACE],
    ] as const) {
      await admin.createExperiment(
        CreateExperimentRequest.fromPartial({
          experiment: experiment(id, { surfaces: [surface] }),
        }),
      );
      await admin.startExperiment(StartExperimentRequest.fromPartial({ id }));
    }
    const running = await admin.createHoldout(
      CreateHoldoutRequest.fromPartial({
        holdout: holdout(HOLDOUT_ID, {
          surfaces: [SURFACE],
          fraction: 0.5,
          status: HoldoutStatus.HOLDOUT_STATUS_RUNNING,
        }),
      }),
    );
    expect(running.holdout).toMatchObject({
      status: HoldoutStatus.HOLDOUT_STATUS_RUNNING,
      seed: `holdout:${HOLDOUT_ID}`,
      etag: '1',
    });
    const draft = await admin.createHoldout(
      CreateHoldoutRequest.fromPartial({
        holdout: holdout(DRAFT_HOLDOUT_ID, { surfaces: [DRAFT_SURFACE], fraction: 0.5 }),
      }),
    );
    expect(draft.holdout?.status).toBe(HoldoutStatus.HOLDOUT_STATUS_DRAFT);
  });

  afterAll(async () => {
    await subscription.stop();
    await service.stop();
    await bus.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('publishes held_out and not_held_out holdout exposures on Resolve with apply', async () => {
    const heldOutUnit = unitWhere(HOLDOUT_ID, true);
    const populationUnit = unitWhere(HOLDOUT_ID, false);

    const heldOut = await service.client.resolve(
      resolveRequest(heldOutUnit, { surfaces: [SURFACE], apply: true, requestId: 'r-held' }),
    );
    expectResolved(heldOut, true);
    // Held out of the experiment, so only the holdout exposure is logged.
    expect(heldOut.exposures).toEqual({ loggedCount: 1, alreadyLoggedCount: 0, ...NOTHING_ELSE });

    const population = await service.client.resolve(
      resolveRequest(populationUnit, { surfaces: [SURFACE], apply: true, requestId: 'r-pop' }),
    );
    expectResolved(population, false);
    // The experiment exposure and the holdout's not_held_out one.
    expect(population.exposures).toEqual({
      loggedCount: 2,
      alreadyLoggedCount: 0,
      ...NOTHING_ELSE,
    });

    await eventually(() => {
      expect(eventsOf(heldOutUnit)).toHaveLength(1);
      expect(eventsOf(populationUnit)).toHaveLength(2);
    });
    await settle();

    const resolvedAt = (response: ResolveResponse): Date => {
      expect(response.resolveTime).toBeInstanceOf(Date);
      return response.resolveTime!;
    };
    expect(eventsOf(heldOutUnit)).toEqual([
      holdoutExposure(heldOutUnit, true, heldOut, 'r-held', resolvedAt(heldOut)),
    ]);
    const populationEvents = eventsOf(populationUnit);
    expect(populationEvents).toHaveLength(2);
    expect(populationEvents.find((e) => e.kind === ExposureKind.EXPOSURE_KIND_HOLDOUT)).toEqual(
      holdoutExposure(populationUnit, false, population, 'r-pop', resolvedAt(population)),
    );
    expect(populationEvents.find((e) => e.kind === ExposureKind.EXPOSURE_KIND_EXPERIMENT)).toEqual(
      expect.objectContaining({
        experimentId: EXPERIMENT_ID,
        holdoutId: '',
        variantKey: population.assignments[0]?.variantKey,
        reason: AssignmentReason.ASSIGNMENT_REASON_ASSIGNED,
        unit: { id: populationUnit, type: 'user' },
        surfaces: [SURFACE],
        configEtag: '2',
        resolveId: 'r-pop',
      }),
    );

    // Each is sent under its event id (`Nats-Msg-Id`) on the exposure subject; the holdout's and
    // the experiment's ids for the same unit differ.
    const mine = delivered.filter((d) =>
      [heldOutUnit, populationUnit].includes(d.event.unit?.id ?? ''),
    );
    for (const d of mine) {
      expect(d.subject).toBe(EXPOSURE_SUBJECT);
      expect(d.eventId).toBe(d.event.eventId);
      expect(d.eventId).toMatch(/^exposure-\d{4}-\d{2}-\d{2}-/);
    }
    expect(new Set(populationEvents.map((e) => e.eventId)).size).toBe(2);
  });

  it('publishes the holdout exposure from Apply with the token, at the exposure time, whatever experiments were shown', async () => {
    const heldOutUnit = unitWhere(HOLDOUT_ID, true);
    const populationUnit = unitWhere(HOLDOUT_ID, false);

    const heldOut = await service.client.resolve(
      resolveRequest(heldOutUnit, { surfaces: [SURFACE], requestId: 'a-held' }),
    );
    const population = await service.client.resolve(
      resolveRequest(populationUnit, { surfaces: [SURFACE], requestId: 'a-pop' }),
    );
    expectResolved(heldOut, true);
    expectResolved(population, false);
    // Computing is not showing: nothing logged yet.
    for (const response of [heldOut, population]) {
      expect(response.exposures).toEqual({
        loggedCount: 0,
        alreadyLoggedCount: 0,
        ...NOTHING_ELSE,
      });
    }
    await settle();
    expect(eventsOf(heldOutUnit)).toEqual([]);
    expect(eventsOf(populationUnit)).toEqual([]);

    const shownAt = (response: ResolveResponse): Date =>
      new Date((response.resolveTime?.getTime() ?? 0) + 250);
    const appliedHeldOut = await service.client.apply(
      ApplyRequest.fromPartial({
        resolveToken: heldOut.resolveToken,
        exposureTime: shownAt(heldOut),
      }),
    );
    expect(appliedHeldOut.exposures).toEqual({
      loggedCount: 1,
      alreadyLoggedCount: 0,
      ...NOTHING_ELSE,
    });
    // Only another experiment was shown: no experiment exposure, but the holdout exposure is
    // logged for every membership of the resolve regardless.
    const appliedPopulation = await service.client.apply(
      ApplyRequest.fromPartial({
        resolveToken: population.resolveToken,
        experimentIds: ['shown-elsewhere'],
        exposureTime: shownAt(population),
      }),
    );
    expect(appliedPopulation.exposures).toEqual({
      loggedCount: 1,
      alreadyLoggedCount: 0,
      notInExperimentCount: 1,
      droppedCount: 0,
      notRunningCount: 0,
    });

    await eventually(() => {
      expect(eventsOf(heldOutUnit)).toHaveLength(1);
      expect(eventsOf(populationUnit)).toHaveLength(1);
    });
    await settle();
    expect(eventsOf(heldOutUnit)).toEqual([
      holdoutExposure(heldOutUnit, true, heldOut, 'a-held', shownAt(heldOut)),
    ]);
    expect(eventsOf(populationUnit)).toEqual([
      holdoutExposure(populationUnit, false, population, 'a-pop', shownAt(population)),
    ]);
  });

  it('publishes a holdout exposure once per unit per day however often it is applied', async () => {
    const heldOutUnit = unitWhere(HOLDOUT_ID, true);
    const populationUnit = unitWhere(HOLDOUT_ID, false);
    // Per unit: how many exposures its first apply logs (holdout only when held out).
    for (const [unit, heldOut, logged] of [
      [heldOutUnit, true, 1],
      [populationUnit, false, 2],
    ] as const) {
      const first = await service.client.resolve(
        resolveRequest(unit, { surfaces: [SURFACE], apply: true, requestId: `${unit}-1` }),
      );
      expectResolved(first, heldOut);
      expect(first.exposures).toEqual({
        loggedCount: logged,
        alreadyLoggedCount: 0,
        ...NOTHING_ELSE,
      });
      const second = await service.client.resolve(
        resolveRequest(unit, { surfaces: [SURFACE], apply: true, requestId: `${unit}-2` }),
      );
      expect(second.exposures).toEqual({
        loggedCount: 0,
        alreadyLoggedCount: logged,
        ...NOTHING_ELSE,
      });
      const third = await service.client.resolve(
        resolveRequest(unit, { surfaces: [SURFACE], requestId: `${unit}-3` }),
      );
      const applied = await service.client.apply(
        ApplyRequest.fromPartial({ resolveToken: third.resolveToken }),
      );
      expect(applied.exposures).toEqual({
        loggedCount: 0,
        alreadyLoggedCount: logged,
        ...NOTHING_ELSE,
      });
    }

    await eventually(() => {
      expect(eventsOf(heldOutUnit)).toHaveLength(1);
      expect(eventsOf(populationUnit)).toHaveLength(2);
    });
    await settle();
    // Still one each, and the one published is the first apply's.
    const heldOutEvents = eventsOf(heldOutUnit);
    expect(heldOutEvents).toHaveLength(1);
    expect(heldOutEvents[0]).toMatchObject({
      kind: ExposureKind.EXPOSURE_KIND_HOLDOUT,
      holdoutId: HOLDOUT_ID,
      variantKey: 'held_out',
      resolveId: `${heldOutUnit}-1`,
    });
    const populationHoldout = eventsOf(populationUnit).filter(
      (e) => e.kind === ExposureKind.EXPOSURE_KIND_HOLDOUT,
    );
    expect(populationHoldout).toHaveLength(1);
    expect(populationHoldout[0]).toMatchObject({
      holdoutId: HOLDOUT_ID,
      variantKey: 'not_held_out',
      resolveId: `${populationUnit}-1`,
    });
  });

  it('holds nobody out and logs no holdout exposure for a DRAFT holdout', async () => {
    // Units the draft holdout would hold out, and one it would not, were it running.
    const wouldBeHeldOut = [unitWhere(DRAFT_HOLDOUT_ID, true), unitWhere(DRAFT_HOLDOUT_ID, true)];
    const wouldNot = unitWhere(DRAFT_HOLDOUT_ID, false);

    const responses = new Map<string, ResolveResponse>();
    for (const unit of [wouldBeHeldOut[0]!, wouldNot]) {
      responses.set(
        unit,
        await service.client.resolve(
          resolveRequest(unit, { surfaces: [DRAFT_SURFACE], apply: true, requestId: unit }),
        ),
      );
    }
    const viaApply = wouldBeHeldOut[1]!;
    const resolved = await service.client.resolve(
      resolveRequest(viaApply, { surfaces: [DRAFT_SURFACE], requestId: viaApply }),
    );
    responses.set(viaApply, resolved);
    const applied = await service.client.apply(
      ApplyRequest.fromPartial({ resolveToken: resolved.resolveToken }),
    );
    expect(applied.exposures).toEqual({ loggedCount: 1, alreadyLoggedCount: 0, ...NOTHING_ELSE });

    for (const [unit, response] of responses) {
      expect(response.holdouts).toEqual([]);
      expect(response.assignments).toHaveLength(1);
      expect(response.assignments[0]).toMatchObject({
        experimentId: DRAFT_EXPERIMENT_ID,
        reason: AssignmentReason.ASSIGNMENT_REASON_ASSIGNED,
        inExperiment: true,
        holdoutId: '',
      });
      if (unit !== viaApply) {
        // The experiment exposure only.
        expect(response.exposures).toEqual({
          loggedCount: 1,
          alreadyLoggedCount: 0,
          ...NOTHING_ELSE,
        });
      }
    }

    await eventually(() => {
      for (const unit of responses.keys()) expect(eventsOf(unit)).toHaveLength(1);
    });
    await settle();
    for (const [unit, response] of responses) {
      expect(eventsOf(unit)).toEqual([
        expect.objectContaining({
          kind: ExposureKind.EXPOSURE_KIND_EXPERIMENT,
          experimentId: DRAFT_EXPERIMENT_ID,
          holdoutId: '',
          variantKey: response.assignments[0]?.variantKey,
          reason: AssignmentReason.ASSIGNMENT_REASON_ASSIGNED,
          unit: { id: unit, type: 'user' },
          surfaces: [DRAFT_SURFACE],
          resolveId: unit,
        }),
      ]);
    }
    expect(delivered.filter((d) => d.event.holdoutId === DRAFT_HOLDOUT_ID)).toEqual([]);
  });
});
