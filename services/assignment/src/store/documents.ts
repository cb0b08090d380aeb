/**
 * The documents the Assignment service stores, one collection each, and how they become the domain
 * definitions the evaluator is built from. Times are Unix epoch milliseconds. Targeting conditions
 * and variant payloads are stored as JSON text: they hold `$`-prefixed operator names and
 * arbitrary keys, which the storage port does not accept as field names.
 */
import {
  AllocationMode,
  type AllocationDefinition,
  type ExperimentDefinition,
  type ExperimentStatus,
  type HoldoutDefinition,
  type HoldoutStatus,
  type LayerDefinition,
  type VariantOverride,
} from '../domain';
import { sameData } from '../../../platform/src/storage/collection';

export interface LayerDocument {
  readonly id: string;
  /** Which resource of this id it is, when one was deleted before (see `etagOf`). */
  readonly incarnation?: number;
  readonly description: string;
  readonly owner: string;
  readonly tags: readonly string[];
  readonly createTime: number;
  readonly updateTime: number;
}

export interface VariantDocument {
  readonly key: string;
  readonly description: string;
  readonly weight: number;
  /** The payload as JSON text; empty when the variant has none. */
  readonly payloadJson: string;
}

export interface ExperimentDocument {
  readonly id: string;
  /** Which resource of this id it is, when one was deleted before (see `etagOf`). */
  readonly incarnation?: number;
  readonly description: string;
  readonly owner: string;
  readonly tags: readonly string[];
  readonly unitType: string;
  readonly surfaces: readonly string[];
  readonly variants: readonly VariantDocument[];
  /** Null when unset (1). */
  readonly coverage: number | null;
  /** The condition as JSON text; empty for none. */
  readonly conditionJson: string;
  readonly layerId: string;
  readonly layerRange: { readonly start: number; readonly end: number } | null;
  readonly hashVersion: number;
  readonly seed: string;
  readonly scheduledStartTime: number | null;
  readonly scheduledEndTime: number | null;
  readonly status: ExperimentStatus;
  readonly allocationMode: AllocationMode;
  readonly minArmShare: number | null;
  readonly sticky: boolean;
  /** Null when unset (the service default applies). */
  readonly stickyTtlMs: number | null;
  /**
   * Units forced into variants, in the order given; absent when there are none (as in documents
   * stored before overrides existed), so that an experiment without them stores as it did.
   */
  readonly overrides?: readonly VariantOverride[];
  readonly conclusion: {
    readonly shippedVariantKey: string;
    readonly summary: string;
    readonly concludeTime: number;
  } | null;
  readonly startTime: number | null;
  readonly stopTime: number | null;
  readonly createTime: number;
  readonly updateTime: number;
}

export interface HoldoutDocument {
  readonly id: string;
  /** Which resource of this id it is, when one was deleted before (see `etagOf`). */
  readonly incarnation?: number;
  readonly description: string;
  readonly owner: string;
  readonly tags: readonly string[];
  readonly unitType: string;
  readonly fraction: number;
  readonly seed: string;
  readonly hashVersion: number;
  readonly surfaces: readonly string[];
  readonly layerIds: readonly string[];
  readonly status: HoldoutStatus;
  readonly startTime: number | null;
  readonly stopTime: number | null;
  readonly createTime: number;
  readonly updateTime: number;
}

export interface VariantWeightDocument {
  readonly variantKey: string;
  readonly weight: number;
  readonly unitCount: number;
  readonly rewardMean: number;
  readonly probabilityBest: number;
}

/** A BANDIT experiment's latest allocation; the document id is the experiment id. */
export interface AllocationDocument {
  readonly id: string;
  /** Which allocation of this experiment it is, when one was dropped before (see `etagOf`). */
  readonly incarnation?: number;
  readonly weights: readonly VariantWeightDocument[];
  readonly sequence: number;
  readonly method: number;
  readonly computeTime: number | null;
  readonly analysisPlanId: string;
  /** `analysis` or `admin`. */
  readonly source: string;
  readonly updateTime: number;
}

/**
 * An allocation as it was stored for a BANDIT experiment under one sequence, kept after a later
 * one replaces it (for {@link ALLOCATION_HISTORY_TTL_MS}), so that GetAllocation can answer the
 * split behind an exposure's `allocation_sequence`.
 */
