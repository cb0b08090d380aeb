/**
 * Bandit allocations: read the split in effect (or the one of an earlier sequence, from the
 * allocation history), and set a BANDIT experiment's weights, by hand (UpdateAllocation) or from
 * Analysis (`AllocationUpdate` events). Updates are ordered by `sequence`: a stale one is rejected
 * (RPC) or ignored (event). New units follow the new weights; sticky units keep their variant.
 * Every allocation stored is also kept in the history, by sequence, for Analysis.
 */
import {
  UpdateAllocationResponse,
  type AssignmentServiceService,
} from '../../../../gen/ts/tandem/assignment/v1/assignment_service';
import {
  AllocationMethod,
  type Allocation,
} from '../../../../gen/ts/tandem/assignment/v1/allocation';
import { ConfigChangeType } from '../../../../gen/ts/tandem/events/v1/config_change_event';
import {
  AbortedError,
  AlreadyExistsError,
  FailedPreconditionError,
  NotFoundError,
  type FieldViolation,
} from '../../../platform/src/errors';
import type { Handlers } from '../../../platform/src/grpc/handlers';
import { allocationFits, AllocationMode, ExperimentStatus, validateAllocation } from '../domain';
import type { AssignmentContext } from '../assignment-context';
import {
  ALLOCATION_HISTORY_TTL_MS,
  allocationHistoryId,
  etagOf,
  experimentDefinition,
  type AllocationDocument,
  type ExperimentDocument,
  type Stored,
} from '../store/documents';
import {
  allocationMessage,
  historicAllocationMessage,
  INITIAL_ALLOCATION_ETAG,
  timestampViolation,
} from './messages';
import { MAX_ANALYSIS_PLAN_ID_BYTES } from './limits';
import { notFound, rejectIfAny, required } from './requests';

type AllocationHandlers = Pick<
  Handlers<typeof AssignmentServiceService>,
  'getAllocation' | 'updateAllocation'
>;

/**
 * How far ahead of the clock a sequence may be. Producers use the computation time in Unix
 * milliseconds, so a day covers any clock skew; more is a mistake that would order every later
 * update before it.
 */
const MAX_SEQUENCE_AHEAD_MS = 86_400_000;
/** The contract's methods (ts-proto adds UNRECOGNIZED = -1 for numbers it does not know). */
const METHODS: ReadonlySet<number> = new Set(
  Object.values(AllocationMethod).filter(
    (value): value is AllocationMethod =>
      typeof value === 'number' && value !== AllocationMethod.UNRECOGNIZED,
  ),
);

/**
 * Problems with what an allocation records beside its weights (informational, but stored and
 * served back): counts, means and probabilities must be numbers a client can read.
 */
function recordViolations(allocation: Allocation): FieldViolation[] {
  const out: FieldViolation[] = [];
  allocation.weights.forEach((w, i) => {
    const at = `allocation.weights[${i}]`;
    if (!(Number.isSafeInteger(w.unitCount) && w.unitCount >= 0)) {
      out.push({
        field: `${at}.unit_count`,
        description: 'must not be negative',
        reason: 'OUT_OF_RANGE',
      });
    }
    if (!Number.isFinite(w.rewardMean)) {
      out.push({
        field: `${at}.reward_mean`,
        description: 'must be a finite number',
        reason: 'OUT_OF_RANGE',
      });
    }
    if (!(w.probabilityBest >= 0 && w.probabilityBest <= 1)) {
      out.push({
        field: `${at}.probability_best`,
        description: 'must be in [0, 1]',
        reason: 'OUT_OF_RANGE',
      });
    }
  });
  if (!METHODS.has(allocation.method)) {
    out.push({
      field: 'allocation.method',
      description: 'unknown method',
      reason: 'UNKNOWN_METHOD',
    });
  }
  if (Buffer.byteLength(allocation.analysisPlanId) > MAX_ANALYSIS_PLAN_ID_BYTES) {
    out.push({
      field: 'allocation.analysis_plan_id',
      description: `at most ${MAX_ANALYSIS_PLAN_ID_BYTES} bytes`,
      reason: 'TOO_LONG',
    });
  }
  const computeTime = timestampViolation('allocation.compute_time', allocation.computeTime);
  if (computeTime) out.push(computeTime);
  return out;
}

