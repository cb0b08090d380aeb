import {
  AllocationMode,
  ExperimentStatus,
  type ExperimentDefinition,
} from '../../src/domain/configuration';
import {
  checkRunningChange,
  checkScheduleChange,
  START_MARGIN_MS,
  validateAllocation,
  validateExperiment,
  validateHoldout,
  validateLayer,
} from '../../src/domain/validation';
import { experiment, holdout } from './fixtures';

const context = { layerIds: new Set(['ranking']), otherExperiments: [] as ExperimentDefinition[] };

function fieldsAndReasons(violations: readonly { field: string; reason: string }[]): string[][] {
  return violations.map((v) => [v.field, v.reason]);
}

describe('validateExperiment', () => {
  it('checks every override: a unit id, once, into a variant of the experiment', () => {
    const violations = validateExperiment(
      experiment({
        id: 'exp',
        overrides: [
          { unitId: 'qa-anna', variantKey: 'treatment' },
          { unitId: '', variantKey: 'control' },
          { unitId: 'qa-anna', variantKey: 'control' },
          { unitId: 'qa-ben', variantKey: 'bold' },
        ],
      }),
      context,
    );
    expect(fieldsAndReasons(violations)).toEqual([
      ['overrides[1].unit_id', 'REQUIRED'],
      ['overrides[2].unit_id', 'DUPLICATE_UNIT'],
      ['overrides[3].variant_key', 'UNKNOWN_VARIANT'],
    ]);
  });

  it('forces a unit into one experiment of a layer at most, among those whose overrides apply', () => {
    const tester = (variantKey = 'treatment') => [{ unitId: 'qa-anna', variantKey }];
    const inRanking = (id: string, start: number, extra = {}) =>
      experiment({
        id,
        layerId: 'ranking',
        layerRange: { start, end: start + 0.1 },
        overrides: tester(),
        ...extra,
      });
    const others = [
      inRanking('draft', 0, { status: ExperimentStatus.DRAFT }),
      inRanking('devices', 0.1, { unitType: 'device' }),
      inRanking('stopped', 0.2, { status: ExperimentStatus.STOPPED }),
      inRanking('concluded', 0.3, { status: ExperimentStatus.CONCLUDED }),
      experiment({ id: 'no-layer', overrides: tester() }),
    ];
    const withOthers = { ...context, otherExperiments: others };
    const reasons = (candidate: ExperimentDefinition) =>
      fieldsAndReasons(validateExperiment(candidate, withOthers));
    // The DRAFT in the layer forces the same user: refused, naming the unit's entry.
    expect(
      reasons(
        inRanking('new', 0.5, {
          overrides: [{ unitId: 'qa-ben', variantKey: 'control' }, ...tester('control')],
        }),
      ),
    ).toEqual([['overrides[1].unit_id', 'OVERRIDDEN_IN_LAYER']]);
    // The same experiment again (an update) is not its own rival.
    expect(reasons(inRanking('draft', 0, { status: ExperimentStatus.DRAFT }))).toEqual([]);
    // Outside the layer, as a device, or once stopped: no rival.
    expect(reasons(experiment({ id: 'new', overrides: tester() }))).toEqual([]);
    expect(reasons(inRanking('new', 0.5, { unitType: 'account' }))).toEqual([]);
    expect(reasons(inRanking('new', 0.5, { status: ExperimentStatus.STOPPED }))).toEqual([]);
    expect(
      reasons(
        inRanking('new', 0.5, {
          status: ExperimentStatus.CONCLUDED,
          shippedVariantKey: 'treatment',
        }),
      ),
    ).toEqual([]);
    // Without the DRAFT, the stopped and concluded ones' testers are free.
    expect(
      fieldsAndReasons(
        validateExperiment(inRanking('new', 0.5), {
          ...context,
          otherExperiments: others.filter((o) => o.id !== 'draft'),
        }),
      ),
    ).toEqual([]);
  });

  it('takes at most 1,000 overrides, and says so once', () => {
    const overrides = (n: number) =>
      Array.from({ length: n }, (_, i) => ({ unitId: `qa-${i}`, variantKey: 'bold' }));
    expect(
      validateExperiment(experiment({ id: 'exp', overrides: overrides(1000) }), context).map(
        (v) => v.reason,
      ),
    ).toEqual(Array<string>(1000).fill('UNKNOWN_VARIANT'));
    expect(
      fieldsAndReasons(
        validateExperiment(experiment({ id: 'exp', overrides: overrides(1001) }), context),
      ),
    ).toEqual([['overrides', 'TOO_MANY']]);
  });

  it('accepts a valid experiment', () => {
    expect(validateExperiment(experiment({ id: 'exp' }), context)).toEqual([]);
    expect(
      validateExperiment(
        experiment({
          id: 'exp',
          layerId: 'ranking',
          layerRange: { start: 0, end: 0.5 },
          variants: [
            { key: 'a', weight: 0 },
            { key: 'b', weight: 0 },
          ],
        }),
        context,
      ),
    ).toEqual([]);
  });

  it('reports every problem at once', () => {
    const violations = validateExperiment(
      {
        id: 'Bad Id',
        unitType: '',
        surfaces: [],
        variants: [
          { key: 'same', weight: 0.7 },
          { key: 'same', weight: 0.7 },
          { key: 'Not OK', weight: 1.5 },
        ],
        coverage: 1.2,
        condition: { country: { $in: 'SE' } },
        layerId: 'missing',
        layerRange: { start: 0.6, end: 0.4 },
        hashVersion: 3,
        status: ExperimentStatus.DRAFT,
        scheduledStartTime: 2000,
        scheduledEndTime: 1000,
        allocationMode: AllocationMode.BANDIT,
      },
      context,
    );
    expect(fieldsAndReasons(violations)).toEqual([
      ['id', 'INVALID_ID'],
      ['unit_type', 'REQUIRED'],
      ['surfaces', 'REQUIRED'],
      ['variants[1].key', 'DUPLICATE_VARIANT_KEY'],
      ['variants[2].key', 'INVALID_VARIANT_KEY'],
      ['variants[2].weight', 'OUT_OF_RANGE'],
      ['variants', 'WEIGHTS_DO_NOT_SUM_TO_ONE'],
      ['coverage', 'OUT_OF_RANGE'],
      ['condition.country.$in', 'INVALID_OPERAND'],
      ['layer_id', 'UNKNOWN_LAYER'],
      ['layer_range.end', 'OUT_OF_RANGE'],
      ['hash_version', 'UNKNOWN_HASH_VERSION'],
      ['scheduled_end_time', 'END_BEFORE_START'],
      ['sticky', 'BANDIT_REQUIRES_STICKY'],
      ['bandit', 'REQUIRED'],
    ]);
    expect(violations.every((v) => v.description.length > 0)).toBe(true);
  });

  it('reports too few variants, bad surfaces and a layer range without a layer', () => {
    const violations = validateExperiment(
      experiment({
        id: 'exp',
        surfaces: ['Home', 'home', 'home'],
        variants: [{ key: 'only', weight: 1 }],
        layerRange: { start: 0, end: 1 },
      }),
      context,
    );
    expect(fieldsAndReasons(violations)).toEqual([
      ['surfaces[0]', 'INVALID_SURFACE'],
      ['surfaces[2]', 'DUPLICATE_SURFACE'],
      ['variants', 'TOO_FEW_VARIANTS'],
      ['layer_range', 'MUST_BE_UNSET'],
    ]);
  });

  it('reports a range overlapping other live experiments of the layer, ignoring concluded ones and itself', () => {
    const others = [
      experiment({ id: 'a', layerId: 'ranking', layerRange: { start: 0, end: 0.3 } }),
      experiment({ id: 'b', layerId: 'ranking', layerRange: { start: 0.5, end: 0.6 } }),
      experiment({
        id: 'old',
        layerId: 'ranking',
        layerRange: { start: 0.3, end: 0.5 },
        status: ExperimentStatus.CONCLUDED,
      }),
      experiment({ id: 'other-layer', layerId: 'x', layerRange: { start: 0, end: 1 } }),
      experiment({ id: 'exp', layerId: 'ranking', layerRange: { start: 0, end: 1 } }),
    ];
    const violations = validateExperiment(
      experiment({ id: 'exp', layerId: 'ranking', layerRange: { start: 0.25, end: 0.55 } }),
      { layerIds: context.layerIds, otherExperiments: others },
    );
    expect(fieldsAndReasons(violations)).toEqual([
      ['layer_range', 'OVERLAPPING_LAYER_RANGE'],
      ['layer_range', 'OVERLAPPING_LAYER_RANGE'],
    ]);
    expect(violations[0]!.description).toContain('"a"');
    expect(violations[1]!.description).toContain('"b"');
    // Adjacent half-open ranges do not overlap.
    expect(
      validateExperiment(
        experiment({ id: 'exp', layerId: 'ranking', layerRange: { start: 0.3, end: 0.5 } }),
        {
          layerIds: context.layerIds,
          otherExperiments: others,
        },
      ),
    ).toEqual([]);
  });

  it('checks bandit settings', () => {
    const bandit = (minArmShare: number) =>
      experiment({
        id: 'exp',
        allocationMode: AllocationMode.BANDIT,
        sticky: true,
        bandit: { minArmShare },
      });
    expect(validateExperiment(bandit(0.05), context)).toEqual([]);
    expect(fieldsAndReasons(validateExperiment(bandit(0.6), context))).toEqual([
      ['bandit.min_arm_share', 'OUT_OF_RANGE'],
    ]);
    expect(
      fieldsAndReasons(
        validateExperiment(experiment({ id: 'exp', bandit: { minArmShare: 0.1 } }), context),
      ),
    ).toEqual([['bandit', 'MUST_BE_UNSET']]);
  });
});

