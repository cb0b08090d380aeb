/**
 * Experiments: create (DRAFT), read, list, update with etag, delete, and the lifecycle
 * DRAFT → SCHEDULED/RUNNING → STOPPED → CONCLUDED. Validation reports every problem at once; once
 * started, the fields that decide which variant a unit hashes into are frozen (FAILED_PRECONDITION).
 */
import {
  ConcludeExperimentResponse,
  CreateExperimentResponse,
  DeleteExperimentResponse,
  StartExperimentResponse,
  StopExperimentResponse,
  UpdateExperimentResponse,
  type AssignmentServiceService,
} from '../../../../gen/ts/tandem/assignment/v1/assignment_service';
import {
  AllocationMode as AllocationModeMessage,
  Experiment,
  HashVersion,
} from '../../../../gen/ts/tandem/assignment/v1/experiment';
import { ConfigChangeType } from '../../../../gen/ts/tandem/events/v1/config_change_event';
import {
  AbortedError,
  FailedPreconditionError,
  NotFoundError,
  type FieldViolation,
} from '../../../platform/src/errors';
import type { Handlers } from '../../../platform/src/grpc/handlers';
import {
  allocationFits,
  AllocationMode,
  checkRunningChange,
  checkScheduleChange,
  effectiveSeed,
  ExperimentStatus,
  holdoutSeed,
  MAX_STICKY_TTL_MS,
  layerSeedViolations,
  seedKeptAsStored,
  sharedSeedViolations,
  START_MARGIN_MS,
  toleratedWhenStored,
  validateCondition,
  validateExperiment,
} from '../domain';
import type { AssignmentContext } from '../assignment-context';
import {
  changesNothing,
  experimentDefinition,
  type ExperimentDocument,
  type Stored,
  type VariantDocument,
} from '../store/documents';
import { keepInHistory } from './allocations';
import { experimentSizeViolations, MAX_PAYLOAD_BYTES, MAX_SUMMARY_BYTES, tooLong } from './limits';
import { hasValidNanos } from '../../../platform/src/grpc/well-known';
import { sameData } from '../../../platform/src/storage/collection';
import { asEnum, durationMs, experimentMessage, timestampViolation } from './messages';
import {
  checkEtag,
  storedToChange,
  insertNew,
  maskPaths,
  notFound,
  page,
  pageRequest,
  rejectIfAny,
  required,
  retiredId,
  under,
  versionOf,
  statusFilter,
  inUpdateMask,
} from './requests';

type Service = typeof AssignmentServiceService;
type ExperimentHandlers = Pick<
  Handlers<Service>,
  | 'createExperiment'
  | 'getExperiment'
  | 'listExperiments'
  | 'updateExperiment'
  | 'deleteExperiment'
  | 'startExperiment'
  | 'stopExperiment'
  | 'concludeExperiment'
>;

/** Update-mask path → the document fields it sets. */
const MUTABLE_PATHS = {
  description: ['description'],
  owner: ['owner'],
  tags: ['tags'],
  unit_type: ['unitType'],
  surfaces: ['surfaces'],
  variants: ['variants'],
  coverage: ['coverage'],
  condition: ['conditionJson'],
  layer_id: ['layerId'],
  layer_range: ['layerRange'],
  hash_version: ['hashVersion'],
  seed: ['seed'],
  scheduled_start_time: ['scheduledStartTime'],
  scheduled_end_time: ['scheduledEndTime'],
  allocation_mode: ['allocationMode'],
  bandit: ['minArmShare'],
  sticky: ['sticky'],
  sticky_ttl: ['stickyTtlMs'],
  overrides: ['overrides'],
} as const satisfies Record<string, readonly (keyof ExperimentDocument)[]>;
/**
 * Fields of a message field an update mask may name on their own (AIP-134): a bound of
 * `layer_range` changes alone, the other one kept; `bandit.min_arm_share` is `bandit`.
 */
const LAYER_RANGE_BOUNDS = ['layer_range.start', 'layer_range.end'] as const;
const NESTED_PATHS: readonly string[] = [...LAYER_RANGE_BOUNDS, 'bandit.min_arm_share'];
const OUTPUT_OR_IMMUTABLE = [
  'id',
  'status',
  'conclusion',
  'start_time',
  'stop_time',
  'etag',
  'create_time',
  'update_time',
];