/** Where an allocation came from: `admin` (UpdateAllocation) or `analysis` (events). */
export type AllocationSource = 'admin' | 'analysis';

/**
 * An allocation from Analysis with its informational fields made readable: an event cannot be
 * answered with INVALID_ARGUMENT, and its weights must not be lost because a newer producer sent a
 * method this build does not know or an arm with no units had no mean reward (NaN). Unknown
 * methods become UNSPECIFIED, other unreadable values 0; an analysis plan id too long to store is
 * cleared, and so is a compute time no Timestamp holds.
 */
function readableRecord(allocation: Allocation): Allocation {
  return {
    ...allocation,
    analysisPlanId:
      Buffer.byteLength(allocation.analysisPlanId) > MAX_ANALYSIS_PLAN_ID_BYTES
        ? ''
        : allocation.analysisPlanId,
    computeTime:
      timestampViolation('allocation.compute_time', allocation.computeTime) === undefined
        ? allocation.computeTime
        : undefined,
    method: METHODS.has(allocation.method)
      ? allocation.method
      : AllocationMethod.ALLOCATION_METHOD_UNSPECIFIED,
    weights: allocation.weights.map((w) => ({
      ...w,
      unitCount: Number.isSafeInteger(w.unitCount) && w.unitCount >= 0 ? w.unitCount : 0,
      rewardMean: Number.isFinite(w.rewardMean) ? w.rewardMean : 0,
      probabilityBest: w.probabilityBest >= 0 && w.probabilityBest <= 1 ? w.probabilityBest : 0,
    })),
  };
}

/**
 * Keeps `stored`, the allocation of `experiment` just stored (or in effect), in the allocation
 * history under its sequence, with the minimum arm share it is served with. Called under the
 * write lease, after the allocation itself is stored. One already kept under the sequence is
 * replaced: the same allocation again (a redelivered update, a retried write), or one a DRAFT
 * kept before its arms changed and its allocation was dropped, or before the experiment was
 * deleted and created again (an id is reused only if it never started). A started experiment's
 * sequences only grow, and its arms and minimum share are frozen, so what exposures were logged
 * under is never replaced.
 */
export async function keepInHistory(
  context: AssignmentContext,
  experiment: ExperimentDocument,
  stored: Stored<AllocationDocument>,
): Promise<void> {
  const { doc } = stored;
  await context.store.allocationHistory.upsert({
    id: allocationHistoryId(experiment.id, doc.sequence),
    experimentId: experiment.id,
    experimentIncarnation: experiment.incarnation ?? 1,
    allocation: {
      id: doc.id,
      weights: doc.weights,
      sequence: doc.sequence,
      method: doc.method,
      computeTime: doc.computeTime,
      analysisPlanId: doc.analysisPlanId,
      source: doc.source,
      updateTime: doc.updateTime,
    },
    minArmShare: experiment.minArmShare,
    etag: etagOf(stored),
    expiresAt: new Date(Date.now() + ALLOCATION_HISTORY_TTL_MS),
  });
}

/**
 * Stores a new allocation for a BANDIT experiment. Throws INVALID_ARGUMENT, NOT_FOUND,
 * FAILED_PRECONDITION, or ABORTED for a stale etag or sequence.
 */
