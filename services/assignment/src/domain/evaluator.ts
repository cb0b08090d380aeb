/**
 * The assignment evaluator: an immutable {@link AssignmentSnapshot} compiled once per configuration
 * version, which resolves a unit into one assignment per experiment on the requested surfaces.
 *
 * Everything that does not depend on the unit is done when the snapshot is built: experiments are
 * indexed by surface, conditions are compiled (and identical ones shared), bucket ranges computed
 * (with a bandit's minimum arm share applied), seeds pre-hashed, holdout coverage resolved and even
 * the result objects are created once and shared, since an assignment depends on the unit only
 * through which reason and variant it gets. Per resolve, the work left is one FNV pass per layer,
 * per distinct condition, per holdout and per experiment hash actually needed, memoised in scratch
 * arrays stamped with a resolve generation so nothing is cleared or allocated per experiment.
 *
 * Resolve follows assignment.proto's order and stops at the first reason that applies:
 * NOT_RUNNING → UNIT_TYPE_MISMATCH → NOT_IN_LAYER_RANGE (skipped by a unit's sticky variant) →
 * TARGETED_OUT → HOLDOUT → STICKY → NOT_IN_COVERAGE → ASSIGNED; a CONCLUDED experiment with a shipped variant returns it (reason
 * CONCLUDED) right after the holdout check, skipping sticky, layer and coverage.
 */
import { applyMinArmShare, bucketRanges } from './bucketing';
import {
  AllocationMode,
  ExperimentStatus,
  HoldoutStatus,
  effectiveHashVersion,
  effectiveSeed,
  type AllocationDefinition,
  type AssignmentConfiguration,
  type ExperimentDefinition,
  type HoldoutDefinition,
  type Payload,
} from './configuration';
import {
  FNV_OFFSET_BASIS,
  HashVersion,
  fnvContinue,
  hashV1FromValueState,
  hashV2FromSeedState,
} from './hashing';
import {
  compileCondition,
  isEmptyCondition,
  type AttributePredicate,
  type Attributes,
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
} as const;
/** Why a unit got its variant. */
export type AssignmentReason = (typeof AssignmentReason)[keyof typeof AssignmentReason];

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
}

/** A variant as the evaluator serves it. */
export interface CompiledVariant {
  readonly key: string;
  readonly index: number;
  readonly payload: Payload | undefined;
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
  /** The variant to serve: the assigned or sticky one, the shipped one, or else the control. */
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
}

/** Whether the unit is held out by a running holdout covering requested surfaces. */
export interface HoldoutMembership {
  readonly holdout: CompiledHoldout;
  readonly heldOut: boolean;
  /** The requested surfaces it covers (directly or through a layer). */
  readonly surfaces: readonly string[];
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

// Result cache layout per (experiment, surface slot): reasons 1..9 at their code, then one ASSIGNED
// entry per variant, then one HOLDOUT entry per covering holdout.
const REASON_SLOTS = 10;

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
  /** Indexes of running holdouts (same unit type) covering the experiment, ordered by id. */
  readonly holdoutSlots: Int32Array;
  readonly surfaceNames: readonly string[];
  /** One frozen `[surface]` per entry of `surfaceNames`. */
  readonly singleSurfaces: readonly (readonly string[])[];
  readonly cacheStride: number;
  readonly resultCache: (ResolvedAssignment | undefined)[];
}

interface HoldoutPlan extends CompiledHoldout {
  readonly index: number;
  readonly unitType: string;
  readonly fraction: number;
  readonly hashVersion: number;
  readonly seed: string;
  readonly seedState: number;
}

interface SurfaceIndex {
  readonly experiments: readonly ExperimentPlan[];
  /** For each experiment above, its slot in the experiment's `surfaceNames`. */
  readonly surfaceSlots: Int32Array;
  readonly holdouts: readonly HoldoutPlan[];
  readonly stickyExperimentIds: readonly string[];
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
  private readonly predicates: AttributePredicate[] = [];
  private readonly layerSuffixes: string[] = [];

