/**
 * Validation of layer, experiment, holdout and allocation definitions. Each function returns every
 * problem at once (never stopping at the first), as field violations in the contract's field names,
 * so a create or update is rejected with INVALID_ARGUMENT and a complete `BadRequest`.
 *
 * {@link checkRunningChange} guards what may change once an experiment has started: anything that
 * decides which variant a unit hashes into (seed, hash version, unit type, layer, allocation mode,
 * variant keys and order, stickiness, and weights unless the experiment is sticky) is frozen, so a unit never
 * silently moves between variants mid-experiment. Coverage and the end of the layer range may
 * change because ranges only grow or shrink at their ends (a sticky experiment's layer range only
 * grows). {@link checkScheduleChange} keeps the schedule from rewriting what was already served.
 */
import { weightsSumToOne } from './bucketing';
import {
  AllocationMode,
  ExperimentStatus,
  HoldoutStatus,
  effectiveHashVersion,
  effectiveSeed,
  type ExperimentDefinition,
  type HoldoutDefinition,
  type LayerDefinition,
  type VariantWeight,
} from './configuration';
import type { FieldViolation } from './field-violation';
import { isHashVersion } from './hashing';
import { validateCondition } from './targeting';

/** Layer, experiment and holdout ids. */
export const ID_PATTERN = /^[a-z][a-z0-9_-]{0,62}$/;
/** Surface names. */
export const SURFACE_PATTERN = /^[a-z][a-z0-9_.-]{0,62}$/;
/** Variant keys. */
export const VARIANT_KEY_PATTERN = /^[a-z0-9][a-z0-9_-]{0,62}$/;
/**
 * The most variants, surfaces or layers one definition may list. Far above real use; they bound
 * what one resource costs to store (a MongoDB document holds 16 MiB), serve and validate, and a
 * longer list gets one violation rather than one per entry.
 */
export const MAX_VARIANTS = 100;
export const MAX_SURFACES = 100;
export const MAX_LAYERS = 100;
/**
 * The most units one experiment may force into variants: overrides are for testers and demo
 * accounts, and each is held in every replica's memory.
 */
export const MAX_OVERRIDES = 1000;

/** What validating an experiment needs to know about the rest of the configuration. */
export interface ExperimentValidationContext {
  /** Ids of the layers that exist. */
  readonly layerIds: ReadonlySet<string>;
  /**
   * The other experiments (the one validated, matched by id, is ignored); those in the same layer
   * and not CONCLUDED must not overlap its range.
   */
  readonly otherExperiments: readonly ExperimentDefinition[];
}

/** What validating a holdout needs to know about the rest of the configuration. */
export interface HoldoutValidationContext {
  /** Ids of the layers that exist. */
  readonly layerIds: ReadonlySet<string>;
}

class Violations {
  readonly list: FieldViolation[] = [];
  add(field: string, description: string, reason: string): void {
    this.list.push({ field, description, reason });
  }
}

function checkId(out: Violations, id: string, what: string): void {
  if (!ID_PATTERN.test(id)) {
    out.add(
      'id',
      `${what} id must match ${ID_PATTERN.source}`,
      id === '' ? 'REQUIRED' : 'INVALID_ID',
    );
  }
}

function checkSurfaces(out: Violations, surfaces: readonly string[], required: boolean): void {
  if (required && surfaces.length === 0)
    out.add('surfaces', 'at least one surface is required', 'REQUIRED');
  if (surfaces.length > MAX_SURFACES) {
    out.add('surfaces', `at most ${MAX_SURFACES} surfaces`, 'TOO_MANY');
    return;
  }
  surfaces.forEach((surface, i) => {
    if (!SURFACE_PATTERN.test(surface)) {
      out.add(`surfaces[${i}]`, `surface must match ${SURFACE_PATTERN.source}`, 'INVALID_SURFACE');
    }
  });
  const seen = new Set<string>();
  surfaces.forEach((surface, i) => {
    if (seen.has(surface))
      out.add(`surfaces[${i}]`, `surface "${surface}" is listed twice`, 'DUPLICATE_SURFACE');
    seen.add(surface);
  });
}

