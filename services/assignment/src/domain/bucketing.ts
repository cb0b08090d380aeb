/**
 * Turning a unit's hash into a variant, a layer slot or a holdout decision, with the same arithmetic
 * as the GrowthBook SDK (`getBucketRanges`, `chooseVariation`, `inNamespace`) so assignments match it
 * unit for unit.
 *
 * Variant ranges are `[cum_i, cum_i + coverage·w_i)`: every variant keeps its start at the cumulative
 * weight of the variants before it, so changing coverage only grows or shrinks each range at its end
 * and never moves a unit from one variant to another.
 */
import { DEFAULT_HASH_VERSION, hash } from './hashing';

/** A half-open interval `[start, end)` of the unit hash space [0, 1). */
export type BucketRange = readonly [start: number, end: number];

/** A half-open range `[start, end)` of a layer's hash interval that one experiment owns. */
export interface LayerRange {
  readonly start: number;
  readonly end: number;
}

/** How far the weights may sum from 1 before they are ignored, as in the SDK. */
export const WEIGHT_SUM_TOLERANCE = 0.01;
// The SDK's literal bounds (not 1 ± 0.01 computed, which could differ in the last bit).
const MIN_WEIGHT_SUM = 0.99;
const MAX_WEIGHT_SUM = 1.01;

/** `n` equal weights (empty for n ≤ 0). */
export function equalWeights(n: number): number[] {
  if (n <= 0) return [];
  return new Array<number>(n).fill(1 / n);
}

/** Whether `weights` sum to 1 within {@link WEIGHT_SUM_TOLERANCE}. */
export function weightsSumToOne(weights: readonly number[]): boolean {
  let total = 0;
  for (const w of weights) total += w;
  return total >= MIN_WEIGHT_SUM && total <= MAX_WEIGHT_SUM;
}

/**
 * The bucket range of each of `variantCount` variants, as GrowthBook's `getBucketRanges`: coverage
 * is clamped to [0, 1] (1 when undefined), and weights that are missing, of the wrong length or not
 * summing to 1 ± 0.01 fall back to equal weights. The floating-point operations are the SDK's, in its
 * order, so boundaries are bit-identical.
 */
export function bucketRanges(
  variantCount: number,
  coverage: number | undefined,
  weights?: readonly number[],
): BucketRange[] {
  const clamped = clampCoverage(coverage);
  let effective: readonly number[] = weights ?? equalWeights(variantCount);
  if (effective.length !== variantCount || !weightsSumToOne(effective)) {
    effective = equalWeights(variantCount);
  }
  let cumulative = 0;
  return effective.map((w) => {
    const start = cumulative;
    cumulative += w;
    return [start, start + clamped * w] as const;
  });
}

/** Coverage clamped to [0, 1]; 1 when undefined or NaN. */
export function clampCoverage(coverage: number | undefined): number {
  if (coverage === undefined || Number.isNaN(coverage)) return 1;
  return coverage < 0 ? 0 : coverage > 1 ? 1 : coverage;
}

/** The index of the first range containing `n`, or -1 when `n` is in none (not in coverage). */
export function chooseVariant(n: number, ranges: readonly BucketRange[]): number {
  for (let i = 0; i < ranges.length; i++) {
    const range = ranges[i];
    if (range !== undefined && n >= range[0] && n < range[1]) return i;
  }
  return -1;
}

/**
 * The unit's point in a layer's hash interval: `hash("__" + layerId, unitId, v1)`, as the SDK's
 * namespaces. Every experiment of the layer sees the same point, which is what makes them mutually
 * exclusive.
 */
export function layerHash(unitId: string, layerId: string): number {
  // Version 1 is known, so the hash is never null.
  return hash('__' + layerId, unitId, 1) ?? 0;
}

/** Whether the unit falls in `range` of the layer, as the SDK's `inNamespace`. */
export function inLayerRange(unitId: string, layerId: string, range: LayerRange): boolean {
  const n = layerHash(unitId, layerId);
  return n >= range.start && n < range.end;
}

/**
 * Whether a holdout holds the unit out: `hash(seed, unitId, version) < fraction`, with the holdout's
 * own seed (`holdout:<id>` by default) and hash v2 by default, as holdout.proto specifies. Seeding by the
 * holdout alone makes the held-out population the same on every surface and layer it covers and
 * independent of every experiment's bucketing (experiments use other seeds). An unknown hash
 * version holds nobody out.
 */
export function isHeldOut(
  unitId: string,
  seed: string,
  fraction: number,
  version: number = DEFAULT_HASH_VERSION,
): boolean {
  const n = hash(seed, unitId, version);
  return n !== null && n < fraction;
}

/**
 * Enforces a bandit's minimum share per arm (allocation.proto): when some weight is below `m`,
 * every weight becomes `m + (1 − k·m)·w` for k arms, which keeps the sum at 1 and the order of the
 * arms; an allocation that already respects the floor is returned unchanged (a copy).
 */
export function applyMinArmShare(weights: readonly number[], minArmShare: number): number[] {
  const k = weights.length;
  const m = minArmShare;
  if (k === 0 || m <= 0 || !weights.some((w) => w < m)) return [...weights];
  return weights.map((w) => m + (1 - k * m) * w);
}
