/**
 * The FeatureStoreService handlers: plain `async (request, ctx) => response` functions over the
 * registry and the served views; the kit's `implement()` does the gRPC plumbing.
 */
import type { ExpiryRetiming } from './expiry-retiming';
import type { Handlers } from '../../platform/src/grpc/handlers';
import type { EventBus } from '../../platform/src/events/bus';
import type { Logger } from '../../platform/src/logging';
import {
  ApplyEntityRequest,
  ApplyEntityResponse,
  ApplyFeatureViewRequest,
  ApplyFeatureViewResponse,
  DeleteEntityRequest,
  DeleteEntityResponse,
  DeleteFeatureViewRequest,
  DeleteFeatureViewResponse,
  WriteFeaturesRequest,
  WriteFeaturesResponse,
} from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import { InvalidArgumentError } from '../../platform/src/errors';
import type { AppliedView, FeatureRegistry } from './feature-registry';
import type { OnlineViews } from './online-views';
import type { FeatureStoreServiceDefinition } from './online-response';
import type { AggregationCheckpoints } from './store/aggregation-checkpoints';
import type { FeatureRowRepository } from './store/feature-rows';
import { MAX_REQUEST_ID_LENGTH, type RequestResults } from './store/request-results';

/**
 * On a longer TTL, the records the old one drops within this long are re-timed first (see
 * `ExpiryRetiming`), found in memory (one pass over the view's records, on the event loop). The
 * run over every record, in id order, follows; a record beyond the horizon that it reaches only
 * after its old expiry is still lost to storage (a view of millions with a TTL of minutes).
 */
const SOONEST_HORIZON_MS = 10 * 60_000;
/** At most this many of them: the rest wait for that run. */
const SOONEST_LIMIT = 100_000;

export interface HandlerParts {
  readonly registry: FeatureRegistry;
  readonly views: OnlineViews;
  readonly requestResults: RequestResults;
  readonly rows: FeatureRowRepository;
  readonly checkpoints: AggregationCheckpoints;
  readonly retiming: ExpiryRetiming;
  readonly bus: EventBus;
  readonly logger: Logger;
  /** The most bytes a list response may take (the kit's `maxPageBytes`). */
  readonly maxPageBytes: number;
}

/** Also before what does not reach `once()` (validate_only), which checks it as well. */
function checkRequestId(requestId: string): void {
  if (requestId.length > MAX_REQUEST_ID_LENGTH) {
    throw new InvalidArgumentError('request_id is too long', [
      {
        field: 'request_id',
        description: `must be at most ${MAX_REQUEST_ID_LENGTH} characters`,
        reason: 'TOO_LONG',
      },
    ]);
  }
}

/**
 * The admin writes pass `once` a `recover` (see `RequestResults.once`): the answer to a retry
 * refused by its first call's own change, made without being answered (a storage call that
 * failed after taking effect), is built from what that call stored.
 */