function checkHashVersion(out: Violations, version: number | undefined): void {
  if (!isHashVersion(effectiveHashVersion(version))) {
    out.add('hash_version', 'hash version must be 1 or 2', 'UNKNOWN_HASH_VERSION');
  }
}

function isFiniteIn(value: number, low: number, high: number): boolean {
  return Number.isFinite(value) && value >= low && value <= high;
}

/** Every problem with a layer definition. */
export function validateLayer(layer: LayerDefinition): FieldViolation[] {
  const out = new Violations();
  checkId(out, layer.id, 'layer');
  return out.list;
}

/** Every problem with an experiment definition, given the rest of the configuration. */
export function validateExperiment(
  experiment: ExperimentDefinition,
  context: ExperimentValidationContext,
): FieldViolation[] {
  const out = new Violations();
  checkId(out, experiment.id, 'experiment');
  if (experiment.unitType === '') out.add('unit_type', 'the unit type is required', 'REQUIRED');
  checkSurfaces(out, experiment.surfaces, true);
  checkVariants(out, experiment);
  if (experiment.coverage !== undefined && !isFiniteIn(experiment.coverage, 0, 1)) {
    out.add('coverage', 'coverage must be in [0, 1]', 'OUT_OF_RANGE');
  }
  for (const v of validateCondition(experiment.condition)) out.list.push(v);
  checkLayer(out, experiment, context);
  checkHashVersion(out, experiment.hashVersion);
  checkSchedule(out, experiment);
  checkAllocationMode(out, experiment);
  checkOverrides(out, experiment, context);
  if (
    experiment.shippedVariantKey !== undefined &&
    experiment.shippedVariantKey !== '' &&
    !experiment.variants.some((v) => v.key === experiment.shippedVariantKey)
  ) {
    out.add(
      'conclusion.shipped_variant_key',
      'the shipped variant is not a variant of the experiment',
      'UNKNOWN_VARIANT',
    );
  }
  return out.list;
}

function checkVariants(out: Violations, experiment: ExperimentDefinition): void {
  const { variants } = experiment;
  if (variants.length < 2) {
    out.add(
      'variants',
      `at least two variants are required, got ${variants.length}`,
      'TOO_FEW_VARIANTS',
    );
  }
  if (variants.length > MAX_VARIANTS) {
    out.add('variants', `at most ${MAX_VARIANTS} variants, got ${variants.length}`, 'TOO_MANY');
    return;
  }
  const seen = new Set<string>();
  variants.forEach((variant, i) => {
    if (!VARIANT_KEY_PATTERN.test(variant.key)) {
      out.add(
        `variants[${i}].key`,
        `variant key must match ${VARIANT_KEY_PATTERN.source}`,
        'INVALID_VARIANT_KEY',
      );
    } else if (seen.has(variant.key)) {
      out.add(
        `variants[${i}].key`,
        `variant key "${variant.key}" is used twice`,
        'DUPLICATE_VARIANT_KEY',
      );
    }
    seen.add(variant.key);
    if (!isFiniteIn(variant.weight, 0, 1)) {
      out.add(`variants[${i}].weight`, 'weight must be in [0, 1]', 'OUT_OF_RANGE');
    }
  });
  const weights = variants.map((v) => v.weight);
  if (variants.length > 0 && !weights.every((w) => w === 0) && !weightsSumToOne(weights)) {
    const sum = weights.reduce((a, b) => a + b, 0);
    out.add(
      'variants',
      `weights must all be 0 (equal split) or sum to 1 ± 0.01, got ${sum}`,
      'WEIGHTS_DO_NOT_SUM_TO_ONE',
    );
  }
}

