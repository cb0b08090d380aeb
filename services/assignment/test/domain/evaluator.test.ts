import fc from 'fast-check';
import { layerHash } from '../../src/domain/bucketing';
import { AllocationMode, ExperimentStatus, HoldoutStatus } from '../../src/domain/configuration';
import {
  AssignmentReason,
  buildSnapshot,
  type ResolvedAssignment,
  type StickyAssignment,
  type UnitContext,
} from '../../src/domain/evaluator';
import { hash } from '../../src/domain/hashing';
import { compileCondition, type Condition } from '../../src/domain/targeting';
import { configuration, experiment, holdout } from './fixtures';

const NOW = Date.UTC(2025, 0, 15);

function unit(id: string, overrides: Partial<UnitContext> = {}): UnitContext {
  return { id, type: 'user', attributes: {}, surfaces: ['home'], now: NOW, ...overrides };
}

/** The first `user-N` id satisfying `predicate`. */
function findUnit(predicate: (id: string) => boolean): string {
  for (let i = 0; i < 1_000_000; i++) {
    const id = `user-${i}`;
    if (predicate(id)) return id;
  }
  throw new Error('no unit found');
}

function only(assignments: readonly ResolvedAssignment[]): ResolvedAssignment {
  expect(assignments).toHaveLength(1);
  return assignments[0]!;
}

