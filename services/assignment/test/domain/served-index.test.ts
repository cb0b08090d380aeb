/**
 * `resolveServed` (the indexed path of Resolve without `explain`) against the full evaluation: for
 * random configurations and units it must return exactly the served subset of `resolve`, in the
 * same order, with the same holdout memberships. Configurations include what validation would
 * reject (overlapping, empty and inverted layer ranges, unknown layers and hash versions), so the
 * index is checked against the evaluator's own semantics, not against validated input only.
 */
import fc from 'fast-check';
import {
  AllocationMode,
  ExperimentStatus,
  HoldoutStatus,
  type AllocationDefinition,
  type ExperimentDefinition,
  type HoldoutDefinition,
} from '../../src/domain/configuration';
import {
  AssignmentReason,
  buildSnapshot,
  isServedReason,
  type Resolution,
  type StickyAssignment,
  type UnitContext,
} from '../../src/domain/evaluator';
import type { Condition } from '../../src/domain/targeting';

const NOW = Date.UTC(2025, 0, 15);
const SURFACES = ['home', 'search', 'cart'];
/** Unit ids some experiments override. */
const TESTERS = ['qa-1', 'qa-2', 'qa-3'];
const LAYERS = ['l0', 'l1', 'l2'];
const CONDITIONS: Condition[] = [
  { country: { $in: ['SE', 'NO'] } },
  { platform: 'ios' },
  { 'app.version': { $gte: 10 } },
  { $or: [{ tier: 'premium' }, { 'app.version': { $lt: 5 } }] },
];

/** A bound in [0, 1]: often on the 1/1000 grid the layer hash lands on, sometimes anywhere. */
const bound = fc.oneof(
  fc.integer({ min: 0, max: 1000 }).map((n) => n / 1000),
  fc.integer({ min: 0, max: 20 }).map((n) => n / 20),
  fc.double({ min: 0, max: 1, noNaN: true }),
);

/** Layer ranges: mostly a layer's disjoint partition, sometimes anything (overlaps, empty, inverted). */
const layerRange = fc.oneof(
  fc.record({ slots: fc.integer({ min: 1, max: 8 }), slot: fc.nat(7) }).map(({ slots, slot }) => ({
    start: (slot % slots) / slots,
    end: ((slot % slots) + 1) / slots,
  })),
  fc.record({ start: bound, end: bound }),
);

/** Undefined four times in five. */
function rarely<T>(arbitrary: fc.Arbitrary<T>): fc.Arbitrary<T | undefined> {
  return fc.oneof({ arbitrary: fc.constant(undefined), weight: 4 }, { arbitrary, weight: 1 });
}

const experimentShape = fc.record({
  unitType: fc.constantFrom('user', 'user', 'user', 'device'),
  surfaces: fc.array(fc.constantFrom(...SURFACES), { minLength: 1, maxLength: 3 }),
  // Up to 6 variants: more than a served-path record holds (4) take the general evaluation.
  weights: fc.array(fc.integer({ min: 0, max: 4 }), { minLength: 2, maxLength: 6 }),
  coverage: fc.option(bound, { nil: undefined }),
  condition: fc.option(fc.constantFrom(...CONDITIONS), { nil: undefined, freq: 2 }),
  layer: fc.option(fc.record({ id: fc.constantFrom(...LAYERS, 'ghost'), range: layerRange }), {
    nil: undefined,
    freq: 3,
  }),
  hashVersion: fc.constantFrom(undefined, 1, 2, 3),
  status: fc.constantFrom(
    ExperimentStatus.RUNNING,
    ExperimentStatus.RUNNING,
    ExperimentStatus.RUNNING,
    ExperimentStatus.RUNNING,
    ExperimentStatus.SCHEDULED,
    ExperimentStatus.DRAFT,
    ExperimentStatus.STOPPED,
    ExperimentStatus.CONCLUDED,
  ),
  start: rarely(fc.constantFrom(NOW - 1, NOW, NOW + 1)),
  end: rarely(fc.constantFrom(NOW, NOW + 1)),
  bandit: rarely(fc.double({ min: 0, max: 0.3, noNaN: true })),
  sticky: fc.boolean().chain((b) => (b ? fc.boolean() : fc.constant(false))),
  shipped: fc.option(fc.constantFrom('v0', 'v1', 'nope'), { nil: undefined }),
  // Testers forced into variants, some twice or into a variant there is not (validation would
  // refuse both): the first override of a unit naming a variant counts.
  overrides: rarely(
    fc.array(fc.tuple(fc.constantFrom(...TESTERS), fc.constantFrom('v0', 'v1', 'v2', 'nope')), {
      minLength: 1,
      maxLength: 4,
    }),
  ),
});

