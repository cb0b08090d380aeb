/**
 * The pure assignment evaluator against the GrowthBook SDK, same machine, same run: resolving one
 * unit against 1,000 running experiments in 50 layers (20 per layer), every one with a targeting
 * condition. GrowthBook evaluates the same definitions with `GrowthBook#run` per experiment of the
 * surface (after `setAttributes` for the unit), which is how a GrowthBook-based service would
 * resolve a surface. Target: Tandem at least 5× faster. Prints figures; asserts nothing on timing.
 *
 * Build and run: `npx tsc -b bench && node dist/bench/assignment-evaluator.bench.js`
 */
import { GrowthBook, type ConditionInterface, type Experiment } from '@growthbook/growthbook';
import {
  ExperimentStatus,
  buildSnapshot,
  type ExperimentDefinition,
  type ResolvedAssignment,
  type UnitContext,
} from '../services/assignment/src/domain';

const LAYERS = 50;
const PER_LAYER = 20;
const UNITS = 10_000;
const MIN_SECONDS = 2;

// GrowthBook logs development warnings unless NODE_ENV is production; measure it as deployed.
process.env.NODE_ENV = 'production';

/** A small deterministic PRNG (mulberry32) so every run measures the same workload. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const rand = random(42);
const pick = <T>(items: readonly T[]): T => items[Math.floor(rand() * items.length)]!;
const COUNTRIES = ['SE', 'NO', 'DK', 'FI', 'US', 'GB', 'DE', 'FR', 'BR', 'JP'];
const PLATFORMS = ['ios', 'android', 'web', 'tv'];

// A pool of conditions in the syntax both engines read the same way; experiments share them, as
// teams reuse targeting ("Nordics on iOS") across many experiments.
function condition(i: number): Record<string, unknown> {
  switch (i % 6) {
    case 0:
      return { country: { $in: COUNTRIES.slice(i % 5, (i % 5) + 3) } };
    case 1:
      return { platform: PLATFORMS[i % PLATFORMS.length] };
    case 2:
      return { 'app.version': { $gte: 8 + (i % 7) } };
    case 3:
      return { $or: [{ country: COUNTRIES[i % COUNTRIES.length] }, { plan: 'premium' }] };
    case 4:
      return { age: { $gte: 18 + (i % 10), $lt: 65 } };
    default:
      return {
        tags: { $elemMatch: { $eq: i % 2 === 0 ? 'beta' : 'kids' } },
        platform: { $ne: 'tv' },
      };
  }
}
const CONDITIONS = Array.from({ length: 60 }, (_, i) => condition(i));

/**
 * How the experiments' conditions relate, from the best case to the worst:
 * - `shared`: drawn from the pool, as teams reuse targeting across experiments;
 * - `distinct`: every condition different, a pool rule AND a clause of its own (the evaluator
 *   still evaluates the rule once per unit: it shares conjuncts, see `conjunctsOf`);
 * - `indivisible`: every condition different and one conjunct (a pool rule OR a clause of its own),
 *   so no condition's result can be reused within a resolve.
 */
const WORKLOADS = {
  shared: 'conditions shared from a pool',
  distinct: 'every condition distinct: a shared rule AND a clause of its own',
  indivisible: 'every condition distinct and indivisible: a shared rule OR a clause of its own',
} as const;