export async function applyAllocation(
  context: AssignmentContext,
  requested: Allocation,
  source: AllocationSource,
): Promise<Allocation> {
  let allocation = requested;
  const unreadable = source === 'analysis' ? recordViolations(requested) : [];
  if (unreadable.length > 0) {
    allocation = readableRecord(requested);
    context.logger.warn(
      { experiment: requested.experimentId, problems: unreadable },
      'allocation update applied with unreadable informational fields set to 0 / UNSPECIFIED / empty',
    );
  }
  const violations: FieldViolation[] = [];
  required('allocation.experiment_id', allocation.experimentId, violations);
  const now = Date.now();
  if (allocation.sequence < 0) {
    // No allocation is ever stored below 0, so ABORTED (re-read and retry) could never clear.
    violations.push({
      field: 'allocation.sequence',
      description: 'must not be negative (0 means the next one)',
      reason: 'OUT_OF_RANGE',
    });
  } else if (allocation.sequence > now + MAX_SEQUENCE_AHEAD_MS) {
    // A sequence far ahead would lock out every later update (and past 2^53 it could not even be
    // stored and served back exactly).
    violations.push({
      field: 'allocation.sequence',
      description: 'at most a day ahead of now in Unix milliseconds',
      reason: 'OUT_OF_RANGE',
    });
  }
  violations.push(...recordViolations(allocation));
  // Every problem at once: the weights against the experiment's variants too, when it exists;
  // weights that fit no experiment (out of range, not summing to 1) before NOT_FOUND.
  const experiment =
    allocation.experimentId === ''
      ? undefined
      : await context.store.experiments.get(allocation.experimentId);
  violations.push(
    ...validateAllocation(
      experiment && experimentDefinition(experiment.doc, undefined),
      allocation.weights.map((w) => ({ variantKey: w.variantKey, weight: w.weight })),
    ),
  );
  rejectIfAny('allocation', violations);
  if (!experiment) throw notFound('experiment', allocation.experimentId);
  const doc = experiment.doc;
  if (doc.allocationMode !== AllocationMode.BANDIT || doc.status === ExperimentStatus.CONCLUDED) {
    throw new FailedPreconditionError(
      `experiment "${doc.id}" ${doc.allocationMode !== AllocationMode.BANDIT ? 'is not a BANDIT experiment' : 'is CONCLUDED'}`,
      {
        reason: 'NOT_A_RUNNING_BANDIT',
        violations: [
          {
            type: doc.allocationMode !== AllocationMode.BANDIT ? 'ALLOCATION_MODE' : 'STATUS',
            subject: `experiments/${doc.id}`,
            description:
              doc.allocationMode !== AllocationMode.BANDIT
                ? 'allocation_mode is FIXED'
                : 'is CONCLUDED',
          },
        ],
      },
    );
  }
  const current = await context.store.allocations.get(doc.id);
  const currentEtag = current ? etagOf(current) : INITIAL_ALLOCATION_ETAG;
  if (allocation.etag !== '' && allocation.etag !== currentEtag) {
    throw new AbortedError(
      `allocation of "${doc.id}": etag "${allocation.etag}" is stale; current is "${currentEtag}"`,
      {
        reason: 'STALE_ETAG',
        metadata: { current_etag: currentEtag },
      },
    );
  }
  // One stored before sequences were bounded, beyond the bound, orders nothing: otherwise no
  // later update could ever pass it.
  // One set for other arms (a DRAFT's variants changed, its drop failed) is not in effect, and
  // orders nothing either: GetAllocation, Resolve and exposures show sequence 0.
  const held = current !== undefined && allocationFits(doc, current.doc) ? current.doc.sequence : 0;
  const storedSequence = held > now + MAX_SEQUENCE_AHEAD_MS ? 0 : held;
  const sequence =
    allocation.sequence === 0 ? Math.max(storedSequence + 1, now) : allocation.sequence;
  if (sequence <= storedSequence) {
    // This very allocation delivered again (its first delivery failed after storing it, maybe
    // before it was kept in the history): it is kept there now.
    if (current && sequence === storedSequence && sequence === current.doc.sequence) {
      await keepInHistory(context, doc, current);
    }
    throw new AbortedError(
      `allocation of "${doc.id}": sequence ${sequence} is not after ${storedSequence}`,
      {
        reason: 'STALE_SEQUENCE',
        metadata: { current_sequence: String(storedSequence) },
      },
    );
  }
  const next: AllocationDocument = {
    id: doc.id,
    weights: allocation.weights.map((w) => ({
      variantKey: w.variantKey,
      weight: w.weight,
      unitCount: w.unitCount,
      rewardMean: w.rewardMean,
      probabilityBest: w.probabilityBest,
    })),
    sequence,
    method: allocation.method,
    computeTime: allocation.computeTime?.getTime() ?? null,
    analysisPlanId: allocation.analysisPlanId,
    source,
    updateTime: now,
  };
  let stored;
  try {
    if (current) {
      // Its incarnation stays: without it the etag would read as one of a dropped allocation.
      const { incarnation } = current.doc;
      stored = await context.store.allocations.replace(
        incarnation === undefined ? next : { ...next, incarnation },
        current.version,
      );
    } else {
      // Etags of its own when an allocation of this experiment was dropped before.
      const incarnation = await context.store.incarnationOf('allocation', doc.id);
      stored = await context.store.allocations.insert(
        incarnation > 1 ? { ...next, incarnation } : next,
      );
    }
  } catch (error) {
    // Another writer got there first: the caller's view is stale, as with an etag.
    if (error instanceof AlreadyExistsError)
      throw new AbortedError(`allocation of "${doc.id}" changed concurrently`, {
        reason: 'CONCURRENT_CHANGE',
      });
    throw error;
  }
  await context.changes.record(
    { type: 'allocation', id: doc.id, stored },
    ConfigChangeType.CONFIG_CHANGE_TYPE_UPDATED,
  );
  // After the change is recorded: failing here, the write is retried (the event delivered again,
  // the RPC's retry recovered), and that keeps it (see above and `recoverWrite`).
  await keepInHistory(context, doc, stored);
  return allocationMessage(doc, stored);
}

