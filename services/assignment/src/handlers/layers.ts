/** Layers: create, read (with the ranges their experiments own), list, update, delete. */
import {
  CreateLayerResponse,
  DeleteLayerResponse,
  UpdateLayerResponse,
  type AssignmentServiceService,
} from '../../../../gen/ts/tandem/assignment/v1/assignment_service';
import { Layer } from '../../../../gen/ts/tandem/assignment/v1/layer';
import { ConfigChangeType } from '../../../../gen/ts/tandem/events/v1/config_change_event';
import {
  FailedPreconditionError,
  type FieldViolation,
  type PreconditionViolation,
} from '../../../platform/src/errors';
import type { Handlers } from '../../../platform/src/grpc/handlers';
import { validateLayer } from '../domain';
import type { AssignmentContext } from '../assignment-context';
import { changesNothing, type LayerDocument } from '../store/documents';
import { layerSizeViolations } from './limits';
import { layerMessage } from './messages';
import {
  checkEtag,
  storedToChange,
  insertNew,
  maskPaths,
  notFound,
  page,
  pageRequest,
  rejectIfAny,
  required,
  under,
  versionOf,
} from './requests';

type LayerHandlers = Pick<
  Handlers<typeof AssignmentServiceService>,
  'createLayer' | 'getLayer' | 'listLayers' | 'updateLayer' | 'deleteLayer'
>;

const MUTABLE = ['description', 'owner', 'tags'] as const;
const KNOWN = [...MUTABLE, 'id', 'allocations', 'etag', 'create_time', 'update_time'];

export function layerHandlers(context: AssignmentContext): LayerHandlers {
  return {
    createLayer: (request) =>
      context.writes.once('CreateLayer', request, CreateLayerResponse, async () => {
        const violations: FieldViolation[] = [];
        const layer = request.layer;
        if (!layer) {
          required('layer', '', violations);
          rejectIfAny('layer', violations);
          throw new Error('unreachable: layer checked above');
        }
        violations.push(...under('layer', validateLayer(layer)));
        const now = Date.now();
        const doc: LayerDocument = {
          id: layer.id,
          description: layer.description,
          owner: layer.owner,
          tags: layer.tags,
          createTime: now,
          updateTime: now,
        };
        violations.push(...under('layer', layerSizeViolations(doc)));
        rejectIfAny('layer', violations);
        const stored = await insertNew(context.store, context.store.layers, 'layer', doc);
        await context.changes.record(
          { type: 'layer', id: layer.id, stored },
          ConfigChangeType.CONFIG_CHANGE_TYPE_CREATED,
        );
        return { layer: layerMessage(stored, context.configuration.current()) };
      }),

    getLayer: (request) => {
      const violations: FieldViolation[] = [];
      required('id', request.id, violations);
      rejectIfAny('request', violations);
      const view = context.configuration.current();
      const stored = view.layers.get(request.id);
      if (!stored) throw notFound('layer', request.id);
      return Promise.resolve({ layer: layerMessage(stored, view) });
    },

    listLayers: (request) => {
      const violations: FieldViolation[] = [];
      const pageOf = pageRequest(request.pageSize, request.pageToken, '', violations);
      rejectIfAny('request', violations);
      const view = context.configuration.current();
      const result = page(
        [...view.layers.values()].map((stored) => ({ id: stored.doc.id, stored })),
        pageOf,
        '',
        {
          render: (item) => layerMessage(item.stored, view),
          encode: (message) => Layer.encode(message),
          maxBytes: context.maxPageBytes,
        },
      );
      return Promise.resolve({
        layers: result.items,
        nextPageToken: result.nextPageToken,
      });
    },

    updateLayer: (request) =>
      context.writes.once('UpdateLayer', request, UpdateLayerResponse, async () => {
        const violations: FieldViolation[] = [];
        const layer = request.layer;
        required('layer.id', layer?.id ?? '', violations);
        required('layer.etag', layer?.etag ?? '', violations);
        const paths = maskPaths(request.updateMask, MUTABLE, KNOWN, violations);
        /** `doc` with what the mask names of the request's fields. */
        const withRequested = (doc: LayerDocument): LayerDocument =>
          layer === undefined
            ? doc
            : {
                ...doc,
                description: paths.has('description') ? layer.description : doc.description,
                owner: paths.has('owner') ? layer.owner : doc.owner,
                tags: paths.has('tags') ? layer.tags : doc.tags,
                updateTime: Date.now(),
              };
        // Every problem of the request at once (the requested values' own, even for a layer
        // that does not exist); then whether it is stale (ABORTED).
        const before = await storedToChange(
          'layer',
          layer?.id ?? '',
          (id) => context.store.layers.get(id),
          violations,
          () =>
            under(
              'layer',
              layerSizeViolations(
                withRequested({
                  id: layer?.id ?? '',
                  description: '',
                  owner: '',
                  tags: [],
                  createTime: 0,
                  updateTime: 0,
                }),
              ),
            ),
        );
        if (!layer) throw new Error('unreachable: layer checked above');
        const after = withRequested(before.doc);
        rejectIfAny('layer', [...violations, ...under('layer', layerSizeViolations(after))]);
        checkEtag('layer', layer.id, layer.etag, before);
        if (changesNothing(before.doc, after)) {
          return { layer: layerMessage(before, context.configuration.current()) };
        }
        const stored = await context.store.layers.replace(after, before.version);
        await context.changes.record(
          { type: 'layer', id: layer.id, stored },
          ConfigChangeType.CONFIG_CHANGE_TYPE_UPDATED,
        );
        return { layer: layerMessage(stored, context.configuration.current()) };
      }),

    deleteLayer: (request) =>
      context.writes.once('DeleteLayer', request, DeleteLayerResponse, async () => {
        const violations: FieldViolation[] = [];
        required('id', request.id, violations);
        required('etag', request.etag, violations);
        rejectIfAny('request', violations);
        const before = await context.store.layers.get(request.id);
        if (!before) throw notFound('layer', request.id);
        checkEtag('layer', request.id, request.etag, before);
        const view = context.configuration.current();
        const references: PreconditionViolation[] = [
          ...[...view.experiments.values()]
            .filter((s) => s.doc.layerId === request.id)
            .map((s) => ({
              type: 'LAYER_IN_USE',
              subject: `experiments/${s.doc.id}`,
              description: `experiment "${s.doc.id}" is in layer "${request.id}"`,
            })),
          ...[...view.holdouts.values()]
            .filter((s) => s.doc.layerIds.includes(request.id))
            .map((s) => ({
              type: 'LAYER_IN_USE',
              subject: `holdouts/${s.doc.id}`,
              description: `holdout "${s.doc.id}" covers layer "${request.id}"`,
            })),
        ];
        if (references.length > 0) {
          throw new FailedPreconditionError(`layer "${request.id}" is still referenced`, {
            reason: 'LAYER_IN_USE',
            violations: references,
          });
        }
        await context.store.recordDeletion('layer', request.id);
        if (!(await context.store.layers.delete(request.id, versionOf(request.etag)))) {
          throw notFound('layer', request.id);
        }
        await context.changes.record(
          { type: 'layer', id: request.id, stored: undefined },
          ConfigChangeType.CONFIG_CHANGE_TYPE_DELETED,
        );
        return {};
      }),
  };
}