function checkOverrides(
  out: Violations,
  experiment: ExperimentDefinition,
  context: ExperimentValidationContext,
): void {
  const overrides = experiment.overrides ?? [];
  if (overrides.length > MAX_OVERRIDES) {
    out.add('overrides', `at most ${MAX_OVERRIDES} overrides, got ${overrides.length}`, 'TOO_MANY');
    return;
  }
  const keys = new Set(experiment.variants.map((v) => v.key));
  const units = new Set<string>();
  const inLayer = overrides.length === 0 ? undefined : layerOverrides(experiment, context);
  overrides.forEach((override, i) => {
    if (override.unitId === '') {
      out.add(`overrides[${i}].unit_id`, 'the unit id is required', 'REQUIRED');
    } else if (units.has(override.unitId)) {
      out.add(
        `overrides[${i}].unit_id`,
        `unit "${override.unitId}" is overridden twice`,
        'DUPLICATE_UNIT',
      );
    } else {
      const other = inLayer?.get(override.unitId);
      if (other !== undefined) {
        out.add(
          `overrides[${i}].unit_id`,
          `unit "${override.unitId}" is already forced into experiment "${other}" of layer "${experiment.layerId ?? ''}": a unit sees one experiment of a layer`,
          'OVERRIDDEN_IN_LAYER',
        );
      }
    }
    units.add(override.unitId);
    if (!keys.has(override.variantKey)) {
      out.add(
        `overrides[${i}].variant_key`,
        `"${override.variantKey}" is not a variant of the experiment`,
        'UNKNOWN_VARIANT',
      );
    }
  });
}

/**
 * The units the layer's other experiments force into a variant, by unit id, with the experiment
 * forcing each: those whose overrides may still apply (DRAFT, SCHEDULED or RUNNING) and of the
 * same unit type. Two overrides of one unit in a layer would put it in both experiments.
 */
function layerOverrides(
  experiment: ExperimentDefinition,
  context: ExperimentValidationContext,
): ReadonlyMap<string, string> | undefined {
  const layerId = experiment.layerId ?? '';
  if (layerId === '' || experiment.status === ExperimentStatus.CONCLUDED) return undefined;
  if (experiment.status === ExperimentStatus.STOPPED) return undefined;
  const forced = new Map<string, string>();
  for (const other of context.otherExperiments) {
    if (
      other.id === experiment.id ||
      other.layerId !== layerId ||
      other.unitType !== experiment.unitType ||
      other.status === ExperimentStatus.STOPPED ||
      other.status === ExperimentStatus.CONCLUDED
    ) {
      continue;
    }
    for (const override of other.overrides ?? []) {
      if (!forced.has(override.unitId)) forced.set(override.unitId, other.id);
    }
  }
  return forced;
}

function checkLayer(
  out: Violations,
  experiment: ExperimentDefinition,
  context: ExperimentValidationContext,
): void {
  const layerId = experiment.layerId ?? '';
  const range = experiment.layerRange;
  if (layerId === '') {
    if (range !== undefined)
      out.add('layer_range', 'a layer range needs a layer_id', 'MUST_BE_UNSET');
    return;
  }
  if (!context.layerIds.has(layerId))
    out.add('layer_id', `layer "${layerId}" does not exist`, 'UNKNOWN_LAYER');
  if (range === undefined) {
    out.add('layer_range', 'an experiment in a layer needs a layer range', 'REQUIRED');
    return;
  }
  let valid = true;
  if (!(Number.isFinite(range.start) && range.start >= 0 && range.start < 1)) {
    out.add('layer_range.start', 'start must be in [0, 1)', 'OUT_OF_RANGE');
    valid = false;
  }
  if (!(Number.isFinite(range.end) && range.end <= 1 && range.end > range.start)) {
    out.add('layer_range.end', 'end must be in (start, 1]', 'OUT_OF_RANGE');
    valid = false;
  }
  // A concluded experiment has given its range up (others may own it now).
  if (!valid || experiment.status === ExperimentStatus.CONCLUDED) return;
  for (const other of context.otherExperiments) {
    const otherRange = other.layerRange;
    if (
      other.id === experiment.id ||
      other.layerId !== layerId ||
      other.status === ExperimentStatus.CONCLUDED ||
      otherRange === undefined
    ) {
      continue;
    }
    if (range.start < otherRange.end && otherRange.start < range.end) {
      out.add(
        'layer_range',
        `[${range.start}, ${range.end}) overlaps [${otherRange.start}, ${otherRange.end}) owned by experiment "${other.id}" in layer "${layerId}"`,
        'OVERLAPPING_LAYER_RANGE',
      );
    }
  }
}