type RequestedFields = Pick<
  ExperimentDocument,
  (typeof MUTABLE_PATHS)[keyof typeof MUTABLE_PATHS][number]
>;

/**
 * Adds a NOT_FINITE violation for every NaN or ±Infinity in `value` (a Struct's contents), by
 * path: JSON has no such numbers, so stored they would become `null` and mean something else
 * (`{"a": NaN}` would match every unit without `a`).
 */
function nonFiniteNumbers(value: unknown, path: string, out: FieldViolation[]): void {
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) {
      out.push({
        field: path,
        description: `must be a finite number, not ${value}`,
        reason: 'NOT_FINITE',
      });
    }
  } else if (Array.isArray(value)) {
    value.forEach((item, i) => {
      nonFiniteNumbers(item, `${path}[${i}]`, out);
    });
  } else if (typeof value === 'object' && value !== null) {
    for (const [key, item] of Object.entries(value)) nonFiniteNumbers(item, `${path}.${key}`, out);
  }
}

/** The caller-settable fields of a requested experiment, with defaults filled in. */
function requestedFields(experiment: Experiment, violations: FieldViolation[]): RequestedFields {
  const variants = experiment.variants.map((v, i): VariantDocument => {
    nonFiniteNumbers(v.payload, `experiment.variants[${i}].payload`, violations);
    const payloadJson =
      v.payload && Object.keys(v.payload).length > 0 ? JSON.stringify(v.payload) : '';
    if (Buffer.byteLength(payloadJson) > MAX_PAYLOAD_BYTES) {
      violations.push({
        field: `experiment.variants[${i}].payload`,
        description: `at most ${MAX_PAYLOAD_BYTES} bytes encoded`,
        reason: 'TOO_LARGE',
      });
    }
    return { key: v.key, description: v.description, weight: v.weight, payloadJson };
  });
  const stickyTtl = experiment.stickyTtl;
  const stickyTtlMs = durationMs(stickyTtl);
  if (stickyTtl && !hasValidNanos(stickyTtl)) {
    violations.push({
      field: 'experiment.sticky_ttl',
      description: "must be a Duration: nanos within ±999,999,999 and of the seconds' sign",
      reason: 'INVALID_DURATION',
    });
  } else if (stickyTtlMs !== undefined && !(stickyTtlMs > 0 && stickyTtlMs <= MAX_STICKY_TTL_MS)) {
    violations.push({
      field: 'experiment.sticky_ttl',
      // Kept in whole milliseconds: a positive one under half a millisecond is 0.
      description: `must be at least 1 ms and at most ${MAX_STICKY_TTL_MS / 86_400_000} days`,
      reason: 'OUT_OF_RANGE',
    });
  }
  for (const [field, time] of [
    ['scheduled_start_time', experiment.scheduledStartTime],
    ['scheduled_end_time', experiment.scheduledEndTime],
  ] as const) {
    const violation = timestampViolation(`experiment.${field}`, time);
    if (violation) violations.push(violation);
  }
  const condition = experiment.condition;
  nonFiniteNumbers(condition, 'experiment.condition', violations);
  return {
    description: experiment.description,
    owner: experiment.owner,
    tags: experiment.tags,
    unitType: experiment.unitType,
    surfaces: experiment.surfaces,
    variants,
    coverage: experiment.coverage ?? null,
    conditionJson: condition && Object.keys(condition).length > 0 ? JSON.stringify(condition) : '',
    layerId: experiment.layerId,
    layerRange: experiment.layerRange
      ? { start: experiment.layerRange.start, end: experiment.layerRange.end }
      : null,
    hashVersion:
      experiment.hashVersion === HashVersion.HASH_VERSION_UNSPECIFIED
        ? HashVersion.HASH_VERSION_V2
        : experiment.hashVersion,
    seed: experiment.seed === '' ? experiment.id : experiment.seed,
    scheduledStartTime: experiment.scheduledStartTime?.getTime() ?? null,
    scheduledEndTime: experiment.scheduledEndTime?.getTime() ?? null,
    allocationMode:
      experiment.allocationMode === AllocationModeMessage.ALLOCATION_MODE_UNSPECIFIED
        ? AllocationMode.FIXED
        : asEnum<AllocationMode>(experiment.allocationMode),
    minArmShare: experiment.bandit ? experiment.bandit.minArmShare : null,
    sticky: experiment.sticky,
    stickyTtlMs: stickyTtlMs ?? null,
    // Absent when empty, as in documents stored before overrides existed (see `withMaskedFields`).
    ...(experiment.overrides.length === 0
      ? {}
      : {
          overrides: experiment.overrides.map((o) => ({
            unitId: o.unitId,
            variantKey: o.variantKey,
          })),
        }),
  };
}

