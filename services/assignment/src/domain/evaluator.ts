/**
 * The assignment evaluator: an immutable {@link AssignmentSnapshot} compiled once per configuration
 * version, which resolves a unit into one assignment per experiment on the requested surfaces.
 *
 * Everything that does not depend on the unit is done when the snapshot is built: experiments are
 * indexed by surface, conditions are compiled conjunct by conjunct (identical ones shared, even
 * between different conditions: see `conjunctsOf`), bucket ranges computed
 * (with a bandit's minimum arm share applied), seeds pre-hashed, holdout coverage resolved and even
 * the result objects are created once and shared, since an assignment depends on the unit only
 * through which reason and variant it gets. Per resolve, the work left is one FNV pass per layer,
 * per distinct conjunct, per holdout and per experiment hash actually needed, memoised in scratch
 * arrays stamped with a resolve generation so nothing is cleared or allocated per experiment.
 *
 * `resolveServed` returns only the assignments that change what is served (the reasons of
 * {@link isServedReason}), as Resolve without `explain` does, without evaluating every experiment:
 * experiments in a layer own disjoint ranges of the unit's layer point, so per layer one hash and a
 * table lookup (the binary search over the sorted range bounds, done at build time for each of the
 * 1,000 points a layer hash can take) pick the (at most one) experiment the unit can be in.
 * Only those, plus experiments with no layer, shipped ones, sticky ones with a stored variant for
 * the unit and those overriding the unit's variant, are evaluated, with the same code and in the
 * same order as `resolve`; every experiment left out would have been NOT_RUNNING or
 * NOT_IN_LAYER_RANGE.
 *
 * Resolve follows assignment.proto's order and stops at the first reason that applies: OVERRIDE (a
 * unit of the experiment's type listed in its overrides, while it is DRAFT, SCHEDULED or RUNNING
 * before its end) → NOT_RUNNING → UNIT_TYPE_MISMATCH → NOT_IN_LAYER_RANGE (skipped by a unit's
 * sticky variant; forced by another experiment of the layer overriding the unit) → TARGETED_OUT →
 * HOLDOUT → STICKY (STICKY_UNAVAILABLE when the unit's stored variants could not be read) →
 * NOT_IN_COVERAGE → ASSIGNED; a CONCLUDED experiment with a shipped variant returns it (reason
 * CONCLUDED) right after the holdout check, skipping sticky, layer and coverage.
 */
import { applyMinArmShare, bucketRanges } from './bucketing';
import {
  AllocationMode,
  ExperimentStatus,
  HoldoutStatus,
  effectiveHashVersion,
  effectiveSeed,
  holdoutSeed,
  type AllocationDefinition,
  type AssignmentConfiguration,
  type ExperimentDefinition,
  type HoldoutDefinition,
  type Payload,
} from './configuration';
import {
  FNV_OFFSET_BASIS,
  HashVersion,
  V1_BUCKETS,
  V2_BUCKETS,
  bucketV1FromValueState,
  bucketV2FromSeedState,
  fnvContinue,
  hashV1FromValueState,
  hashV2FromSeedState,
} from './hashing';
import {
  InvalidConditionError,
  compileConjunct,
  conjunctsOf,
  isEmptyCondition,
  toleratedWhenStored,
  UNCOMPILABLE_CONDITION,
  validateCondition,
  type AttributePredicate,
  type Attributes,
  type Condition,
} from './targeting';

/** Why a unit got its variant (`tandem.assignment.v1.AssignmentReason`, same numbers). */
export const AssignmentReason = {
  ASSIGNED: 1,
  STICKY: 2,
  NOT_RUNNING: 3,
  UNIT_TYPE_MISMATCH: 4,
  TARGETED_OUT: 5,
  HOLDOUT: 6,
  NOT_IN_LAYER_RANGE: 7,
  NOT_IN_COVERAGE: 8,
  CONCLUDED: 9,
  STICKY_UNAVAILABLE: 10,
  OVERRIDE: 11,
} as const;
/** Why a unit got its variant. */
export type AssignmentReason = (typeof AssignmentReason)[keyof typeof AssignmentReason];

/**
 * Whether an assignment with this reason changes what is served or says why it could not
 * (ASSIGNED, STICKY, HOLDOUT, CONCLUDED, STICKY_UNAVAILABLE, OVERRIDE): what Resolve returns
 * without `explain`, and all `resolveServed` returns.
 */
export function isServedReason(reason: number): boolean {
  return (
    reason === ASSIGNED ||
    reason === STICKY ||
    reason === HOLDOUT ||
    reason === CONCLUDED ||
    reason === STICKY_UNAVAILABLE ||
    reason === OVERRIDE
  );
}

// Module constants: `AssignmentReason.X` compiles to a property read through `exports`.
const { ASSIGNED, STICKY, HOLDOUT, CONCLUDED, STICKY_UNAVAILABLE, OVERRIDE } = AssignmentReason;

/** A variant stored for a unit at its first exposure to a sticky experiment. */
export interface StickyAssignment {
  readonly variantKey: string;
  /** The allocation sequence it was drawn from (0 for FIXED experiments). */
  readonly allocationSequence: number;
}

/** The unit and request to resolve. */
export interface UnitContext {
  /** The unit id: the value hashed. */
  readonly id: string;
  /** The unit type, matched against each experiment's `unitType`. */
  readonly type: string;
  /** The request attributes targeting conditions are evaluated against. */
  readonly attributes: Attributes;
  /** The surfaces to resolve; experiments on several of them are returned once. */
  readonly surfaces: readonly string[];
  /** The request time (epoch ms), for schedules. */
  readonly now: number;
  /** Stored sticky assignments of this unit, by experiment id. */
  readonly sticky?: ReadonlyMap<string, StickyAssignment>;
  /**
   * Sticky experiments whose stored assignment for the unit could not be read: they serve the
   * control with reason STICKY_UNAVAILABLE instead of a variant the unit may not hold.
   */
  readonly stickyUnavailable?: ReadonlySet<string>;
}

/** A variant as the evaluator serves it. */
export interface CompiledVariant {
  readonly key: string;
  readonly index: number;
  readonly payload: Payload | undefined;
  /** The payload as JSON text, empty when the variant has none (what Resolve returns). */
  readonly payloadJson: string;
}

/** An experiment as compiled into a snapshot (the parts callers read back). */
export interface CompiledExperiment {
  readonly id: string;
  readonly definition: ExperimentDefinition;
  /** Empty when the experiment has no layer. */
  readonly layerId: string;
  readonly etag: string;
  readonly variants: readonly CompiledVariant[];
  /** The ranges in effect (bandit weights with the minimum arm share applied). */
  readonly ranges: readonly (readonly [number, number])[];
  /** The bandit allocation's sequence, 0 for FIXED experiments. */
  readonly allocationSequence: number;
}

/** A holdout as compiled into a snapshot. */
export interface CompiledHoldout {
  readonly id: string;
  readonly definition: HoldoutDefinition;
  readonly etag: string;
}

/** The outcome of one experiment for one unit. Shared and frozen: never mutate. */
export interface ResolvedAssignment {
  readonly experiment: CompiledExperiment;
  /**
   * The variant to serve: the assigned, sticky or overriding one, the shipped one, or else the
   * control.
   */
  readonly variant: CompiledVariant;
  /** True for reasons ASSIGNED and STICKY only. */
  readonly inExperiment: boolean;
  readonly reason: AssignmentReason;
  /** The holdout that held the unit out, set only for reason HOLDOUT. */
  readonly holdoutId: string;
  /** The bandit allocation the variant came from (ASSIGNED, STICKY); otherwise 0. */
  readonly allocationSequence: number;
  /** The requested surfaces this experiment runs on. */
  readonly surfaces: readonly string[];
  /**
   * The result's number among the snapshot's shared results (below `resultKeys`): every unit that
   * gets this result gets this very object, so callers can keep what they derive from it in arrays
   * indexed by it. -1 for a result made for one resolve only (STICKY, or an experiment on several
   * of the requested surfaces).
   */
  readonly key: number;
}

