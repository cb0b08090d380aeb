/**
 * Side by side with the GrowthBook SDK: for every unit and experiment shape, the evaluator's variant
 * (or "not in the experiment") must be exactly what `GrowthBook#run` returns for the same
 * definition. 100,000 units × 10 shapes, 100% identical.
 */
import { GrowthBook, type ConditionInterface, type Experiment } from '@growthbook/growthbook';
import { type ExperimentDefinition } from '../../src/domain/configuration';
import { buildSnapshot } from '../../src/domain/evaluator';
import { configuration, experiment } from './fixtures';

const UNITS = 100_000;

interface Shape {
  readonly definition: ExperimentDefinition;
  readonly growthbook: Experiment<number>;
}

function shape(definition: ExperimentDefinition): Shape {
  const weights = definition.variants.map((v) => v.weight);
  const growthbook: Experiment<number> = {
    key: definition.id,
    variations: definition.variants.map((_, i) => i) as [number, number, ...number[]],
    hashAttribute: 'id',
    hashVersion: definition.hashVersion ?? 2,
    ...(weights.every((w) => w === 0) ? {} : { weights }),
    ...(definition.coverage === undefined ? {} : { coverage: definition.coverage }),
    ...(definition.seed === undefined ? {} : { seed: definition.seed }),
    ...(definition.layerId === undefined || definition.layerRange === undefined
      ? {}
      : {
          // Deprecated in the SDK in favour of `filters`, but it is exactly a layer range.
          // eslint-disable-next-line @typescript-eslint/no-deprecated
          namespace: [definition.layerId, definition.layerRange.start, definition.layerRange.end],
        }),
    ...(definition.condition === undefined
      ? {}
      : { condition: definition.condition as ConditionInterface }),
  };
  return { definition, growthbook };
}

const variants = (...weights: number[]) => weights.map((weight, i) => ({ key: `v${i}`, weight }));

const shapes: Shape[] = [
  shape(experiment({ id: 'equal-v2', variants: variants(0.5, 0.5) })),
  shape(experiment({ id: 'equal-implicit', variants: variants(0, 0, 0) })),
  shape(experiment({ id: 'unequal-seed', seed: 'custom-seed', variants: variants(0.1, 0.2, 0.7) })),
  shape(
    experiment({ id: 'coverage-v1', hashVersion: 1, coverage: 0.37, variants: variants(0, 0, 0) }),
  ),
  shape(
    experiment({
      id: 'layer-low',
      layerId: 'home-layer',
      layerRange: { start: 0, end: 0.3 },
      coverage: 0.8,
      variants: variants(0.5, 0.5),
    }),
  ),
  shape(
    experiment({
      id: 'layer-mid-v1',
      hashVersion: 1,
      layerId: 'home-layer',
      layerRange: { start: 0.3, end: 0.75 },
      variants: variants(0.25, 0.25, 0.5),
    }),
  ),
  shape(
    experiment({
      id: 'other-layer',
      seed: 'x',
      layerId: 'other',
      layerRange: { start: 0.5, end: 1 },
      coverage: 0.5,
      variants: variants(0.1, 0.2, 0.3, 0.4),
    }),
  ),
  shape(experiment({ id: 'bad-weights', variants: variants(0.3, 0.3) })),
  shape(
    experiment({
      id: 'targeted',
      condition: { country: { $in: ['SE', 'NO'] } },
      variants: variants(0.4, 0.6),
    }),
  ),
  shape(experiment({ id: 'no-coverage', coverage: 0, hashVersion: 1 })),
];

const COUNTRIES = ['SE', 'NO', 'DK', 'US'];

/** Deterministic, varied unit ids: sequential, uuid-like, and some with non-ASCII characters. */
function unitId(i: number): string {
  if (i % 3 === 0) return `user-${i}`;
  const x = Math.imul(i + 0x9e3779b9, 0x85ebca6b) >>> 0;
  const y = Math.imul(x ^ (x >>> 13), 0xc2b2ae35) >>> 0;
  return i % 3 === 1
    ? `${x.toString(16)}-${y.toString(16)}-${i.toString(36)}`
    : `ünït-${y}-日本-${i}`;
}

describe('assignments are identical to the GrowthBook SDK', () => {
  it(`for ${UNITS} units × ${shapes.length} shapes (weights, coverage, layers, hash v1/v2, seeds, targeting)`, () => {
    const snapshot = buildSnapshot(
      configuration({
        layers: [{ id: 'home-layer' }, { id: 'other' }],
        experiments: shapes.map((s) => s.definition),
      }),
    );
    const order = new Map(shapes.map((s, i) => [s.definition.id, i]));
    // The SDK logs (console.error) on every run of the bad-weights shape unless NODE_ENV is
    // production; its bucketing is the same either way.
    const nodeEnv = process.env.NODE_ENV;
    process.env.NODE_ENV = 'production';
    const growthbook = new GrowthBook({ attributes: {} });
    const mismatches: string[] = [];
    const inExperiment = new Array<number>(shapes.length).fill(0);
    for (let i = 0; i < UNITS; i++) {
      const id = unitId(i);
      const country = COUNTRIES[i % COUNTRIES.length]!;
      void growthbook.setAttributes({ id, country });
      const ours = snapshot.resolve({
        id,
        type: 'user',
        attributes: { country },
        surfaces: ['home'],
        now: 0,
      });
      for (const assignment of ours.assignments) {
        const s = order.get(assignment.experiment.id)!;
        const theirs = growthbook.run(shapes[s]!.growthbook);
        const ourVariant = assignment.inExperiment ? assignment.variant.index : -1;
        const theirVariant = theirs.inExperiment ? theirs.variationId : -1;
        if (ourVariant !== theirVariant)
          mismatches.push(`${assignment.experiment.id}/${id}: ${ourVariant} vs ${theirVariant}`);
        if (assignment.inExperiment) inExperiment[s]!++;
      }
    }
    growthbook.destroy();
    process.env.NODE_ENV = nodeEnv;
    expect(mismatches.slice(0, 10)).toEqual([]);
    expect(mismatches).toHaveLength(0);
    // The shapes exercise what they claim: partial populations where coverage or layers say so.
    const share = (id: string) => inExperiment[order.get(id)!]! / UNITS;
    expect(share('equal-v2')).toBe(1);
    expect(share('coverage-v1')).toBeCloseTo(0.37, 1);
    expect(share('layer-low')).toBeCloseTo(0.3 * 0.8, 1);
    expect(share('targeted')).toBe(0.5);
    expect(share('no-coverage')).toBe(0);
  });
});