/**
 * `stored` with what `paths` name of the request's fields (`requested`): a top-level field as a
 * whole, a bound of `layer_range` alone (0 when the request has no range, as an unset field reads).
 * A condition or payload holding the stored data keeps the stored text.
 */
function withMaskedFields(
  stored: ExperimentDocument,
  requested: ReturnType<typeof requestedFields>,
  paths: ReadonlySet<string>,
): Record<string, unknown> {
  const changed: Record<string, unknown> = { ...stored };
  for (const path of paths) {
    const topLevel = path === 'bandit.min_arm_share' ? 'bandit' : path;
    if (!(topLevel in MUTABLE_PATHS)) continue;
    for (const field of MUTABLE_PATHS[topLevel as keyof typeof MUTABLE_PATHS]) {
      changed[field] = requested[field];
    }
  }
  // No overrides are no field, as in documents stored before overrides existed: a stored
  // document holds no undefined value (MongoDB would store null).
  if (changed.overrides === undefined) delete changed.overrides;
  const bounds = LAYER_RANGE_BOUNDS.filter((bound) => paths.has(bound));
  if (bounds.length > 0 && !paths.has('layer_range')) {
    const given = (bound: (typeof LAYER_RANGE_BOUNDS)[number], key: 'start' | 'end') =>
      paths.has(bound)
        ? (requested.layerRange?.[key] ?? 0)
        : (stored.layerRange?.[key] ?? (key === 'start' ? 0 : 1));
    changed.layerRange = {
      start: given('layer_range.start', 'start'),
      end: given('layer_range.end', 'end'),
    };
  }
  // A Struct is a map, whose entries come in any order on the wire (Go's encoder shuffles them),
  // and conditions and payloads are compared as maps. One holding the stored data in another
  // order keeps the stored text, so that sending it again changes nothing: no new etag, no
  // change to a concluded experiment, a stored condition's tolerance kept.
  if (paths.has('condition') && sameJson(requested.conditionJson, stored.conditionJson)) {
    changed.conditionJson = stored.conditionJson;
  }
  if (paths.has('variants')) {
    changed.variants = requested.variants.map((variant, i) => {
      const payloadJson = stored.variants[i]?.payloadJson ?? '';
      return sameJson(variant.payloadJson, payloadJson) ? { ...variant, payloadJson } : variant;
    });
  }
  return changed;
}

/** Whether two JSON texts of Structs (empty for none) hold the same data, keys in any order. */
function sameJson(a: string, b: string): boolean {
  return a === b || (a !== '' && b !== '' && sameData(JSON.parse(a), JSON.parse(b)));
}

/** Every validation problem of `doc`, as request violations under `experiment.`. */
function validate(context: AssignmentContext, doc: ExperimentDocument): FieldViolation[] {
  const view = context.configuration.current();
  const definition = experimentDefinition(doc, undefined);
  return under('experiment', [
    ...validateExperiment(definition, {
      layerIds: new Set(view.layers.keys()),
      otherExperiments: view.experimentDefinitions,
    }),
    ...experimentSizeViolations(doc),
    ...layerSeedViolations(effectiveSeed(definition), definition.hashVersion),
    ...sharedSeedViolations(
      effectiveSeed(definition),
      [...view.holdouts.values()].map(({ doc: holdout }) => ({
        kind: 'holdout' as const,
        id: holdout.id,
        seed: holdoutSeed(holdout),
      })),
    ),
  ]);
}

/**
 * Whether `violation` is an OVERRIDDEN_IN_LAYER the update leaves as it was stored (from before
 * the rule): the unit was overridden already, in the same layer and for the same unit type. An
 * update of anything else must not fail for it; one that adds the unit, or moves the experiment
 * into the collision, must.
 */
function collisionStoredBefore(
  violation: FieldViolation,
  before: ExperimentDocument,
  after: ExperimentDocument,
): boolean {
  if (violation.reason !== 'OVERRIDDEN_IN_LAYER') return false;
  if (after.layerId !== before.layerId || after.unitType !== before.unitType) return false;
  const index = /^experiment\.overrides\[(\d+)\]\.unit_id$/.exec(violation.field)?.[1];
  const unitId = index === undefined ? undefined : after.overrides?.[Number(index)]?.unitId;
  return unitId !== undefined && (before.overrides ?? []).some((o) => o.unitId === unitId);
}