const holdoutShape = fc.record({
  unitType: fc.constantFrom('user', 'device'),
  fraction: fc.double({ min: 0.1, max: 0.8, noNaN: true }),
  hashVersion: fc.constantFrom(undefined, 1, 2),
  surfaces: fc.subarray(SURFACES),
  layerIds: fc.subarray(LAYERS),
  status: fc.constantFrom(HoldoutStatus.RUNNING, HoldoutStatus.RUNNING, HoldoutStatus.STOPPED),
});

const unitShape = fc.record({
  id: fc.oneof(
    { arbitrary: fc.string({ minLength: 1, maxLength: 12 }), weight: 3 },
    { arbitrary: fc.constantFrom(...TESTERS), weight: 1 },
  ),
  type: fc.constantFrom('user', 'user', 'user', 'user', 'device'),
  // One surface takes the evaluator's fast path for simple experiments; several, the general one.
  surfaces: fc.oneof(
    fc.constantFrom(...SURFACES).map((surface) => [surface]),
    fc.array(fc.constantFrom(...SURFACES, 'nowhere'), { minLength: 1, maxLength: 3 }),
  ),
  attributes: fc.record({
    country: fc.constantFrom('SE', 'NO', 'US'),
    platform: fc.constantFrom('ios', 'web'),
    tier: fc.constantFrom('premium', 'free'),
    app: fc.record({ version: fc.integer({ min: 0, max: 20 }) }),
  }),
  sticky: fc.array(fc.tuple(fc.nat(40), fc.constantFrom('v0', 'v1', 'v2', 'gone'), fc.nat(3)), {
    maxLength: 6,
  }),
  // The sticky lookup failed for some experiments (those it had not cached), one unit in two.
  stickyUnavailable: fc.boolean(),
});

const scenario = fc.record({
  experiments: fc.array(experimentShape, { minLength: 1, maxLength: 40 }),
  holdouts: fc.array(holdoutShape, { maxLength: 3 }),
  units: fc.array(unitShape, { minLength: 1, maxLength: 12 }),
});

type ExperimentShape = typeof experimentShape extends fc.Arbitrary<infer T> ? T : never;

function experimentOf(shape: ExperimentShape, index: number): ExperimentDefinition {
  const bandit = shape.bandit !== undefined;
  return {
    // Ids out of index order, so the evaluator's id ordering is exercised.
    id: `e${((index * 7919) % 1000).toString(36)}-${index}`,
    unitType: shape.unitType,
    surfaces: shape.surfaces,
    variants: shape.weights.map((w, k) => ({
      key: `v${k}`,
      weight: w / 4,
      payload: { k, policy: `p${index}` },
    })),
    ...(shape.coverage === undefined ? {} : { coverage: shape.coverage }),
    ...(shape.condition === undefined ? {} : { condition: shape.condition }),
    ...(shape.layer === undefined
      ? {}
      : { layerId: shape.layer.id, layerRange: shape.layer.range }),
    ...(shape.hashVersion === undefined ? {} : { hashVersion: shape.hashVersion }),
    status: shape.status,
    ...(shape.start === undefined ? {} : { scheduledStartTime: shape.start }),
    ...(shape.end === undefined ? {} : { scheduledEndTime: shape.end }),
    ...(bandit
      ? { allocationMode: AllocationMode.BANDIT, bandit: { minArmShare: shape.bandit ?? 0 } }
      : {}),
    sticky: shape.sticky || bandit,
    ...(shape.shipped === undefined ? {} : { shippedVariantKey: shape.shipped }),
    ...(shape.overrides === undefined
      ? {}
      : { overrides: shape.overrides.map(([unitId, variantKey]) => ({ unitId, variantKey })) }),
    etag: `etag-${index}`,
  };
}

function view(resolution: Resolution) {
  return {
    assignments: resolution.assignments.map((a) => ({
      experiment: a.experiment.id,
      variant: a.variant.key,
      inExperiment: a.inExperiment,
      reason: a.reason,
      holdoutId: a.holdoutId,
      allocationSequence: a.allocationSequence,
      surfaces: [...a.surfaces],
    })),
    holdouts: resolution.holdouts.map((h) => ({
      holdout: h.holdout.id,
      heldOut: h.heldOut,
      surfaces: [...h.surfaces],
      overridden: h.overridden,
    })),
  };
}