/** Whether the unit is held out by a running holdout covering requested surfaces. */
export interface HoldoutMembership {
  readonly holdout: CompiledHoldout;
  readonly heldOut: boolean;
  /** The requested surfaces it covers (directly or through a layer). */
  readonly surfaces: readonly string[];
  /**
   * The unit is forced into a variant (OVERRIDE) of an experiment the holdout covers, so it does
   * not get what its membership says everywhere the holdout reaches: not a member to analyse.
   */
  readonly overridden: boolean;
}

/** All assignments of a unit on the requested surfaces. */
export interface Resolution {
  /** Per requested surface in order, that surface's experiments ordered by id; each once. */
  readonly assignments: readonly ResolvedAssignment[];
  /** Running holdouts of the unit's type covering requested surfaces, ordered by id. */
  readonly holdouts: readonly HoldoutMembership[];
}

// How an experiment serves, decided at build time.
const Serving = { OFF: 0, WINDOW: 1, SHIPPED: 2 } as const;
type Serving = (typeof Serving)[keyof typeof Serving];

// Result cache layout per (experiment, surface slot): reasons 1..10 at their code, then one
// ASSIGNED entry per variant, then one HOLDOUT entry per covering holdout, then (for an experiment
// with overrides) one OVERRIDE entry per variant.
const REASON_SLOTS = 11;

interface ExperimentPlan extends CompiledExperiment {
  readonly index: number;
  readonly serving: Serving;
  readonly startMs: number;
  readonly endMs: number;
  readonly unitType: string;
  /** Index into the snapshot's distinct conditions, -1 for none. */
  readonly conditionSlot: number;
  /** Index into the snapshot's layers, -1 for none. */
  readonly layerSlot: number;
  readonly layerStart: number;
  readonly layerEnd: number;
  /** 1, 2, or 0 for an unknown version (no unit is bucketed). */
  readonly hashVersion: number;
  readonly seed: string;
  /** FNV state after the seed, for v2. */
  readonly seedState: number;
  readonly rangeStarts: Float64Array;
  readonly rangeEnds: Float64Array;
  readonly control: CompiledVariant;
  readonly shipped: CompiledVariant | undefined;
  readonly sticky: boolean;
  readonly variantsByKey: ReadonlyMap<string, CompiledVariant>;
  /**
   * The overridden units' variant indexes by unit id, when the experiment has overrides and
   * serves them (DRAFT, SCHEDULED, RUNNING: until `endMs`); undefined otherwise.
   */
  readonly overrides: ReadonlyMap<string, number> | undefined;
  /** Indexes of running holdouts (same unit type) covering the experiment, ordered by id. */
  readonly holdoutSlots: Int32Array;
  readonly surfaceNames: readonly string[];
  /** One frozen `[surface]` per entry of `surfaceNames`. */
  readonly singleSurfaces: readonly (readonly string[])[];
  readonly cacheStride: number;
}

interface HoldoutPlan extends CompiledHoldout {
  readonly index: number;
  readonly unitType: string;
  readonly fraction: number;
  readonly hashVersion: number;
  readonly seed: string;
  readonly seedState: number;
}

/**
 * What `resolveServed` evaluates on a surface; positions are into the surface's `experiments`.
 * Laid out flat (typed arrays, no object per layer) because a resolve touches one entry per layer
 * and per candidate, and on a busy server those reads are cache misses, not computation.
 */
interface ServedIndex {
  /** Experiments evaluated for every unit: no layer, shipped, or a range no point can be in. */
  readonly always: Int32Array;
  /** The layers with experiments that can serve (not NOT_RUNNING for good), one table each. */
  readonly layerSlots: Int32Array;
  /**
   * Per table t and each of the V1_BUCKETS points a layer hash takes (`bucket / V1_BUCKETS`), at
   * `t * V1_BUCKETS + bucket`: the position + 1 of the one experiment whose range holds the point,
   * 0 for none, or -(k + 1) when several do (overlapping ranges): their positions are `overlaps[k]`.
   */
  readonly buckets: Int32Array;
  readonly overlaps: readonly Int32Array[];
  /** The layered sticky experiments: a stored variant skips the layer check. */
  readonly stickyLayered: Int32Array;
  /** The positions of the experiments with overrides, by experiment `index`. */
  readonly overriding: ReadonlyMap<number, number>;
}

/**
 * The served path's record of each experiment of a surface, `RECORD_INTS` int32s at
 * `position * RECORD_INTS` of `SurfaceIndex.records`: everything `resolveRecord` reads about a
 * candidate, so a candidate costs one or two cache lines (on a busy server these reads miss the
 * caches, and a resolve has one candidate per layer). Offsets within a record:
 */
const Rec = {
  /** The experiment's `index`. */
  PLAN: 0,
  /** `RecFlag` bits. */
  FLAGS: 1,
  /** The unit type's number in the snapshot (`unitTypeIds`). */
  UNIT_TYPE: 2,
  /** The condition's slot, -1 for none. */
  CONDITION: 3,
  /** FNV state after the seed (v2). */
  SEED_STATE: 4,
  /** The result key of the ASSIGNED result of variant 0 (variant v: + v). */
  ASSIGNED_KEY: 5,
  /** How many variant ranges follow. */
  RANGES: 6,
  /** The experiment's slot for this surface (in its `surfaceNames`). */
  SLOT: 7,
  /** Variant v is served for integer buckets [lo, hi) at RANGE + 2v, RANGE + 2v + 1. */
  RANGE: 8,
} as const;
const RECORD_INTS = 16;
/** Ranges a record holds; experiments with more variants are not served from records. */
const RECORD_RANGES = (RECORD_INTS - Rec.RANGE) / 2;
const RecFlag = {
  /** `resolveRecord` may stand in for `evaluate` (see `isSimple`). */
  SIMPLE: 1,
  /** A scheduled start or end: the window is checked. */
  WINDOW: 2,
  /** Hash version 2 (else 1). */
  V2: 4,
} as const;

interface SurfaceIndex {
  readonly experiments: readonly ExperimentPlan[];
  /** One record per experiment above, see `Rec`. */
  readonly records: Int32Array;
  /** For each experiment above, its `index` (contiguous, for the served path's dedupe). */
  readonly planIndexes: Int32Array;
  /** For each experiment above, its slot in the experiment's `surfaceNames`. */
  readonly surfaceSlots: Int32Array;
  /** The running holdouts covering this surface whatever the time (see `indexSurfaces`). */
  readonly holdouts: readonly HoldoutPlan[];
  /**
   * The running holdouts covering this surface only through experiments with a scheduled window
   * (and those experiments): they cover it while one of them is within its window.
   */
  readonly windowedHoldouts: readonly WindowedCoverage[];
  /** The serving sticky experiments here (see `stickyExperimentIds`). */
  readonly stickyPlans: readonly ExperimentPlan[];
  /** Whether one of them has a scheduled window, so `now` decides which are serving. */
  readonly stickyWindowed: boolean;
  readonly stickyExperimentIds: readonly string[];
  readonly served: ServedIndex;
}

/** A holdout covering a surface through experiments that serve there only within a window. */
interface WindowedCoverage {
  readonly holdout: HoldoutPlan;
  readonly through: readonly ExperimentPlan[];
}

const NO_HOLDOUTS = new Int32Array(0);

/**
 * Builds the immutable snapshot for one configuration version. Definitions are trusted to have
 * passed validation; what validation would reject still compiles to something safe (an invalid
 * condition throws here, an unknown hash version buckets nobody).
 * @throws InvalidConditionError when an experiment's condition is invalid.
 */
export function buildSnapshot(configuration: AssignmentConfiguration): AssignmentSnapshot {
  return new AssignmentSnapshot(configuration);
}