function statusName(status: number): string {
  return (
    Object.entries(ExperimentStatus).find(([, value]) => value === status)?.[0] ?? String(status)
  );
}

function wrongStatus(
  doc: ExperimentDocument,
  action: string,
  allowed: string,
): FailedPreconditionError {
  return new FailedPreconditionError(
    `experiment "${doc.id}" is ${statusName(doc.status)}: only ${allowed} experiments can be ${action}`,
    {
      reason: 'EXPERIMENT_STATUS',
      violations: [
        {
          type: 'STATUS',
          subject: `experiments/${doc.id}`,
          description: `is ${statusName(doc.status)}; must be ${allowed}`,
        },
      ],
    },
  );
}

/** Reads the experiment from storage (not memory: a write must start from the latest state). */
async function storedExperiment(
  context: AssignmentContext,
  id: string,
): Promise<Stored<ExperimentDocument>> {
  const stored = await context.store.experiments.get(id);
  if (!stored) throw notFound('experiment', id);
  return stored;
}

/** Writes a changed experiment if `version` is still current, then commits the change. */
async function saveExperiment(
  context: AssignmentContext,
  doc: ExperimentDocument,
  version: number,
): Promise<Stored<ExperimentDocument>> {
  const stored = await context.store.experiments.replace(doc, version);
  await context.changes.record(
    { type: 'experiment', id: doc.id, stored },
    ConfigChangeType.CONFIG_CHANGE_TYPE_UPDATED,
  );
  return stored;
}

/**
 * Drops an experiment's stored bandit allocation, when it has one, and announces the change.
 *
 * An allocation and its experiment are two documents, so a write to both can fail halfway. The
 * rule that keeps that harmless: an allocation is dropped only once it is out of effect (its
 * experiment deleted, not a bandit or for other arms: the evaluator and GetAllocation ignore it),
 * and one left stored by a failed drop is dropped before the next write that could bring it back
 * into effect (an update of its experiment, a create under its id), never revived.
 */
async function dropAllocation(context: AssignmentContext, id: string): Promise<void> {
  if ((await context.store.allocations.get(id)) === undefined) return;
  await context.store.recordDeletion('allocation', id);
  if (!(await context.store.allocations.delete(id))) return;
  await context.changes.record(
    { type: 'allocation', id, stored: undefined },
    ConfigChangeType.CONFIG_CHANGE_TYPE_DELETED,
  );
}

/**
 * {@link dropAllocation} after the write that put the allocation out of effect: that write is
 * done, so a failure here is logged rather than answered (the caller's change took), and the
 * allocation, ignored meanwhile, is dropped by the next write that needs it gone.
 */
async function dropIgnoredAllocation(context: AssignmentContext, id: string): Promise<void> {
  try {
    await dropAllocation(context, id);
  } catch (error) {
    // The drop may have been made all the same (storage answering as failed after deleting it),
    // with no change recorded for it: the replicas' views would keep the allocation, and bring
    // it back into effect should its experiment become a bandit of those arms again, while
    // storage holds none. The next check announces it, so that every replica reads everything.
    context.configuration.unsure();
    context.logger.warn(
      { err: error, experiment: id },
      'could not drop an allocation no longer in effect; it is ignored, and dropped at the next write',
    );
  }
}

function checkOptionalEtag(
  doc: ExperimentDocument,
  etag: string,
  before: Stored<ExperimentDocument>,
): void {
  if (etag !== '') checkEtag('experiment', doc.id, etag, before);
}

