/**
 * Holdouts: create (DRAFT, or RUNNING when asked), read, list, update (including the status,
 * DRAFT → RUNNING → STOPPED), delete. Once running, what decides who is held out is frozen.
 */
import {
  CreateHoldoutResponse,
  DeleteHoldoutResponse,
  UpdateHoldoutResponse,
  type AssignmentServiceService,
} from '../../../../gen/ts/tandem/assignment/v1/assignment_service';
import { HashVersion } from '../../../../gen/ts/tandem/assignment/v1/experiment';
import {
  Holdout,
  HoldoutStatus as HoldoutStatusMessage,
} from '../../../../gen/ts/tandem/assignment/v1/holdout';
import { ConfigChangeType } from '../../../../gen/ts/tandem/events/v1/config_change_event';
import {
  FailedPreconditionError,
  type FieldViolation,
  type PreconditionViolation,
} from '../../../platform/src/errors';
import type { Handlers } from '../../../platform/src/grpc/handlers';
import {
  effectiveSeed,
  holdoutSeed,
  HoldoutStatus,
  layerSeedViolations,
  seedKeptAsStored,
  sharedSeedViolations,
  validateHoldout,
} from '../domain';
import type { AssignmentContext } from '../assignment-context';
import { changesNothing, holdoutDefinition, type HoldoutDocument } from '../store/documents';
import { holdoutSizeViolations } from './limits';
import { asEnum, holdoutMessage } from './messages';
import {
  checkEtag,
  storedToChange,
  inUpdateMask,
  insertNew,
  maskPaths,
  notFound,
  page,
  pageRequest,
  rejectIfAny,
  required,
  retiredId,
  under,
  versionOf,
  statusFilter,
} from './requests';

type HoldoutHandlers = Pick<
  Handlers<typeof AssignmentServiceService>,
  'createHoldout' | 'getHoldout' | 'listHoldouts' | 'updateHoldout' | 'deleteHoldout'
>;

const MUTABLE_PATHS = {
  description: 'description',
  owner: 'owner',
  tags: 'tags',
  unit_type: 'unitType',
  fraction: 'fraction',
  seed: 'seed',
  hash_version: 'hashVersion',
  surfaces: 'surfaces',
  layer_ids: 'layerIds',
  status: 'status',
} as const satisfies Record<string, keyof HoldoutDocument>;
const FROZEN_ONCE_RUNNING = ['unit_type', 'fraction', 'seed', 'hash_version'] as const;
const OUTPUT_OR_IMMUTABLE = ['id', 'start_time', 'stop_time', 'etag', 'create_time', 'update_time'];

/** The status transitions UpdateHoldout allows. */
const NEXT_STATUS: Readonly<Record<number, number>> = {
  [HoldoutStatus.DRAFT]: HoldoutStatus.RUNNING,
  [HoldoutStatus.RUNNING]: HoldoutStatus.STOPPED,
};

/** The fields `holdout` asks for; `stored`, on an update, is the holdout as it is. */
function requestedFields(
  holdout: Holdout,
  stored?: HoldoutDocument,
): Pick<HoldoutDocument, (typeof MUTABLE_PATHS)[keyof typeof MUTABLE_PATHS]> {
  return {
    description: holdout.description,
    owner: holdout.owner,
    tags: holdout.tags,
    unitType: holdout.unitType,
    fraction: holdout.fraction,
    // Stored resolved, so that a holdout keeps the seed it was created with (those created
    // before `holdoutSeed` prefixed the id keep the bare id); an update asking for no seed
    // keeps it too, as it did when the default was the bare id.
    seed: holdout.seed === '' && stored !== undefined ? stored.seed : holdoutSeed(holdout),
    hashVersion:
      holdout.hashVersion === HashVersion.HASH_VERSION_UNSPECIFIED
        ? HashVersion.HASH_VERSION_V2
        : holdout.hashVersion,
    surfaces: holdout.surfaces,
    layerIds: holdout.layerIds,
    status:
      holdout.status === HoldoutStatusMessage.HOLDOUT_STATUS_UNSPECIFIED
        ? HoldoutStatus.DRAFT
        : asEnum<HoldoutStatus>(holdout.status),
  };
}

function validate(context: AssignmentContext, doc: HoldoutDocument): FieldViolation[] {
  const view = context.configuration.current();
  const layerIds = new Set(view.layers.keys());
  return under('holdout', [
    ...validateHoldout(holdoutDefinition(doc, undefined), { layerIds }),
    ...holdoutSizeViolations(doc),
    ...layerSeedViolations(holdoutSeed(doc), doc.hashVersion),
    ...sharedSeedViolations(
      holdoutSeed(doc),
      view.experimentDefinitions.map((experiment) => ({
        kind: 'experiment' as const,
        id: experiment.id,
        seed: effectiveSeed(experiment),
      })),
    ),
  ]);
}