export interface AllocationHistoryDocument {
  /** `<experiment id>/<sequence zero-padded to 20 digits>` (see `allocationHistoryId`). */
  readonly id: string;
  readonly experimentId: string;
  /**
   * The incarnation of the experiment it was stored for (1 when it had none): an experiment
   * deleted and created again under its id does not see the earlier one's allocations.
   */
  readonly experimentIncarnation: number;
  /** The allocation as stored (weights before the minimum arm share is applied). */
  readonly allocation: AllocationDocument;
  /** The experiment's minimum arm share when it was stored (null when unset). */
  readonly minArmShare: number | null;
  /** The allocation's etag as it was served while in effect. */
  readonly etag: string;
  /** When it expires: {@link ALLOCATION_HISTORY_TTL_MS} after it was stored. */
  readonly expiresAt: Date;
}

/** How long a stored allocation is kept in the history: long enough for any analysis. */
export const ALLOCATION_HISTORY_TTL_MS = 400 * 86_400_000;

/** The history id of an experiment's allocation of `sequence`: ids sort by sequence. */
export function allocationHistoryId(experimentId: string, sequence: number): string {
  return `${experimentId}/${String(sequence).padStart(20, '0')}`;
}

/**
 * Whether storing `after` would change nothing of `before` but its update time: an update that
 * changes nothing is answered with the resource as it is (same etag, no new configuration
 * version), not stored again. A field present on one side only counts as a change; a document
 * read from storage and one built here compare by their data alone (see `sameData`).
 */
export function changesNothing<T extends { readonly updateTime: number }>(
  before: T,
  after: T,
): boolean {
  return sameData({ ...before, updateTime: 0 }, { ...after, updateTime: 0 });
}

/** A stored document with its version, which is rendered as the resource's etag. */
export interface Stored<T> {
  readonly doc: T;
  readonly version: number;
}

/**
 * The etag of a stored resource: its version, preceded by its incarnation (`2.1`) when its id was
 * deleted before, so that an etag of a deleted resource is stale for the one created again.
 */
export function etagOf(stored: Stored<unknown>): string {
  const { incarnation } = stored.doc as { incarnation?: unknown };
  return typeof incarnation === 'number' && incarnation > 1
    ? `${incarnation}.${stored.version}`
    : String(stored.version);
}

function parseJson(text: string): Record<string, unknown> | undefined {
  if (text === '') return undefined;
  return JSON.parse(text) as Record<string, unknown>;
}

export function layerDefinition(stored: Stored<LayerDocument>): LayerDefinition {
  const { doc } = stored;
  return { id: doc.id, description: doc.description, owner: doc.owner, tags: doc.tags };
}

/** The domain view of an experiment, as validation and the evaluator read it. */
export function experimentDefinition(
  doc: ExperimentDocument,
  etag: string | undefined,
): ExperimentDefinition {
  return {
    id: doc.id,
    description: doc.description,
    owner: doc.owner,
    tags: doc.tags,
    unitType: doc.unitType,
    surfaces: doc.surfaces,
    variants: doc.variants.map((v) => ({
      key: v.key,
      weight: v.weight,
      description: v.description,
      payload: parseJson(v.payloadJson),
    })),
    coverage: doc.coverage ?? undefined,
    condition: parseJson(doc.conditionJson),
    layerId: doc.layerId === '' ? undefined : doc.layerId,
    layerRange: doc.layerRange ?? undefined,
    hashVersion: doc.hashVersion,
    seed: doc.seed,
    status: doc.status,
    scheduledStartTime: doc.scheduledStartTime ?? undefined,
    scheduledEndTime: doc.scheduledEndTime ?? undefined,
    allocationMode: doc.allocationMode,
    bandit:
      doc.allocationMode === AllocationMode.BANDIT || doc.minArmShare !== null
        ? doc.minArmShare === null
          ? undefined
          : { minArmShare: doc.minArmShare }
        : undefined,
    sticky: doc.sticky,
    stickyTtl: doc.stickyTtlMs ?? undefined,
    overrides: doc.overrides ?? [],
    shippedVariantKey: doc.conclusion?.shippedVariantKey ?? undefined,
    etag,
  };
}

export function holdoutDefinition(
  doc: HoldoutDocument,
  etag: string | undefined,
): HoldoutDefinition {
  return {
    id: doc.id,
    description: doc.description,
    unitType: doc.unitType,
    fraction: doc.fraction,
    seed: doc.seed,
    hashVersion: doc.hashVersion,
    surfaces: doc.surfaces,
    layerIds: doc.layerIds,
    status: doc.status,
    etag,
  };
}

export function allocationDefinition(doc: AllocationDocument): AllocationDefinition {
  return {
    experimentId: doc.id,
    weights: doc.weights.map((w) => ({ variantKey: w.variantKey, weight: w.weight })),
    sequence: doc.sequence,
  };
}