export function experimentHandlers(context: AssignmentContext): ExperimentHandlers {
  return {
    createExperiment: (request) =>
      context.writes.once('CreateExperiment', request, CreateExperimentResponse, async () => {
        const violations: FieldViolation[] = [];
        if (!request.experiment) {
          required('experiment', '', violations);
          rejectIfAny('experiment', violations);
        }
        const experiment = request.experiment as Experiment;
        const now = Date.now();
        const doc: ExperimentDocument = {
          id: experiment.id,
          ...requestedFields(experiment, violations),
          status: ExperimentStatus.DRAFT,
          conclusion: null,
          startTime: null,
          stopTime: null,
          createTime: now,
          updateTime: now,
        };
        violations.push(...validate(context, doc));
        rejectIfAny('experiment', violations);
        if (await context.store.isRetired('experiment', doc.id))
          throw retiredId('experiment', doc.id);
        // A deleted experiment's allocation that a failed drop left stored is not this one's.
        // (Writes run one at a time, so no experiment can appear under the id meanwhile.)
        if ((await context.store.experiments.get(doc.id)) === undefined)
          await dropAllocation(context, doc.id);
        const stored = await insertNew(context.store, context.store.experiments, 'experiment', doc);
        await context.changes.record(
          { type: 'experiment', id: doc.id, stored },
          ConfigChangeType.CONFIG_CHANGE_TYPE_CREATED,
        );
        return { experiment: experimentMessage(stored) };
      }),

    getExperiment: (request) => {
      const violations: FieldViolation[] = [];
      required('id', request.id, violations);
      rejectIfAny('request', violations);
      const stored = context.configuration.current().experiments.get(request.id);
      if (!stored) throw notFound('experiment', request.id);
      return Promise.resolve({ experiment: experimentMessage(stored) });
    },

    listExperiments: (request) => {
      const violations: FieldViolation[] = [];
      const statuses = statusFilter(
        request.statuses,
        ExperimentStatus,
        'EXPERIMENT_STATUS_',
        violations,
      );
      const filters = JSON.stringify(['experiments', statuses, request.layerId, request.surface]);
      const pageOf = pageRequest(request.pageSize, request.pageToken, filters, violations);
      rejectIfAny('request', violations);
      const matching = [...context.configuration.current().experiments.values()]
        .filter(
          (s) =>
            (statuses.length === 0 || statuses.includes(s.doc.status)) &&
            (request.layerId === '' || s.doc.layerId === request.layerId) &&
            (request.surface === '' || s.doc.surfaces.includes(request.surface)),
        )
        .map((s) => ({ id: s.doc.id, stored: s }));
      const result = page(matching, pageOf, filters, {
        render: (item) => experimentMessage(item.stored),
        encode: (message) => Experiment.encode(message),
        maxBytes: context.maxPageBytes,
      });
      return Promise.resolve({
        experiments: result.items,
        nextPageToken: result.nextPageToken,
      });
    },

    updateExperiment: (request) =>
      context.writes.once('UpdateExperiment', request, UpdateExperimentResponse, async () => {
        const violations: FieldViolation[] = [];
        const experiment = request.experiment;
        required('experiment.id', experiment?.id ?? '', violations);
        required('experiment.etag', experiment?.etag ?? '', violations);
        const paths = maskPaths(
          request.updateMask,
          [...Object.keys(MUTABLE_PATHS), ...NESTED_PATHS],
          [...Object.keys(MUTABLE_PATHS), ...NESTED_PATHS, ...OUTPUT_OR_IMMUTABLE],
          violations,
        );
        // Every problem of the request at once, the mask's and the fields' values together;
        // then whether it is stale (ABORTED). Fields outside the mask are ignored, so are their
        // problems (AIP-134); the values' own problems are known before the stored experiment.
        const read: FieldViolation[] = [];
        const requested =
          experiment && requestedFields({ ...experiment, seed: experiment.seed }, read);
        violations.push(...read.filter((v) => inUpdateMask('experiment', v.field, paths)));
        const before = await storedToChange(
          'experiment',
          experiment?.id ?? '',
          (id) => context.store.experiments.get(id),
          violations,
        );
        if (!experiment || !requested) throw new Error('unreachable: experiment checked above');
        const changed = withMaskedFields(before.doc, requested, paths);
        const now = Date.now();
        const after = { ...(changed as unknown as ExperimentDocument), updateTime: now };
        const problems = validate(context, after);
        // A stored condition passed the rules of its day: one they have tightened since (a
        // `$regex` from before RE2, a `$not` of a plain value) may stay until it is changed.
        // So may a seed longer than today's limit: it cannot change once the experiment ran.
        violations.push(
          ...problems.filter(
            (v) =>
              !(after.conditionJson === before.doc.conditionJson && toleratedWhenStored(v)) &&
              !seedKeptAsStored(v, 'experiment.seed', before.doc, after) &&
              !collisionStoredBefore(v, before.doc, after),
          ),
        );
        rejectIfAny('experiment', violations);
        checkEtag('experiment', experiment.id, experiment.etag, before);
        const definitionBefore = experimentDefinition(before.doc, undefined);
        const definitionAfter = experimentDefinition(after, undefined);
        const forbidden = [
          ...checkRunningChange(definitionBefore, definitionAfter),
          ...checkScheduleChange(definitionBefore, definitionAfter, now),
        ];
        if (forbidden.length > 0) {
          throw new FailedPreconditionError(
            `experiment "${before.doc.id}" is ${statusName(before.doc.status)}: ${forbidden.map((v) => v.description).join('; ')}`,
            {
              reason: 'CHANGE_NOT_ALLOWED',
              violations: forbidden.map((v) => ({
                type: v.reason,
                subject: `experiments/${before.doc.id}/${v.field}`,
                description: v.description,
              })),
            },
          );
        }
        if (changesNothing(before.doc, after)) return { experiment: experimentMessage(before) };
        // A bandit allocation set for other arms (only a DRAFT's arms can change), or for a
        // bandit no more, is dropped: the variants' weights apply again. One in effect is dropped
        // after the save, so a failed save loses nothing; one that was not in effect (its drop
        // failed earlier) before it, so the save cannot bring it back (see `dropAllocation`).
        const allocation = await context.store.allocations.get(after.id);
        const inEffect = (doc: ExperimentDocument): boolean =>
          allocation !== undefined &&
          doc.allocationMode === AllocationMode.BANDIT &&
          allocationFits(doc, allocation.doc);
        const wasInEffect = inEffect(before.doc);
        if (allocation !== undefined && !wasInEffect) await dropAllocation(context, after.id);
        const stored = await saveExperiment(context, after, before.version);
        if (wasInEffect && !inEffect(after)) await dropIgnoredAllocation(context, after.id);
        return { experiment: experimentMessage(stored) };
      }),

    deleteExperiment: (request) =>
      context.writes.once('DeleteExperiment', request, DeleteExperimentResponse, async () => {
        const violations: FieldViolation[] = [];
        required('id', request.id, violations);
        required('etag', request.etag, violations);
        rejectIfAny('request', violations);
        const before = await storedExperiment(context, request.id);
        checkEtag('experiment', request.id, request.etag, before);
        if (
          before.doc.status === ExperimentStatus.RUNNING ||
          before.doc.status === ExperimentStatus.SCHEDULED
        ) {
          throw wrongStatus(before.doc, 'deleted', 'DRAFT, STOPPED or CONCLUDED');
        }
        // Only one that served holds sticky assignments. One that did not leaves its id free,
        // and freeing under it would take those of the experiment created again under it.
        const served = before.doc.startTime !== null;
        if (served) {
          await context.store.retire('experiment', request.id);
          await context.sticky.release(request.id, Date.now());
        }
        await context.store.recordDeletion('experiment', request.id);
        if (!(await context.store.experiments.delete(request.id, versionOf(request.etag)))) {
          throw notFound('experiment', request.id);
        }
        await dropIgnoredAllocation(context, request.id);
        await context.changes.record(
          { type: 'experiment', id: request.id, stored: undefined },
          ConfigChangeType.CONFIG_CHANGE_TYPE_DELETED,
        );
        // Freeing sticky assignments may take a while; the delete does not wait for it. What this
        // misses (an Apply storing meanwhile, a failure) the periodic sweep frees (`release`).
        if (served) {
          context.sticky.forget(request.id).catch((error: unknown) => {
            context.logger.warn(
              { err: error, experiment: request.id },
              'could not delete sticky assignments',
            );
          });
        }
        return {};
      }),

    startExperiment: (request) =>
      context.writes.once('StartExperiment', request, StartExperimentResponse, async () => {
        const violations: FieldViolation[] = [];
        required('id', request.id, violations);
        rejectIfAny('request', violations);
        const before = await storedExperiment(context, request.id);
        checkOptionalEtag(before.doc, request.etag, before);
        const doc = before.doc;
        if (doc.status !== ExperimentStatus.DRAFT) throw wrongStatus(doc, 'started', 'DRAFT');
        // A condition stored before a rule it breaks is kept for a population that exists; a
        // draft has none yet, so it starts only under today's rules.
        const outdated = validateCondition(
          experimentDefinition(doc, undefined).condition,
          'condition',
        ).filter(toleratedWhenStored);
        if (outdated.length > 0) {
          throw new FailedPreconditionError(
            `experiment "${doc.id}": its condition breaks rules made since it was stored; update it before starting`,
            {
              reason: 'CONDITION_OUTDATED',
              violations: outdated.map((v) => ({
                type: v.reason,
                subject: `experiments/${doc.id}/${v.field}`,
                description: v.description,
              })),
            },
          );
        }
        const now = Date.now();
        if (doc.scheduledEndTime !== null && doc.scheduledEndTime <= now) {
          throw new FailedPreconditionError(
            `experiment "${doc.id}": its scheduled_end_time has passed`,
            {
              reason: 'SCHEDULE_PASSED',
              violations: [
                {
                  type: 'SCHEDULE',
                  subject: `experiments/${doc.id}`,
                  description: 'scheduled_end_time has passed',
                },
              ],
            },
          );
        }
        // Exposures log the allocation's sequence from now on: the history must hold it as it is
        // served, with the minimum arm share a DRAFT may have changed since it was kept.
        if (doc.allocationMode === AllocationMode.BANDIT) {
          const allocation = await context.store.allocations.get(doc.id);
          if (allocation !== undefined && allocationFits(doc, allocation.doc)) {
            await keepInHistory(context, doc, allocation);
          }
        }
        const scheduled = doc.scheduledStartTime !== null && doc.scheduledStartTime > now;
        const stored = await saveExperiment(
          context,
          {
            ...doc,
            status: scheduled ? ExperimentStatus.SCHEDULED : ExperimentStatus.RUNNING,
            startTime: scheduled ? null : now,
            updateTime: now,
          },
          before.version,
        );
        return { experiment: experimentMessage(stored) };
      }),

    stopExperiment: (request) =>
      context.writes.once('StopExperiment', request, StopExperimentResponse, async () => {
        const violations: FieldViolation[] = [];
        required('id', request.id, violations);
        rejectIfAny('request', violations);
        const before = await storedExperiment(context, request.id);
        checkOptionalEtag(before.doc, request.etag, before);
        const doc = before.doc;
        const now = Date.now();
        let next = stoppedNow(doc, now);
        if (next === undefined && doc.status === ExperimentStatus.SCHEDULED) {
          next = { ...doc, status: ExperimentStatus.DRAFT, updateTime: now };
        } else if (next === undefined) {
          throw wrongStatus(doc, 'stopped', 'RUNNING or SCHEDULED');
        }
        const stored = await saveExperiment(context, next, before.version);
        return { experiment: experimentMessage(stored) };
      }),

    concludeExperiment: (request) =>
      context.writes.once('ConcludeExperiment', request, ConcludeExperimentResponse, async () => {
        const violations: FieldViolation[] = [];
        required('id', request.id, violations);
        tooLong('summary', request.summary, MAX_SUMMARY_BYTES, violations);
        const before = await storedToChange(
          'experiment',
          request.id,
          (id) => context.store.experiments.get(id),
          violations,
        );
        const doc = before.doc;
        if (
          request.shippedVariantKey !== '' &&
          !doc.variants.some((v) => v.key === request.shippedVariantKey)
        ) {
          violations.push({
            field: 'shipped_variant_key',
            description: `"${request.shippedVariantKey}" is not a variant of experiment "${doc.id}"`,
            reason: 'UNKNOWN_VARIANT',
          });
        }
        rejectIfAny('request', violations);
        checkOptionalEtag(doc, request.etag, before);
        const now = Date.now();
        // Stopped as StopExperiment would stop it, dated by its schedule where that applies.
        const stopped = doc.status === ExperimentStatus.STOPPED ? doc : stoppedNow(doc, now);
        if (stopped === undefined) throw wrongStatus(doc, 'concluded', 'RUNNING or STOPPED');
        const stored = await saveExperiment(
          context,
          {
            ...stopped,
            status: ExperimentStatus.CONCLUDED,
            conclusion: {
              shippedVariantKey: request.shippedVariantKey,
              summary: request.summary,
              concludeTime: now,
            },
            updateTime: now,
          },
          before.version,
        );
        return { experiment: experimentMessage(stored) };
      }),
  };
}