describe('validateLayer and validateHoldout', () => {
  it('checks layer ids', () => {
    expect(validateLayer({ id: 'home-ranking' })).toEqual([]);
    expect(fieldsAndReasons(validateLayer({ id: '' }))).toEqual([['id', 'REQUIRED']]);
  });

  it('reports every holdout problem at once', () => {
    expect(validateHoldout(holdout({ id: 'h' }), context)).toEqual([]);
    const violations = validateHoldout(
      holdout({
        id: '9h',
        unitType: '',
        fraction: 1,
        hashVersion: 5,
        surfaces: ['Bad'],
        layerIds: ['ranking', 'nope', 'ranking'],
      }),
      context,
    );
    expect(fieldsAndReasons(violations)).toEqual([
      ['id', 'INVALID_ID'],
      ['unit_type', 'REQUIRED'],
      ['fraction', 'OUT_OF_RANGE'],
      ['hash_version', 'UNKNOWN_HASH_VERSION'],
      ['surfaces[0]', 'INVALID_SURFACE'],
      ['layer_ids[1]', 'UNKNOWN_LAYER'],
      ['layer_ids[2]', 'DUPLICATE_LAYER'],
    ]);
    expect(fieldsAndReasons(validateHoldout(holdout({ id: 'h', surfaces: [] }), context))).toEqual([
      ['surfaces', 'REQUIRED'],
    ]);
  });
});