/** A compiled configuration version; see the module comment. */
export class AssignmentSnapshot {
  private readonly experimentsById = new Map<string, ExperimentPlan>();
  private readonly holdoutsById = new Map<string, HoldoutPlan>();
  private readonly holdoutPlans: readonly HoldoutPlan[];
  private readonly surfaces = new Map<string, SurfaceIndex>();
  /** The compiled conjuncts of every condition, shared between conditions (see `conjunctsOf`). */
  private readonly predicates: AttributePredicate[] = [];
  /** Per distinct condition, the slots in `predicates` of its conjuncts. */
  private readonly conditionParts: (readonly number[])[] = [];
  /**
   * The experiments whose stored condition breaks a rule made since it was stored, by id (sorted),
   * with the rules' reasons (see `toleratedWhenStored`): evaluated as they were.
   */
  readonly outdatedConditions = new Map<string, readonly string[]>();
  private readonly layerSuffixes: string[] = [];
  /** The indexes of the experiments overriding each overridden unit's variant, by unit id. */
  private readonly overridden = new Map<string, number[]>();

  // Per-resolve memos, valid when their generation stamp equals `generation`.
  private generation = 0;
  private readonly conditionStamp: Uint32Array;
  private readonly conditionMatch: Uint8Array;
  private readonly partStamp: Uint32Array;
  private readonly partMatch: Uint8Array;
  private readonly layerStamp: Uint32Array;
  private readonly layerBucket: Int32Array;
  /**
   * Layers in which the unit being resolved is forced into a variant of an experiment: stamped
   * with the generation, they exclude it from the layer's other experiments (NOT_IN_LAYER_RANGE),
   * as its layer point would.
   */
  private readonly layerClaimStamp: Uint32Array;
  /** Holdouts covering an experiment the unit being resolved is forced into a variant of. */
  private readonly holdoutOverrideStamp: Uint32Array;
  /** Whether the unit being resolved is forced into a variant anywhere (see `claimOverrides`). */
  private overriddenUnit = false;
  private readonly holdoutStamp: Uint32Array;
  private readonly holdoutHeld: Uint8Array;
  private readonly seenStamp: Uint32Array;
  /** Scratch for `resolveServed`: candidate positions on the surface being resolved. */
  private readonly candidates: Int32Array;

  // Every experiment, by `index` (id order), and the shared results of each: results for plan i
  // start at resultBase[i], laid out as `result()` describes.
  private readonly plans: readonly ExperimentPlan[];
  private readonly results: (ResolvedAssignment | undefined)[] = [];
  private readonly resultBase: Int32Array;

  private readonly unitTypeIds = new Map<string, number>();
  // Schedules by experiment index, read only for records flagged WINDOW.
  private readonly startMs: Float64Array;
  private readonly endMs: Float64Array;
  private readonly seeds: readonly string[];

  // The unit being resolved and its FNV prefix state (for v1 hashes), set per resolve.
  private unitId = '';
  private unitState = 0;
  private attributes: Attributes = {};

  constructor(configuration: AssignmentConfiguration) {
    const layerSlots = new Map<string, number>();
    for (const layer of configuration.layers) {
      layerSlots.set(layer.id, this.layerSuffixes.length);
      this.layerSuffixes.push('__' + layer.id);
    }
    const holdouts = [...configuration.holdouts]
      .filter((h) => h.status === HoldoutStatus.RUNNING)
      .sort((a, b) => compareIds(a.id, b.id))
      .map((definition, index) => compileHoldout(definition, index));
    for (const h of holdouts) this.holdoutsById.set(h.id, h);
    this.holdoutPlans = holdouts;

    const allocations = new Map<string, AllocationDefinition>();
    for (const a of configuration.allocations) allocations.set(a.experimentId, a);

    const conditionSlots = new Map<string, number>();
    /** Per distinct condition, the reasons of the tightened rules it breaks. */
    const outdatedReasons = new Map<string, readonly string[]>();
    const partSlots = new Map<string, number>();
    const partSlot = (part: Condition): number => {
      const key = JSON.stringify(part);
      let slot = partSlots.get(key);
      if (slot === undefined) {
        slot = this.predicates.length;
        // Validated with its whole condition (below), so compiled without validating again.
        this.predicates.push(compileConjunct(part));
        partSlots.set(key, slot);
      }
      return slot;
    };
    let none = -1;
    const noneSlot = (): number => {
      if (none === -1) {
        none = this.predicates.length;
        this.predicates.push(() => false);
      }
      return none;
    };
    const conditionSlot = (definition: ExperimentDefinition): number => {
      const condition = definition.condition;
      if (condition === undefined || isEmptyCondition(condition)) return -1;
      const key = JSON.stringify(condition);
      let slot = conditionSlots.get(key);
      if (slot === undefined) {
        // A condition stored before a rule tightened (a `$regex` from before RE2, say) is
        // evaluated as it was (see `toleratedWhenStored`).
        const violations = validateCondition(condition);
        const refused = violations.filter((v) => !toleratedWhenStored(v));
        if (refused.length > 0) throw new InvalidConditionError(refused);
        const reasons = [...new Set(violations.map((v) => v.reason))];
        outdatedReasons.set(key, reasons);
        slot = this.conditionParts.length;
        // One sift cannot compile as it is evaluated matches no unit, as it effectively did
        // (see UNCOMPILABLE_CONDITION).
        this.conditionParts.push(
          reasons.includes(UNCOMPILABLE_CONDITION)
            ? [noneSlot()]
            : conjunctsOf(condition).map(partSlot),
        );
        conditionSlots.set(key, slot);
      }
      const outdated = outdatedReasons.get(key) ?? [];
      if (outdated.length > 0) this.outdatedConditions.set(definition.id, outdated);
      return slot;
    };
    const layerSlotOf = (layerId: string): number => {
      let slot = layerSlots.get(layerId);
      if (slot === undefined) {
        // A layer missing from the configuration still hashes by its id, as GrowthBook would.
        slot = this.layerSuffixes.length;
        layerSlots.set(layerId, slot);
        this.layerSuffixes.push('__' + layerId);
      }
      return slot;
    };

    const sorted = [...configuration.experiments].sort((a, b) => compareIds(a.id, b.id));
    const plans = sorted.map((definition, index) =>
      compileExperiment(definition, index, {
        conditionSlot: conditionSlot(definition),
        layerSlot: definition.layerId ? layerSlotOf(definition.layerId) : -1,
        allocation: allocations.get(definition.id),
        holdoutSlots: coveringHoldouts(definition, holdouts),
      }),
    );
    for (const plan of plans) {
      this.experimentsById.set(plan.id, plan);
      for (const unitId of plan.overrides?.keys() ?? []) {
        const indexes = this.overridden.get(unitId);
        if (indexes === undefined) this.overridden.set(unitId, [plan.index]);
        else indexes.push(plan.index);
      }
    }

    this.indexSurfaces(plans, holdouts);

    this.conditionStamp = new Uint32Array(this.conditionParts.length);
    this.conditionMatch = new Uint8Array(this.conditionParts.length);
    this.partStamp = new Uint32Array(this.predicates.length);
    this.partMatch = new Uint8Array(this.predicates.length);
    this.layerStamp = new Uint32Array(this.layerSuffixes.length);
    this.layerBucket = new Int32Array(this.layerSuffixes.length);
    this.layerClaimStamp = new Uint32Array(this.layerSuffixes.length);
    this.holdoutOverrideStamp = new Uint32Array(holdouts.length);
    this.holdoutStamp = new Uint32Array(holdouts.length);
    this.holdoutHeld = new Uint8Array(holdouts.length);
    this.seenStamp = new Uint32Array(plans.length);
    let widest = 0;
    for (const index of this.surfaces.values()) widest = Math.max(widest, index.experiments.length);
    this.candidates = new Int32Array(widest);

    this.plans = plans;
    this.resultBase = new Int32Array(plans.length);
    let results = 0;
    for (const plan of plans) {
      this.resultBase[plan.index] = results;
      results += plan.surfaceNames.length * plan.cacheStride;
    }
    this.results = new Array<ResolvedAssignment | undefined>(results).fill(undefined);
    for (const plan of plans) {
      if (!this.unitTypeIds.has(plan.unitType)) {
        this.unitTypeIds.set(plan.unitType, this.unitTypeIds.size);
      }
    }
    this.startMs = Float64Array.from(plans, (p) => p.startMs);
    this.endMs = Float64Array.from(plans, (p) => p.endMs);
    this.seeds = plans.map((p) => p.seed);
    for (const index of this.surfaces.values()) this.fillRecords(index);
  }