export function featureStoreHandlers(parts: HandlerParts): Handlers<FeatureStoreServiceDefinition> {
  const { registry, views, requestResults } = parts;
  const warn = (what: string, view: string) => (error: unknown) => {
    parts.logger.warn({ err: error, view }, what);
  };
  /**
   * What deleting the view `name` does once the registry has dropped it: it stops being served,
   * and its re-timing and (`stream`) aggregation state go.
   */
  const afterViewDeletion = async (name: string, stream: boolean): Promise<void> => {
    // Its own removal only: not behind loads of other views, which take minutes.
    void views.reconcile(registry.allViews());
    await views.untilReconciled(name);
    await parts.retiming
      .forget(name)
      .catch(warn('the re-timing of its records to a TTL not forgotten', name));
    if (stream) {
      // Before the answer, so that the view applied again right away replays the stream into an
      // empty state. (Reconciling has deleted this replica's durable consumer; other replicas
      // delete theirs when they see the view go.)
      await parts.checkpoints
        .deleteView(name)
        .catch(warn('aggregation state not all deleted', name));
    }
  };
  return {
    applyEntity: async (request) => {
      checkRequestId(request.requestId);
      return requestResults.once(
        'ApplyEntity',
        request,
        ApplyEntityResponse,
        () => registry.applyEntity(request.entity),
        ApplyEntityRequest,
        (stamp) => registry.entityWrittenBy(request.entity?.name ?? '', stamp),
      );
    },
    getEntity: (request) => Promise.resolve({ entity: registry.getEntity(request.name) }),
    listEntities: (request) =>
      Promise.resolve(
        registry.listEntities(request.pageSize, request.pageToken, parts.maxPageBytes),
      ),
    deleteEntity: async (request) => {
      checkRequestId(request.requestId);
      return requestResults.once(
        'DeleteEntity',
        request,
        DeleteEntityResponse,
        async () => {
          await registry.deleteEntity(request.name, request.etag);
          return {};
        },
        DeleteEntityRequest,
        async (stamp) =>
          (await registry.recoverDeletion('entity', request.name, stamp)) === undefined
            ? undefined
            : {},
      );
    },
    applyFeatureView: async (request) => {
      checkRequestId(request.requestId);
      if (request.validateOnly) return registry.applyFeatureView(request.featureView, true);
      const name = request.featureView?.name ?? '';
      const { previousTtlMs, ...response } = await requestResults.once<
        AppliedView,
        ApplyFeatureViewRequest
      >(
        'ApplyFeatureView',
        request,
        ApplyFeatureViewResponse,
        () => registry.applyFeatureView(request.featureView, false),
        ApplyFeatureViewRequest,
        (stamp) => registry.viewWrittenBy(name, stamp),
      );
      void views.reconcile(registry.allViews());
      // A compatible change to a push view is served at once (see `OnlineViews.reconcile`); else
      // the answer waits for this view's load, not for loads of other views, which take minutes.
      if (!views.servesAsRegistered(name)) await views.untilReconciled(name);
      const registered = registry.view(name);
      const after = registered?.definition;
      // The TTL before the change comes with the change, as stored: a retry whose first call
      // stored it and failed (a timeout) finishes it too, though this replica may have loaded
      // the new TTL already.
      if (
        previousTtlMs !== undefined &&
        after !== undefined &&
        after.source?.kind !== 'stream' &&
        after.ttlMs !== previousTtlMs
      ) {
        // Stored records expire by the TTL they were written under; in the background, since a
        // view may hold millions (reads apply the new TTL at once). A longer TTL reaches first
        // the records the old one drops soonest.
        const longer = after.ttlMs === 0 || (previousTtlMs > 0 && after.ttlMs > previousTtlMs);
        await parts.retiming.start(
          name,
          after.ttlMs,
          registered?.createTime.getTime() ?? 0,
          registered?.version ?? 0,
          longer ? views.expiringSoon(name, previousTtlMs, SOONEST_HORIZON_MS, SOONEST_LIMIT) : [],
        );
      }
      return response;
    },
    getFeatureView: (request) =>
      Promise.resolve({ featureView: registry.getFeatureView(request.name) }),
    listFeatureViews: (request) =>
      Promise.resolve(
        registry.listFeatureViews(
          request.pageSize,
          request.pageToken,
          request.entity,
          parts.maxPageBytes,
        ),
      ),
    deleteFeatureView: async (request) => {
      checkRequestId(request.requestId);
      return requestResults.once(
        'DeleteFeatureView',
        request,
        DeleteFeatureViewResponse,
        async () => {
          const deleted = await registry.deleteFeatureView(request.name, request.etag);
          // Undefined: this request deleted the view before, and it was created again since.
          if (deleted === undefined) return {};
          await afterViewDeletion(request.name, deleted.definition.source?.kind === 'stream');
          // Its stored values go in the background, a deletion the registry started (see
          // `FeatureRegistry.deleteValues`).
          return {};
        },
        DeleteFeatureViewRequest,
        async (stamp) => {
          const deleted = await registry.recoverDeletion('feature_view', request.name, stamp);
          if (deleted === undefined) return undefined;
          // The first call failed before the rest of its deletion, which is done now. Whether
          // the view was stream-sourced is gone with it: aggregation state is looked for anyway
          // (a push view has none). One applied again since is the new view's own.
          if (deleted === 'gone') await afterViewDeletion(request.name, true);
          return {};
        },
      );
    },
    getOnlineFeatures: (request) => Promise.resolve(views.readReply(request, Date.now())),
    writeFeatures: async (request) => {
      checkRequestId(request.requestId);
      return requestResults.once(
        'WriteFeatures',
        request,
        WriteFeaturesResponse,
        () => views.write(request, Date.now()),
        WriteFeaturesRequest,
      );
    },
    getAggregationStatus: async (request) => ({
      status: await views.aggregationStatus(
        request.featureView,
        parts.bus.kind === 'in-process' || parts.bus.isConnected(),
      ),
    }),
  };
}
