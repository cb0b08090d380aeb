/** Every handler of `tandem.assignment.v1.AssignmentService`, and which of them are admin RPCs. */
import type { AssignmentServiceService } from '../../../../gen/ts/tandem/assignment/v1/assignment_service';
import type { Handlers } from '../../../platform/src/grpc/handlers';
import type { AssignmentContext } from '../assignment-context';
import { allocationHandlers } from './allocations';
import { experimentHandlers } from './experiments';
import { holdoutHandlers } from './holdouts';
import { layerHandlers } from './layers';
import { resolveHandlers } from './resolve';

type Service = typeof AssignmentServiceService;

/** The RPCs that need the admin token: every Create, Update, Delete, Start, Stop, Conclude. */
export const ADMIN_METHODS = [
  'createLayer',
  'updateLayer',
  'deleteLayer',
  'createExperiment',
  'updateExperiment',
  'deleteExperiment',
  'startExperiment',
  'stopExperiment',
  'concludeExperiment',
  'createHoldout',
  'updateHoldout',
  'deleteHoldout',
  'updateAllocation',
] as const satisfies readonly (keyof Service)[];

export function assignmentHandlers(context: AssignmentContext): Handlers<Service> {
  return {
    ...layerHandlers(context),
    ...experimentHandlers(context),
    ...holdoutHandlers(context),
    ...resolveHandlers(context),
    ...allocationHandlers(context),
  };
}