  /** How many shared results the snapshot can make: every `ResolvedAssignment.key` is below it. */
  get resultKeys(): number {
    return this.results.length;
  }

  /** The compiled experiment with this id, if the configuration has it. */
  experiment(id: string): CompiledExperiment | undefined {
    return this.experimentsById.get(id);
  }

  /** The running holdout with this id, if any. */
  holdout(id: string): CompiledHoldout | undefined {
    return this.holdoutsById.get(id);
  }

  /** Whether any experiment or running holdout is on this surface. */
  hasSurface(surface: string): boolean {
    return this.surfaces.has(surface);
  }

  /**
   * The sticky experiments on these surfaces serving at `now` (RUNNING or SCHEDULED, within their
   * scheduled window), so the caller can fetch the unit's stored sticky assignments (one storage
   * read) before resolving. Given the unit, without those its overrides decide, whose stored
   * variant the resolve never reads: the experiments forcing it into a variant, and the other
   * experiments of their layers (see `claimOverrides`).
   */
  stickyExperimentIds(
    surfaces: readonly string[],
    now: number,
    unitId?: string,
    unitType = '',
  ): readonly string[] {
    const ids = this.servingStickyIds(surfaces, now);
    // Ids and type apart rather than a unit object: this runs on every Resolve.
    const forced =
      unitId === undefined || this.overridden.size === 0 ? undefined : this.overridden.get(unitId);
    return forced === undefined || ids.length === 0
      ? ids
      : this.withoutOverridden(ids, forced, { id: unitId ?? '', type: unitType, now });
  }

  private withoutOverridden(
    ids: readonly string[],
    forced: readonly number[],
    unit: OverrideTarget,
  ): readonly string[] {
    const decided = new Set<number>();
    const claimedLayers = new Set<number>();
    for (const index of forced) {
      const plan = this.plans[index];
      if (plan === undefined || overrideOf(plan, unit) < 0) continue;
      decided.add(plan.index);
      if (plan.layerSlot >= 0) claimedLayers.add(plan.layerSlot);
    }
    if (decided.size === 0) return ids;
    return ids.filter((id) => {
      const plan = this.experimentsById.get(id);
      if (plan === undefined) return true;
      if (decided.has(plan.index)) return false;
      // A shipped experiment serves its variant whatever the layer claims (see `evaluate`).
      return !(claimedLayers.has(plan.layerSlot) && plan.serving !== Serving.SHIPPED);
    });
  }

  private servingStickyIds(surfaces: readonly string[], now: number): readonly string[] {
    if (surfaces.length === 1) {
      const index = this.surfaces.get(surfaces[0] ?? '');
      if (index === undefined) return [];
      return index.stickyWindowed ? servingIds(index.stickyPlans, now) : index.stickyExperimentIds;
    }
    const ids = new Set<string>();
    for (const surface of surfaces) {
      const index = this.surfaces.get(surface);
      if (index === undefined) continue;
      const here = index.stickyWindowed
        ? servingIds(index.stickyPlans, now)
        : index.stickyExperimentIds;
      for (const id of here) ids.add(id);
    }
    return [...ids];
  }

  /** Resolves every experiment on the unit's surfaces. Synchronous and side-effect free. */
  resolve(unit: UnitContext): Resolution {
    this.beginResolve(unit);
    const assignments: ResolvedAssignment[] = [];
    const single = unit.surfaces.length === 1;
    for (const surface of unit.surfaces) {
      const index = this.surfaces.get(surface);
      if (index === undefined) continue;
      const { experiments, surfaceSlots } = index;
      for (let i = 0; i < experiments.length; i++) {
        const plan = experiments[i];
        if (plan === undefined) continue;
        if (!single) {
          if (this.seenStamp[plan.index] === this.generation) continue;
          this.seenStamp[plan.index] = this.generation;
        }
        const slot = single ? (surfaceSlots[i] ?? 0) : this.surfaceSlotFor(plan, unit.surfaces);
        assignments.push(this.evaluate(plan, unit, slot));
      }
    }
    return { assignments, holdouts: this.holdoutMemberships(unit) };
  }

  /**
   * Exactly the assignments of {@link resolve} whose reason {@link isServedReason}, in the same
   * order, with the same holdout memberships; see the module comment for how the rest is skipped.
   */
  resolveServed(unit: UnitContext): Resolution {
    const forced = this.beginResolve(unit);
    const assignments: ResolvedAssignment[] = [];
    const single = unit.surfaces.length === 1;
    const sticky = unit.sticky;
    const hasSticky = sticky !== undefined && sticky.size > 0;
    // Within one surface an experiment is a candidate once (in `always` or in one layer table,
    // once per bucket), unless a sticky variant or an override makes it one again: only then, or
    // across surfaces, are candidates deduplicated.
    const dedupe = !single || hasSticky || forced !== undefined;
    const candidates = this.candidates;
    const seen = this.seenStamp;
    const generation = this.generation;
    const unitType = this.unitTypeIds.get(unit.type) ?? -1;
    for (const surface of unit.surfaces) {
      const index = this.surfaces.get(surface);
      if (index === undefined) continue;
      const { experiments, surfaceSlots, served, planIndexes, records } = index;
      let count = 0;
      // Each experiment is evaluated once per resolve: at its first requested surface, and once
      // even when both its layer range and a sticky variant make it a candidate.
      const always = served.always;
      for (let i = 0; i < always.length; i++) {
        const position = always[i] ?? 0;
        if (dedupe) {
          const planIndex = planIndexes[position] ?? 0;
          if (seen[planIndex] === generation) continue;
          seen[planIndex] = generation;
        }
        candidates[count++] = position;
      }
      const { layerSlots, buckets } = served;
      for (let t = 0; t < layerSlots.length; t++) {
        const entry = buckets[t * V1_BUCKETS + this.layerBucketOf(layerSlots[t] ?? 0)] ?? 0;
        if (entry > 0) {
          const position = entry - 1;
          if (dedupe) {
            const planIndex = planIndexes[position] ?? 0;
            if (seen[planIndex] === generation) continue;
            seen[planIndex] = generation;
          }
          candidates[count++] = position;
        } else if (entry < 0) {
          const overlap = served.overlaps[-entry - 1] ?? NO_HOLDOUTS;
          for (let i = 0; i < overlap.length; i++) {
            const position = overlap[i] ?? 0;
            if (dedupe) {
              const planIndex = planIndexes[position] ?? 0;
              if (seen[planIndex] === generation) continue;
              seen[planIndex] = generation;
            }
            candidates[count++] = position;
          }
        }
      }
      if (hasSticky) {
        const stickyLayered = served.stickyLayered;
        for (let i = 0; i < stickyLayered.length; i++) {
          const position = stickyLayered[i] ?? 0;
          const plan = experiments[position];
          if (plan === undefined || seen[plan.index] === generation) continue;
          if (!hasStickyVariant(plan, unit)) continue;
          seen[plan.index] = generation;
          candidates[count++] = position;
        }
      }
      if (forced !== undefined) {
        // A draft is in no table, and an override skips the layer check: each experiment
        // overriding this unit's variant is a candidate wherever the unit's layer point is.
        for (let i = 0; i < forced.length; i++) {
          const planIndex = forced[i] ?? 0;
          const position = served.overriding.get(planIndex);
          if (position === undefined || seen[planIndex] === generation) continue;
          seen[planIndex] = generation;
          candidates[count++] = position;
        }
      }
      // Positions ascend with experiment ids, the order `resolve` returns. An insertion sort: the
      // candidates are a few dozen, and the typed array's own sort costs more at this size.
      for (let i = 1; i < count; i++) {
        const position = candidates[i] ?? 0;
        let j = i - 1;
        while (j >= 0 && (candidates[j] ?? 0) > position) {
          candidates[j + 1] = candidates[j] ?? 0;
          j--;
        }
        candidates[j + 1] = position;
      }
      for (let i = 0; i < count; i++) {
        const position = candidates[i] ?? 0;
        const record = position * RECORD_INTS;
        // A unit forced into a variant somewhere takes the full evaluation, which knows the
        // layers its overrides claim.
        if (
          single &&
          !this.overriddenUnit &&
          ((records[record + Rec.FLAGS] ?? 0) & RecFlag.SIMPLE) !== 0
        ) {
          const resolved = this.resolveRecord(records, record, unit, unitType);
          if (resolved !== undefined) assignments.push(resolved);
          continue;
        }
        const plan = experiments[position];
        if (plan === undefined) continue;
        const slot = single
          ? (surfaceSlots[position] ?? 0)
          : this.surfaceSlotFor(plan, unit.surfaces);
        const resolved = this.evaluate(plan, unit, slot);
        if (isServedReason(resolved.reason)) assignments.push(resolved);
      }
    }
    return { assignments, holdouts: this.holdoutMemberships(unit) };
  }