function checkSchedule(out: Violations, experiment: ExperimentDefinition): void {
  const { scheduledStartTime: start, scheduledEndTime: end } = experiment;
  if (start !== undefined && end !== undefined && end <= start) {
    out.add('scheduled_end_time', 'the end must be after the start', 'END_BEFORE_START');
  }
}

function checkAllocationMode(out: Violations, experiment: ExperimentDefinition): void {
  // A plain number: definitions may come from storage or the wire with values outside the enum.
  const mode: number = experiment.allocationMode ?? AllocationMode.FIXED;
  if (mode !== AllocationMode.FIXED && mode !== AllocationMode.BANDIT) {
    out.add(
      'allocation_mode',
      'allocation mode must be FIXED or BANDIT',
      'UNKNOWN_ALLOCATION_MODE',
    );
    return;
  }
  if (mode === AllocationMode.FIXED) {
    if (experiment.bandit !== undefined)
      out.add('bandit', 'bandit settings are only for BANDIT experiments', 'MUST_BE_UNSET');
    return;
  }
  if (experiment.sticky !== true)
    out.add('sticky', 'a BANDIT experiment must be sticky', 'BANDIT_REQUIRES_STICKY');
  if (experiment.bandit === undefined) {
    out.add('bandit', 'a BANDIT experiment needs bandit settings', 'REQUIRED');
    return;
  }
  const k = Math.max(experiment.variants.length, 1);
  if (!isFiniteIn(experiment.bandit.minArmShare, 0, 1 / k)) {
    out.add('bandit.min_arm_share', `min_arm_share must be in [0, 1/${k}]`, 'OUT_OF_RANGE');
  }
}

/** An experiment or holdout as far as its hashing goes: whose seed it is. */
export interface SeededResource {
  readonly kind: 'experiment' | 'holdout';
  readonly id: string;
  /** The seed it hashes with (`effectiveSeed`, `holdoutSeed`). */
  readonly seed: string;
}

/**
 * A SEED_IN_USE violation of `seed` (an experiment's or a holdout's, effective) when one of
 * `others` (resources of the other kind) hashes with it too. A holdout hashing units as an
 * experiment it covers does would hold out the start of that experiment's buckets, its control,
 * rather than an even share of each variant, and so unbalance the split it leaves (see
 * `holdoutSeed`). Experiments may share a seed, to keep one split across a rerun.
 */
export function sharedSeedViolations(
  seed: string,
  others: Iterable<SeededResource>,
): FieldViolation[] {
  for (const other of others) {
    if (other.seed === seed) {
      return [
        {
          field: 'seed',
          description: `seed "${seed}" is the seed of ${other.kind} "${other.id}": an experiment and a holdout must hash units with different seeds`,
          reason: 'SEED_IN_USE',
        },
      ];
    }
  }
  return [];
}

/** What a layer's id is prefixed with to make the seed of its hash (see `layerHash`). */
const LAYER_SEED_PREFIX = '__';

/**
 * A RESERVED_SEED violation of `seed` (an experiment's or a holdout's, effective) when it hashes
 * units with hash version V1 and a seed of the form `__<id>`: exactly as layer `<id>` places
 * units (`hash("__" + layerId, unitId, v1)`), whether the layer exists yet or not. An experiment
 * in that layer would then split by the layer point that put the unit in its range (everyone in
 * a range at the start of the layer gets the control); a holdout would hold out the layer's first
 * experiments whole.
 */
export function layerSeedViolations(
  seed: string,
  hashVersion: number | undefined,
): FieldViolation[] {
  if (effectiveHashVersion(hashVersion) !== 1 || !seed.startsWith(LAYER_SEED_PREFIX)) return [];
  return [
    {
      field: 'seed',
      description: `with hash version V1, a seed starting with "${LAYER_SEED_PREFIX}" is how layer "${seed.slice(LAYER_SEED_PREFIX.length)}" hashes units; choose another`,
      reason: 'RESERVED_SEED',
    },
  ];
}

