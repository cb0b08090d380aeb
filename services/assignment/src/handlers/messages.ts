/**
 * Stored documents rendered as `tandem.assignment.v1` messages (etags, times, enums), and the few
 * request-side conversions every resource shares.
 */
import type { Duration } from '../../../../gen/ts/google/protobuf/duration';
import {
  AllocationMethod,
  type Allocation,
} from '../../../../gen/ts/tandem/assignment/v1/allocation';
import type {
  AllocationMode as AllocationModeMessage,
  Experiment,
  ExperimentStatus as ExperimentStatusMessage,
  HashVersion,
} from '../../../../gen/ts/tandem/assignment/v1/experiment';
import type { Holdout, HoldoutStatus } from '../../../../gen/ts/tandem/assignment/v1/holdout';
import type { Layer } from '../../../../gen/ts/tandem/assignment/v1/layer';
import { allocationFits, applyMinArmShare, AllocationMode, ExperimentStatus } from '../domain';
import type { FieldViolation } from '../../../platform/src/errors';
import { isTimestampMs } from '../../../platform/src/grpc/well-known';
import type { ConfigurationView } from '../live-configuration';
import {
  etagOf,
  type AllocationDocument,
  type AllocationHistoryDocument,
  type ExperimentDocument,
  type HoldoutDocument,
  type LayerDocument,
  type Stored,
} from '../store/documents';

/**
 * A stored number as a generated enum: the domain's enumerations carry the contract's numbers, so
 * the conversion is one to one.
 */
// eslint-disable-next-line @typescript-eslint/no-unnecessary-type-parameters -- the caller names the enum
export function asEnum<E extends number>(value: number): E {
  return value as E;
}

function time(ms: number | null): Date | undefined {
  return ms === null ? undefined : new Date(ms);
}

/**
 * A request's time that is not a valid Timestamp (outside 0001–9999, or beyond what a Date holds,
 * which the decoder turns into an invalid Date), as a violation of `field`; undefined when valid.
 * Stored, such a time would fail every standard client that reads it back (protojson refuses it).
 */
export function timestampViolation(
  field: string,
  time: Date | undefined,
): FieldViolation | undefined {
  if (time === undefined) return undefined;
  if (isTimestampMs(time.getTime())) return undefined;
  return {
    field,
    description: 'must be between 0001-01-01 and 9999-12-31 (a Timestamp)',
    reason: 'OUT_OF_RANGE',
  };
}

export function durationMs(duration: Duration | undefined): number | undefined {
  return duration ? duration.seconds * 1000 + Math.round(duration.nanos / 1e6) : undefined;
}