  /**
   * `evaluate` for a "simple" experiment (see `isSimple`) that is a candidate of `resolveServed`
   * on a single requested surface, from its record: the served result, or undefined when the
   * reason would be one that is not served. The candidate is in its layer range (the bucket table
   * put it there) or has no layer; no holdout covers it, it is not sticky and not shipped, so the
   * remaining steps are the schedule, the unit type, the condition and the variant ranges, in
   * `evaluate`'s order.
   */
  private resolveRecord(
    records: Int32Array,
    at: number,
    unit: UnitContext,
    unitType: number,
  ): ResolvedAssignment | undefined {
    const flags = records[at + Rec.FLAGS] ?? 0;
    if ((flags & RecFlag.WINDOW) !== 0) {
      const planIndex = records[at + Rec.PLAN] ?? 0;
      if (unit.now < (this.startMs[planIndex] ?? 0) || unit.now >= (this.endMs[planIndex] ?? 0))
        return undefined;
    }
    if (records[at + Rec.UNIT_TYPE] !== unitType) return undefined;
    const condition = records[at + Rec.CONDITION] ?? -1;
    if (condition >= 0 && !this.conditionMatches(condition)) return undefined;
    const bucket =
      (flags & RecFlag.V2) !== 0
        ? bucketV2FromSeedState(records[at + Rec.SEED_STATE] ?? 0, this.unitId)
        : bucketV1FromValueState(this.unitState, this.seeds[records[at + Rec.PLAN] ?? 0] ?? '');
    const ranges = records[at + Rec.RANGES] ?? 0;
    for (let v = 0; v < ranges; v++) {
      const range = at + Rec.RANGE + 2 * v;
      if (bucket >= (records[range] ?? 0) && bucket < (records[range + 1] ?? 0)) {
        const key = (records[at + Rec.ASSIGNED_KEY] ?? 0) + v;
        const cached = this.results[key];
        if (cached !== undefined) return cached;
        const plan = this.plans[records[at + Rec.PLAN] ?? 0];
        return plan === undefined
          ? undefined
          : this.result(plan, records[at + Rec.SLOT] ?? 0, AssignmentReason.ASSIGNED, unit, v);
      }
    }
    return undefined; // NOT_IN_COVERAGE
  }

  /** Fills the served-path record of every experiment of a surface (see `Rec`). */
  private fillRecords(index: SurfaceIndex): void {
    const { experiments, surfaceSlots, records } = index;
    experiments.forEach((plan, position) => {
      const at = position * RECORD_INTS;
      const buckets = plan.hashVersion === HashVersion.V2 ? V2_BUCKETS : V1_BUCKETS;
      const simple = isSimple(plan) && plan.rangeStarts.length <= RECORD_RANGES;
      records[at + Rec.PLAN] = plan.index;
      records[at + Rec.FLAGS] =
        (simple ? RecFlag.SIMPLE : 0) |
        (plan.startMs !== -Infinity || plan.endMs !== Infinity ? RecFlag.WINDOW : 0) |
        (plan.hashVersion === HashVersion.V2 ? RecFlag.V2 : 0);
      records[at + Rec.UNIT_TYPE] = this.unitTypeIds.get(plan.unitType) ?? -1;
      records[at + Rec.CONDITION] = plan.conditionSlot;
      records[at + Rec.SEED_STATE] = plan.seedState | 0;
      records[at + Rec.SLOT] = surfaceSlots[position] ?? 0;
      records[at + Rec.ASSIGNED_KEY] =
        (this.resultBase[plan.index] ?? 0) +
        (surfaceSlots[position] ?? 0) * plan.cacheStride +
        REASON_SLOTS;
      if (!simple) return;
      records[at + Rec.RANGES] = plan.rangeStarts.length;
      for (let v = 0; v < plan.rangeStarts.length; v++) {
        const start = plan.rangeStarts[v] ?? 1;
        const end = plan.rangeEnds[v] ?? 0;
        // The hash is `bucket / buckets`: the buckets whose hash is in [start, end).
        records[at + Rec.RANGE + 2 * v] = firstBucket(buckets, (h) => h >= start);
        records[at + Rec.RANGE + 2 * v + 1] = firstBucket(buckets, (h) => !(h < end));
      }
    });
  }

  /**
   * Starts a resolve of `unit`: a new generation for the memos, the unit's hash prefix, and the
   * claims of its overrides (see `claimOverrides`). Returns the indexes of the experiments that
   * list the unit in their overrides, if any.
   */
  private beginResolve(unit: UnitContext): readonly number[] | undefined {
    this.generation = (this.generation + 1) >>> 0;
    if (this.generation === 0) {
      // Wrapped after 2^32 resolves: clear the stamps once so none looks current.
      this.conditionStamp.fill(0);
      this.partStamp.fill(0);
      this.layerStamp.fill(0);
      this.holdoutStamp.fill(0);
      this.seenStamp.fill(0);
      this.layerClaimStamp.fill(0);
      this.holdoutOverrideStamp.fill(0);
      this.generation = 1;
    }
    this.unitId = unit.id;
    this.unitState = fnvContinue(FNV_OFFSET_BASIS, unit.id);
    this.attributes = unit.attributes;
    this.overriddenUnit = false;
    const forced = this.overridden.size === 0 ? undefined : this.overridden.get(unit.id);
    if (forced !== undefined) this.claimOverrides(forced, unit);
    return forced;
  }

  /**
   * Marks what the overrides of `forced` (the experiments listing the unit) claim for this
   * resolve: the layers of those that serve the override, whose other experiments the unit is
   * then not in, and the holdouts covering them, whose membership is then not analysable. On
   * every surface, requested or not: a layer and a holdout span surfaces.
   */
  private claimOverrides(forced: readonly number[], unit: UnitContext): void {
    for (let i = 0; i < forced.length; i++) {
      const plan = this.plans[forced[i] ?? 0];
      if (plan === undefined || overrideOf(plan, unit) < 0) continue;
      this.overriddenUnit = true;
      if (plan.layerSlot >= 0) this.layerClaimStamp[plan.layerSlot] = this.generation;
      const holdouts = plan.holdoutSlots;
      for (let h = 0; h < holdouts.length; h++) {
        this.holdoutOverrideStamp[holdouts[h] ?? 0] = this.generation;
      }
    }
  }

  // -1 means "several requested surfaces": the result carries its own surfaces array.
  private surfaceSlotFor(plan: ExperimentPlan, requested: readonly string[]): number {
    let found = -1;
    for (let s = 0; s < plan.surfaceNames.length; s++) {
      if (requested.includes(plan.surfaceNames[s] ?? '')) {
        if (found !== -1) return -1;
        found = s;
      }
    }
    return found;
  }

