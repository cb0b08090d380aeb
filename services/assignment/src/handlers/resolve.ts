/**
 * Resolve and Apply: the data plane. Resolve computes a unit's assignments from the in-memory
 * snapshot (no storage read except sticky lookups for sticky experiments) and returns a signed
 * resolve token; exposures are logged only when the experience is shown, by `apply` or a later
 * Apply with the token. The first exposure to a sticky experiment stores the unit's variant.
 */
import { createHash, randomUUID } from 'node:crypto';
import { Struct } from '../../../../gen/ts/google/protobuf/struct';
import type {
  AssignmentServiceService,
  ResolveResponse,
} from '../../../../gen/ts/tandem/assignment/v1/assignment_service';
import {
  AssignmentReason as ReasonMessage,
  AssignmentView,
  type ExposureCounts,
  type HoldoutMembership,
} from '../../../../gen/ts/tandem/assignment/v1/assignment';
import { ExposureKind } from '../../../../gen/ts/tandem/events/v1/exposure_event';
import { CallsInFlight } from '../../../platform/src/calls-in-flight';
import {
  AbortedError,
  InvalidArgumentError,
  UnavailableError,
  type FieldViolation,
} from '../../../platform/src/errors';
import type { Handlers } from '../../../platform/src/grpc/handlers';
import {
  AssignmentReason,
  ExperimentStatus,
  HoldoutStatus,
  SURFACE_PATTERN,
  type AssignmentSnapshot,
  type Attributes,
  type ResolvedAssignment,
  type StickyAssignment,
  type UnitContext,
} from '../domain';
import type { AssignmentContext } from '../assignment-context';
import type { ConfigurationView } from '../live-configuration';
import type { ExposureTally } from '../events/exposure-log';
import type { ResolveRecord, TokenAssignment } from '../resolve-token';
import type { ExperimentDocument } from '../store/documents';
import { asEnum, timestampViolation } from './messages';
import { RenderedResults, type RenderedAssignments } from './rendered-results';
import { withEncodedAssignments } from './resolve-response';
import { invalidRequest, rejectIfAny } from './requests';
import { MAX_REQUEST_ID_LENGTH } from '../store/request-results';
import { MAX_UNIT_ID_BYTES, MAX_UNIT_TYPE_BYTES, tooLong } from './limits';
import { rateLimitedWarning } from '../../../platform/src/logging';
import { STICKY_WRITE_FAILURE, stickyFailedWriteCounter } from '../assignment-metrics';

type ResolveHandlers = Pick<Handlers<typeof AssignmentServiceService>, 'resolve' | 'apply'>;

const MAX_ATTRIBUTE_BYTES = 64 * 1024;
const MAX_ATTRIBUTE_DEPTH = 16;
/** Surfaces one Resolve may name: a page shows a handful; thousands would only cost the replica. */
const MAX_RESOLVE_SURFACES = 256;
/** How far in the future an exposure time may be (client clocks drift). */
const MAX_EXPOSURE_CLOCK_SKEW_MS = 60_000;
/** Apply results remembered per replica for request_id retries. */
const APPLY_RESULTS_CAPACITY = 10_000;

const { ASSIGNED, STICKY } = AssignmentReason;

/** A request id (of Resolve or Apply) longer than {@link MAX_REQUEST_ID_LENGTH} characters. */
function checkRequestId(requestId: string, violations: FieldViolation[]): void {
  if (requestId.length > MAX_REQUEST_ID_LENGTH) {
    violations.push({
      field: 'request_id',
      description: `at most ${MAX_REQUEST_ID_LENGTH} characters`,
      reason: 'TOO_LONG',
    });
  }
}

/**
 * Walks the attributes: depth, values that are not JSON (NaN, ±Infinity) and a size estimate;
 * the exact encoded size is computed only when the estimate comes near the limit.
 */
