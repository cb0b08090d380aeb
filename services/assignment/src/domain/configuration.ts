/**
 * The plain definitions the domain works on: layers, experiments, holdouts and bandit allocations
 * as the storage layer holds them, without any generated (protobuf) types, so bucketing and
 * validation are tested and benchmarked with plain values.
 *
 * Enumerations carry the numbers of the `tandem.assignment.v1` enums they mirror, so the gRPC layer
 * maps them one to one. Times are Unix epoch milliseconds.
 */
import type { LayerRange } from './bucketing';
import type { Condition } from './targeting';

/** An experiment's lifecycle state (`tandem.assignment.v1.ExperimentStatus`). */
export const ExperimentStatus = {
  DRAFT: 1,
  SCHEDULED: 2,
  RUNNING: 3,
  STOPPED: 4,
  CONCLUDED: 5,
} as const;
/** An experiment's lifecycle state. */
export type ExperimentStatus = (typeof ExperimentStatus)[keyof typeof ExperimentStatus];

/** How an experiment splits traffic (`tandem.assignment.v1.AllocationMode`). */
export const AllocationMode = { FIXED: 1, BANDIT: 2 } as const;

/** How an experiment splits traffic. */
export type AllocationMode = (typeof AllocationMode)[keyof typeof AllocationMode];

/** A holdout's lifecycle state (`tandem.assignment.v1.HoldoutStatus`). */
export const HoldoutStatus = { DRAFT: 1, RUNNING: 2, STOPPED: 3 } as const;
/** A holdout's lifecycle state. */
export type HoldoutStatus = (typeof HoldoutStatus)[keyof typeof HoldoutStatus];

/**
 * The longest sticky TTL, an experiment's or the service's default: ten years, far beyond any
 * experiment, and well within what a stored expiry time (a Date) holds.
 */
export const MAX_STICKY_TTL_MS = 3650 * 86_400_000;

/** A JSON object, as a variant payload. */
export type Payload = Readonly<Record<string, unknown>>;

/** A layer: a namespace whose experiments are mutually exclusive. */
export interface LayerDefinition {
  /** `^[a-z][a-z0-9_-]{0,62}$`; seeds the layer hash. */
  readonly id: string;
  readonly description?: string;
  readonly owner?: string;
  readonly tags?: readonly string[];
}

/** One arm of an experiment. */
export interface VariantDefinition {
  /** Unique in the experiment: `^[a-z0-9][a-z0-9_-]{0,62}$`. */
  readonly key: string;
  /** Share of the covered units in [0, 1]; all 0 means an equal split. */
  readonly weight: number;
  readonly description?: string;
  /** What the client applies for this variant, for example `{ policy: "home-bandit-v3" }`. */
  readonly payload?: Payload;
}

/** A unit forced into a variant of an experiment, whatever its bucketing would say. */
export interface VariantOverride {
  /** The unit's id, of the experiment's unit type. */
  readonly unitId: string;
  /** One of the experiment's variant keys. */
  readonly variantKey: string;
}