/**
 * `doc` stopped at `now`, when it serves or may have served: RUNNING, or SCHEDULED with its start
 * come or too close for every replica to learn of the stop first (it stops like a running one,
 * never back to an editable DRAFT). Dated by the schedule when its end has passed and the status
 * has not caught up yet. Undefined for any other experiment.
 */
function stoppedNow(doc: ExperimentDocument, now: number): ExperimentDocument | undefined {
  const stopTime = Math.min(now, doc.scheduledEndTime ?? now);
  if (doc.status === ExperimentStatus.RUNNING) {
    return { ...doc, status: ExperimentStatus.STOPPED, stopTime, updateTime: now };
  }
  if (
    doc.status === ExperimentStatus.SCHEDULED &&
    doc.scheduledStartTime !== null &&
    doc.scheduledStartTime <= now + START_MARGIN_MS
  ) {
    return {
      ...doc,
      status: ExperimentStatus.STOPPED,
      startTime: doc.scheduledStartTime,
      stopTime: Math.max(doc.scheduledStartTime, stopTime),
      updateTime: now,
    };
  }
  return undefined;
}

/** `doc` as the schedule has it at `now`; undefined when its status is already that. */
function scheduledStep(doc: ExperimentDocument, now: number): ExperimentDocument | undefined {
  let next: ExperimentDocument | undefined;
  if (
    doc.status === ExperimentStatus.SCHEDULED &&
    doc.scheduledStartTime !== null &&
    doc.scheduledStartTime <= now
  ) {
    next = {
      ...doc,
      status: ExperimentStatus.RUNNING,
      startTime: doc.scheduledStartTime,
      updateTime: now,
    };
  }
  const endTime = next?.scheduledEndTime ?? doc.scheduledEndTime;
  if ((next ?? doc).status === ExperimentStatus.RUNNING && endTime !== null && endTime <= now) {
    next = {
      ...(next ?? doc),
      status: ExperimentStatus.STOPPED,
      stopTime: endTime,
      updateTime: now,
    };
  }
  return next;
}