  private evaluate(plan: ExperimentPlan, unit: UnitContext, slot: number): ResolvedAssignment {
    if (plan.overrides !== undefined) {
      const forced = overrideOf(plan, unit);
      if (forced >= 0) return this.result(plan, slot, OVERRIDE, unit, forced);
    }
    if (plan.serving === Serving.OFF)
      return this.result(plan, slot, AssignmentReason.NOT_RUNNING, unit);
    if (plan.serving === Serving.WINDOW && (unit.now < plan.startMs || unit.now >= plan.endMs)) {
      return this.result(plan, slot, AssignmentReason.NOT_RUNNING, unit);
    }
    if (unit.type !== plan.unitType) {
      return this.result(plan, slot, AssignmentReason.UNIT_TYPE_MISMATCH, unit);
    }
    // Layer membership comes before targeting, as in GrowthBook: it is one cached hash per layer,
    // while conditions cost far more, and a unit outside the range is out whatever its attributes.
    // A shipped variant reaches every unit and a sticky unit keeps its variant if the range moved,
    // so both skip it. A unit forced into a variant of another experiment of the layer is in that
    // one only, whatever its layer point (or stored variant) says.
    if (
      plan.layerSlot >= 0 &&
      plan.serving !== Serving.SHIPPED &&
      this.overriddenUnit &&
      this.layerClaimStamp[plan.layerSlot] === this.generation
    ) {
      return this.result(plan, slot, AssignmentReason.NOT_IN_LAYER_RANGE, unit);
    }
    if (plan.layerSlot >= 0 && plan.serving !== Serving.SHIPPED && !hasStickyVariant(plan, unit)) {
      const point = this.layerPointOf(plan.layerSlot);
      if (point < plan.layerStart || point >= plan.layerEnd) {
        return this.result(plan, slot, AssignmentReason.NOT_IN_LAYER_RANGE, unit);
      }
    }
    if (plan.conditionSlot >= 0 && !this.conditionMatches(plan.conditionSlot)) {
      return this.result(plan, slot, AssignmentReason.TARGETED_OUT, unit);
    }
    const holdouts = plan.holdoutSlots;
    for (let h = 0; h < holdouts.length; h++) {
      if (this.heldOut(holdouts[h] ?? 0))
        return this.result(plan, slot, AssignmentReason.HOLDOUT, unit, h);
    }
    if (plan.serving === Serving.SHIPPED)
      return this.result(plan, slot, AssignmentReason.CONCLUDED, unit);
    if (plan.sticky && unit.stickyUnavailable?.has(plan.id) === true)
      return this.result(plan, slot, AssignmentReason.STICKY_UNAVAILABLE, unit);
    if (plan.sticky && unit.sticky !== undefined) {
      const stored = unit.sticky.get(plan.id);
      const variant = stored === undefined ? undefined : plan.variantsByKey.get(stored.variantKey);
      if (stored !== undefined && variant !== undefined) {
        return freeze({
          experiment: plan,
          variant,
          inExperiment: true,
          reason: AssignmentReason.STICKY,
          holdoutId: '',
          allocationSequence: stored.allocationSequence,
          surfaces: this.surfacesOf(plan, slot, unit),
          key: -1,
        });
      }
    }
    const variant = this.chooseVariant(plan);
    if (variant < 0) return this.result(plan, slot, AssignmentReason.NOT_IN_COVERAGE, unit);
    return this.result(plan, slot, AssignmentReason.ASSIGNED, unit, variant);
  }

  private chooseVariant(plan: ExperimentPlan): number {
    let n: number;
    if (plan.hashVersion === HashVersion.V2) n = hashV2FromSeedState(plan.seedState, this.unitId);
    else if (plan.hashVersion === HashVersion.V1)
      n = hashV1FromValueState(this.unitState, plan.seed);
    else return -1;
    const starts = plan.rangeStarts;
    const ends = plan.rangeEnds;
    for (let i = 0; i < starts.length; i++) {
      if (n >= (starts[i] ?? 1) && n < (ends[i] ?? 0)) return i;
    }
    return -1;
  }

  private conditionMatches(slot: number): boolean {
    if (this.conditionStamp[slot] !== this.generation) {
      this.conditionStamp[slot] = this.generation;
      this.conditionMatch[slot] = this.partsMatch(this.conditionParts[slot] ?? []) ? 1 : 0;
    }
    return this.conditionMatch[slot] === 1;
  }

  /** Whether every conjunct matches, each evaluated at most once per resolve. */
  private partsMatch(parts: readonly number[]): boolean {
    for (let i = 0; i < parts.length; i++) {
      const part = parts[i] ?? 0;
      if (this.partStamp[part] !== this.generation) {
        this.partStamp[part] = this.generation;
        const predicate = this.predicates[part];
        this.partMatch[part] = predicate !== undefined && predicate(this.attributes) ? 1 : 0;
      }
      if (this.partMatch[part] !== 1) return false;
    }
    return true;
  }

  // The layer hash `hash("__" + layerId, unitId, v1)` is `bucket / V1_BUCKETS`.
  private layerBucketOf(slot: number): number {
    if (this.layerStamp[slot] !== this.generation) {
      this.layerStamp[slot] = this.generation;
      this.layerBucket[slot] = bucketV1FromValueState(
        this.unitState,
        this.layerSuffixes[slot] ?? '',
      );
    }
    return this.layerBucket[slot] ?? 0;
  }

  private layerPointOf(slot: number): number {
    return this.layerBucketOf(slot) / V1_BUCKETS;
  }

  private heldOut(slot: number): boolean {
    if (this.holdoutStamp[slot] !== this.generation) {
      this.holdoutStamp[slot] = this.generation;
      const holdout = this.holdoutPlans[slot];
      this.holdoutHeld[slot] =
        holdout !== undefined && this.holdoutHash(holdout) < holdout.fraction ? 1 : 0;
    }
    return this.holdoutHeld[slot] === 1;
  }

  private holdoutHash(holdout: HoldoutPlan): number {
    if (holdout.hashVersion === HashVersion.V2)
      return hashV2FromSeedState(holdout.seedState, this.unitId);
    if (holdout.hashVersion === HashVersion.V1)
      return hashV1FromValueState(this.unitState, holdout.seed);
    return 1; // unknown version: nobody is held out
  }

  private surfacesOf(plan: ExperimentPlan, slot: number, unit: UnitContext): readonly string[] {
    if (slot >= 0) return plan.singleSurfaces[slot] ?? [];
    return Object.freeze(plan.surfaceNames.filter((s) => unit.surfaces.includes(s)));
  }

  // The shared result for (experiment, surface slot, reason, variant or holdout position).
  private result(
    plan: ExperimentPlan,
    slot: number,
    reason: AssignmentReason,
    unit: UnitContext,
    position = 0,
  ): ResolvedAssignment {
    const offset =
      reason === AssignmentReason.ASSIGNED
        ? REASON_SLOTS + position
        : reason === AssignmentReason.HOLDOUT
          ? REASON_SLOTS + plan.variants.length + position
          : reason === AssignmentReason.OVERRIDE
            ? REASON_SLOTS + plan.variants.length + plan.holdoutSlots.length + position
            : reason;
    const key = (this.resultBase[plan.index] ?? 0) + slot * plan.cacheStride + offset;
    const cached = slot >= 0 ? this.results[key] : undefined;
    if (cached !== undefined) return cached;
    const created = freeze({
      experiment: plan,
      variant:
        reason === AssignmentReason.ASSIGNED || reason === AssignmentReason.OVERRIDE
          ? (plan.variants[position] ?? plan.control)
          : reason === AssignmentReason.CONCLUDED
            ? (plan.shipped ?? plan.control)
            : plan.control,
      inExperiment: reason === AssignmentReason.ASSIGNED,
      reason,
      holdoutId:
        reason === AssignmentReason.HOLDOUT
          ? this.holdoutIdAt(plan.holdoutSlots[position] ?? -1)
          : '',
      allocationSequence: reason === AssignmentReason.ASSIGNED ? plan.allocationSequence : 0,
      surfaces: this.surfacesOf(plan, slot, unit),
      key: slot >= 0 ? key : -1,
    });
    if (slot >= 0) this.results[key] = created;
    return created;
  }

  private holdoutIdAt(slot: number): string {
    return this.holdoutPlans[slot]?.id ?? '';
  }