/** An experiment as stored, with every field that affects assignment. */
export interface ExperimentDefinition {
  /** `^[a-z][a-z0-9_-]{0,62}$`. */
  readonly id: string;
  readonly description?: string;
  readonly owner?: string;
  readonly tags?: readonly string[];
  /** The unit type randomized (the hash attribute), for example `user`. */
  readonly unitType: string;
  /** The surfaces the experiment runs on. */
  readonly surfaces: readonly string[];
  /** At least two; the first is the control. */
  readonly variants: readonly VariantDefinition[];
  /** Fraction of eligible units included, in [0, 1]; 1 when undefined. */
  readonly coverage?: number;
  /** MongoDB-syntax targeting over the request attributes; empty or undefined matches all. */
  readonly condition?: Condition;
  /** The layer; undefined or empty for none. */
  readonly layerId?: string;
  /** The range of the layer the experiment owns; set exactly when `layerId` is. */
  readonly layerRange?: LayerRange;
  /** 1 or 2; 2 when undefined or 0. */
  readonly hashVersion?: number;
  /** The hash seed; the experiment id when undefined or empty. */
  readonly seed?: string;
  readonly status: ExperimentStatus;
  /** When serving begins (epoch ms); serving is limited to [start, end). */
  readonly scheduledStartTime?: number;
  /** When serving ends (epoch ms). */
  readonly scheduledEndTime?: number;
  /** FIXED when undefined. */
  readonly allocationMode?: AllocationMode;
  /** Required for BANDIT experiments. */
  readonly bandit?: { readonly minArmShare: number };
  /** Units keep the variant stored at their first exposure. Required for BANDIT. */
  readonly sticky?: boolean;
  /** How long a stored sticky variant is kept (ms); the store's default when undefined. */
  readonly stickyTtl?: number;
  /**
   * Units served a given variant (reason OVERRIDE) while the experiment is DRAFT, SCHEDULED or
   * RUNNING and before its scheduled end, bypassing every other check but the unit type.
   */
  readonly overrides?: readonly VariantOverride[];
  /** For CONCLUDED experiments: the variant shipped to every targeted unit, if any. */
  readonly shippedVariantKey?: string;
  /** The configuration version, echoed in assignments. */
  readonly etag?: string;
}

/** A holdout: a fraction of units kept out of every experiment on some surfaces or layers. */
export interface HoldoutDefinition {
  /** `^[a-z][a-z0-9_-]{0,62}$`. */
  readonly id: string;
  readonly description?: string;
  /** The unit type hashed; only experiments of this unit type are covered. */
  readonly unitType: string;
  /** Fraction held out, in (0, 1). */
  readonly fraction: number;
  /** The holdout's own salt; `holdout:<id>` when undefined or empty (see {@link holdoutSeed}). */
  readonly seed?: string;
  /** 1 or 2; 2 when undefined or 0. */
  readonly hashVersion?: number;
  /** Surfaces whose experiments are covered. */
  readonly surfaces: readonly string[];
  /** Layers whose experiments are covered. */
  readonly layerIds: readonly string[];
  readonly status: HoldoutStatus;
  readonly etag?: string;
}

/** The weight of one variant in a bandit allocation. */
export interface VariantWeight {
  readonly variantKey: string;
  readonly weight: number;
}

/** The latest traffic split of a BANDIT experiment (before the minimum arm share is enforced). */
export interface AllocationDefinition {
  readonly experimentId: string;
  readonly weights: readonly VariantWeight[];
  /** Orders allocations; echoed in assignments drawn from it. */
  readonly sequence: number;
}

/** Everything the evaluator is built from: one configuration version. */
export interface AssignmentConfiguration {
  readonly layers: readonly LayerDefinition[];
  readonly experiments: readonly ExperimentDefinition[];
  readonly holdouts: readonly HoldoutDefinition[];
  readonly allocations: readonly AllocationDefinition[];
}

/** The seed an experiment hashes with: its own, or its id when empty. */
export function effectiveSeed(definition: { readonly id: string; readonly seed?: string }): string {
  return definition.seed !== undefined && definition.seed !== '' ? definition.seed : definition.id;
}

/**
 * The seed a holdout hashes with: its own, or `holdout:<id>` when empty. Not its bare id: holdout
 * and experiment ids are separate namespaces, and a holdout hashing with the seed of an
 * experiment it covers (one of the same id, seeded by default) would hold out exactly the units
 * at the start of that experiment's buckets, its control, rather than an even share of each
 * variant. A `:` is in no id, so this is no experiment's default seed.
 */
export function holdoutSeed(definition: { readonly id: string; readonly seed?: string }): string {
  return definition.seed !== undefined && definition.seed !== ''
    ? definition.seed
    : `holdout:${definition.id}`;
}

/** The hash version in effect: 2 when unset (undefined or 0). */
export function effectiveHashVersion(version: number | undefined): number {
  return version === undefined || version === 0 ? 2 : version;
}