function checkAttributes(attributes: Attributes, violations: FieldViolation[]): void {
  let approximateBytes = 0;
  const found = { tooDeep: false };
  const walk = (value: unknown, path: string, depth: number): void => {
    if (depth > MAX_ATTRIBUTE_DEPTH) {
      found.tooDeep = true;
      return;
    }
    if (typeof value === 'string') approximateBytes += value.length + 2;
    else if (typeof value === 'number') {
      approximateBytes += 9;
      if (!Number.isFinite(value)) {
        violations.push({
          field: path,
          description: 'must be a finite number',
          reason: 'INVALID_ATTRIBUTE',
        });
      }
    } else if (Array.isArray(value)) {
      // A list and each of its entries cost bytes of their own, empty or not.
      approximateBytes += 4 + 2 * value.length;
      value.forEach((item, i) => {
        walk(item, `${path}[${i}]`, depth + 1);
      });
    } else if (value !== null && typeof value === 'object') {
      const object = value as Record<string, unknown>;
      approximateBytes += 4;
      for (const key of Object.keys(object)) {
        approximateBytes += key.length + 4;
        walk(object[key], `${path}.${key}`, depth + 1);
      }
    } else approximateBytes += 2;
  };
  walk(attributes, 'attributes', 0);
  if (found.tooDeep) {
    violations.push({
      field: 'attributes',
      description: `nested deeper than ${MAX_ATTRIBUTE_DEPTH} levels`,
      reason: 'TOO_DEEP',
    });
  } else if (
    approximateBytes * 3 > MAX_ATTRIBUTE_BYTES &&
    Struct.encode(Struct.wrap(attributes)).finish().length > MAX_ATTRIBUTE_BYTES
  ) {
    violations.push({
      field: 'attributes',
      description: `larger than ${MAX_ATTRIBUTE_BYTES} bytes encoded`,
      reason: 'TOO_LARGE',
    });
  }
}

function byExperimentId(a: ResolvedAssignment, b: ResolvedAssignment): number {
  const x = a.experiment.id;
  const y = b.experiment.id;
  return x < y ? -1 : x > y ? 1 : 0;
}

const NO_EXPOSURES: ExposureCounts = {
  loggedCount: 0,
  alreadyLoggedCount: 0,
  notInExperimentCount: 0,
  droppedCount: 0,
  notRunningCount: 0,
};

/**
 * Whether `experiment` had stopped serving by `time` (by StopExperiment, its schedule or
 * conclusion), or is a DRAFT that never served: an exposure shown after that is not logged.
 */
function stoppedBy(experiment: ExperimentDocument, time: number): boolean {
  return (
    experiment.status === ExperimentStatus.DRAFT ||
    (experiment.stopTime !== null && experiment.stopTime <= time) ||
    (experiment.scheduledEndTime !== null && experiment.scheduledEndTime <= time)
  );
}

/** What logging a resolve's exposures did. */
interface LoggedExposures {
  readonly counts: ExposureCounts;
  /**
   * The sticky experiments whose stored variant is not the resolve's (another resolve's was
   * stored first), with that variant: what their exposures named.
   */
  readonly restuck: ReadonlyMap<string, StickyAssignment>;
  /**
   * With `withholdUnstored`: the sticky experiments whose variant could not be stored, nothing
   * logged for them; empty otherwise (a failed store fails the call).
   */
  readonly unstored: ReadonlySet<string>;
  /** Why the first of them could not be stored. */
  readonly storeError?: unknown;
}

/**
 * Logs the exposures of a resolve that was shown: the listed in-experiment assignments (all when
 * `experimentIds` is empty) and every holdout membership; stores first sticky assignments. When a
 * sticky variant cannot be stored the call fails with nothing logged, unless `withholdUnstored`
 * is given: then only that experiment's exposure is left out, it is listed in `unstored`, and
 * `withholdUnstored` is told why (storage failed, or the write kept conflicting).
 */