describe('resolveServed', () => {
  it('returns exactly the served assignments of the full evaluation, in order', () => {
    const reasons = new Map<number, number>();
    fc.assert(
      fc.property(scenario, ({ experiments: shapes, holdouts: holdoutShapes, units }) => {
        const experiments = shapes.map(experimentOf);
        const holdouts: HoldoutDefinition[] = holdoutShapes.map((h, i) => ({
          id: `h${i}`,
          ...h,
          ...(h.hashVersion === undefined ? {} : { hashVersion: h.hashVersion }),
        }));
        const allocations: AllocationDefinition[] = experiments
          .filter((e) => e.allocationMode === AllocationMode.BANDIT)
          .map((e, i) => ({
            experimentId: e.id,
            sequence: i + 1,
            weights: e.variants.map((v, k) => ({ variantKey: v.key, weight: k === 0 ? 0.7 : 0.3 })),
          }));
        const snapshot = buildSnapshot({
          layers: LAYERS.map((id) => ({ id })),
          experiments,
          holdouts,
          allocations,
        });
        for (const u of units) {
          const sticky = new Map<string, StickyAssignment>();
          for (const [e, variantKey, sequence] of u.sticky) {
            const id = experiments[e % experiments.length]?.id;
            if (id !== undefined) sticky.set(id, { variantKey, allocationSequence: sequence });
          }
          const unit: UnitContext = {
            id: u.id,
            type: u.type,
            attributes: u.attributes,
            surfaces: u.surfaces,
            now: NOW,
            ...(u.stickyUnavailable
              ? {
                  stickyUnavailable: new Set(
                    experiments.filter((e, i) => i % 3 !== 0 && !sticky.has(e.id)).map((e) => e.id),
                  ),
                }
              : {}),
            ...(sticky.size > 0 ? { sticky } : {}),
          };
          // Alternate the order, so no memo of one call leaks into the other.
          const first = snapshot.resolveServed(unit);
          const full = snapshot.resolve(unit);
          const second = snapshot.resolveServed(unit);
          const expected = view({
            assignments: full.assignments.filter((a) => isServedReason(a.reason)),
            holdouts: full.holdouts,
          });
          expect(view(first)).toEqual(expected);
          expect(view(second)).toEqual(expected);
          for (const a of full.assignments) reasons.set(a.reason, (reasons.get(a.reason) ?? 0) + 1);
        }
      }),
      { numRuns: 500 },
    );
    // The generator must reach every reason, served or skipped, or the property says little.
    // Floors at about half the rarest count seen over 40 runs of 500 scenarios (STICKY_UNAVAILABLE
    // at least 84, mean 109; HOLDOUT 148, mean 216; ASSIGNED 283, mean 360): a run varies a lot,
    // since scenarios differ in size, and a floor near the mean fails now and then without
    // anything being wrong.
    for (const reason of Object.values(AssignmentReason)) {
      expect(reasons.get(reason) ?? 0).toBeGreaterThan(40);
    }
    expect(reasons.get(AssignmentReason.ASSIGNED)).toBeGreaterThan(160);
    expect(reasons.get(AssignmentReason.HOLDOUT)).toBeGreaterThan(75);
  });

  it('evaluates one experiment per layer on a full layer instead of all of them', () => {
    const experiments: ExperimentDefinition[] = Array.from({ length: 100 }, (_, i) => ({
      id: `exp-${String(i).padStart(3, '0')}`,
      unitType: 'user',
      surfaces: ['home'],
      variants: [
        { key: 'control', weight: 0.5 },
        { key: 'treatment', weight: 0.5 },
      ],
      layerId: `layer-${i % 5}`,
      layerRange: { start: Math.floor(i / 5) / 20, end: (Math.floor(i / 5) + 1) / 20 },
      status: ExperimentStatus.RUNNING,
    }));
    const snapshot = buildSnapshot({
      layers: Array.from({ length: 5 }, (_, l) => ({ id: `layer-${l}` })),
      experiments,
      holdouts: [],
      allocations: [],
    });
    for (let u = 0; u < 200; u++) {
      const unit: UnitContext = {
        id: `user-${u}`,
        type: 'user',
        attributes: {},
        surfaces: ['home'],
        now: NOW,
      };
      const full = snapshot.resolve(unit).assignments;
      const served = snapshot.resolveServed(unit).assignments;
      // Every layer is fully allocated: exactly one experiment per layer has the unit in range.
      expect(full.filter((a) => a.reason !== AssignmentReason.NOT_IN_LAYER_RANGE)).toHaveLength(5);
      expect(served).toEqual(full.filter((a) => isServedReason(a.reason)));
    }
  });
});