/**
 * Whether a violation of an updated resource's `field` (its seed) may stay: the seed is the one
 * stored, which cannot change once the resource ran and may predate today's rules (a length
 * limit, SEED_IN_USE); but a stored seed is not given another hash version it is reserved in.
 */
export function seedKeptAsStored(
  violation: { readonly field: string; readonly reason?: string },
  field: string,
  before: { readonly seed: string; readonly hashVersion: number },
  after: { readonly seed: string; readonly hashVersion: number },
): boolean {
  return (
    violation.field === field &&
    after.seed === before.seed &&
    (violation.reason !== 'RESERVED_SEED' || after.hashVersion === before.hashVersion)
  );
}

/** Every problem with a holdout definition. */
export function validateHoldout(
  holdout: HoldoutDefinition,
  context: HoldoutValidationContext,
): FieldViolation[] {
  const out = new Violations();
  checkId(out, holdout.id, 'holdout');
  if (holdout.unitType === '') out.add('unit_type', 'the unit type is required', 'REQUIRED');
  if (!(Number.isFinite(holdout.fraction) && holdout.fraction > 0 && holdout.fraction < 1)) {
    out.add('fraction', 'fraction must be in (0, 1)', 'OUT_OF_RANGE');
  }
  checkHashVersion(out, holdout.hashVersion);
  if (holdout.surfaces.length === 0 && holdout.layerIds.length === 0) {
    out.add('surfaces', 'at least one surface or layer is required', 'REQUIRED');
  }
  checkSurfaces(out, holdout.surfaces, false);
  if (holdout.layerIds.length > MAX_LAYERS) {
    out.add('layer_ids', `at most ${MAX_LAYERS} layers`, 'TOO_MANY');
  } else {
    holdout.layerIds.forEach((layerId, i) => {
      if (!context.layerIds.has(layerId))
        out.add(`layer_ids[${i}]`, `layer "${layerId}" does not exist`, 'UNKNOWN_LAYER');
      else if (holdout.layerIds.indexOf(layerId) < i)
        out.add(`layer_ids[${i}]`, `layer "${layerId}" is listed twice`, 'DUPLICATE_LAYER');
    });
  }
  const statuses: number[] = Object.values(HoldoutStatus);
  if (!statuses.includes(holdout.status))
    out.add('status', 'unknown holdout status', 'UNKNOWN_STATUS');
  return out.list;
}

/**
 * Every problem with a bandit allocation for `experiment`: weights must name every variant exactly
 * once, each in [0, 1], summing to 1 ± 0.01. Without an experiment (none has the id), what holds
 * for any: no variant named twice, weights in range and summing to 1. Paths are under `path`
 * (`allocation.weights`).
 */
export function validateAllocation(
  experiment: ExperimentDefinition | undefined,
  weights: readonly VariantWeight[],
  path = 'allocation.weights',
): FieldViolation[] {
  const out = new Violations();
  const keys = experiment && new Set(experiment.variants.map((v) => v.key));
  const seen = new Set<string>();
  weights.forEach((w, i) => {
    if (keys !== undefined && !keys.has(w.variantKey)) {
      out.add(
        `${path}[${i}].variant_key`,
        `"${w.variantKey}" is not a variant of the experiment`,
        'UNKNOWN_VARIANT',
      );
    } else if (seen.has(w.variantKey)) {
      out.add(
        `${path}[${i}].variant_key`,
        `"${w.variantKey}" is named twice`,
        'DUPLICATE_VARIANT_KEY',
      );
    }
    seen.add(w.variantKey);
    if (!isFiniteIn(w.weight, 0, 1))
      out.add(`${path}[${i}].weight`, 'weight must be in [0, 1]', 'OUT_OF_RANGE');
  });
  for (const key of keys ?? []) {
    if (!seen.has(key)) out.add(path, `variant "${key}" has no weight`, 'MISSING_VARIANT');
  }
  if (!weightsSumToOne(weights.map((w) => w.weight))) {
    out.add(path, 'weights must sum to 1 ± 0.01', 'WEIGHTS_DO_NOT_SUM_TO_ONE');
  }
  return out.list;
}