  private holdoutMemberships(unit: UnitContext): HoldoutMembership[] {
    if (this.holdoutPlans.length === 0) return [];
    const covered = new Map<HoldoutPlan, string[]>();
    const cover = (holdout: HoldoutPlan, surface: string): void => {
      if (holdout.unitType !== unit.type) return;
      const surfaces = covered.get(holdout);
      if (surfaces === undefined) covered.set(holdout, [surface]);
      else if (!surfaces.includes(surface)) surfaces.push(surface);
    };
    for (const surface of unit.surfaces) {
      const index = this.surfaces.get(surface);
      if (index === undefined) continue;
      for (const holdout of index.holdouts) cover(holdout, surface);
      for (const { holdout, through } of index.windowedHoldouts) {
        if (through.some((plan) => unit.now >= plan.startMs && unit.now < plan.endMs)) {
          cover(holdout, surface);
        }
      }
    }
    const memberships: HoldoutMembership[] = [];
    for (const [holdout, surfaces] of covered) {
      memberships.push({
        holdout,
        heldOut: this.heldOut(holdout.index),
        surfaces,
        overridden:
          this.overriddenUnit && this.holdoutOverrideStamp[holdout.index] === this.generation,
      });
    }
    return memberships.sort((a, b) => compareIds(a.holdout.id, b.holdout.id));
  }

  private indexSurfaces(plans: readonly ExperimentPlan[], holdouts: readonly HoldoutPlan[]): void {
    const bySurface = new Map<string, { experiments: ExperimentPlan[]; slots: number[] }>();
    for (const plan of plans) {
      plan.surfaceNames.forEach((surface, slot) => {
        let entry = bySurface.get(surface);
        if (entry === undefined) {
          entry = { experiments: [], slots: [] };
          bySurface.set(surface, entry);
        }
        entry.experiments.push(plan);
        entry.slots.push(slot);
      });
    }
    const surfaceNames = new Set<string>([
      ...bySurface.keys(),
      ...holdouts.flatMap((h) => h.definition.surfaces),
    ]);
    for (const surface of surfaceNames) {
      const entry = bySurface.get(surface) ?? { experiments: [], slots: [] };
      // Only where a stored variant can matter: a shipped or stopped experiment never reads it.
      const stickyPlans = entry.experiments.filter((p) => p.sticky && p.serving === Serving.WINDOW);
      // A holdout covers an experiment on all of its surfaces, so one that covers a serving
      // experiment here (through its layer, or through another surface) acts here too: its
      // membership is listed (and logged). A draft or stopped experiment changes nothing here,
      // so it does not widen it; nor does a scheduled one outside its window (before its start,
      // past its end), which serves nobody then either: whether it serves is decided at `now`.
      const serving = entry.experiments.filter((p) => p.serving !== Serving.OFF);
      const windowed = (p: ExperimentPlan): boolean =>
        p.serving === Serving.WINDOW && (p.startMs !== -Infinity || p.endMs !== Infinity);
      const coveringHere = new Set(
        serving.filter((p) => !windowed(p)).flatMap((p) => [...p.holdoutSlots]),
      );
      const always = holdouts.filter(
        (h) => h.definition.surfaces.includes(surface) || coveringHere.has(h.index),
      );
      const windowedHoldouts: WindowedCoverage[] = [];
      for (const holdout of holdouts) {
        if (always.includes(holdout)) continue;
        const through = serving.filter(
          (p) => windowed(p) && p.holdoutSlots.includes(holdout.index),
        );
        if (through.length > 0) windowedHoldouts.push({ holdout, through });
      }
      this.surfaces.set(surface, {
        experiments: entry.experiments,
        surfaceSlots: Int32Array.from(entry.slots),
        holdouts: always,
        windowedHoldouts,
        stickyPlans,
        stickyWindowed: stickyPlans.some((p) => p.startMs !== -Infinity || p.endMs !== Infinity),
        stickyExperimentIds: stickyPlans.map((p) => p.id),
        planIndexes: Int32Array.from(entry.experiments.map((p) => p.index)),
        // Filled once result keys and unit type numbers are known (see `fillRecords`).
        records: new Int32Array(entry.experiments.length * RECORD_INTS),
        served: servedIndex(entry.experiments),
      });
    }
  }
}

/**
 * The first integer bucket b in [0, buckets] whose hash `b / buckets` satisfies `test`, which is
 * false then true as b grows (`buckets` when none in [0, buckets) does): with it, a hash in a
 * range is found by comparing integers, exactly as comparing the hash with the bounds would.
 */
function firstBucket(buckets: number, test: (hash: number) => boolean): number {
  let low = 0;
  let high = buckets;
  while (low < high) {
    const middle = (low + high) >>> 1;
    if (test(middle / buckets)) high = middle;
    else low = middle + 1;
  }
  return low;
}

/**
 * The interval of `bounds` holding `point`: i with bounds[i] ≤ point < bounds[i + 1], or -1 when
 * the point is outside [bounds[0], bounds[n - 1]).
 */
function intervalOf(bounds: Float64Array, point: number): number {
  let low = 0;
  let high = bounds.length; // the first bound greater than the point is in [low, high]
  while (low < high) {
    const middle = (low + high) >>> 1;
    if ((bounds[middle] ?? 0) <= point) low = middle + 1;
    else high = middle;
  }
  return low === 0 || low === bounds.length ? -1 : low - 1;
}

function servedIndex(experiments: readonly ExperimentPlan[]): ServedIndex {
  const always: number[] = [];
  const stickyLayered: number[] = [];
  const overriding = new Map<number, number>();
  const byLayer = new Map<number, number[]>();
  experiments.forEach((plan, position) => {
    if (plan.overrides !== undefined) overriding.set(plan.index, position);
    if (plan.serving === Serving.OFF) return; // NOT_RUNNING for every unit
    const { layerStart: start, layerEnd: end } = plan;
    // A shipped variant skips the layer check; a range that is empty or not a pair of numbers is
    // left to the full evaluation, which gives such ranges whatever meaning `resolve` does.
    if (plan.layerSlot < 0 || plan.serving === Serving.SHIPPED || !(start < end)) {
      always.push(position);
      return;
    }
    let positions = byLayer.get(plan.layerSlot);
    if (positions === undefined) byLayer.set(plan.layerSlot, (positions = []));
    positions.push(position);
    if (plan.sticky) stickyLayered.push(position);
  });
  const buckets = new Int32Array(byLayer.size * V1_BUCKETS);
  const overlaps: Int32Array[] = [];
  const overlapIds = new Map<string, number>();
  let table = 0;
  for (const positions of byLayer.values()) {
    const bounds = Float64Array.from(
      new Set(
        positions.flatMap((p) => [experiments[p]?.layerStart ?? 0, experiments[p]?.layerEnd ?? 0]),
      ),
    ).sort();
    // For each interval [bounds[i], bounds[i + 1]): the experiments whose range covers it.
    const covering: number[][] = [];
    for (let i = 0; i + 1 < bounds.length; i++) {
      const low = bounds[i] ?? 0;
      const high = bounds[i + 1] ?? 0;
      covering.push(
        positions.filter((p) => {
          const plan = experiments[p];
          return plan !== undefined && plan.layerStart <= low && high <= plan.layerEnd;
        }),
      );
    }
    for (let bucket = 0; bucket < V1_BUCKETS; bucket++) {
      const here = covering[intervalOf(bounds, bucket / V1_BUCKETS)] ?? [];
      let entry = 0;
      if (here.length === 1) entry = (here[0] ?? 0) + 1;
      else if (here.length > 1) {
        const key = here.join(',');
        let k = overlapIds.get(key);
        if (k === undefined) {
          k = overlaps.length;
          overlaps.push(Int32Array.from(here));
          overlapIds.set(key, k);
        }
        entry = -(k + 1);
      }
      buckets[table * V1_BUCKETS + bucket] = entry;
    }
    table++;
  }
  return {
    always: Int32Array.from(always),
    layerSlots: Int32Array.from(byLayer.keys()),
    buckets,
    overlaps,
    stickyLayered: Int32Array.from(stickyLayered),
    overriding,
  };
}

