import fc from 'fast-check';
import {
  applyMinArmShare,
  bucketRanges,
  chooseVariant,
  inLayerRange,
  isHeldOut,
  layerHash,
  type BucketRange,
} from '../../src/domain/bucketing';
import { hash } from '../../src/domain/hashing';
import { loadGolden, type GoldenFile, type GrowthBookSpec, type RangeArgs } from './golden';

const spec = loadGolden<GrowthBookSpec>('growthbook-spec.json');
const rangesPython = loadGolden<GoldenFile<[RangeArgs, number[][]]>>('bucket-ranges-python.json');
const layerPython =
  loadGolden<GoldenFile<[string, string, number, number, number, boolean]>>('layer-python.json');
const holdoutPython =
  loadGolden<GoldenFile<[string, string, number, number, number, boolean]>>('holdout-python.json');

function expectRanges(actual: readonly BucketRange[], expected: number[][]): void {
  expect(actual).toHaveLength(expected.length);
  actual.forEach((range, i) => {
    expect(range[0]).toBeCloseTo(expected[i]![0]!, 12);
    expect(range[1]).toBeCloseTo(expected[i]![1]!, 12);
  });
}

describe('bucketRanges', () => {
  it.each(spec.getBucketRange)(
    'matches the GrowthBook SDK spec: %s',
    (_name, [count, coverage, weights], expected) => {
      expectRanges(bucketRanges(count, coverage, weights ?? undefined), expected);
    },
  );

  it.each(rangesPython.cases)(
    'matches the independent Python implementation for %j',
    ([count, coverage, weights], expected) => {
      // Same IEEE-754 operations in the same order: identical to the bit.
      expect(bucketRanges(count, coverage, weights ?? undefined)).toEqual(expected);
    },
  );

  it('keeps every unit in its variant when coverage is raised (ranges only grow at their ends)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 1, max: 100 }), { minLength: 2, maxLength: 6 }),
        fc.double({ min: 0, max: 1, noNaN: true }),
        fc.double({ min: 0, max: 1, noNaN: true }),
        fc.double({ min: 0, max: 0.9999, noNaN: true }),
        (raw, a, b, n) => {
          const total = raw.reduce((x, y) => x + y, 0);
          const weights = raw.map((w) => w / total);
          const [low, high] = a <= b ? [a, b] : [b, a];
          const before = chooseVariant(n, bucketRanges(weights.length, low, weights));
          const after = chooseVariant(n, bucketRanges(weights.length, high, weights));
          return before === -1 || before === after;
        },
      ),
      { numRuns: 2000 },
    );
  });
});

describe('chooseVariant', () => {
  it.each(spec.chooseVariation)(
    'matches the GrowthBook SDK spec: %s',
    (_name, n, ranges, expected) => {
      expect(chooseVariant(n, ranges)).toBe(expected);
    },
  );
});

describe('layer membership', () => {
  it.each(spec.inNamespace)(
    'matches the GrowthBook SDK spec: %s',
    (_name, unitId, [layerId, start, end], expected) => {
      expect(inLayerRange(unitId, layerId, { start, end })).toBe(expected);
    },
  );

  it.each(layerPython.cases)(
    'puts unit %j of layer %j at the independently computed point',
    (unitId, layerId, start, end, point, inRange) => {
      expect(layerHash(unitId, layerId)).toBe(point);
      expect(inLayerRange(unitId, layerId, { start, end })).toBe(inRange);
    },
  );
});

describe('holdouts', () => {
  it.each(holdoutPython.cases)(
    'holds unit %j out of holdout seed %j (fraction %d, v%d) as computed independently',
    (unitId, seed, fraction, version, expectedHash, heldOut) => {
      expect(hash(seed, unitId, version)).toBe(expectedHash);
      expect(isHeldOut(unitId, seed, fraction, version)).toBe(heldOut);
    },
  );

  it('holds out about the configured fraction of units', () => {
    let held = 0;
    for (let i = 0; i < 20_000; i++) if (isHeldOut(`user-${i}`, 'global', 0.1)) held++;
    // Binomial(20000, 0.1): sd ≈ 42; 5 sd either side.
    expect(Math.abs(held - 2000)).toBeLessThan(212);
  });

  it('holds nobody out under an unknown hash version', () => {
    expect(isHeldOut('user-1', 'seed', 0.99, 7)).toBe(false);
  });
});

describe('applyMinArmShare', () => {
  it('lifts every arm with m + (1 − k·m)·w when some arm is below the floor', () => {
    const floored = applyMinArmShare([0.9, 0.08, 0.02], 0.05);
    // m = 0.05, k = 3: 0.05 + 0.85·w
    expect(floored[0]).toBeCloseTo(0.815, 12);
    expect(floored[1]).toBeCloseTo(0.118, 12);
    expect(floored[2]).toBeCloseTo(0.067, 12);
    expect(floored.reduce((a, b) => a + b, 0)).toBeCloseTo(1, 12);
  });

  it('leaves an allocation that respects the floor unchanged', () => {
    expect(applyMinArmShare([0.6, 0.3, 0.1], 0.1)).toEqual([0.6, 0.3, 0.1]);
  });

  it('gives a starved arm exactly the floor', () => {
    const [first, starved] = applyMinArmShare([1, 0], 0.1);
    expect(starved).toBe(0.1);
    expect(first).toBeCloseTo(0.9, 12);
  });
});