/**
 * The problems of the values an update of a holdout that does not exist asks for, those that do
 * not depend on what would be stored: the masked fields checked on a holdout valid in every other
 * field. That at least one surface or layer is named is checked only when the mask names both.
 */
function requestedValueProblems(
  context: AssignmentContext,
  holdout: Holdout,
  paths: ReadonlySet<string>,
): FieldViolation[] {
  const requested = requestedFields(holdout);
  const candidate: Record<string, unknown> = {
    id: holdout.id,
    description: '',
    owner: '',
    tags: [],
    unitType: 'unit',
    fraction: 0.5,
    seed: requested.seed,
    hashVersion: HashVersion.HASH_VERSION_V2,
    surfaces: ['placeholder'],
    layerIds: [],
    status: HoldoutStatus.DRAFT,
    startTime: null,
    stopTime: null,
    createTime: 0,
    updateTime: 0,
  };
  for (const path of paths) {
    const field = MUTABLE_PATHS[path as keyof typeof MUTABLE_PATHS];
    candidate[field] = requested[field];
  }
  const coverageKnown = paths.has('surfaces') && paths.has('layer_ids');
  return validate(context, candidate as unknown as HoldoutDocument).filter(
    (v) =>
      inUpdateMask('holdout', v.field, paths) &&
      (coverageKnown || !(v.field === 'holdout.surfaces' && v.reason === 'REQUIRED')),
  );
}

function statusName(status: number): string {
  return Object.entries(HoldoutStatus).find(([, value]) => value === status)?.[0] ?? String(status);
}