for (const workload of Object.keys(WORKLOADS) as (keyof typeof WORKLOADS)[]) {
  const experiments: ExperimentDefinition[] = [];
  for (let l = 0; l < LAYERS; l++) {
    for (let j = 0; j < PER_LAYER; j++) {
      const arms = 2 + Math.floor(rand() * 2);
      const weights = arms === 2 ? [0.5, 0.5] : [0.2, 0.3, 0.5];
      experiments.push({
        id: `exp-${l}-${j}`,
        unitType: 'user',
        surfaces: ['home'],
        variants: weights.map((weight, k) => ({ key: `v${k}`, weight })),
        coverage: 0.5 + Math.round(rand() * 50) / 100,
        // The clause of its own never decides the result (every unit's app.version is below 20),
        // so the three workloads enter the same share of experiments.
        condition:
          workload === 'shared'
            ? pick(CONDITIONS)
            : workload === 'distinct'
              ? { $and: [pick(CONDITIONS), { 'app.version': { $lte: 100 + l * PER_LAYER + j } }] }
              : { $or: [pick(CONDITIONS), { 'app.version': { $gt: 100 + l * PER_LAYER + j } }] },
        layerId: `layer-${l}`,
        layerRange: { start: j / PER_LAYER, end: (j + 1) / PER_LAYER },
        hashVersion: rand() < 0.8 ? 2 : 1,
        status: ExperimentStatus.RUNNING,
      });
    }
  }

  const snapshot = buildSnapshot({
    layers: Array.from({ length: LAYERS }, (_, l) => ({ id: `layer-${l}` })),
    experiments,
    holdouts: [],
    allocations: [],
  });

  const growthbookExperiments: Experiment<number>[] = experiments.map((e) => ({
    key: e.id,
    variations: e.variants.map((_, i) => i) as Experiment<number>['variations'],
    weights: e.variants.map((v) => v.weight) as Experiment<number>['variations'],
    coverage: e.coverage ?? 1,
    hashAttribute: 'id',
    hashVersion: e.hashVersion ?? 2,
    namespace: [e.layerId ?? '', e.layerRange?.start ?? 0, e.layerRange?.end ?? 1],
    condition: e.condition as ConditionInterface,
  }));

  const units: UnitContext[] = Array.from({ length: UNITS }, (_, i) => ({
    id: `user-${i}-${Math.floor(rand() * 1e9).toString(36)}`,
    type: 'user',
    surfaces: ['home'],
    now: Date.now(),
    attributes: {
      country: pick(COUNTRIES),
      platform: pick(PLATFORMS),
      plan: rand() < 0.3 ? 'premium' : 'free',
      age: 13 + Math.floor(rand() * 60),
      app: { version: 5 + Math.floor(rand() * 12) },
      tags: rand() < 0.5 ? ['beta'] : ['kids', 'music'],
    },
  }));

  const growthbook = new GrowthBook({ attributes: {} });

  function resolveWithGrowthBook(unit: UnitContext): number {
    void growthbook.setAttributes({ id: unit.id, ...unit.attributes });
    let inExperiment = 0;
    for (const e of growthbookExperiments) if (growthbook.run(e).inExperiment) inExperiment++;
    return inExperiment;
  }

  function resolveWithTandem(unit: UnitContext): number {
    let inExperiment = 0;
    for (const a of snapshot.resolve(unit).assignments) if (a.inExperiment) inExperiment++;
    return inExperiment;
  }

  // What Resolve without `explain` runs: only the assignments that change what is served, with
  // the per-layer range index instead of evaluating every experiment.
  function resolveServedWithTandem(unit: UnitContext): number {
    let inExperiment = 0;
    for (const a of snapshot.resolveServed(unit).assignments) if (a.inExperiment) inExperiment++;
    return inExperiment;
  }

  interface Measurement {
    readonly opsPerSecond: number;
    readonly microsPerResolve: number;
    readonly inExperimentPerResolve: number;
  }

  function measure(resolve: (unit: UnitContext) => number): Measurement {
    // Warm up (JIT) on a full pass of the units, then run for at least MIN_SECONDS.
    for (const unit of units) resolve(unit);
    let count = 0;
    let inExperiment = 0;
    const start = process.hrtime.bigint();
    let elapsed = 0;
    while (elapsed < MIN_SECONDS) {
      for (let i = 0; i < 1000; i++) inExperiment += resolve(units[(count + i) % UNITS]!);
      count += 1000;
      elapsed = Number(process.hrtime.bigint() - start) / 1e9;
    }
    return {
      opsPerSecond: count / elapsed,
      microsPerResolve: (elapsed * 1e6) / count,
      inExperimentPerResolve: inExperiment / count,
    };
  }

  // Both engines must agree before their speeds are comparable.
  let disagreements = 0;
  const SAMPLE = 2000;
  for (const unit of units.slice(0, SAMPLE)) {
    void growthbook.setAttributes({ id: unit.id, ...unit.attributes });
    const ours = snapshot.resolve(unit).assignments;
    const byId = new Map(ours.map((a) => [a.experiment.id, a.inExperiment ? a.variant.index : -1]));
    for (const e of growthbookExperiments) {
      const theirs = growthbook.run(e);
      if ((theirs.inExperiment ? theirs.variationId : -1) !== byId.get(e.key)) disagreements++;
    }
    // The served-only path must enter exactly the experiments the full evaluation enters.
    const entered = (assignments: readonly ResolvedAssignment[]): string =>
      assignments
        .filter((a) => a.inExperiment)
        .map((a) => `${a.experiment.id}=${a.variant.key}`)
        .join();
    if (entered(snapshot.resolveServed(unit).assignments) !== entered(ours)) disagreements++;
  }

  const tandem = measure(resolveWithTandem);
  const served = measure(resolveServedWithTandem);
  const peer = measure(resolveWithGrowthBook);
  growthbook.destroy();

  const row = (name: string, m: Measurement): string =>
    `  ${name.padEnd(24)} ${m.opsPerSecond.toFixed(0).padStart(10)} resolves/s ${m.microsPerResolve
      .toFixed(1)
      .padStart(
        10,
      )} µs/resolve   (${m.inExperimentPerResolve.toFixed(1)} experiments entered per unit)`;

  console.log(`\nassignment evaluator: resolve one unit on a surface (${WORKLOADS[workload]})`);
  console.log(
    `  workload: ${experiments.length} running experiments, ${LAYERS} layers × ${PER_LAYER}, ` +
      `${new Set(experiments.map((e) => JSON.stringify(e.condition))).size} distinct conditions, ` +
      `${UNITS} units, node ${process.version}`,
  );
  console.log(
    `  agreement with GrowthBook on ${SAMPLE} units × ${experiments.length} experiments: ` +
      (disagreements === 0 ? '100% identical' : `${disagreements} disagreements`),
  );
  console.log(row('tandem evaluator', tandem));
  console.log(row('tandem, served only', served));
  console.log(row('@growthbook/growthbook', peer));
  const ratio = tandem.opsPerSecond / peer.opsPerSecond;
  console.log(
    `  ratio: tandem is ${ratio.toFixed(1)}× GrowthBook (target ≥ 5×: ${ratio >= 5 ? 'met' : 'NOT met'})`,
  );
}