export function allocationHandlers(context: AssignmentContext): AllocationHandlers {
  return {
    getAllocation: async (request) => {
      const violations: FieldViolation[] = [];
      required('experiment_id', request.experimentId, violations);
      if (request.sequence < 0) {
        violations.push({
          field: 'sequence',
          description: 'must not be negative',
          reason: 'OUT_OF_RANGE',
        });
      }
      rejectIfAny('request', violations);
      const view = context.configuration.current();
      const experiment = view.experiments.get(request.experimentId);
      if (!experiment) throw notFound('experiment', request.experimentId);
      const inEffect = allocationMessage(
        experiment.doc,
        view.allocations.get(request.experimentId),
      );
      // The one in effect needs no storage read (nor sequence 0, the variants' own weights,
      // which the history never holds once an update replaced them).
      if (request.sequence === 0 || request.sequence === inEffect.sequence) {
        return { allocation: inEffect };
      }
      const kept = await context.store.allocationHistory.get(
        allocationHistoryId(request.experimentId, request.sequence),
      );
      // One kept for an earlier experiment of the id (deleted, then created again) is not its.
      if (!kept || kept.doc.experimentIncarnation !== (experiment.doc.incarnation ?? 1)) {
        throw new NotFoundError(
          `experiment "${request.experimentId}" has no allocation of sequence ${request.sequence} kept`,
          {
            reason: 'ALLOCATION_NOT_FOUND',
            resource: {
              type: 'tandem.assignment.v1.Allocation',
              name: `${request.experimentId}@${request.sequence}`,
            },
          },
        );
      }
      return { allocation: historicAllocationMessage(kept.doc) };
    },

    updateAllocation: (request) =>
      context.writes.once('UpdateAllocation', request, UpdateAllocationResponse, async () => {
        if (!request.allocation) {
          rejectIfAny('request', [
            { field: 'allocation', description: 'is required', reason: 'REQUIRED' },
          ]);
        }
        return {
          allocation: await applyAllocation(context, request.allocation as Allocation, 'admin'),
        };
      }),
  };
}