export function holdoutHandlers(context: AssignmentContext): HoldoutHandlers {
  return {
    createHoldout: (request) =>
      context.writes.once('CreateHoldout', request, CreateHoldoutResponse, async () => {
        const violations: FieldViolation[] = [];
        const holdout = request.holdout;
        if (!holdout) {
          required('holdout', '', violations);
          rejectIfAny('holdout', violations);
        }
        const requested = requestedFields(holdout as Holdout);
        if (requested.status === HoldoutStatus.STOPPED) {
          violations.push({
            field: 'holdout.status',
            description: 'a holdout is created DRAFT or RUNNING',
            reason: 'INVALID_STATUS',
          });
        }
        const now = Date.now();
        const doc: HoldoutDocument = {
          id: (holdout as Holdout).id,
          ...requested,
          startTime: requested.status === HoldoutStatus.RUNNING ? now : null,
          stopTime: null,
          createTime: now,
          updateTime: now,
        };
        violations.push(...validate(context, doc));
        rejectIfAny('holdout', violations);
        if (await context.store.isRetired('holdout', doc.id)) throw retiredId('holdout', doc.id);
        const stored = await insertNew(context.store, context.store.holdouts, 'holdout', doc);
        await context.changes.record(
          { type: 'holdout', id: doc.id, stored },
          ConfigChangeType.CONFIG_CHANGE_TYPE_CREATED,
        );
        return { holdout: holdoutMessage(stored) };
      }),

    getHoldout: (request) => {
      const violations: FieldViolation[] = [];
      required('id', request.id, violations);
      rejectIfAny('request', violations);
      const stored = context.configuration.current().holdouts.get(request.id);
      if (!stored) throw notFound('holdout', request.id);
      return Promise.resolve({ holdout: holdoutMessage(stored) });
    },

    listHoldouts: (request) => {
      const violations: FieldViolation[] = [];
      const statuses = statusFilter(request.statuses, HoldoutStatus, 'HOLDOUT_STATUS_', violations);
      const filters = JSON.stringify(['holdouts', statuses, request.layerId, request.surface]);
      const pageOf = pageRequest(request.pageSize, request.pageToken, filters, violations);
      rejectIfAny('request', violations);
      const matching = [...context.configuration.current().holdouts.values()]
        .filter(
          ({ doc }) =>
            (statuses.length === 0 || statuses.includes(doc.status)) &&
            (request.layerId === '' || doc.layerIds.includes(request.layerId)) &&
            (request.surface === '' || doc.surfaces.includes(request.surface)),
        )
        .map((stored) => ({ id: stored.doc.id, stored }));
      const result = page(matching, pageOf, filters, {
        render: (item) => holdoutMessage(item.stored),
        encode: (message) => Holdout.encode(message),
        maxBytes: context.maxPageBytes,
      });
      return Promise.resolve({
        holdouts: result.items,
        nextPageToken: result.nextPageToken,
      });
    },

    updateHoldout: (request) =>
      context.writes.once('UpdateHoldout', request, UpdateHoldoutResponse, async () => {
        const violations: FieldViolation[] = [];
        const holdout = request.holdout;
        required('holdout.id', holdout?.id ?? '', violations);
        required('holdout.etag', holdout?.etag ?? '', violations);
        const paths = maskPaths(
          request.updateMask,
          Object.keys(MUTABLE_PATHS),
          [...Object.keys(MUTABLE_PATHS), ...OUTPUT_OR_IMMUTABLE],
          violations,
        );
        // Every problem of the request at once (the requested values' own, even for a holdout
        // that does not exist); then whether it is stale (ABORTED).
        const before = await storedToChange(
          'holdout',
          holdout?.id ?? '',
          (id) => context.store.holdouts.get(id),
          violations,
          () => (holdout === undefined ? [] : requestedValueProblems(context, holdout, paths)),
        );
        if (!holdout) throw new Error('unreachable: holdout checked above');
        const requested = requestedFields(holdout, before.doc);
        const changed: Record<string, unknown> = { ...before.doc };
        for (const path of paths) {
          const field = MUTABLE_PATHS[path as keyof typeof MUTABLE_PATHS];
          changed[field] = requested[field];
        }
        // A holdout stored before layers listed twice were refused (DUPLICATE_LAYER) loses the
        // repeat on its next update that leaves layer_ids alone, instead of failing it.
        if (!paths.has('layer_ids')) changed.layerIds = [...new Set(before.doc.layerIds)];
        const now = Date.now();
        let after = { ...(changed as unknown as HoldoutDocument), updateTime: now };
        // A seed stored before its size limit may stay: it cannot change once the holdout ran.
        violations.push(
          ...validate(context, after).filter(
            (v) => !seedKeptAsStored(v, 'holdout.seed', before.doc, after),
          ),
        );
        rejectIfAny('holdout', violations);
        checkEtag('holdout', holdout.id, holdout.etag, before);

        const forbidden: PreconditionViolation[] = [];
        const subject = `holdouts/${holdout.id}`;
        if (after.status !== before.doc.status) {
          if (NEXT_STATUS[before.doc.status] !== after.status) {
            forbidden.push({
              type: 'STATUS_TRANSITION',
              subject,
              description: `${statusName(before.doc.status)} → ${statusName(after.status)} is not allowed (DRAFT → RUNNING → STOPPED)`,
            });
          } else if (after.status === HoldoutStatus.RUNNING) {
            after = { ...after, startTime: now };
          } else {
            after = { ...after, stopTime: now };
          }
        }
        if (before.doc.status !== HoldoutStatus.DRAFT) {
          for (const path of FROZEN_ONCE_RUNNING) {
            const field = MUTABLE_PATHS[path];
            if (before.doc[field] !== after[field]) {
              forbidden.push({
                type: 'IMMUTABLE_ONCE_RUNNING',
                subject: `${subject}/${path}`,
                description: `${path} cannot change once the holdout has run: units would move in or out`,
              });
            }
          }
        }
        if (forbidden.length > 0) {
          throw new FailedPreconditionError(
            `holdout "${holdout.id}": ${forbidden.map((v) => v.description).join('; ')}`,
            {
              reason: 'CHANGE_NOT_ALLOWED',
              violations: forbidden,
            },
          );
        }
        if (changesNothing(before.doc, after)) return { holdout: holdoutMessage(before) };
        const stored = await context.store.holdouts.replace(after, before.version);
        await context.changes.record(
          { type: 'holdout', id: holdout.id, stored },
          ConfigChangeType.CONFIG_CHANGE_TYPE_UPDATED,
        );
        return { holdout: holdoutMessage(stored) };
      }),

    deleteHoldout: (request) =>
      context.writes.once('DeleteHoldout', request, DeleteHoldoutResponse, async () => {
        const violations: FieldViolation[] = [];
        required('id', request.id, violations);
        required('etag', request.etag, violations);
        rejectIfAny('request', violations);
        const before = await context.store.holdouts.get(request.id);
        if (!before) throw notFound('holdout', request.id);
        checkEtag('holdout', request.id, request.etag, before);
        if (before.doc.status === HoldoutStatus.RUNNING) {
          throw new FailedPreconditionError(`holdout "${request.id}" is RUNNING: stop it first`, {
            reason: 'HOLDOUT_RUNNING',
            violations: [
              { type: 'STATUS', subject: `holdouts/${request.id}`, description: 'is RUNNING' },
            ],
          });
        }
        if (before.doc.startTime !== null) await context.store.retire('holdout', request.id);
        await context.store.recordDeletion('holdout', request.id);
        if (!(await context.store.holdouts.delete(request.id, versionOf(request.etag)))) {
          throw notFound('holdout', request.id);
        }
        await context.changes.record(
          { type: 'holdout', id: request.id, stored: undefined },
          ConfigChangeType.CONFIG_CHANGE_TYPE_DELETED,
        );
        return {};
      }),
  };
}