async function logExposures(
  context: AssignmentContext,
  record: ResolveRecord,
  experimentIds: readonly string[],
  exposureTime: Date,
  withholdUnstored?: (error: UnavailableError | AbortedError) => void,
): Promise<LoggedExposures> {
  const tally: ExposureTally = { logged: 0, alreadyLogged: 0, dropped: 0 };
  let notInExperiment = 0;
  let notRunning = 0;
  let shown: readonly TokenAssignment[] = record.assignments;
  if (experimentIds.length > 0) {
    const byId = new Map(record.assignments.map((a) => [a.experimentId, a]));
    const selected: TokenAssignment[] = [];
    for (const id of new Set(experimentIds)) {
      const assignment = byId.get(id);
      if (assignment) selected.push(assignment);
      else notInExperiment++;
    }
    shown = selected;
  }
  const unit = { id: record.unitId, type: record.unitType };
  const resolveTime = new Date(record.resolveTime);
  // A token from a replica that has seen a newer configuration (an experiment just started)
  // is judged against that configuration or a later one, not against an older one that may not
  // hold its experiments yet.
  await context.configuration.catchUp(record.configVersion);
  let view = context.configuration.current();
  // An experiment the token has the unit in, or a holdout it has the unit's membership of, not
  // started here though this view is as new as the token's: the resolving replica read the start
  // before its version was bumped, or made it with a bump that failed (see `readAgain` and
  // `LiveConfiguration.commit`). Read again before judging, rather than find it not running.
  const behind = (assignment: TokenAssignment): boolean => {
    const status = view.experiments.get(assignment.experimentId)?.doc.status;
    return status === undefined || status === ExperimentStatus.DRAFT;
  };
  const holdoutBehind = (holdout: { readonly holdoutId: string }): boolean => {
    const status = view.holdouts.get(holdout.holdoutId)?.doc.status;
    return status === undefined || status === HoldoutStatus.DRAFT;
  };
  if (
    record.configVersion === view.version &&
    (shown.some(behind) || record.holdouts.some(holdoutBehind))
  ) {
    await context.configuration.readAgain();
    view = context.configuration.current();
  }
  const shownAt = exposureTime.getTime();
  const running: TokenAssignment[] = [];
  const stickyWrites: Promise<void>[] = [];
  const restuck = new Map<string, StickyAssignment>();
  /** The STICKY assignments of sticky experiments shown, to check their variant is still held. */
  const resolvedSticky: { index: number; assignment: TokenAssignment; ttlMs: number }[] = [];
  // Storage's clock, not the client's exposure time: the TTL runs from the storing, and whether
  // a stored variant is still live is judged now.
  const storedNow = Date.now();
  /** Names in the exposure of running[index] the variant `kept` when it is not the shown one. */
  const settle = (index: number, assignment: TokenAssignment, kept: StickyAssignment): void => {
    // Another resolve's variant was stored first (weights moved between the two): the unit is
    // served that one from now on, so that is the variant its exposure names.
    if (
      kept.variantKey !== assignment.variantKey ||
      kept.allocationSequence !== assignment.allocationSequence
    ) {
      running[index] = { ...assignment, ...kept, reason: STICKY };
      restuck.set(assignment.experimentId, kept);
    }
  };
  const unstored = new Set<string>();
  let storeError: unknown;
  /** Stores the variant of running[index] and settles its exposure on the variant in force. */
  const storeSticky = async (
    index: number,
    assignment: TokenAssignment,
    ttlMs: number,
  ): Promise<void> => {
    let kept: StickyAssignment;
    try {
      kept = await context.sticky.store(
        assignment.experimentId,
        unit.type,
        unit.id,
        { variantKey: assignment.variantKey, allocationSequence: assignment.allocationSequence },
        ttlMs,
        storedNow,
      );
    } catch (error) {
      // Storage failing or the write conflicting; anything else is a defect, not to be hidden.
      const storageFailed = error instanceof UnavailableError || error instanceof AbortedError;
      if (!withholdUnstored || !storageFailed) throw error;
      if (unstored.size === 0) storeError = error;
      unstored.add(assignment.experimentId);
      withholdUnstored(error);
      return;
    }
    settle(index, assignment, kept);
  };
  for (const assignment of shown) {
    const experiment = view.experiments.get(assignment.experimentId)?.doc;
    if (experiment === undefined || stoppedBy(experiment, shownAt)) {
      notRunning++;
      continue;
    }
    const index = running.push(assignment) - 1;
    if (!experiment.sticky) continue;
    const ttlMs = experiment.stickyTtlMs ?? context.defaultStickyTtlMs;
    if (assignment.reason === ASSIGNED) {
      stickyWrites.push(storeSticky(index, assignment, ttlMs));
    } else if (assignment.reason === STICKY) {
      resolvedSticky.push({ index, assignment, ttlMs });
    }
  }
  if (resolvedSticky.length > 0) {
    // A STICKY assignment names the variant stored when it was resolved, which may have expired
    // since (its TTL ran out before the token, valid a day, was applied): showing it then is the
    // first exposure of a new sticky period, which stores it as an ASSIGNED one would, or the
    // unit would be served another variant next time. One read for them all, from the cache
    // mostly. When storage cannot be read, nothing is stored and the exposure names what was
    // resolved: a failed read must not fail the Apply of a variant the unit held.
    stickyWrites.push(
      (async () => {
        const held = await context.sticky.lookup(
          unit.type,
          unit.id,
          resolvedSticky.map(({ assignment }) => assignment.experimentId),
          storedNow,
          // A Resolve(apply=true) (the one caller that withholds) looked these up a moment ago,
          // and counted that.
          { bounded: false, counted: withholdUnstored === undefined },
        );
        const unreadable = new Set(held.unavailable);
        await Promise.all(
          resolvedSticky.map(async ({ index, assignment, ttlMs }) => {
            if (unreadable.has(assignment.experimentId)) return;
            const kept = held.found.get(assignment.experimentId);
            if (kept === undefined) await storeSticky(index, assignment, ttlMs);
            else settle(index, assignment, kept);
          }),
        );
      })(),
    );
  }
  // Sticky variants are stored before anything is logged: when storing fails, the call fails
  // with nothing logged, and its retry logs the exposures instead of finding them logged (or,
  // with `withholdUnstored`, that experiment's exposure alone is left out).
  await Promise.all(stickyWrites);
  for (const assignment of running) {
    if (unstored.has(assignment.experimentId)) continue;
    context.exposures.log(
      {
        eventTime: exposureTime,
        kind: ExposureKind.EXPOSURE_KIND_EXPERIMENT,
        unit,
        experimentId: assignment.experimentId,
        holdoutId: '',
        variantKey: assignment.variantKey,
        reason: asEnum<ReasonMessage>(assignment.reason),
        layerId: assignment.layerId,
        surfaces: [...assignment.surfaces],
        configEtag: assignment.etag,
        configVersion: record.configVersion,
        allocationSequence: assignment.allocationSequence,
        resolveTime,
        resolveId: record.resolveId,
      },
      tally,
    );
  }
  for (const holdout of record.holdouts) {
    const stored = view.holdouts.get(holdout.holdoutId)?.doc;
    if (stored === undefined || (stored.stopTime !== null && stored.stopTime <= shownAt)) {
      notRunning++;
      continue;
    }
    context.exposures.log(
      {
        eventTime: exposureTime,
        kind: ExposureKind.EXPOSURE_KIND_HOLDOUT,
        unit,
        experimentId: '',
        holdoutId: holdout.holdoutId,
        variantKey: holdout.heldOut ? 'held_out' : 'not_held_out',
        reason: holdout.heldOut
          ? ReasonMessage.ASSIGNMENT_REASON_HOLDOUT
          : ReasonMessage.ASSIGNMENT_REASON_ASSIGNED,
        layerId: '',
        surfaces: [...holdout.surfaces],
        configEtag: holdout.etag,
        configVersion: record.configVersion,
        allocationSequence: 0,
        resolveTime,
        resolveId: record.resolveId,
      },
      tally,
    );
  }
  return {
    counts: {
      loggedCount: tally.logged,
      alreadyLoggedCount: tally.alreadyLogged,
      notInExperimentCount: notInExperiment,
      droppedCount: tally.dropped,
      notRunningCount: notRunning,
    },
    restuck,
    unstored,
    storeError,
  };
}

