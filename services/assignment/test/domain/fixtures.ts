/** Builders of plain definitions for evaluator tests: a valid running experiment by default. */
import {
  ExperimentStatus,
  HoldoutStatus,
  type AssignmentConfiguration,
  type ExperimentDefinition,
  type HoldoutDefinition,
} from '../../src/domain/configuration';

export function experiment(
  overrides: Partial<ExperimentDefinition> & { id: string },
): ExperimentDefinition {
  return {
    unitType: 'user',
    surfaces: ['home'],
    variants: [
      { key: 'control', weight: 0.5 },
      { key: 'treatment', weight: 0.5 },
    ],
    status: ExperimentStatus.RUNNING,
    ...overrides,
  };
}

export function holdout(overrides: Partial<HoldoutDefinition> & { id: string }): HoldoutDefinition {
  return {
    unitType: 'user',
    fraction: 0.1,
    surfaces: ['home'],
    layerIds: [],
    status: HoldoutStatus.RUNNING,
    ...overrides,
  };
}

export function configuration(parts: Partial<AssignmentConfiguration>): AssignmentConfiguration {
  return { layers: [], experiments: [], holdouts: [], allocations: [], ...parts };
}