/**
 * How long a schedule step waits for another replica's write lease before leaving the step to the
 * next check (it holds this replica's own write queue meanwhile).
 */
const SCHEDULE_LEASE_WAIT_MS = 250;

/**
 * The schedule: SCHEDULED experiments whose start has come become RUNNING, RUNNING ones whose end
 * has passed become STOPPED (the evaluator already serves by the schedule's times, so the status
 * only has to catch up). When this replica's view has one due, the step takes the write lease like
 * any admin write, and works from the configuration brought up to date under it: a step from a
 * view behind storage could otherwise write back an experiment deleted since (even over one
 * created again under its id, whose versions start again), or make an admin write that read the
 * experiment before it fail on a version it never sent. Every replica tries; under the lease, the
 * ones after the first find nothing due. A lease held elsewhere leaves the step to the next check
 * (logged at debug: a replica that died holding it keeps it for its TTL). `proceed` false (the
 * replica stopping) skips the step, so that none holds the lease as storage closes.
 */
export async function advanceSchedule(
  context: AssignmentContext,
  now: number,
  proceed: () => boolean = () => true,
): Promise<void> {
  const due = (at: number) =>
    [...context.configuration.current().experiments.values()].filter(
      ({ doc }) => scheduledStep(doc, at) !== undefined,
    );
  if (due(now).length === 0 || !proceed()) return;
  try {
    await context.writes.exclusively(
      () => stepDue(context, now, due, proceed),
      SCHEDULE_LEASE_WAIT_MS,
    );
  } catch (error) {
    if (!(error instanceof AbortedError)) throw error;
    context.logger.debug(
      { err: error },
      'schedule step left to the next check: the write lease is held',
    );
  }
}

/** {@link advanceSchedule}'s steps, under the write lease. */
async function stepDue(
  context: AssignmentContext,
  now: number,
  due: (at: number) => Stored<ExperimentDocument>[],
  proceed: () => boolean,
): Promise<void> {
  if (!proceed()) return;
  // The time now, after the wait for the lease.
  const at = Math.max(now, Date.now());
  let stale = false;
  for (const { doc, version } of due(at)) {
    const next = scheduledStep(doc, at);
    if (next === undefined) continue;
    try {
      await saveExperiment(context, next, version);
    } catch (error) {
      if (!(error instanceof AbortedError || error instanceof NotFoundError)) throw error;
      stale = true;
    }
  }
  // Changed or deleted in storage without a version bump (a writer that died before it): the
  // other steps go on, and the view is read again in full.
  if (stale) await context.configuration.readAgain();
}