/** A unit's resolution as a response holds it and a token records it. */
interface ResolvedUnit {
  readonly rendered: RenderedAssignments;
  readonly holdouts: HoldoutMembership[];
  readonly record: ResolveRecord;
}

/** Resolves `unit` against `view` and renders the result (see {@link RenderedResults}). */
function resolveUnit(
  view: ConfigurationView,
  table: RenderedResults,
  unit: UnitContext,
  request: { readonly explain: boolean; readonly view: AssignmentView },
  resolveId: string,
): ResolvedUnit {
  const full = request.view === AssignmentView.ASSIGNMENT_VIEW_FULL;
  // Without `explain`, only what decides what is served: the snapshot's index skips the
  // experiments whose layer range the unit is not in instead of evaluating each.
  const resolution = request.explain
    ? view.snapshot.resolve(unit)
    : view.snapshot.resolveServed(unit);
  const rendered = table.render(
    unit.surfaces.length > 1
      ? [...resolution.assignments].sort(byExperimentId)
      : resolution.assignments,
    full,
  );
  const holdouts: HoldoutMembership[] = resolution.holdouts.map((m) => ({
    holdoutId: m.holdout.id,
    heldOut: m.heldOut,
    surfaces: m.surfaces as string[],
    holdoutEtag: full ? m.holdout.etag : '',
  }));
  const record: ResolveRecord = {
    unitId: unit.id,
    unitType: unit.type,
    resolveId,
    resolveTime: unit.now,
    configVersion: view.version,
    assignments: rendered.inExperiment,
    // A unit forced into a variant of an experiment a holdout covers is no member to analyse:
    // applying logs no exposure of that holdout, as it logs none of the experiment.
    holdouts: resolution.holdouts
      .filter((m) => !m.overridden)
      .map((m) => ({
        holdoutId: m.holdout.id,
        heldOut: m.heldOut,
        surfaces: m.surfaces,
        etag: m.holdout.etag,
      })),
  };
  return { rendered, holdouts, record };
}

