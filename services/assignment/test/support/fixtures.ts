/** Requests the service tests build on. */
import {
  AllocationMode,
  Experiment,
  Variant,
  type Experiment as ExperimentMessage,
} from '../../../../gen/ts/tandem/assignment/v1/experiment';
import { Holdout } from '../../../../gen/ts/tandem/assignment/v1/holdout';
import { ResolveRequest } from '../../../../gen/ts/tandem/assignment/v1/assignment_service';

export function variant(key: string, weight = 0, payload?: Record<string, unknown>): Variant {
  return Variant.fromPartial({ key, weight, payload });
}

/** A valid 50/50 experiment on surface `home` for unit type `user`. */
export function experiment(id: string, overrides: Partial<ExperimentMessage> = {}): Experiment {
  return Experiment.fromPartial({
    id,
    description: `experiment ${id}`,
    owner: 'team-test',
    unitType: 'user',
    surfaces: ['home'],
    variants: [variant('control', 0.5), variant('treatment', 0.5, { policy: 'new' })],
    ...overrides,
  });
}

/** A draft sticky bandit on its own surface (named as the experiment), split equally. */
export function draftBandit(
  id: string,
  variants = [variant('control', 0.5), variant('treatment', 0.5)],
): Experiment {
  return experiment(id, {
    surfaces: [id],
    allocationMode: AllocationMode.ALLOCATION_MODE_BANDIT,
    bandit: { minArmShare: 0 },
    sticky: true,
    variants,
  });
}

export function holdout(id: string, overrides: Partial<Holdout> = {}): Holdout {
  return Holdout.fromPartial({ id, unitType: 'user', fraction: 0.5, ...overrides });
}

export function resolveRequest(
  unitId: string,
  overrides: Partial<ResolveRequest> = {},
): ResolveRequest {
  return ResolveRequest.fromPartial({
    unit: { id: unitId, type: 'user' },
    surfaces: ['home'],
    ...overrides,
  });
}