  // Per-resolve memos, valid when their generation stamp equals `generation`.
  private generation = 0;
  private readonly conditionStamp: Uint32Array;
  private readonly conditionMatch: Uint8Array;
  private readonly layerStamp: Uint32Array;
  private readonly layerPoint: Float64Array;
  private readonly holdoutStamp: Uint32Array;
  private readonly holdoutHeld: Uint8Array;
  private readonly seenStamp: Uint32Array;

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
    const conditionSlot = (definition: ExperimentDefinition): number => {
      if (isEmptyCondition(definition.condition)) return -1;
      const key = JSON.stringify(definition.condition);
      let slot = conditionSlots.get(key);
      if (slot === undefined) {
        slot = this.predicates.length;
        this.predicates.push(compileCondition(definition.condition));
        conditionSlots.set(key, slot);
      }
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
    for (const plan of plans) this.experimentsById.set(plan.id, plan);

    this.indexSurfaces(plans, holdouts);

    this.conditionStamp = new Uint32Array(this.predicates.length);
    this.conditionMatch = new Uint8Array(this.predicates.length);
    this.layerStamp = new Uint32Array(this.layerSuffixes.length);
    this.layerPoint = new Float64Array(this.layerSuffixes.length);
    this.holdoutStamp = new Uint32Array(holdouts.length);
    this.holdoutHeld = new Uint8Array(holdouts.length);
    this.seenStamp = new Uint32Array(plans.length);
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
   * The sticky experiments on these surfaces, so the caller can fetch the unit's stored sticky
   * assignments (one storage read) before resolving.
   */
  stickyExperimentIds(surfaces: readonly string[]): string[] {
    const ids = new Set<string>();
    for (const surface of surfaces) {
      for (const id of this.surfaces.get(surface)?.stickyExperimentIds ?? []) ids.add(id);
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

  private beginResolve(unit: UnitContext): void {
    this.generation = (this.generation + 1) >>> 0;
    if (this.generation === 0) {
      // Wrapped after 2^32 resolves: clear the stamps once so none looks current.
      this.conditionStamp.fill(0);
      this.layerStamp.fill(0);
      this.holdoutStamp.fill(0);
      this.seenStamp.fill(0);
      this.generation = 1;
    }
    this.unitId = unit.id;
    this.unitState = fnvContinue(FNV_OFFSET_BASIS, unit.id);
    this.attributes = unit.attributes;
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
    // so both skip it.
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
      const predicate = this.predicates[slot];
      this.conditionMatch[slot] = predicate !== undefined && predicate(this.attributes) ? 1 : 0;
    }
    return this.conditionMatch[slot] === 1;
  }

  private layerPointOf(slot: number): number {
    if (this.layerStamp[slot] !== this.generation) {
      this.layerStamp[slot] = this.generation;
      this.layerPoint[slot] = hashV1FromValueState(this.unitState, this.layerSuffixes[slot] ?? '');
    }
    return this.layerPoint[slot] ?? 0;
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
          : reason;
    const key = slot * plan.cacheStride + offset;
    const cached = slot >= 0 ? plan.resultCache[key] : undefined;
    if (cached !== undefined) return cached;
    const created = freeze({
      experiment: plan,
      variant:
        reason === AssignmentReason.ASSIGNED
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
    });
    if (slot >= 0) plan.resultCache[key] = created;
    return created;
  }

  private holdoutIdAt(slot: number): string {
    return this.holdoutPlans[slot]?.id ?? '';
  }

  private holdoutMemberships(unit: UnitContext): HoldoutMembership[] {
    if (this.holdoutPlans.length === 0) return [];
    const covered = new Map<HoldoutPlan, string[]>();
    for (const surface of unit.surfaces) {
      for (const holdout of this.surfaces.get(surface)?.holdouts ?? []) {
        if (holdout.unitType !== unit.type) continue;
        const surfaces = covered.get(holdout);
        if (surfaces === undefined) covered.set(holdout, [surface]);
        else if (!surfaces.includes(surface)) surfaces.push(surface);
      }
    }
    const memberships: HoldoutMembership[] = [];
    for (const [holdout, surfaces] of covered) {
      memberships.push({ holdout, heldOut: this.heldOut(holdout.index), surfaces });
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
      const layersHere = new Set(entry.experiments.map((p) => p.layerId).filter((id) => id !== ''));
      this.surfaces.set(surface, {
        experiments: entry.experiments,
        surfaceSlots: Int32Array.from(entry.slots),
        holdouts: holdouts.filter(
          (h) =>
            h.definition.surfaces.includes(surface) ||
            h.definition.layerIds.some((id) => layersHere.has(id)),
        ),
        stickyExperimentIds: entry.experiments.filter((p) => p.sticky).map((p) => p.id),
      });
    }
  }
}

function compareIds(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function freeze(assignment: ResolvedAssignment): ResolvedAssignment {
  return Object.freeze(assignment);
}

function compileHoldout(definition: HoldoutDefinition, index: number): HoldoutPlan {
  const seed = effectiveSeed(definition);
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

/** The weights an experiment buckets with: a bandit's latest allocation, floored, or its own. */
function effectiveWeights(
  definition: ExperimentDefinition,
  allocation: AllocationDefinition | undefined,
): number[] {
  const own = definition.variants.map((v) => v.weight);
  if (definition.allocationMode !== AllocationMode.BANDIT) return own;
  let weights = own;
  if (allocation !== undefined) {
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
    Object.freeze({ key: v.key, index: i, payload: v.payload }),
  );
  const control = variants[0] ?? Object.freeze({ key: '', index: 0, payload: undefined });
  const ranges = bucketRanges(
    variants.length,
    definition.coverage,
    effectiveWeights(definition, links.allocation),
  );
  const seed = effectiveSeed(definition);
  const version = effectiveHashVersion(definition.hashVersion);
  const surfaceNames = [...new Set(definition.surfaces)];
  const bandit = definition.allocationMode === AllocationMode.BANDIT;
  return {
    id: definition.id,
    definition,
    layerId: definition.layerId ?? '',
    etag: definition.etag ?? '',
    variants,
    ranges,
    allocationSequence: bandit ? (links.allocation?.sequence ?? 0) : 0,
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
    variantsByKey: new Map(variants.map((v) => [v.key, v])),
    holdoutSlots: links.holdoutSlots,
    surfaceNames,
    singleSurfaces: surfaceNames.map((s) => Object.freeze([s])),
    cacheStride: REASON_SLOTS + variants.length + links.holdoutSlots.length,
    resultCache: [],
  };
}

/** True when a sticky experiment has a stored, still-valid variant for this unit. */
function hasStickyVariant(plan: ExperimentPlan, unit: UnitContext): boolean {
  if (!plan.sticky || unit.sticky === undefined) return false;
  const stored = unit.sticky.get(plan.id);
  return stored !== undefined && plan.variantsByKey.has(stored.variantKey);
}