const KNOWN_VIEWS: ReadonlySet<AssignmentView> = new Set([
  AssignmentView.ASSIGNMENT_VIEW_UNSPECIFIED,
  AssignmentView.ASSIGNMENT_VIEW_BASIC,
  AssignmentView.ASSIGNMENT_VIEW_FULL,
]);

/** How often a failing sticky lookup is logged at most. */
const STICKY_WARNING_INTERVAL_MS = 10_000;

export function resolveHandlers(context: AssignmentContext): ResolveHandlers {
  const applyResults = new Map<string, ExposureCounts>();
  /** The Apply calls with a request_id still logging, by the same key as `applyResults`. */
  const applying = new CallsInFlight();
  // The rendered results of the snapshot in use; a new configuration version starts a new table.
  let renderedSnapshot: AssignmentSnapshot | undefined;
  let renderedTable: RenderedResults | undefined;
  const renderedResults = (snapshot: AssignmentSnapshot): RenderedResults => {
    if (snapshot !== renderedSnapshot || renderedTable === undefined) {
      renderedTable = new RenderedResults(snapshot);
      renderedSnapshot = snapshot;
    }
    return renderedTable;
  };

  // A failing sticky lookup or store is logged at most once per interval, with the count since
  // the last.
  const rateLimited = (message: string) =>
    rateLimitedWarning(context.logger, message, STICKY_WARNING_INTERVAL_MS);
  const stickyLookupFailed = rateLimited(
    'sticky assignments could not be read; sticky experiments serve STICKY_UNAVAILABLE',
  );
  const stickyStoreFailed = rateLimited(
    'sticky assignments could not be stored on Resolve(apply=true); those experiments serve STICKY_UNAVAILABLE',
  );
  const failedWrites = stickyFailedWriteCounter();
  /** Counts a first sticky variant Resolve(apply=true) withheld, unstored. */
  const stickyWriteFailed = (error: UnavailableError | AbortedError): void => {
    failedWrites.add(
      1,
      error instanceof AbortedError
        ? STICKY_WRITE_FAILURE.conflict
        : STICKY_WRITE_FAILURE.unavailable,
    );
  };

  return {
    resolve: async (request) => {
      const unit = request.unit;
      const unitId = unit?.id ?? '';
      const unitType = unit?.type ?? '';
      const attributes: Attributes = request.attributes ?? {};
      const violations: FieldViolation[] = [];
      if (unitId === '')
        violations.push({ field: 'unit.id', description: 'is required', reason: 'REQUIRED' });
      else if (
        unitId.length > MAX_UNIT_ID_BYTES / 3 &&
        Buffer.byteLength(unitId) > MAX_UNIT_ID_BYTES
      ) {
        violations.push({
          field: 'unit.id',
          description: `at most ${MAX_UNIT_ID_BYTES} bytes`,
          reason: 'TOO_LONG',
        });
      }
      if (unitType === '')
        violations.push({ field: 'unit.type', description: 'is required', reason: 'REQUIRED' });
      else tooLong('unit.type', unitType, MAX_UNIT_TYPE_BYTES, violations);
      if (request.surfaces.length > MAX_RESOLVE_SURFACES) {
        violations.push({
          field: 'surfaces',
          description: `at most ${MAX_RESOLVE_SURFACES} surfaces`,
          reason: 'TOO_MANY',
        });
      } else {
        for (let i = 0; i < request.surfaces.length; i++) {
          if (!SURFACE_PATTERN.test(request.surfaces[i] ?? '')) {
            violations.push({
              field: `surfaces[${i}]`,
              description: `must match ${SURFACE_PATTERN.source}`,
              reason: 'INVALID_SURFACE',
            });
          }
        }
      }
      checkRequestId(request.requestId, violations);
      checkAttributes(attributes, violations);
      // A newer client may send a view this build does not know (decoded as its number).
      if (!KNOWN_VIEWS.has(request.view)) {
        violations.push({
          field: 'view',
          description: 'must be ASSIGNMENT_VIEW_BASIC or ASSIGNMENT_VIEW_FULL',
          reason: 'UNKNOWN_VIEW',
        });
      }
      if (violations.length > 0) rejectIfAny('resolve request', violations);

      const view = context.configuration.current();
      const now = Date.now();
      const surfaces = request.surfaces.length > 0 ? request.surfaces : view.surfaces;
      const unknown = request.surfaces.filter((surface) => !view.snapshot.hasSurface(surface));
      const unknownSurfaces = unknown.length > 1 ? [...new Set(unknown)] : unknown;
      const stickyIds = view.snapshot.stickyExperimentIds(surfaces, now, unitId, unitType);
      let sticky: ReadonlyMap<string, StickyAssignment> | undefined;
      let stickyUnavailable: ReadonlySet<string> | undefined;
      if (stickyIds.length > 0) {
        const lookup = await context.sticky.lookup(unitType, unitId, stickyIds, now);
        sticky = lookup.found;
        if (lookup.unavailable.length > 0) {
          // Only those experiments depend on it: they serve STICKY_UNAVAILABLE, the rest as usual.
          stickyUnavailable = new Set(lookup.unavailable);
          stickyLookupFailed(lookup.error);
        }
      }
      const unitContext: UnitContext = {
        id: unitId,
        type: unitType,
        attributes,
        surfaces,
        now,
        sticky,
        stickyUnavailable,
      };
      const resolveId = request.requestId === '' ? randomUUID() : request.requestId;
      let result = resolveUnit(
        view,
        renderedResults(view.snapshot),
        unitContext,
        request,
        resolveId,
      );
      let exposures = NO_EXPOSURES;
      if (request.apply) {
        // A variant that cannot be stored is not served: the unit might get another one next
        // time. Its experiment serves STICKY_UNAVAILABLE, as when the lookup fails, and the rest
        // of the response stands (failing the call would lose every experiment's answer).
        const logged = await logExposures(
          context,
          result.record,
          [],
          new Date(now),
          stickyWriteFailed,
        );
        exposures = logged.counts;
        if (logged.restuck.size > 0 || logged.unstored.size > 0) {
          // Another resolve's variant was stored first (between the lookup and now): it is what
          // the exposure names and what the unit is served from now on, so this response too.
          const stored = new Map(sticky);
          for (const [id, assignment] of logged.restuck) stored.set(id, assignment);
          let unavailable = stickyUnavailable;
          if (logged.unstored.size > 0) {
            stickyStoreFailed(logged.storeError);
            unavailable = new Set([...(stickyUnavailable ?? []), ...logged.unstored]);
          }
          const settled = { ...unitContext, sticky: stored, stickyUnavailable: unavailable };
          result = resolveUnit(view, renderedResults(view.snapshot), settled, request, resolveId);
        }
      }
      const { rendered, holdouts, record } = result;
      const response: ResolveResponse = {
        assignments: rendered.assignments,
        holdouts,
        resolveToken: context.tokens.sign(record, rendered.tokenEntries),
        resolveId,
        configVersion: view.version,
        resolveTime: new Date(now),
        unknownSurfaces,
        exposures,
      };
      return withEncodedAssignments(response, rendered.responseEntries);
    },

    apply: async (request) => {
      const now = Date.now();
      // Every problem at once: the request's own fields, then the token's.
      const violations: FieldViolation[] = [];
      checkRequestId(request.requestId, violations);
      const outOfRange = timestampViolation('exposure_time', request.exposureTime);
      if (outOfRange) violations.push(outOfRange);
      else if ((request.exposureTime?.getTime() ?? now) > now + MAX_EXPOSURE_CLOCK_SKEW_MS) {
        violations.push({
          field: 'exposure_time',
          description: 'must not be more than one minute in the future',
          reason: 'IN_THE_FUTURE',
        });
      }
      let record: ResolveRecord;
      try {
        record = context.tokens.verify(request.resolveToken, now);
      } catch (error) {
        // Alone, the token's own error; else with the rest, keeping its reason (whether the
        // token expired, which tells the caller to resolve again).
        if (violations.length === 0 || !(error instanceof InvalidArgumentError)) throw error;
        violations.push(...error.violations);
        throw invalidRequest('apply request', violations, error.reason);
      }
      rejectIfAny('apply request', violations);
      // A request id names one Apply of one resolve: reused with another token, it is another call.
      // The token itself, not its resolve id: a caller's Resolve request_id, reused for another
      // resolve of the unit, would make two tokens one. (Verified, so in its one canonical form;
      // hashed, since a token grows with its assignments and 10,000 keys are kept.) As JSON,
      // since the request id may hold any character a separator could be.
      const resultKey =
        request.requestId === ''
          ? undefined
          : JSON.stringify([
              request.requestId,
              createHash('sha256').update(request.resolveToken).digest('base64url'),
            ]);
      if (resultKey !== undefined) {
        // A retry arriving while its first call runs waits for it rather than logging beside it;
        // of calls that waited together (sent at once), the first to go on runs and the others
        // wait for it in turn.
        do {
          await applying.settled(resultKey);
        } while (applying.has(resultKey));
        const previous = applyResults.get(resultKey);
        if (previous) return { exposures: previous };
      }
      let exposureTime = request.exposureTime ?? new Date(now);
      // Not shown before it was resolved; but a resolve time from a replica whose clock runs
      // ahead is not taken past the skew allowed to the caller's own exposure time.
      if (exposureTime.getTime() < record.resolveTime) {
        exposureTime = new Date(Math.min(record.resolveTime, now + MAX_EXPOSURE_CLOCK_SKEW_MS));
      }
      const log = () => logExposures(context, record, request.experimentIds, exposureTime);
      const { counts: exposures } =
        resultKey === undefined ? await log() : await applying.run(resultKey, log);
      // Not remembered when some were dropped: the retry logs them.
      if (resultKey !== undefined && exposures.droppedCount === 0) {
        applyResults.set(resultKey, exposures);
        if (applyResults.size > APPLY_RESULTS_CAPACITY) {
          const oldest = applyResults.keys().next();
          if (!oldest.done) applyResults.delete(oldest.value);
        }
      }
      return { exposures };
    },
  };
}