/**
 * The changes from `before` to `after` that the experiment's status forbids (for FAILED_PRECONDITION):
 * nothing for a DRAFT; for a started one (SCHEDULED, RUNNING, STOPPED) the bucketing-relevant
 * fields; for a CONCLUDED one everything but description, owner and tags.
 */
export function checkRunningChange(
  before: ExperimentDefinition,
  after: ExperimentDefinition,
): FieldViolation[] {
  const out = new Violations();
  if (before.status === ExperimentStatus.DRAFT) return out.list;
  if (before.status === ExperimentStatus.CONCLUDED) {
    const mutable = new Set(['description', 'owner', 'tags', 'etag', 'status']);
    const fields = new Set([...Object.keys(before), ...Object.keys(after)]);
    for (const field of fields) {
      if (mutable.has(field)) continue;
      const a = (before as unknown as Record<string, unknown>)[field];
      const b = (after as unknown as Record<string, unknown>)[field];
      if (JSON.stringify(a) !== JSON.stringify(b)) {
        out.add(
          snakeCase(field),
          'a concluded experiment only takes description, owner and tags',
          'IMMUTABLE_WHEN_CONCLUDED',
        );
      }
    }
    return out.list;
  }
  const frozen = (field: string, what: string): void => {
    out.add(
      field,
      `${what} cannot change once the experiment has started: units would move between variants`,
      'IMMUTABLE_ONCE_STARTED',
    );
  };
  if (before.unitType !== after.unitType) frozen('unit_type', 'the unit type');
  if (effectiveSeed(before) !== effectiveSeed(after)) frozen('seed', 'the seed');
  if (effectiveHashVersion(before.hashVersion) !== effectiveHashVersion(after.hashVersion)) {
    frozen('hash_version', 'the hash version');
  }
  if ((before.layerId ?? '') !== (after.layerId ?? '')) frozen('layer_id', 'the layer');
  else checkRangeChange(out, before, after);
  // Stickiness guards the weights: turned on, units exposed before hold no stored variant when
  // the weights then move; turned off, stored variants give way to weights that moved meanwhile.
  if ((before.sticky === true) !== (after.sticky === true)) {
    frozen('sticky', 'whether assignments are sticky');
  }
  const modeBefore = before.allocationMode ?? AllocationMode.FIXED;
  if (modeBefore !== (after.allocationMode ?? AllocationMode.FIXED))
    frozen('allocation_mode', 'the allocation mode');
  else if (
    modeBefore === AllocationMode.BANDIT &&
    before.bandit?.minArmShare !== after.bandit?.minArmShare
  ) {
    // The floor reshapes the split new units get. Changed here, it would do so under the same
    // allocation sequence and etag, so exposures (allocation_sequence) and GetAllocation would
    // name one allocation for two different splits: a bandit's split changes through
    // UpdateAllocation only, as a new sequence.
    out.add(
      'bandit.min_arm_share',
      "a started BANDIT experiment's minimum arm share cannot change: it would change the split under the same allocation sequence",
      'IMMUTABLE_ONCE_STARTED',
    );
  }
  const keysBefore = before.variants.map((v) => v.key);
  const keysAfter = after.variants.map((v) => v.key);
  if (keysBefore.length !== keysAfter.length || keysBefore.some((k, i) => k !== keysAfter[i])) {
    frozen('variants', 'the variant keys and their order');
  } else {
    const weightsChanged = before.variants.some((v, i) => v.weight !== after.variants[i]?.weight);
    if (weightsChanged && modeBefore === AllocationMode.BANDIT) {
      out.add(
        'variants',
        "a BANDIT experiment's weights change through UpdateAllocation",
        'WEIGHTS_IMMUTABLE',
      );
    } else if (weightsChanged && before.sticky !== true) {
      out.add(
        'variants',
        "a started experiment's weights may change only when it is sticky",
        'WEIGHTS_IMMUTABLE',
      );
    }
  }
  return out.list;
}