function duration(ms: number): Duration {
  return { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
}

export function layerMessage(stored: Stored<LayerDocument>, view: ConfigurationView): Layer {
  const { doc } = stored;
  const allocations = [...view.experiments.values()]
    .filter(
      ({ doc: e }) =>
        e.layerId === doc.id && e.status !== ExperimentStatus.CONCLUDED && e.layerRange !== null,
    )
    .map(({ doc: e }) => ({
      experimentId: e.id,
      range: { start: e.layerRange?.start ?? 0, end: e.layerRange?.end ?? 0 },
    }))
    .sort((a, b) => a.range.start - b.range.start);
  return {
    id: doc.id,
    description: doc.description,
    owner: doc.owner,
    tags: [...doc.tags],
    allocations,
    etag: etagOf(stored),
    createTime: new Date(doc.createTime),
    updateTime: new Date(doc.updateTime),
  };
}

export function experimentMessage(stored: Stored<ExperimentDocument>): Experiment {
  const { doc } = stored;
  return {
    id: doc.id,
    description: doc.description,
    owner: doc.owner,
    tags: [...doc.tags],
    unitType: doc.unitType,
    surfaces: [...doc.surfaces],
    variants: doc.variants.map((v) => ({
      key: v.key,
      description: v.description,
      weight: v.weight,
      payload: v.payloadJson === '' ? undefined : (JSON.parse(v.payloadJson) as object),
    })),
    coverage: doc.coverage ?? undefined,
    condition: doc.conditionJson === '' ? undefined : (JSON.parse(doc.conditionJson) as object),
    layerId: doc.layerId,
    layerRange: doc.layerRange
      ? { start: doc.layerRange.start, end: doc.layerRange.end }
      : undefined,
    hashVersion: asEnum<HashVersion>(doc.hashVersion),
    seed: doc.seed,
    scheduledStartTime: time(doc.scheduledStartTime),
    scheduledEndTime: time(doc.scheduledEndTime),
    status: asEnum<ExperimentStatusMessage>(doc.status),
    allocationMode: asEnum<AllocationModeMessage>(doc.allocationMode),
    bandit: doc.minArmShare === null ? undefined : { minArmShare: doc.minArmShare },
    sticky: doc.sticky,
    stickyTtl: doc.stickyTtlMs === null ? undefined : duration(doc.stickyTtlMs),
    overrides: (doc.overrides ?? []).map((o) => ({ unitId: o.unitId, variantKey: o.variantKey })),
    conclusion: doc.conclusion
      ? {
          shippedVariantKey: doc.conclusion.shippedVariantKey,
          summary: doc.conclusion.summary,
          concludeTime: new Date(doc.conclusion.concludeTime),
        }
      : undefined,
    startTime: time(doc.startTime),
    stopTime: time(doc.stopTime),
    etag: etagOf(stored),
    createTime: new Date(doc.createTime),
    updateTime: new Date(doc.updateTime),
  };
}

export function holdoutMessage(stored: Stored<HoldoutDocument>): Holdout {
  const { doc } = stored;
  return {
    id: doc.id,
    description: doc.description,
    owner: doc.owner,
    tags: [...doc.tags],
    unitType: doc.unitType,
    fraction: doc.fraction,
    seed: doc.seed,
    hashVersion: asEnum<HashVersion>(doc.hashVersion),
    surfaces: [...doc.surfaces],
    layerIds: [...doc.layerIds],
    status: asEnum<HoldoutStatus>(doc.status),
    startTime: time(doc.startTime),
    stopTime: time(doc.stopTime),
    etag: etagOf(stored),
    createTime: new Date(doc.createTime),
    updateTime: new Date(doc.updateTime),
  };
}

/** The etag of an experiment's allocation before any update was stored. */
export const INITIAL_ALLOCATION_ETAG = '0';

/**
 * The allocation in effect: the stored one of a BANDIT experiment, else the variants' weights
 * (an equal split when all are 0), with the minimum arm share applied either way.
 */
export function allocationMessage(
  experiment: ExperimentDocument,
  stored: Stored<AllocationDocument> | undefined,
): Allocation {
  const minArmShare = experiment.minArmShare ?? 0;
  const bandit = experiment.allocationMode === AllocationMode.BANDIT;
  const fits = stored !== undefined && allocationFits(experiment, stored.doc);
  if (bandit && stored && fits) {
    return storedAllocationMessage(experiment.id, stored.doc, minArmShare, etagOf(stored));
  }
  const own = experiment.variants.map((v) => v.weight);
  const weights = own.every((w) => w === 0) ? own.map(() => 1 / own.length) : own;
  const floored = bandit ? applyMinArmShare(weights, minArmShare) : weights;
  return {
    experimentId: experiment.id,
    weights: experiment.variants.map((v, i) => ({
      variantKey: v.key,
      weight: floored[i] ?? 0,
      unitCount: 0,
      rewardMean: 0,
      probabilityBest: 0,
    })),
    minArmShare: bandit ? minArmShare : 0,
    sequence: 0,
    method: AllocationMethod.ALLOCATION_METHOD_MANUAL,
    computeTime: undefined,
    analysisPlanId: '',
    source: 'experiment',
    // A stored allocation for other arms is ignored, but its version is what an update must name.
    etag: stored && !fits ? etagOf(stored) : INITIAL_ALLOCATION_ETAG,
    updateTime: new Date(experiment.updateTime),
  };
}

/**
 * An allocation kept in the history, as it was served while in effect: its stored weights with the
 * minimum arm share of the time applied, and its etag of the time.
 */
export function historicAllocationMessage(kept: AllocationHistoryDocument): Allocation {
  return storedAllocationMessage(
    kept.experimentId,
    kept.allocation,
    kept.minArmShare ?? 0,
    kept.etag,
  );
}

/** A stored allocation as served: its weights with `minArmShare` applied. */
function storedAllocationMessage(
  experimentId: string,
  doc: Pick<
    AllocationDocument,
    'weights' | 'sequence' | 'method' | 'computeTime' | 'analysisPlanId' | 'source' | 'updateTime'
  >,
  minArmShare: number,
  etag: string,
): Allocation {
  const floored = applyMinArmShare(
    doc.weights.map((w) => w.weight),
    minArmShare,
  );
  return {
    experimentId,
    weights: doc.weights.map((w, i) => ({ ...w, weight: floored[i] ?? w.weight })),
    minArmShare,
    sequence: doc.sequence,
    method: asEnum<AllocationMethod>(doc.method),
    computeTime: time(doc.computeTime),
    analysisPlanId: doc.analysisPlanId,
    source: doc.source,
    etag,
    updateTime: new Date(doc.updateTime),
  };
}