describe('validateAllocation', () => {
  it('requires every variant exactly once with weights summing to 1', () => {
    const exp = experiment({ id: 'exp' });
    expect(
      validateAllocation(exp, [
        { variantKey: 'control', weight: 0.3 },
        { variantKey: 'treatment', weight: 0.7 },
      ]),
    ).toEqual([]);
    const violations = validateAllocation(exp, [
      { variantKey: 'control', weight: 0.3 },
      { variantKey: 'control', weight: 0.3 },
      { variantKey: 'ghost', weight: -1 },
    ]);
    expect(fieldsAndReasons(violations)).toEqual([
      ['allocation.weights[1].variant_key', 'DUPLICATE_VARIANT_KEY'],
      ['allocation.weights[2].variant_key', 'UNKNOWN_VARIANT'],
      ['allocation.weights[2].weight', 'OUT_OF_RANGE'],
      ['allocation.weights', 'MISSING_VARIANT'],
      ['allocation.weights', 'WEIGHTS_DO_NOT_SUM_TO_ONE'],
    ]);
  });
});

describe('checkRunningChange', () => {
  const running = experiment({
    id: 'exp',
    seed: 's',
    layerId: 'ranking',
    layerRange: { start: 0, end: 0.5 },
  });

  it('allows any change to a draft', () => {
    expect(
      checkRunningChange(
        { ...running, status: ExperimentStatus.DRAFT },
        experiment({ id: 'exp', seed: 'other' }),
      ),
    ).toEqual([]);
  });

  it('allows coverage, condition and layer range changes to a started experiment', () => {
    expect(
      checkRunningChange(running, {
        ...running,
        coverage: 0.3,
        condition: { country: 'SE' },
        layerRange: { start: 0, end: 0.6 },
      }),
    ).toEqual([]);
  });

  it("keeps a started experiment's layer range start, and a sticky one's range from shrinking", () => {
    const range = (start: number, end: number) => ({ layerRange: { start, end } });
    expect(fieldsAndReasons(checkRunningChange(running, { ...running, ...range(0.5, 1) }))).toEqual(
      [['layer_range.start', 'IMMUTABLE_ONCE_STARTED']],
    );
    expect(checkRunningChange(running, { ...running, ...range(0, 0.4) })).toEqual([]);
    const sticky = { ...running, sticky: true };
    expect(fieldsAndReasons(checkRunningChange(sticky, { ...sticky, ...range(0, 0.4) }))).toEqual([
      ['layer_range.end', 'RANGE_ONLY_GROWS'],
    ]);
    expect(checkRunningChange(sticky, { ...sticky, ...range(0, 0.7) })).toEqual([]);
  });

  it('rejects every bucketing-relevant change at once', () => {
    const after: ExperimentDefinition = {
      ...running,
      seed: 'new',
      hashVersion: 1,
      unitType: 'device',
      layerId: '',
      allocationMode: AllocationMode.BANDIT,
      variants: [
        { key: 'treatment', weight: 0.5 },
        { key: 'control', weight: 0.5 },
      ],
    };
    expect(fieldsAndReasons(checkRunningChange(running, after))).toEqual([
      ['unit_type', 'IMMUTABLE_ONCE_STARTED'],
      ['seed', 'IMMUTABLE_ONCE_STARTED'],
      ['hash_version', 'IMMUTABLE_ONCE_STARTED'],
      ['layer_id', 'IMMUTABLE_ONCE_STARTED'],
      ['allocation_mode', 'IMMUTABLE_ONCE_STARTED'],
      ['variants', 'IMMUTABLE_ONCE_STARTED'],
    ]);
  });

  it("keeps a started bandit's minimum arm share: it would change the split under the same allocation sequence", () => {
    const bandit: ExperimentDefinition = {
      ...running,
      allocationMode: AllocationMode.BANDIT,
      sticky: true,
      bandit: { minArmShare: 0.05 },
    };
    expect(
      fieldsAndReasons(checkRunningChange(bandit, { ...bandit, bandit: { minArmShare: 0.3 } })),
    ).toEqual([['bandit.min_arm_share', 'IMMUTABLE_ONCE_STARTED']]);
    expect(checkRunningChange(bandit, { ...bandit, bandit: { minArmShare: 0.05 } })).toEqual([]);
    const draft = { ...bandit, status: ExperimentStatus.DRAFT };
    expect(checkRunningChange(draft, { ...draft, bandit: { minArmShare: 0.3 } })).toEqual([]);
  });

  it('treats an empty seed and the experiment id as the same seed, and hash version 0 as 2', () => {
    const a = experiment({ id: 'exp' });
    expect(checkRunningChange(a, { ...a, seed: 'exp', hashVersion: 2 })).toEqual([]);
  });

  it('allows weight changes only for sticky FIXED experiments', () => {
    const reweighted = (e: ExperimentDefinition): ExperimentDefinition => ({
      ...e,
      variants: [
        { key: 'control', weight: 0.2 },
        { key: 'treatment', weight: 0.8 },
      ],
    });
    expect(fieldsAndReasons(checkRunningChange(running, reweighted(running)))).toEqual([
      ['variants', 'WEIGHTS_IMMUTABLE'],
    ]);
    const sticky = { ...running, sticky: true };
    expect(checkRunningChange(sticky, reweighted(sticky))).toEqual([]);
    // Weights could move around stickiness turned on or off: units exposed while it was off
    // have no stored variant to keep.
    expect(fieldsAndReasons(checkRunningChange(running, { ...running, sticky: true }))).toEqual([
      ['sticky', 'IMMUTABLE_ONCE_STARTED'],
    ]);
    expect(fieldsAndReasons(checkRunningChange(sticky, { ...sticky, sticky: false }))).toEqual([
      ['sticky', 'IMMUTABLE_ONCE_STARTED'],
    ]);
    const bandit = {
      ...sticky,
      allocationMode: AllocationMode.BANDIT,
      bandit: { minArmShare: 0.1 },
    };
    expect(fieldsAndReasons(checkRunningChange(bandit, reweighted(bandit)))).toEqual([
      ['variants', 'WEIGHTS_IMMUTABLE'],
    ]);
  });

  it('lets a concluded experiment change only description, owner and tags', () => {
    const concluded = {
      ...running,
      status: ExperimentStatus.CONCLUDED,
      shippedVariantKey: 'treatment',
    };
    expect(
      checkRunningChange(concluded, { ...concluded, description: 'done', tags: ['q3'] }),
    ).toEqual([]);
    expect(
      fieldsAndReasons(checkRunningChange(concluded, { ...concluded, coverage: 0.5 })),
    ).toEqual([['coverage', 'IMMUTABLE_WHEN_CONCLUDED']]);
  });
});