describe('conditions sharing conjuncts', () => {
  // Rules a configuration shares between conditions; each condition combines a few of them with
  // fields and nested `$and`s, so the snapshot evaluates some conjuncts for several conditions.
  const RULES: Condition[] = [
    { country: 'SE' },
    { country: { $in: ['SE', 'NO'] } },
    { 'app.version': { $gte: 10 } },
    { plan: 'premium' },
    { tags: 'beta' },
    { age: { $gte: 18, $lt: 65 } },
    { $or: [{ country: 'US' }, { plan: 'premium' }] },
    { $nor: [{ platform: 'tv' }] },
    { platform: { $ne: 'web' } },
    { $not: { platform: 'web' } },
    { tags: { $elemMatch: { $eq: 'beta' } } },
    { plan: { $exists: false } },
    {},
    // Names sift reads specially, matched through escaped copies (see `compileConjunct`).
    { constructor: 'x' },
    { toJSON: 'x' },
  ];
  const rule = fc.constantFrom(...RULES);
  const { condition } = fc.letrec<{ condition: Condition }>((tie) => ({
    condition: fc.oneof(
      { depthSize: 'small' },
      rule,
      fc
        .array(tie('condition'), { minLength: 1, maxLength: 3 })
        .map((members): Condition => ({ $and: members })),
      fc.tuple(rule, rule).map(([first, second]): Condition => ({ ...first, ...second })),
      fc
        .tuple(rule, fc.array(tie('condition'), { minLength: 1, maxLength: 2 }))
        .map(([first, members]): Condition => ({ ...first, $and: members })),
    ),
  }));
  const attributes = fc.oneof(
    // Units that the last two rules, merged with another, match.
    fc.constantFrom({ constructor: 'x', plan: 'premium' }, { toJSON: 'x', country: 'SE' }),
    fc.record(
      {
        country: fc.constantFrom('SE', 'NO', 'US'),
        plan: fc.constantFrom('premium', 'free'),
        app: fc.record({ version: fc.integer({ min: 5, max: 15 }) }),
        tags: fc.constantFrom(['beta'], ['kids', 'music'], []),
        age: fc.integer({ min: 13, max: 80 }),
        platform: fc.constantFrom('ios', 'web', 'tv'),
        constructor: fc.constant('x'),
        toJSON: fc.constant('x'),
      },
      { requiredKeys: [] },
    ),
  );

  it('target exactly the units each whole condition, compiled unsplit, matches', () => {
    fc.assert(
      fc.property(
        fc.array(condition, { minLength: 1, maxLength: 8 }),
        fc.array(attributes, { minLength: 1, maxLength: 6 }),
        (conditions, units) => {
          const snapshot = buildSnapshot(
            configuration({
              experiments: conditions.map((c, i) =>
                experiment({ id: `exp-${i}`, condition: c, coverage: 1 }),
              ),
            }),
          );
          // The reference: each condition compiled whole, not split into shared conjuncts (its
          // semantics are tested against MongoDB's in targeting.test.ts).
          const references = conditions.map((c) => compileCondition(c));
          units.forEach((unitAttributes, u) => {
            const context = unit(`user-${u}`, { attributes: unitAttributes });
            const expected = references.map((matches) => matches(unitAttributes));
            const { assignments } = snapshot.resolve(context);
            expect(assignments.map((a) => a.reason !== AssignmentReason.TARGETED_OUT)).toEqual(
              expected,
            );
            // Every experiment covers all units, so the served path enters exactly the targeted.
            expect(snapshot.resolveServed(context).assignments.map((a) => a.experiment.id)).toEqual(
              conditions.map((_, i) => `exp-${i}`).filter((_, i) => expected[i]),
            );
          });
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('resolve reasons, in the contract order', () => {
  it.each([
    ['a draft', { status: ExperimentStatus.DRAFT }],
    ['a stopped experiment', { status: ExperimentStatus.STOPPED }],
    ['a concluded experiment without a shipped variant', { status: ExperimentStatus.CONCLUDED }],
    [
      'a scheduled experiment before its start',
      { status: ExperimentStatus.SCHEDULED, scheduledStartTime: NOW + 1 },
    ],
    [
      'a running experiment at its end time',
      { status: ExperimentStatus.RUNNING, scheduledEndTime: NOW },
    ],
  ])('gives the control with NOT_RUNNING for %s', (_name, overrides) => {
    const snapshot = buildSnapshot(
      configuration({ experiments: [experiment({ id: 'exp', ...overrides })] }),
    );
    const a = only(snapshot.resolve(unit('user-1')).assignments);
    expect(a).toMatchObject({ reason: AssignmentReason.NOT_RUNNING, inExperiment: false });
    expect(a.variant.key).toBe('control');
  });

  it('loads a stored condition sift cannot compile as evaluated, and targets no unit with it', () => {
    // Validation refuses it now (UNCOMPILABLE_CONDITION); one stored before must not stop the
    // configuration from loading on every replica.
    const snapshot = buildSnapshot(
      configuration({
        experiments: [
          experiment({ id: 'hidden', condition: { constructor: 1, a: { $in: [{ $gt: 1 }] } } }),
          // Beside a problem a stored condition may have, too.
          experiment({
            id: 'hidden-too',
            condition: { constructor: 1, a: { $in: [{ $gt: 1 }] }, b: { $all: [] } },
          }),
          experiment({ id: 'plain', condition: { a: 2 } }),
        ],
      }),
    );
    const reasons = snapshot
      .resolve(unit('user-1', { attributes: { constructor: 1, a: 2 } }))
      .assignments.map((a) => [a.experiment.id, a.reason]);
    expect(reasons).toEqual([
      ['hidden', AssignmentReason.TARGETED_OUT],
      ['hidden-too', AssignmentReason.TARGETED_OUT],
      ['plain', AssignmentReason.ASSIGNED],
    ]);
    expect(snapshot.outdatedConditions.get('hidden')).toEqual(['UNCOMPILABLE_CONDITION']);
    expect(snapshot.outdatedConditions.get('hidden-too')).toEqual([
      'UNCOMPILABLE_CONDITION',
      'EMPTY_ALL',
    ]);
  });

  it('serves a scheduled experiment from its start time until its end time', () => {
    const snapshot = buildSnapshot(
      configuration({
        experiments: [
          experiment({
            id: 'exp',
            status: ExperimentStatus.SCHEDULED,
            scheduledStartTime: NOW,
            scheduledEndTime: NOW + 10,
          }),
        ],
      }),
    );
    expect(only(snapshot.resolve(unit('user-1')).assignments).reason).toBe(
      AssignmentReason.ASSIGNED,
    );
    expect(only(snapshot.resolve(unit('user-1', { now: NOW + 10 })).assignments).reason).toBe(
      AssignmentReason.NOT_RUNNING,
    );
  });

  it('reports UNIT_TYPE_MISMATCH before targeting', () => {
    const snapshot = buildSnapshot(
      configuration({ experiments: [experiment({ id: 'exp', condition: { country: 'SE' } })] }),
    );
    const a = only(
      snapshot.resolve(unit('d-1', { type: 'device', attributes: { country: 'NO' } })).assignments,
    );
    expect(a.reason).toBe(AssignmentReason.UNIT_TYPE_MISMATCH);
  });

  it('reports NOT_IN_LAYER_RANGE before evaluating the condition', () => {
    const outside = findUnit((id) => layerHash(id, 'l') >= 0.001);
    const snapshot = buildSnapshot(
      configuration({
        layers: [{ id: 'l' }],
        experiments: [
          experiment({
            id: 'exp',
            condition: { country: 'SE' },
            layerId: 'l',
            layerRange: { start: 0, end: 0.001 },
          }),
        ],
      }),
    );
    const a = only(snapshot.resolve(unit(outside, { attributes: { country: 'NO' } })).assignments);
    expect(a.reason).toBe(AssignmentReason.NOT_IN_LAYER_RANGE);
    expect(a.variant.key).toBe('control');
  });

  it('reports TARGETED_OUT when the condition does not match, before holdouts', () => {
    const heldOut = findUnit((id) => (hash('h', id, 2) ?? 1) < 0.5);
    const snapshot = buildSnapshot(
      configuration({
        layers: [{ id: 'l' }],
        experiments: [
          experiment({
            id: 'exp',
            condition: { country: 'SE' },
            layerId: 'l',
            layerRange: { start: 0, end: 1 },
          }),
        ],
        holdouts: [holdout({ id: 'h', fraction: 0.5 })],
      }),
    );
    const a = only(snapshot.resolve(unit(heldOut, { attributes: { country: 'NO' } })).assignments);
    expect(a.reason).toBe(AssignmentReason.TARGETED_OUT);
    expect(a.variant.key).toBe('control');
  });

  it('reports NOT_IN_LAYER_RANGE when the unit hashes outside the experiment range of its layer', () => {
    const id = findUnit((u) => layerHash(u, 'l') >= 0.5);
    const snapshot = buildSnapshot(
      configuration({
        layers: [{ id: 'l' }],
        experiments: [experiment({ id: 'exp', layerId: 'l', layerRange: { start: 0, end: 0.5 } })],
      }),
    );
    const a = only(snapshot.resolve(unit(id)).assignments);
    expect(a).toMatchObject({
      reason: AssignmentReason.NOT_IN_LAYER_RANGE,
      inExperiment: false,
      holdoutId: '',
    });
    expect(a.experiment.layerId).toBe('l');
  });

  it('reports NOT_IN_COVERAGE for a unit outside every variant range', () => {
    const id = findUnit((u) => {
      const n = hash('exp', u, 2) ?? 0;
      return (n >= 0.1 && n < 0.5) || n >= 0.6;
    });
    const snapshot = buildSnapshot(
      configuration({ experiments: [experiment({ id: 'exp', coverage: 0.2 })] }),
    );
    expect(only(snapshot.resolve(unit(id)).assignments).reason).toBe(
      AssignmentReason.NOT_IN_COVERAGE,
    );
  });

  it('assigns by the v2 hash of the seed and unit id, with the variant payload and etag', () => {
    const id = findUnit((u) => (hash('my-seed', u, 2) ?? 0) >= 0.5);
    const snapshot = buildSnapshot(
      configuration({
        experiments: [
          experiment({
            id: 'exp',
            seed: 'my-seed',
            etag: 'v7',
            variants: [
              { key: 'control', weight: 0.5 },
              { key: 'bandit-policy', weight: 0.5, payload: { policy: 'home-bandit-v3' } },
            ],
          }),
        ],
      }),
    );
    const a = only(snapshot.resolve(unit(id)).assignments);
    expect(a).toMatchObject({
      reason: AssignmentReason.ASSIGNED,
      inExperiment: true,
      surfaces: ['home'],
    });
    expect(a.variant).toEqual({
      key: 'bandit-policy',
      index: 1,
      payload: { policy: 'home-bandit-v3' },
      payloadJson: '{"policy":"home-bandit-v3"}',
    });
    expect(a.experiment.etag).toBe('v7');
  });

  it('uses hash v1 when asked', () => {
    const id = findUnit((u) => (hash('exp', u, 1) ?? 0) < 0.5 && (hash('exp', u, 2) ?? 0) >= 0.5);
    const snapshot = buildSnapshot(
      configuration({ experiments: [experiment({ id: 'exp', hashVersion: 1 })] }),
    );
    expect(only(snapshot.resolve(unit(id)).assignments).variant.key).toBe('control');
  });

  it('buckets nobody under an unknown hash version', () => {
    const snapshot = buildSnapshot(
      configuration({ experiments: [experiment({ id: 'exp', hashVersion: 9 })] }),
    );
    expect(only(snapshot.resolve(unit('user-1')).assignments).reason).toBe(
      AssignmentReason.NOT_IN_COVERAGE,
    );
  });
});

describe('concluded experiments', () => {
  const shipped = experiment({
    id: 'exp',
    status: ExperimentStatus.CONCLUDED,
    shippedVariantKey: 'treatment',
    condition: { country: 'SE' },
    layerId: 'l',
    layerRange: { start: 0, end: 0.01 },
    coverage: 0,
    sticky: true,
  });

  it('gives every targeted unit the shipped variant, skipping layer, coverage and sticky', () => {
    const snapshot = buildSnapshot(
      configuration({ layers: [{ id: 'l' }], experiments: [shipped] }),
    );
    const sticky = new Map<string, StickyAssignment>([
      ['exp', { variantKey: 'control', allocationSequence: 0 }],
    ]);
    const a = only(
      snapshot.resolve(unit('user-1', { attributes: { country: 'SE' }, sticky })).assignments,
    );
    expect(a).toMatchObject({ reason: AssignmentReason.CONCLUDED, inExperiment: false });
    expect(a.variant.key).toBe('treatment');
  });

  it('still targets', () => {
    const snapshot = buildSnapshot(
      configuration({ layers: [{ id: 'l' }], experiments: [shipped] }),
    );
    const a = only(snapshot.resolve(unit('user-1', { attributes: { country: 'NO' } })).assignments);
    expect(a.reason).toBe(AssignmentReason.TARGETED_OUT);
  });

  it('keeps held-out units on the control', () => {
    const id = findUnit((u) => (hash('holdout:h', u, 2) ?? 1) < 0.5);
    const snapshot = buildSnapshot(
      configuration({
        layers: [{ id: 'l' }],
        experiments: [shipped],
        holdouts: [holdout({ id: 'h', fraction: 0.5 })],
      }),
    );
    const a = only(snapshot.resolve(unit(id, { attributes: { country: 'SE' } })).assignments);
    expect(a).toMatchObject({ reason: AssignmentReason.HOLDOUT, holdoutId: 'h' });
    expect(a.variant.key).toBe('control');
  });
});

describe('holdouts', () => {
  const heldByA = findUnit(
    (u) => (hash('seed-a', u, 2) ?? 1) < 0.3 && (hash('holdout:b', u, 2) ?? 1) < 0.3,
  );
  const heldByNone = findUnit(
    (u) => (hash('seed-a', u, 2) ?? 0) >= 0.3 && (hash('holdout:b', u, 2) ?? 0) >= 0.3,
  );
  const config = configuration({
    layers: [{ id: 'ranking' }],
    experiments: [
      experiment({ id: 'on-home' }),
      experiment({
        id: 'in-layer',
        surfaces: ['search'],
        layerId: 'ranking',
        layerRange: { start: 0, end: 1 },
      }),
      experiment({ id: 'devices', unitType: 'device' }),
      experiment({ id: 'elsewhere', surfaces: ['checkout'] }),
    ],
    holdouts: [
      holdout({ id: 'b', fraction: 0.3, surfaces: ['home'] }),
      holdout({ id: 'a', seed: 'seed-a', fraction: 0.3, surfaces: [], layerIds: ['ranking'] }),
      holdout({ id: 'draft', fraction: 0.99, status: HoldoutStatus.DRAFT }),
    ],
  });
  const snapshot = buildSnapshot(config);

  it('gives a held-out unit the control of every covered experiment, naming the first holdout by id', () => {
    const { assignments } = snapshot.resolve(
      unit(heldByA, { surfaces: ['home', 'search', 'checkout'] }),
    );
    const byId = new Map(assignments.map((a) => [a.experiment.id, a]));
    expect(byId.get('on-home')).toMatchObject({
      reason: AssignmentReason.HOLDOUT,
      holdoutId: 'b',
      inExperiment: false,
    });
    expect(byId.get('in-layer')).toMatchObject({
      reason: AssignmentReason.HOLDOUT,
      holdoutId: 'a',
    });
    expect(byId.get('on-home')!.variant.key).toBe('control');
    // Not covered: another surface, and another unit type.
    expect(byId.get('elsewhere')!.reason).toBe(AssignmentReason.ASSIGNED);
    expect(byId.get('devices')!.reason).toBe(AssignmentReason.UNIT_TYPE_MISMATCH);
  });

  it('lists the running holdouts covering the requested surfaces, held out or not', () => {
    const held = snapshot.resolve(unit(heldByA, { surfaces: ['home', 'search'] })).holdouts;
    expect(held.map((m) => [m.holdout.id, m.heldOut, m.surfaces])).toEqual([
      ['a', true, ['search']],
      ['b', true, ['home']],
    ]);
    const general = snapshot.resolve(unit(heldByNone, { surfaces: ['home'] }));
    expect(general.holdouts.map((m) => [m.holdout.id, m.heldOut])).toEqual([['b', false]]);
    expect(only(general.assignments.filter((a) => a.experiment.id === 'on-home')).reason).toBe(
      AssignmentReason.ASSIGNED,
    );
  });

  it('lists no holdout of another unit type', () => {
    expect(snapshot.resolve(unit('d-1', { type: 'device' })).holdouts).toEqual([]);
  });
});

describe('a holdout with no seed, named like an experiment it covers', () => {
  const snapshot = buildSnapshot(
    configuration({
      experiments: [experiment({ id: 'promo' })],
      holdouts: [holdout({ id: 'promo', fraction: 0.5 })],
    }),
  );

  it('hashes with `holdout:<id>`, not the seed the experiment hashes with by default', () => {
    // GrowthBook v2, computed independently (Python, FNV-1a 32 of the decimal FNV-1a 32 of
    // seed + unit, mod 10,000): user-1 is 0.3342 under "holdout:promo" and 0.6921 under
    // "promo"; user-5 is 0.5546 and 0.4274.
    const heldOut = (id: string) => snapshot.resolve(unit(id)).holdouts[0]?.heldOut;
    expect([heldOut('user-1'), heldOut('user-5')]).toEqual([true, false]);
  });

  it('splits the units it does not hold out as the experiment says', () => {
    const counts = { control: 0, treatment: 0 };
    for (let i = 0; i < 10_000; i++) {
      const assignment = only(snapshot.resolve(unit(`user-${i}`)).assignments);
      if (assignment.reason === AssignmentReason.ASSIGNED) {
        counts[assignment.variant.key as keyof typeof counts]++;
      }
    }
    // χ² of a 50/50 split on 1 degree of freedom: 10.83 at p = 0.001. With the experiment's
    // seed, every held-out unit came from the control (χ² in the hundreds).
    const n = counts.control + counts.treatment;
    const chi2 = ((counts.control - n / 2) ** 2 + (counts.treatment - n / 2) ** 2) / (n / 2);
    expect(chi2).toBeLessThan(10.83);
  });
});

describe('a holdout covering an experiment through another of its surfaces', () => {
  const snapshot = buildSnapshot(
    configuration({
      experiments: [experiment({ id: 'both', surfaces: ['feed', 'search'] })],
      holdouts: [holdout({ id: 'feed-only', fraction: 0.5, surfaces: ['feed'] })],
    }),
  );

  it('lists its membership on that surface too, held out or not, as it decides what is served', () => {
    for (const [id, heldOut] of [
      [findUnit((u) => (hash('holdout:feed-only', u, 2) ?? 1) < 0.5), true],
      [findUnit((u) => (hash('holdout:feed-only', u, 2) ?? 0) >= 0.5), false],
    ] as const) {
      const resolved = snapshot.resolve(unit(id, { surfaces: ['search'] }));
      expect(only(resolved.assignments).reason).toBe(
        heldOut ? AssignmentReason.HOLDOUT : AssignmentReason.ASSIGNED,
      );
      expect(resolved.holdouts.map((m) => [m.holdout.id, m.heldOut, m.surfaces])).toEqual([
        ['feed-only', heldOut, ['search']],
      ]);
    }
  });

  it('does not widen through an experiment that is not serving', () => {
    for (const status of [ExperimentStatus.DRAFT, ExperimentStatus.STOPPED]) {
      const idle = buildSnapshot(
        configuration({
          experiments: [experiment({ id: 'both', surfaces: ['feed', 'search'], status })],
          holdouts: [holdout({ id: 'feed-only', fraction: 0.5, surfaces: ['feed'] })],
        }),
      );
      expect(idle.resolve(unit('user-1', { surfaces: ['search'] })).holdouts).toEqual([]);
      expect(idle.resolve(unit('user-1', { surfaces: ['feed'] })).holdouts).toHaveLength(1);
    }
  });

  it('widens through a scheduled experiment only within its window, as it serves', () => {
    const HOUR = 3_600_000;
    const scheduled = buildSnapshot(
      configuration({
        experiments: [
          experiment({
            id: 'both',
            surfaces: ['feed', 'search'],
            status: ExperimentStatus.SCHEDULED,
            scheduledStartTime: NOW + HOUR,
            scheduledEndTime: NOW + 2 * HOUR,
          }),
        ],
        holdouts: [holdout({ id: 'feed-only', fraction: 0.5, surfaces: ['feed'] })],
      }),
    );
    const memberships = (now: number) =>
      scheduled
        .resolve(unit('user-1', { surfaces: ['search'], now }))
        .holdouts.map((m) => [m.holdout.id, m.surfaces]);
    // Before its start and past its end it serves nobody on `search`, as a draft would not.
    expect(memberships(NOW)).toEqual([]);
    expect(memberships(NOW + HOUR)).toEqual([['feed-only', ['search']]]);
    expect(memberships(NOW + 2 * HOUR)).toEqual([]);
    // The holdout's own surface is covered whatever the experiment does.
    expect(
      scheduled.resolve(unit('user-1', { surfaces: ['feed'] })).holdouts.map((m) => m.holdout.id),
    ).toEqual(['feed-only']);
  });

  it('covers a surface through a layer only where an experiment of that layer serves', () => {
    for (const status of [ExperimentStatus.DRAFT, ExperimentStatus.STOPPED]) {
      const inLayer = { layerId: 'ranking', layerRange: { start: 0, end: 0.5 } };
      const layered = buildSnapshot(
        configuration({
          layers: [{ id: 'ranking' }],
          experiments: [
            experiment({ id: 'idle', surfaces: ['p'], status, ...inLayer }),
            experiment({
              id: 'live',
              surfaces: ['q'],
              layerId: 'ranking',
              layerRange: { start: 0.5, end: 1 },
            }),
          ],
          holdouts: [
            holdout({ id: 'by-layer', fraction: 0.5, surfaces: [], layerIds: ['ranking'] }),
          ],
        }),
      );
      expect(layered.resolve(unit('user-1', { surfaces: ['p'] })).holdouts).toEqual([]);
      expect(layered.resolve(unit('user-1', { surfaces: ['q'] })).holdouts).toHaveLength(1);
    }
  });
});

describe('sticky assignments', () => {
  const sticky = (variantKey: string, allocationSequence = 0): Map<string, StickyAssignment> =>
    new Map([['exp', { variantKey, allocationSequence }]]);

  it('keep the stored variant whatever the coverage or layer range now', () => {
    const id = findUnit((u) => layerHash(u, 'l') >= 0.5);
    const snapshot = buildSnapshot(
      configuration({
        layers: [{ id: 'l' }],
        experiments: [
          experiment({
            id: 'exp',
            sticky: true,
            coverage: 0,
            layerId: 'l',
            layerRange: { start: 0, end: 0.5 },
          }),
        ],
      }),
    );
    const a = only(snapshot.resolve(unit(id, { sticky: sticky('treatment', 42) })).assignments);
    expect(a).toMatchObject({
      reason: AssignmentReason.STICKY,
      inExperiment: true,
      allocationSequence: 42,
    });
    expect(a.variant.key).toBe('treatment');
  });

  it('are ignored for experiments that are not sticky, and for unknown variant keys', () => {
    const snapshot = buildSnapshot(
      configuration({
        experiments: [
          experiment({ id: 'exp', coverage: 0 }),
          experiment({ id: 'other', sticky: true, coverage: 0 }),
        ],
      }),
    );
    const stored = new Map([
      ['exp', { variantKey: 'treatment', allocationSequence: 0 }],
      ['other', { variantKey: 'gone', allocationSequence: 0 }],
    ]);
    const reasons = snapshot
      .resolve(unit('user-1', { sticky: stored }))
      .assignments.map((a) => a.reason);
    expect(reasons).toEqual([AssignmentReason.NOT_IN_COVERAGE, AssignmentReason.NOT_IN_COVERAGE]);
  });

  it('are listed per surface so the caller can fetch them before resolving', () => {
    const snapshot = buildSnapshot(
      configuration({
        experiments: [
          experiment({ id: 'exp', sticky: true }),
          experiment({ id: 'plain' }),
          experiment({ id: 's2', sticky: true, surfaces: ['search'] }),
        ],
      }),
    );
    expect(snapshot.stickyExperimentIds(['home'], NOW)).toEqual(['exp']);
    expect([...snapshot.stickyExperimentIds(['home', 'search'], NOW)].sort()).toEqual([
      'exp',
      's2',
    ]);
  });

  it('are listed only for experiments that may serve a hashed variant at the time', () => {
    const snapshot = buildSnapshot(
      configuration({
        experiments: [
          experiment({ id: 'running', sticky: true }),
          experiment({ id: 'scheduled', sticky: true, status: ExperimentStatus.SCHEDULED }),
          experiment({ id: 'not-yet', sticky: true, scheduledStartTime: NOW + 1 }),
          experiment({ id: 'ended', sticky: true, scheduledEndTime: NOW }),
          experiment({ id: 'draft', sticky: true, status: ExperimentStatus.DRAFT }),
          experiment({ id: 'stopped', sticky: true, status: ExperimentStatus.STOPPED }),
          experiment({
            id: 'shipped',
            sticky: true,
            status: ExperimentStatus.CONCLUDED,
            shippedVariantKey: 'treatment',
          }),
        ],
      }),
    );
    expect([...snapshot.stickyExperimentIds(['home'], NOW)].sort()).toEqual([
      'running',
      'scheduled',
    ]);
    expect([...snapshot.stickyExperimentIds(['home', 'search'], NOW + 1)].sort()).toEqual([
      'not-yet',
      'running',
      'scheduled',
    ]);
  });

  it('unreadable, give those sticky experiments the control without exposure, and leave the rest', () => {
    // A unit both unconditioned experiments would put in treatment.
    const id = findUnit(
      (u) => (hash('plain', u, 2) ?? 0) >= 0.5 && (hash('sticky', u, 2) ?? 0) >= 0.5,
    );
    const snapshot = buildSnapshot(
      configuration({
        experiments: [
          experiment({ id: 'known', sticky: true, coverage: 0 }),
          experiment({ id: 'plain', coverage: 1 }),
          experiment({ id: 'sticky', sticky: true, coverage: 1 }),
          experiment({ id: 'targeted', sticky: true, condition: { country: 'NO' } }),
        ],
      }),
    );
    const resolved = snapshot.resolve(
      unit(id, {
        attributes: { country: 'SE' },
        // `known` was read (from the cache); the read of the others failed.
        sticky: new Map([['known', { variantKey: 'treatment', allocationSequence: 0 }]]),
        stickyUnavailable: new Set(['sticky', 'targeted']),
      }),
    ).assignments;
    expect(resolved.map((a) => [a.experiment.id, a.reason, a.variant.key, a.inExperiment])).toEqual(
      [
        ['known', AssignmentReason.STICKY, 'treatment', true],
        ['plain', AssignmentReason.ASSIGNED, 'treatment', true],
        ['sticky', AssignmentReason.STICKY_UNAVAILABLE, 'control', false],
        // Targeting comes first: a unit targeted out is out, stored variant or not.
        ['targeted', AssignmentReason.TARGETED_OUT, 'control', false],
      ],
    );
  });
});

describe('bandit experiments', () => {
  const bandit = experiment({
    id: 'exp',
    allocationMode: AllocationMode.BANDIT,
    sticky: true,
    bandit: { minArmShare: 0.1 },
    variants: [
      { key: 'a', weight: 0.5 },
      { key: 'b', weight: 0.5 },
    ],
  });

  it("ignore an allocation that names other arms, and split by the variants' weights", () => {
    const snapshot = buildSnapshot(
      configuration({
        experiments: [
          {
            ...bandit,
            variants: [
              { key: 'a', weight: 0.2 },
              { key: 'c', weight: 0.8 },
            ],
          },
        ],
        allocations: [
          {
            experimentId: 'exp',
            sequence: 5,
            weights: [
              { variantKey: 'a', weight: 0.9 },
              { variantKey: 'b', weight: 0.1 },
            ],
          },
        ],
      }),
    );
    // The variants' 0.2 / 0.8, both above the floor. Read by key, the allocation would have
    // given `a` 0.1 + 0.8·0.9 = 0.82 (and `c` the floor).
    expect(snapshot.experiment('exp')!.ranges[0]![1]).toBeCloseTo(0.2, 12);
  });

  it('follow the latest allocation with the minimum arm share enforced', () => {
    const snapshot = buildSnapshot(
      configuration({
        experiments: [bandit],
        allocations: [
          {
            experimentId: 'exp',
            sequence: 1700000000000,
            weights: [
              { variantKey: 'a', weight: 0.98 },
              { variantKey: 'b', weight: 0.02 },
            ],
          },
        ],
      }),
    );
    const compiled = snapshot.experiment('exp')!;
    // m + (1 − k·m)·w = 0.1 + 0.8·0.98 = 0.884
    expect(compiled.ranges[0]![1]).toBeCloseTo(0.884, 12);
    expect(compiled.allocationSequence).toBe(1700000000000);
    let b = 0;
    const sequences = new Set<number>();
    const n = 40_000;
    for (let i = 0; i < n; i++) {
      const a = snapshot.resolve(unit(`user-${i}`)).assignments[0]!;
      sequences.add(a.allocationSequence);
      if (a.variant.key === 'b') b++;
    }
    expect([...sequences]).toEqual([1700000000000]);
    // Expected share 0.116; binomial sd ≈ 0.0016, so ±0.008 is 5 sd.
    expect(Math.abs(b / n - 0.116)).toBeLessThan(0.008);
  });

  it('start from the variant weights before any allocation (sequence 0)', () => {
    const snapshot = buildSnapshot(configuration({ experiments: [bandit] }));
    expect(snapshot.experiment('exp')!.ranges).toEqual([
      [0, 0.5],
      [0.5, 1],
    ]);
    expect(snapshot.experiment('exp')!.allocationSequence).toBe(0);
  });

  it('keep sticky units on their variant when the weights move; new units follow the new weights', () => {
    const before = buildSnapshot(configuration({ experiments: [bandit] }));
    const after = buildSnapshot(
      configuration({
        experiments: [bandit],
        allocations: [
          {
            experimentId: 'exp',
            sequence: 2,
            weights: [
              { variantKey: 'a', weight: 0 },
              { variantKey: 'b', weight: 1 },
            ],
          },
        ],
      }),
    );
    const id = findUnit(
      (u) =>
        only(before.resolve(unit(u)).assignments).variant.key === 'b' &&
        (hash('exp', u, 2) ?? 0) > 0.5,
    );
    const first = only(before.resolve(unit(id)).assignments);
    const stored = new Map([
      ['exp', { variantKey: first.variant.key, allocationSequence: first.allocationSequence }],
    ]);
    const moved = findUnit((u) => (hash('exp', u, 2) ?? 1) < 0.1);
    expect(only(after.resolve(unit(moved)).assignments).variant.key).toBe('a'); // the floor keeps arm a at 10%
    const storedA = new Map([['exp', { variantKey: 'a', allocationSequence: 0 }]]);
    expect(only(after.resolve(unit(id, { sticky: stored })).assignments).variant.key).toBe('b');
    expect(only(after.resolve(unit(moved, { sticky: storedA })).assignments)).toMatchObject({
      reason: AssignmentReason.STICKY,
      allocationSequence: 0,
    });
  });
});

describe('layers and surfaces', () => {
  it('puts a unit in at most one experiment of a layer', () => {
    const snapshot = buildSnapshot(
      configuration({
        layers: [{ id: 'l' }],
        experiments: [
          experiment({ id: 'a', layerId: 'l', layerRange: { start: 0, end: 0.4 } }),
          experiment({ id: 'b', layerId: 'l', layerRange: { start: 0.4, end: 0.7 } }),
          experiment({ id: 'c', layerId: 'l', layerRange: { start: 0.7, end: 1 } }),
        ],
      }),
    );
    const counts = new Set<number>();
    for (let i = 0; i < 5_000; i++) {
      counts.add(
        snapshot.resolve(unit(`user-${i}`)).assignments.filter((a) => a.inExperiment).length,
      );
    }
    expect([...counts]).toEqual([1]);
  });

  it('resolves only the experiments of the requested surfaces, each once, ordered by surface then id', () => {
    const snapshot = buildSnapshot(
      configuration({
        experiments: [
          experiment({ id: 'z-both', surfaces: ['home', 'search'] }),
          experiment({ id: 'a-home' }),
          experiment({ id: 'search-only', surfaces: ['search'] }),
          experiment({ id: 'checkout', surfaces: ['checkout'] }),
        ],
      }),
    );
    const { assignments } = snapshot.resolve(
      unit('user-1', { surfaces: ['home', 'search', 'nowhere'] }),
    );
    expect(assignments.map((a) => [a.experiment.id, a.surfaces])).toEqual([
      ['a-home', ['home']],
      ['z-both', ['home', 'search']],
      ['search-only', ['search']],
    ]);
    expect(snapshot.hasSurface('nowhere')).toBe(false);
    expect(snapshot.resolve(unit('user-1', { surfaces: ['nowhere'] })).assignments).toEqual([]);
  });

  it('evaluates a shared condition once per resolve and keeps the answer per unit', () => {
    const condition = { country: { $in: ['SE', 'NO'] } };
    const snapshot = buildSnapshot(
      configuration({
        experiments: [
          experiment({ id: 'a', condition }),
          experiment({ id: 'b', condition: { ...condition } }),
        ],
      }),
    );
    const se = snapshot.resolve(unit('user-1', { attributes: { country: 'SE' } })).assignments;
    const us = snapshot.resolve(unit('user-1', { attributes: { country: 'US' } })).assignments;
    expect(se.map((a) => a.reason)).not.toContain(AssignmentReason.TARGETED_OUT);
    expect(us.map((a) => a.reason)).toEqual([
      AssignmentReason.TARGETED_OUT,
      AssignmentReason.TARGETED_OUT,
    ]);
  });
});

describe('coverage changes', () => {
  it('never move a unit between variants: any unit in a variant at coverage c is in the same variant at c′ > c', () => {
    const shape = (coverage: number) =>
      buildSnapshot(
        configuration({
          experiments: [
            experiment({
              id: 'exp',
              coverage,
              variants: [
                { key: 'a', weight: 0.2 },
                { key: 'b', weight: 0.3 },
                { key: 'c', weight: 0.5 },
              ],
            }),
          ],
        }),
      );
    const coverages = [0.05, 0.3, 0.55, 0.8, 1];
    const snapshots = coverages.map(shape);
    let checked = 0;
    const moved: string[] = [];
    for (let i = 0; i < 20_000; i++) {
      const results = snapshots.map((s) => s.resolve(unit(`user-${i}`)).assignments[0]!);
      results.forEach((low, j) => {
        if (!low.inExperiment) return;
        for (const high of results.slice(j + 1)) {
          checked++;
          if (!high.inExperiment || high.variant.key !== low.variant.key) moved.push(`user-${i}`);
        }
      });
    }
    expect(checked).toBeGreaterThan(20_000);
    expect(moved).toEqual([]);
  });
});

describe('overrides', () => {
  const TESTER = 'qa-anna';
  /** Every check but the unit type would keep the tester out or in the control. */
  function guarded(extra: Partial<Parameters<typeof experiment>[0]> = {}) {
    return experiment({
      id: 'exp',
      variants: [
        { key: 'control', weight: 0.5 },
        { key: 'treatment', weight: 0.3 },
        { key: 'bold', weight: 0.2 },
      ],
      coverage: 0,
      condition: { country: 'NO' },
      layerId: 'checkout',
      layerRange: { start: 0, end: 0.001 },
      sticky: true,
      overrides: [
        { unitId: TESTER, variantKey: 'bold' },
        { unitId: 'qa-ben', variantKey: 'control' },
      ],
      ...extra,
    });
  }
  const heldOutByAll = holdout({ id: 'all', fraction: 0.999999, surfaces: ['home'] });
  const tester = unit(TESTER, {
    attributes: { country: 'SE' },
    sticky: new Map([['exp', { variantKey: 'treatment', allocationSequence: 0 }]]),
  });

  it('serves the listed variant with reason OVERRIDE, past targeting, layer, holdout, sticky and coverage', () => {
    // The unit's layer point is outside [0, 0.001) for all but one id in a thousand.
    expect(layerHash(TESTER, 'checkout')).toBeGreaterThanOrEqual(0.001);
    const snapshot = buildSnapshot(
      configuration({
        layers: [{ id: 'checkout' }],
        experiments: [guarded()],
        holdouts: [heldOutByAll],
      }),
    );
    for (const resolution of [snapshot.resolve(tester), snapshot.resolveServed(tester)]) {
      const a = only(resolution.assignments);
      expect(a.variant.key).toBe('bold');
      expect(a).toMatchObject({
        reason: AssignmentReason.OVERRIDE,
        inExperiment: false,
        holdoutId: '',
        allocationSequence: 0,
        surfaces: ['home'],
      });
    }
    // Someone else with the same stored variant is targeted out, and held out once targeted.
    const other = { ...tester, id: 'someone-else' };
    expect(only(snapshot.resolve(other).assignments).reason).toBe(AssignmentReason.TARGETED_OUT);
    const targeted = { ...other, attributes: { country: 'NO' } };
    expect(only(snapshot.resolve(targeted).assignments).reason).toBe(AssignmentReason.HOLDOUT);
  });

  it.each([
    ['DRAFT', ExperimentStatus.DRAFT, {}],
    ['SCHEDULED before its start', ExperimentStatus.SCHEDULED, { scheduledStartTime: NOW + 1 }],
    ['RUNNING before its end', ExperimentStatus.RUNNING, { scheduledEndTime: NOW + 1 }],
  ])('applies while the experiment is %s', (_name, status, schedule) => {
    const snapshot = buildSnapshot(
      configuration({
        experiments: [guarded({ layerId: '', layerRange: undefined, status, ...schedule })],
      }),
    );
    for (const resolution of [snapshot.resolve(tester), snapshot.resolveServed(tester)]) {
      const a = only(resolution.assignments);
      expect([a.variant.key, a.reason]).toEqual(['bold', AssignmentReason.OVERRIDE]);
    }
  });

  it.each([
    ['STOPPED', { status: ExperimentStatus.STOPPED }, AssignmentReason.NOT_RUNNING, 'control'],
    ['RUNNING past its end', { scheduledEndTime: NOW }, AssignmentReason.NOT_RUNNING, 'control'],
    [
      'CONCLUDED with a shipped variant',
      { status: ExperimentStatus.CONCLUDED, shippedVariantKey: 'treatment', condition: {} },
      AssignmentReason.CONCLUDED,
      'treatment',
    ],
  ] as const)('does not apply once the experiment is %s', (_name, change, reason, variant) => {
    const snapshot = buildSnapshot(
      configuration({ experiments: [guarded({ layerId: '', layerRange: undefined, ...change })] }),
    );
    const a = only(snapshot.resolve(tester).assignments);
    expect(a.reason).toBe(reason);
    expect(a.variant.key).toBe(variant);
  });

  it('needs the unit type: an id overridden for users is not overridden for devices', () => {
    const snapshot = buildSnapshot(
      configuration({ experiments: [guarded({ layerId: '', layerRange: undefined })] }),
    );
    expect(only(snapshot.resolve({ ...tester, type: 'device' }).assignments).reason).toBe(
      AssignmentReason.UNIT_TYPE_MISMATCH,
    );
  });

  it('moves no other unit, even after the testers were resolved: every other unit is assigned as without overrides', () => {
    // Testers in every variant, resolved first, so that a result made for a tester and shared
    // with other units (the snapshot shares one result object per reason and variant) shows.
    const plain = experiment({
      id: 'exp',
      coverage: 0.8,
      surfaces: ['home', 'search'],
      variants: [
        { key: 'control', weight: 0.5 },
        { key: 'treatment', weight: 0.3 },
        { key: 'bold', weight: 0.2 },
      ],
    });
    const testers = ['control', 'treatment', 'bold'].map((variantKey, i) => ({
      unitId: `qa-${i}`,
      variantKey,
    }));
    const without = buildSnapshot(configuration({ experiments: [plain] }));
    const withOverrides = buildSnapshot(
      configuration({ experiments: [{ ...plain, overrides: testers }] }),
    );
    const views = (id: string): UnitContext[] => [
      unit(id),
      unit(id, { surfaces: ['home', 'search'] }),
    ];
    for (const { unitId, variantKey } of testers) {
      for (const u of views(unitId)) {
        for (const resolution of [withOverrides.resolve(u), withOverrides.resolveServed(u)]) {
          const a = only(resolution.assignments);
          expect([a.reason, a.variant.key, a.inExperiment]).toEqual([
            AssignmentReason.OVERRIDE,
            variantKey,
            false,
          ]);
        }
      }
    }
    for (let i = 0; i < 2000; i++) {
      for (const u of views(`user-${i}`)) {
        const expected = only(without.resolve(u).assignments);
        for (const resolution of [withOverrides.resolve(u), withOverrides.resolveServed(u)]) {
          const a = resolution.assignments[0];
          if (expected.reason === AssignmentReason.NOT_IN_COVERAGE) {
            expect(withOverrides.resolveServed(u).assignments).toEqual([]);
            continue;
          }
          expect([a?.reason, a?.variant.key, a?.inExperiment]).toEqual([
            expected.reason,
            expected.variant.key,
            expected.inExperiment,
          ]);
        }
      }
    }
  });

  it("keeps a tester out of its layer's other experiments, as its layer point would", () => {
    const layered = (id: string, start: number, end: number, extra = {}) =>
      experiment({ id, layerId: 'checkout', layerRange: { start, end }, ...extra });
    // The tester's layer point is in B's range, and A forces it into a variant.
    const point = layerHash(TESTER, 'checkout');
    const a = layered('a', point < 0.5 ? 0.5 : 0, point < 0.5 ? 1 : 0.5, {
      status: ExperimentStatus.DRAFT,
      overrides: [{ unitId: TESTER, variantKey: 'treatment' }],
    });
    const b = layered('b', point < 0.5 ? 0 : 0.5, point < 0.5 ? 0.5 : 1);
    // Another layer, and no layer: the override claims A's layer only.
    const other = experiment({ id: 'c', layerId: 'ranking', layerRange: { start: 0, end: 1 } });
    const free = experiment({ id: 'd' });
    const snapshot = buildSnapshot(
      configuration({
        layers: [{ id: 'checkout' }, { id: 'ranking' }],
        experiments: [a, b, other, free],
      }),
    );
    const reasons = (r: { assignments: readonly ResolvedAssignment[] }) =>
      r.assignments.map((x) => [x.experiment.id, x.reason]);
    for (const u of [unit(TESTER), unit(TESTER, { surfaces: ['home', 'search'] })]) {
      expect(reasons(snapshot.resolve(u))).toEqual([
        ['a', AssignmentReason.OVERRIDE],
        ['b', AssignmentReason.NOT_IN_LAYER_RANGE],
        ['c', AssignmentReason.ASSIGNED],
        ['d', AssignmentReason.ASSIGNED],
      ]);
      expect(reasons(snapshot.resolveServed(u))).toEqual([
        ['a', AssignmentReason.OVERRIDE],
        ['c', AssignmentReason.ASSIGNED],
        ['d', AssignmentReason.ASSIGNED],
      ]);
    }
    // Without the override (a device of the same id), the layer point decides: B.
    const device = unit(TESTER, { type: 'device' });
    const snapshotForDevices = buildSnapshot(
      configuration({
        layers: [{ id: 'checkout' }],
        experiments: [
          { ...a, unitType: 'device' },
          { ...b, unitType: 'device' },
        ],
      }),
    );
    expect(reasons(snapshotForDevices.resolveServed(device))).toEqual([
      ['a', AssignmentReason.OVERRIDE],
    ]);
    expect(
      reasons(snapshotForDevices.resolveServed({ ...device, id: 'someone' })),
    ).not.toContainEqual(['a', AssignmentReason.OVERRIDE]);
  });

  it('leaves out of the sticky lookup the experiments its overrides decide, and no others', () => {
    const sticky = (id: string, layerId: string, extra = {}) =>
      experiment({
        id,
        sticky: true,
        ...(layerId === '' ? {} : { layerId, layerRange: { start: 0, end: 0.5 } }),
        ...extra,
      });
    const forcing = { overrides: [{ unitId: TESTER, variantKey: 'treatment' }] };
    const snapshot = buildSnapshot(
      configuration({
        layers: [{ id: 'checkout' }, { id: 'ranking' }, { id: 'search' }],
        experiments: [
          sticky('a', 'checkout', forcing),
          sticky('b', 'checkout'),
          sticky('c', 'ranking'),
          sticky('d', ''),
          // Past its end the override no longer applies, so its layer is not claimed.
          sticky('e', 'search', { ...forcing, scheduledEndTime: NOW + 1 }),
          sticky('f', 'search'),
        ],
      }),
    );
    const everything = ['a', 'b', 'c', 'd', 'e', 'f'];
    const ids = (u: UnitContext) =>
      [...snapshot.stickyExperimentIds(u.surfaces, u.now, u.id, u.type)].sort();
    expect(ids(unit(TESTER))).toEqual(['c', 'd']);
    // Once E has ended it is not served, and its layer's F is read again.
    expect(ids(unit(TESTER, { now: NOW + 1 }))).toEqual(['c', 'd', 'f']);
    expect(ids(unit(TESTER, { type: 'device' }))).toEqual(everything);
    expect(ids(unit('someone-else'))).toEqual(everything);
    expect([...snapshot.stickyExperimentIds(['home'], NOW)].sort()).toEqual(everything);
    // What is left out is never read: stored variants there change nothing.
    const stored = (keys: readonly string[]) =>
      new Map(keys.map((k) => [k, { variantKey: 'control', allocationSequence: 0 }]));
    const tester = unit(TESTER, { sticky: stored(everything) });
    const read = unit(TESTER, { sticky: stored(ids(tester)) });
    expect(snapshot.resolve(read).assignments).toEqual(snapshot.resolve(tester).assignments);
  });

  it('marks the memberships of holdouts covering an overriding experiment, and only those', () => {
    const snapshot = buildSnapshot(
      configuration({
        experiments: [
          experiment({ id: 'a', overrides: [{ unitId: TESTER, variantKey: 'treatment' }] }),
          experiment({ id: 'b', surfaces: ['search'] }),
        ],
        holdouts: [
          holdout({ id: 'covers-a', surfaces: ['home'] }),
          holdout({ id: 'covers-b', surfaces: ['search'] }),
        ],
      }),
    );
    const surfaces = ['home', 'search'];
    for (const resolution of [
      snapshot.resolve(unit(TESTER, { surfaces })),
      snapshot.resolveServed(unit(TESTER, { surfaces })),
    ]) {
      expect(resolution.holdouts.map((m) => [m.holdout.id, m.overridden])).toEqual([
        ['covers-a', true],
        ['covers-b', false],
      ]);
    }
    const someone = snapshot.resolve(unit('someone', { surfaces }));
    expect(someone.holdouts.map((m) => m.overridden)).toEqual([false, false]);
  });
});