function compareIds(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function freeze(assignment: ResolvedAssignment): ResolvedAssignment {
  return Object.freeze(assignment);
}

function compileHoldout(definition: HoldoutDefinition, index: number): HoldoutPlan {
  const seed = holdoutSeed(definition);
  return {
    id: definition.id,
    definition,
    etag: definition.etag ?? '',
    index,
    unitType: definition.unitType,
    fraction: definition.fraction,
    hashVersion: effectiveHashVersion(definition.hashVersion),
    seed,
    seedState: fnvContinue(FNV_OFFSET_BASIS, seed),
  };
}

function coveringHoldouts(
  definition: ExperimentDefinition,
  holdouts: readonly HoldoutPlan[],
): Int32Array {
  const slots = holdouts
    .filter(
      (h) =>
        h.unitType === definition.unitType &&
        (definition.surfaces.some((s) => h.definition.surfaces.includes(s)) ||
          (definition.layerId !== undefined &&
            definition.layerId !== '' &&
            h.definition.layerIds.includes(definition.layerId))),
    )
    .map((h) => h.index);
  return slots.length === 0 ? NO_HOLDOUTS : Int32Array.from(slots);
}

interface ExperimentLinks {
  readonly conditionSlot: number;
  readonly layerSlot: number;
  readonly allocation: AllocationDefinition | undefined;
  readonly holdoutSlots: Int32Array;
}

function servingOf(definition: ExperimentDefinition): Serving {
  switch (definition.status) {
    case ExperimentStatus.RUNNING:
    case ExperimentStatus.SCHEDULED:
      return Serving.WINDOW;
    case ExperimentStatus.CONCLUDED:
      return definition.shippedVariantKey ? Serving.SHIPPED : Serving.OFF;
    default:
      return Serving.OFF;
  }
}

/**
 * Whether an allocation names exactly the experiment's arms. One that does not was set for other
 * arms (a DRAFT's variants changed since) and is ignored: the variants' own weights apply.
 */
export function allocationFits(
  definition: Pick<ExperimentDefinition, 'variants'>,
  allocation: Pick<AllocationDefinition, 'weights'>,
): boolean {
  const keys = new Set(definition.variants.map((v) => v.key));
  return (
    allocation.weights.length === keys.size &&
    allocation.weights.every((w) => keys.has(w.variantKey))
  );
}

/** The weights an experiment buckets with: a bandit's latest allocation, floored, or its own. */
function effectiveWeights(
  definition: ExperimentDefinition,
  allocation: AllocationDefinition | undefined,
): number[] {
  const own = definition.variants.map((v) => v.weight);
  if (definition.allocationMode !== AllocationMode.BANDIT) return own;
  let weights = own;
  if (allocation !== undefined && allocationFits(definition, allocation)) {
    const byKey = new Map(allocation.weights.map((w) => [w.variantKey, w.weight]));
    weights = definition.variants.map((v) => byKey.get(v.key) ?? 0);
  }
  // An all-zero split means "equal"; make it explicit so the floor sees real weights.
  if (weights.every((w) => w === 0)) weights = weights.map(() => 1 / weights.length);
  return applyMinArmShare(weights, definition.bandit?.minArmShare ?? 0);
}

function compileExperiment(
  definition: ExperimentDefinition,
  index: number,
  links: ExperimentLinks,
): ExperimentPlan {
  const variants = definition.variants.map((v, i): CompiledVariant =>
    Object.freeze({
      key: v.key,
      index: i,
      payload: v.payload,
      payloadJson: v.payload === undefined ? '' : JSON.stringify(v.payload),
    }),
  );
  const control =
    variants[0] ?? Object.freeze({ key: '', index: 0, payload: undefined, payloadJson: '' });
  const ranges = bucketRanges(
    variants.length,
    definition.coverage,
    effectiveWeights(definition, links.allocation),
  );
  const seed = effectiveSeed(definition);
  const version = effectiveHashVersion(definition.hashVersion);
  const surfaceNames = [...new Set(definition.surfaces)];
  const bandit = definition.allocationMode === AllocationMode.BANDIT;
  const variantsByKey = new Map(variants.map((v) => [v.key, v]));
  const overrides = compileOverrides(definition, variantsByKey);
  return {
    id: definition.id,
    definition,
    layerId: definition.layerId ?? '',
    etag: definition.etag ?? '',
    variants,
    ranges,
    // The sequence of the allocation drawn from: none when it is ignored (set for other arms).
    allocationSequence:
      bandit && links.allocation !== undefined && allocationFits(definition, links.allocation)
        ? links.allocation.sequence
        : 0,
    index,
    serving: servingOf(definition),
    startMs: definition.scheduledStartTime ?? -Infinity,
    endMs: definition.scheduledEndTime ?? Infinity,
    unitType: definition.unitType,
    conditionSlot: links.conditionSlot,
    layerSlot: links.layerSlot,
    layerStart: definition.layerRange?.start ?? 0,
    layerEnd: definition.layerRange?.end ?? 1,
    hashVersion: version === HashVersion.V1 || version === HashVersion.V2 ? version : 0,
    seed,
    seedState: fnvContinue(FNV_OFFSET_BASIS, seed),
    rangeStarts: Float64Array.from(ranges.map((r) => r[0])),
    rangeEnds: Float64Array.from(ranges.map((r) => r[1])),
    control,
    shipped: variants.find((v) => v.key === definition.shippedVariantKey),
    sticky: definition.sticky === true,
    variantsByKey,
    overrides,
    holdoutSlots: links.holdoutSlots,
    surfaceNames,
    singleSurfaces: surfaceNames.map((s) => Object.freeze([s])),
    cacheStride:
      REASON_SLOTS +
      variants.length +
      links.holdoutSlots.length +
      (overrides === undefined ? 0 : variants.length),
  };
}

/**
 * The overridden units' variant indexes, or undefined when there are none or the experiment's
 * status serves none (STOPPED, CONCLUDED). Overrides naming an unknown variant (validation
 * rejects them) are left out.
 */
function compileOverrides(
  definition: ExperimentDefinition,
  variantsByKey: ReadonlyMap<string, CompiledVariant>,
): ReadonlyMap<string, number> | undefined {
  const overrides = definition.overrides;
  if (overrides === undefined || overrides.length === 0) return undefined;
  const status = definition.status;
  if (
    status !== ExperimentStatus.DRAFT &&
    status !== ExperimentStatus.SCHEDULED &&
    status !== ExperimentStatus.RUNNING
  ) {
    return undefined;
  }
  const compiled = new Map<string, number>();
  for (const { unitId, variantKey } of overrides) {
    const variant = variantsByKey.get(variantKey);
    if (variant !== undefined && !compiled.has(unitId)) compiled.set(unitId, variant.index);
  }
  return compiled.size === 0 ? undefined : compiled;
}

/**
 * Whether `resolveRecord` may stand in for `evaluate`: a running (or scheduled) experiment with a
 * known hash version, not sticky, covered by no holdout, with no layer or a proper layer range
 * (so it is a candidate only when the unit's layer point is in it). Its overrides do not matter:
 * a unit some experiment overrides is never resolved from records.
 */
function isSimple(plan: ExperimentPlan): boolean {
  return (
    plan.serving === Serving.WINDOW &&
    !plan.sticky &&
    plan.holdoutSlots.length === 0 &&
    (plan.hashVersion === HashVersion.V1 || plan.hashVersion === HashVersion.V2) &&
    (plan.layerSlot < 0 || plan.layerStart < plan.layerEnd)
  );
}

/** The ids of the plans serving at `now` (within their scheduled window). */
function servingIds(plans: readonly ExperimentPlan[], now: number): string[] {
  const ids: string[] = [];
  for (const plan of plans) if (now >= plan.startMs && now < plan.endMs) ids.push(plan.id);
  return ids;
}

/**
 * The index of the variant `plan` forces `unit` into (reason OVERRIDE), or -1: listed, of the
 * experiment's unit type, and before its scheduled end (its status is checked when compiled).
 */
/** What an override is looked up by: the unit, its type and the time. */
type OverrideTarget = Pick<UnitContext, 'id' | 'type' | 'now'>;

function overrideOf(plan: ExperimentPlan, unit: OverrideTarget): number {
  if (plan.overrides === undefined || unit.type !== plan.unitType || !(unit.now < plan.endMs)) {
    return -1;
  }
  return plan.overrides.get(unit.id) ?? -1;
}

/** True when a sticky experiment has a stored, still-valid variant for this unit. */
function hasStickyVariant(plan: ExperimentPlan, unit: UnitContext): boolean {
  if (!plan.sticky || unit.sticky === undefined) return false;
  const stored = unit.sticky.get(plan.id);
  return stored !== undefined && plan.variantsByKey.has(stored.variantKey);
}