/**
 * A started experiment's layer range grows or shrinks at its end only: moving its start would
 * swap the units in it for others. A sticky experiment's range only grows: a unit holding a stored
 * variant keeps it outside the range, so a released part would be shared with the experiment that
 * takes it next.
 */
function checkRangeChange(
  out: Violations,
  before: ExperimentDefinition,
  after: ExperimentDefinition,
): void {
  const a = before.layerRange;
  const b = after.layerRange;
  if (a === undefined || b === undefined) return;
  if (a.start !== b.start) {
    out.add(
      'layer_range.start',
      'the start of the layer range cannot change once the experiment has started: the range grows or shrinks at its end',
      'IMMUTABLE_ONCE_STARTED',
    );
  } else if (before.sticky === true && b.end < a.end) {
    out.add(
      'layer_range.end',
      "a sticky experiment's layer range can only grow: units keep their stored variants outside it",
      'RANGE_ONLY_GROWS',
    );
  }
}

/**
 * How close a scheduled start counts as come: a replica learns of a change up to a second after
 * it is made (notification or periodic check), plus clock skew between replicas. A SCHEDULED
 * experiment within this of its start may already serve somewhere.
 */
export const START_MARGIN_MS = 2_000;

/**
 * Guards the schedule against edits that would contradict what was served: a started
 * experiment's start is history, an end may not be moved into the past (StopExperiment stops it
 * now), and a stopped experiment's schedule is closed. A SCHEDULED experiment's start may move
 * while it is still in the future. `now` is the update's time, in milliseconds since the epoch.
 */
export function checkScheduleChange(
  before: ExperimentDefinition,
  after: ExperimentDefinition,
  now: number,
): FieldViolation[] {
  const out = new Violations();
  const startBefore = before.scheduledStartTime;
  const startAfter = after.scheduledStartTime;
  const endBefore = before.scheduledEndTime;
  const endAfter = after.scheduledEndTime;
  const startChanged = startBefore !== startAfter;
  const endChanged = endBefore !== endAfter;
  switch (before.status) {
    case ExperimentStatus.SCHEDULED:
    case ExperimentStatus.RUNNING: {
      // A SCHEDULED experiment whose start has come (or nearly: START_MARGIN_MS) may be serving;
      // its status catches up shortly.
      const started =
        before.status === ExperimentStatus.RUNNING ||
        (startBefore !== undefined && startBefore <= now + START_MARGIN_MS);
      if (startChanged && started) {
        out.add(
          'scheduled_start_time',
          'the start cannot change once the experiment has started',
          'IMMUTABLE_ONCE_STARTED',
        );
      } else if (
        startChanged &&
        (startAfter === undefined || startAfter <= now + START_MARGIN_MS)
      ) {
        out.add(
          'scheduled_start_time',
          `a SCHEDULED experiment's start must stay more than ${START_MARGIN_MS / 1000} s in the future: to run it now, stop it (back to DRAFT) and start it`,
          'SCHEDULE_PASSED',
        );
      }
      if (endChanged && endBefore !== undefined && endBefore <= now) {
        out.add(
          'scheduled_end_time',
          'the scheduled end has passed: the experiment has stopped serving',
          'SCHEDULE_PASSED',
        );
      } else if (endChanged && endAfter !== undefined && endAfter <= now) {
        out.add(
          'scheduled_end_time',
          'a new end must be in the future: StopExperiment stops the experiment now',
          'SCHEDULE_PASSED',
        );
      }
      break;
    }
    case ExperimentStatus.STOPPED:
      for (const [field, changed] of [
        ['scheduled_start_time', startChanged],
        ['scheduled_end_time', endChanged],
      ] as const) {
        if (changed)
          out.add(field, "a stopped experiment's schedule cannot change", 'IMMUTABLE_ONCE_STOPPED');
      }
      break;
    default:
      // DRAFT: anything valid; CONCLUDED: checkRunningChange freezes everything.
      break;
  }
  return out.list;
}

function snakeCase(field: string): string {
  return field.replace(/[A-Z]/g, (c) => '_' + c.toLowerCase());
}