describe('checkScheduleChange', () => {
  const now = Date.UTC(2026, 0, 10);
  const hour = 3_600_000;
  const at = (
    status: ExperimentStatus,
    scheduledStartTime?: number,
    scheduledEndTime?: number,
  ): ExperimentDefinition => ({
    ...experiment({ id: 'exp' }),
    status,
    scheduledStartTime,
    scheduledEndTime,
  });
  const check = (before: ExperimentDefinition, after: ExperimentDefinition): string[][] =>
    fieldsAndReasons(checkScheduleChange(before, after, now));

  it('lets a draft take any schedule', () => {
    const draft = at(ExperimentStatus.DRAFT, now + hour, now + 2 * hour);
    expect(check(draft, at(ExperimentStatus.DRAFT, now - hour, now - 1))).toEqual([]);
    expect(check(draft, at(ExperimentStatus.DRAFT))).toEqual([]);
  });

  it("moves a scheduled experiment's start only within the future", () => {
    const scheduled = at(ExperimentStatus.SCHEDULED, now + hour, now + 3 * hour);
    const moved = (start?: number) => at(ExperimentStatus.SCHEDULED, start, now + 3 * hour);
    expect(check(scheduled, moved(now + 2 * hour))).toEqual([]);
    expect(check(scheduled, moved(undefined))).toEqual([
      ['scheduled_start_time', 'SCHEDULE_PASSED'],
    ]);
    expect(check(scheduled, moved(now))).toEqual([['scheduled_start_time', 'SCHEDULE_PASSED']]);
    // Too close for every replica to learn of the move before the old or new start.
    expect(check(scheduled, moved(now + START_MARGIN_MS))).toEqual([
      ['scheduled_start_time', 'SCHEDULE_PASSED'],
    ]);
    expect(check(scheduled, moved(now + START_MARGIN_MS + 1))).toEqual([]);
    // Its start has come, or nearly: it may be serving, and its status is about to say RUNNING.
    for (const start of [now - 1, now + START_MARGIN_MS]) {
      const due = at(ExperimentStatus.SCHEDULED, start, now + hour);
      expect(check(due, at(ExperimentStatus.SCHEDULED, now + hour, now + 2 * hour))).toEqual([
        ['scheduled_start_time', 'IMMUTABLE_ONCE_STARTED'],
      ]);
    }
  });

  it("keeps a running experiment's start, and moves its end only within the future", () => {
    const running = at(ExperimentStatus.RUNNING, now - hour, now + hour);
    const ended = (end?: number) => at(ExperimentStatus.RUNNING, now - hour, end);
    expect(check(running, ended(now + 5 * hour))).toEqual([]);
    expect(check(running, ended(now + 1))).toEqual([]);
    expect(check(running, ended(undefined))).toEqual([]);
    expect(check(running, ended(now))).toEqual([['scheduled_end_time', 'SCHEDULE_PASSED']]);
    expect(check(running, at(ExperimentStatus.RUNNING, undefined, now + hour))).toEqual([
      ['scheduled_start_time', 'IMMUTABLE_ONCE_STARTED'],
    ]);
    // Its end has passed: it has stopped serving; a later end would not revive it quietly.
    const over = at(ExperimentStatus.RUNNING, now - hour, now - 1);
    expect(check(over, at(ExperimentStatus.RUNNING, now - hour, now + hour))).toEqual([
      ['scheduled_end_time', 'SCHEDULE_PASSED'],
    ]);
    // A running experiment without a scheduled start has none to keep.
    const unscheduled = at(ExperimentStatus.RUNNING);
    expect(check(unscheduled, at(ExperimentStatus.RUNNING, undefined, now + hour))).toEqual([]);
  });

  it("closes a stopped experiment's schedule", () => {
    const stopped = at(ExperimentStatus.STOPPED, now - 2 * hour, now - hour);
    expect(check(stopped, at(ExperimentStatus.STOPPED, now - 2 * hour, now + hour))).toEqual([
      ['scheduled_end_time', 'IMMUTABLE_ONCE_STOPPED'],
    ]);
    expect(check(stopped, at(ExperimentStatus.STOPPED, undefined, now - hour))).toEqual([
      ['scheduled_start_time', 'IMMUTABLE_ONCE_STOPPED'],
    ]);
    expect(check(stopped, at(ExperimentStatus.STOPPED))).toEqual([
      ['scheduled_start_time', 'IMMUTABLE_ONCE_STOPPED'],
      ['scheduled_end_time', 'IMMUTABLE_ONCE_STOPPED'],
    ]);
    expect(check(stopped, stopped)).toEqual([]);
  });
});
