/**
 * The registry of entities and feature views: held in memory on every replica (reads never touch
 * storage), changed through the Apply/Delete RPCs, and reloaded from storage periodically so a
 * change made on another replica is served here within the reload interval. A change also
 * publishes a ConfigChangeEvent, for consumers outside FeatureStore.
 */
import { randomUUID } from 'node:crypto';
import {
  AbortedError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
} from '../../platform/src/errors';
import { FreshRuns } from '../../platform/src/fresh-runs';
import type { EventBus } from '../../platform/src/events/bus';
import { fillPage } from '../../platform/src/grpc/pages';
import { currentRequestStamp } from '../../platform/src/storage/request-results';
import { SerialWrites, type WriteLease } from '../../platform/src/storage/write-lease';
import { stampedWith } from '../../platform/src/storage/write-stamps';
import type { Logger } from '../../platform/src/logging';
import type { Versioned } from '../../platform/src/storage/collection';
import {
  ConfigChangeEvent,
  ConfigChangeType,
} from '../../../gen/ts/tandem/events/v1/config_change_event';
import { Entity } from '../../../gen/ts/tandem/featurestore/v1/entity';
import { FeatureView } from '../../../gen/ts/tandem/featurestore/v1/feature_view';
import type { ApplyFeatureViewResponse } from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import {
  dateOf,
  etagOf,
  type StoredFacts,
  entityDefinitionOf,
  entityMessageOf,
  featureViewDefinitionOf,
  featureViewMessageOf,
  invalidDurations,
} from './contract-mapping';
import {
  checkViewEntities,
  diffEntity,
  diffFeatureView,
  registryLimits,
  sameStreamSource,
  validateEntity,
  validateFeatureView,
  type EntityDefinition,
  type FeatureViewDefinition,
} from './domain/registry';
import type { FieldViolation } from './domain/feature-values';
import type {
  EntityDocument,
  FeatureViewDocument,
  RegistryKind,
  RegistryRepository,
} from './store/registry-repository';

/** A definition as held in memory, with its stored facts. */
export interface Registered<D> {
  readonly definition: D;
  readonly version: number;
  readonly createTime: Date;
  readonly updateTime: Date;
}

export const CONFIG_SUBJECT = 'tandem.events.v1.config.featurestore';
export { CONFIG_STREAM } from '../../platform/src/events/streams';

const DEFAULT_PAGE_SIZE = 50;
const MAX_PAGE_SIZE = 1_000;

function registered<D>(
  stored: Versioned<{ definition: D; createTime: Date; updateTime: Date }>,
): Registered<D> {
  return {
    definition: stored.doc.definition,
    version: stored.version,
    createTime: dateOf(stored.doc.createTime),
    updateTime: dateOf(stored.doc.updateTime),
  };
}

/**
 * Whether `stored` is the change of the request running (see `currentRequestStamp`): what the
 * retry of an apply finds unchanged when its first call stored it and failed before answering,
 * which changed it all the same.
 */
function writtenByThisRequest(stored: Versioned<object>): boolean {
  const stamp = currentRequestStamp();
  return stamp !== undefined && stampedWith(stored, stamp) !== undefined;
}

/**
 * The answer of an ApplyFeatureView that changed the view, and what the handler needs to finish
 * the change: `previousTtlMs`, the TTL before it when it changed the TTL (see
 * `FeatureViewDocument.ttlChangedFrom`). Not part of the response, and not kept with it: a retry
 * answered the kept response finds the change finished by its first call.
 */
export type AppliedView = ApplyFeatureViewResponse & { readonly previousTtlMs?: number };

/** What an ApplyFeatureView that stored `stored` answers, as its change. */
function appliedView(stored: Versioned<FeatureViewDocument>): AppliedView {
  const { definition, ttlChangedFrom } = stored.doc;
  return {
    featureView: featureViewMessageOf(definition, registered(stored)),
    changed: true,
    ...(ttlChangedFrom === undefined ? {} : { previousTtlMs: ttlChangedFrom }),
  };
}

/** The stored view `doc` changed to `definition` at `now`, saying whether the TTL changed. */
function viewChangedTo(
  doc: FeatureViewDocument,
  definition: FeatureViewDefinition,
  now: Date,
): FeatureViewDocument {
  const ttlChanged = definition.ttlMs !== doc.definition.ttlMs;
  // Undefined is absent when stored, in MongoDB (`ignoreUndefined`) as in the embedded store.
  return {
    ...doc,
    definition,
    updateTime: now,
    ttlChangedFrom: ttlChanged ? doc.definition.ttlMs : undefined,
  };
}

/** How the deletion a retry recovers left its resource (see `FeatureRegistry.recoverDeletion`). */
export type RecoveredDeletion = 'gone' | 'replaced';

function checkEtag(
  etag: string,
  stored: Versioned<{ readonly createTime: Date }> | undefined,
  what: string,
): void {
  if (etag === '') return;
  if (
    stored === undefined ||
    etagOf({ version: stored.version, createTime: dateOf(stored.doc.createTime) }) !== etag
  ) {
    throw new AbortedError(`${what} has changed since it was read (etag ${etag} is stale)`, {
      reason: 'ETAG_MISMATCH',
    });
  }
}

function requireName(name: string): void {
  if (name === '') {
    throw new InvalidArgumentError('name is required', [
      { field: 'name', description: 'must not be empty', reason: 'REQUIRED' },
    ]);
  }
}

/** How a list renders its resources, and the most bytes its response may take. */
export interface PageRendering<M> {
  readonly encode: (message: M) => { finish(): Uint8Array };
  /** See the kit's `maxPageBytes`. */
  readonly maxBytes: number;
}

/**
 * A page token: the list it belongs to (`entities`, or `feature_views` with its entity filter)
 * and the last name of the page, as base64url JSON. Only a token of the same list, written as this
 * server writes it, is taken back (and, during a rolling upgrade, the `after:<name>` form earlier
 * replicas wrote; they refuse this form, so a client paging through one may start again once).
 */
function pageTokenOf(list: readonly [string, string], after: string): string {
  return Buffer.from(JSON.stringify([...list, after])).toString('base64url');
}

function pageTokenViolation(
  token: string,
  list: readonly [string, string],
): { violation: FieldViolation } | { after: string } {
  const refused = (description: string, reason: string) => ({
    violation: { field: 'page_token', description, reason },
  });
  const bytes = Buffer.from(token, 'base64url');
  const text = bytes.toString('base64url') === token ? bytes.toString('utf8') : '';
  // The form replicas before this one wrote (`after:<name>`, for either list): still taken, so
  // a client paging through a rolling upgrade does not have to start again.
  const legacy = text.startsWith('after:') ? text.slice('after:'.length) : undefined;
  if (legacy !== undefined && registryLimits.resourceName.test(legacy)) return { after: legacy };
  let parsed: unknown;
  try {
    parsed = text === '' ? null : JSON.parse(text);
  } catch {
    parsed = null;
  }
  if (
    !Array.isArray(parsed) ||
    parsed.length !== 3 ||
    parsed[0] !== list[0] ||
    typeof parsed[1] !== 'string' ||
    typeof parsed[2] !== 'string' ||
    !registryLimits.resourceName.test(parsed[2])
  ) {
    return refused('is not a token this method returned', 'INVALID_PAGE_TOKEN');
  }
  if (parsed[1] !== list[1]) {
    return refused('was issued for another entity filter', 'PAGE_TOKEN_FILTER_MISMATCH');
  }
  return { after: parsed[2] };
}

/**
 * A page of names in order, after the page token's name, rendered by `lookup`. The page ends
 * early once its messages and the token would pass `maxBytes`; it always holds one at least.
 * `list` names the list and its filter (see {@link pageTokenOf}).
 */
export function pageOf<M>(
  list: readonly [string, string],
  sortedNames: readonly string[],
  pageSize: number,
  pageToken: string,
  lookup: (name: string) => M,
  { encode, maxBytes }: PageRendering<M>,
): { items: M[]; nextPageToken: string } {
  const violations: FieldViolation[] = [];
  if (pageSize < 0) {
    violations.push({
      field: 'page_size',
      description: 'must not be negative',
      reason: 'OUT_OF_RANGE',
    });
  }
  let after = '';
  if (pageToken !== '') {
    const read = pageTokenViolation(pageToken, list);
    if ('violation' in read) violations.push(read.violation);
    else after = read.after;
  }
  if (violations.length > 0) throw new InvalidArgumentError('invalid page request', violations);
  const filled = fillPage(
    sortedNames.filter((name) => name > after),
    {
      size: Math.min(pageSize === 0 ? DEFAULT_PAGE_SIZE : pageSize, MAX_PAGE_SIZE),
      render: lookup,
      encodedBytes: (message) => encode(message).finish().length,
      tokenAfter: (name: string) => pageTokenOf(list, name),
      maxBytes,
    },
  );
  return {
    items: filled.messages,
    nextPageToken: filled.more && filled.last !== undefined ? pageTokenOf(list, filled.last) : '',
  };
}

/** What {@link keptAsStored} compares of an entity or a feature view. */
interface StoredRules {
  readonly owner: string;
  readonly ttlMs?: number;
  readonly source?: FeatureViewDefinition['source'];
}

/**
 * Whether violation `v` of `proposed` is of a rule made after `stored` (its earlier definition)
 * was stored, on a value left as it was: an owner over 256 characters, a TTL over 100 years or
 * under a millisecond (stored as none), a
 * stream source reading a field OutcomeEvent lacks, naming several subject tokens, aggregating a
 * string field as a number or declaring a negative bucket (a stream source cannot change at all).
 * So that applying the same definition again, as declarative clients do, is not refused.
 */
function keptAsStored(
  v: FieldViolation,
  proposed: StoredRules,
  stored: StoredRules | undefined,
): boolean {
  if (stored === undefined) return false;
  if (v.field === 'owner' && v.reason === 'TOO_LONG') return proposed.owner === stored.owner;
  if (v.field === 'ttl' && v.reason === 'OUT_OF_RANGE') {
    return proposed.ttlMs !== undefined && proposed.ttlMs === stored.ttlMs;
  }
  if (
    v.field.startsWith('stream_source.') &&
    (v.reason === 'INVALID_SUBJECT' ||
      v.reason === 'INVALID_PATH' ||
      (v.reason === 'TOO_LONG' && v.field.endsWith('.value_field')) ||
      v.reason === 'VALUE_FIELD_TYPE' ||
      (v.reason === 'OUT_OF_RANGE' && v.field.endsWith('.bucket')))
  ) {
    // The same source as the diff judges it (event names as a set, a default bucket given).
    const [a, b] = [proposed.source, stored.source];
    return a?.kind === 'stream' && b?.kind === 'stream'
      ? sameStreamSource(a, b)
      : JSON.stringify(a) === JSON.stringify(b);
  }
  return false;
}

/**
 * How long a registry write waits for another replica's, and how long a lease nobody renews (its
 * holder died) lasts.
 */
const WRITE_LEASE_WAIT_MS = 5_000;
const WRITE_LEASE_TTL_MS = 30_000;
/** The registry's write lease (see `SerialWrites`). */
export const REGISTRY_WRITE_LEASE = 'registry-writes';

export class FeatureRegistry {
  private entities = new Map<string, Registered<EntityDefinition>>();
  private views = new Map<string, Registered<FeatureViewDefinition>>();
  /** Changes this replica made to the maps, and the reloads started and applied (see `reload`). */
  private localChanges = 0;
  private reloadsStarted = 0;
  private reloadApplied = 0;
  private readonly sharedReloads = new FreshRuns(() => this.reload());
  private readonly listeners: ((
    views: ReadonlyMap<string, Registered<FeatureViewDefinition>>,
  ) => void)[] = [];

  /**
   * Entity and view writes, one at a time: each validates against the registry in memory (a view
   * names existing entities; an entity in use is not deleted) and then stores. With a lease, also
   * across replicas, with the registry reloaded under it.
   */
  private readonly writes: SerialWrites;

  constructor(
    private readonly repository: RegistryRepository,
    private readonly bus: EventBus,
    private readonly logger: Logger,
    private readonly replicaId: string,
    lease?: WriteLease,
    /**
     * Deletes the stored values of the view `view` registered at `registration` (its creation
     * time, ms), or with no registration every value of the name (see
     * `FeatureRowRepository.deleteView`). Started in the background when a view is deleted,
     * before the write lease is released; awaited, for the name, before a view is created under
     * it, since values of an earlier view of that name may remain (that background deletion, a
     * write in flight during it) and the new view must start empty.
     */
    private readonly deleteValues: (view: string, registration?: number) => Promise<unknown> = () =>
      Promise.resolve(),
  ) {
    this.writes = new SerialWrites(
      lease === undefined
        ? undefined
        : {
            lease: (waitMs = WRITE_LEASE_WAIT_MS) =>
              lease.acquire(replicaId, { ttlMs: WRITE_LEASE_TTL_MS, waitMs }),
            refresh: () => this.reload(),
          },
    );
  }

  /** Called with every view after each change (local or reloaded). */
  onViewsChanged(
    listener: (views: ReadonlyMap<string, Registered<FeatureViewDefinition>>) => void,
  ): void {
    this.listeners.push(listener);
  }

  /**
   * Replaces the in-memory registry with storage's, unless the snapshot is older than what the
   * registry holds: a change this replica made while it was being read (the snapshot may predate
   * it), or a later reload already applied. Skipping it leaves the change to the next reload;
   * applying it would serve the earlier definition until then.
   */
  async reload(): Promise<void> {
    const sequence = ++this.reloadsStarted;
    const changesBefore = this.localChanges;
    const stored = await this.repository.loadAll();
    if (this.localChanges !== changesBefore || sequence < this.reloadApplied) return;
    this.reloadApplied = sequence;
    const entities = new Map(stored.entities.map((e) => [e.doc.id, registered(e)]));
    const views = new Map(stored.featureViews.map((v) => [v.doc.id, registered(v)]));
    const changed = !sameVersions(this.entities, entities) || !sameVersions(this.views, views);
    this.entities = entities;
    this.views = views;
    if (changed) this.notify();
  }

  /**
   * {@link reload}, shared by concurrent callers (writes that found a view changed in storage):
   * a reload begun after the call (see {@link FreshRuns}).
   */
  reloadShared(): Promise<void> {
    return this.sharedReloads.afterNow();
  }

  entity(name: string): Registered<EntityDefinition> | undefined {
    return this.entities.get(name);
  }

  view(name: string): Registered<FeatureViewDefinition> | undefined {
    return this.views.get(name);
  }

  /**
   * The creation time (ms) of the view `name` as storage holds it now, which may be ahead of this
   * replica's copy by up to a reload; undefined when storage has no such view.
   */
  storedRegistration(name: string): Promise<number | undefined> {
    return this.repository.viewRegistration(name);
  }

  /**
   * Whether storage holds the view `name` as another registration or version than `served` (one
   * this replica has not reloaded yet: deleted and applied again, or changed).
   */
  async storedDiffers(name: string, served: Registered<unknown>): Promise<boolean> {
    const stored = await this.repository.featureViews.get(name);
    return (
      stored !== undefined &&
      (stored.version !== served.version ||
        dateOf(stored.doc.createTime).getTime() !== served.createTime.getTime())
    );
  }

  allViews(): ReadonlyMap<string, Registered<FeatureViewDefinition>> {
    return this.views;
  }

  getEntity(name: string): Entity {
    requireName(name);
    const entity = this.entities.get(name);
    if (entity === undefined) throw entityNotFound(name);
    return entityMessageOf(entity.definition, entity);
  }

  /** A page of entities, within `maxBytes` (see the kit's `maxPageBytes`). */
  listEntities(
    pageSize: number,
    pageToken: string,
    maxBytes: number,
  ): { entities: Entity[]; nextPageToken: string } {
    const names = [...this.entities.keys()].sort();
    const page = pageOf(
      ['entities', ''],
      names,
      pageSize,
      pageToken,
      (name) => this.getEntity(name),
      {
        encode: (entity: Entity) => Entity.encode(entity),
        maxBytes,
      },
    );
    return { entities: page.items, nextPageToken: page.nextPageToken };
  }

  getFeatureView(name: string): FeatureView {
    requireName(name);
    const view = this.views.get(name);
    if (view === undefined) throw featureViewNotFound(name);
    return featureViewMessageOf(view.definition, view);
  }

  /** A page of feature views (of `entity`, unless empty), within `maxBytes`. */
  listFeatureViews(
    pageSize: number,
    pageToken: string,
    entity: string,
    maxBytes: number,
  ): { featureViews: FeatureView[]; nextPageToken: string } {
    const names = [...this.views.values()]
      .filter((v) => entity === '' || v.definition.entities.includes(entity))
      .map((v) => v.definition.name)
      .sort();
    const list = ['feature_views', entity] as const;
    const page = pageOf(list, names, pageSize, pageToken, (name) => this.getFeatureView(name), {
      encode: (view: FeatureView) => FeatureView.encode(view),
      maxBytes,
    });
    return { featureViews: page.items, nextPageToken: page.nextPageToken };
  }

  applyEntity(message: Entity | undefined): Promise<{ entity: Entity; changed: boolean }> {
    return this.writes.exclusively(() => this.applyEntityNow(message));
  }

  private async applyEntityNow(
    message: Entity | undefined,
  ): Promise<{ entity: Entity; changed: boolean }> {
    if (message === undefined) {
      throw new InvalidArgumentError('entity is required', [
        { field: 'entity', description: 'must be set', reason: 'REQUIRED' },
      ]);
    }
    const proposed = entityDefinitionOf(message);
    const stored = await this.repository.entities.get(proposed.name);
    const violations = validateEntity(proposed)
      .filter((v) => !keptAsStored(v, proposed, stored?.doc.definition))
      .map((v) => ({ ...v, field: `entity.${v.field}` }));
    if (violations.length > 0) throw new InvalidArgumentError('invalid entity', violations);
    checkEtag(message.etag, stored, `entity ${proposed.name}`);
    const now = new Date();
    let result: Versioned<EntityDocument>;
    if (stored === undefined) {
      result = await this.repository.entities.insert({
        id: proposed.name,
        definition: proposed,
        createTime: now,
        updateTime: now,
      });
    } else {
      const referencing = this.viewsReferencing(proposed.name);
      const diff = diffEntity(stored.doc.definition, proposed, referencing);
      if (diff.kind === 'incompatible') throw incompatible(`entity ${proposed.name}`, diff.changes);
      if (diff.kind === 'unchanged') {
        return {
          entity: entityMessageOf(stored.doc.definition, registered(stored)),
          changed: writtenByThisRequest(stored),
        };
      }
      result = await this.repository.entities.replace(
        { ...stored.doc, definition: proposed, updateTime: now },
        stored.version,
      );
    }
    this.entities.set(proposed.name, registered(result));
    this.localChanges++;
    this.announce(
      'entity',
      proposed.name,
      stored === undefined ? 'created' : 'updated',
      registered(result),
    );
    return { entity: entityMessageOf(proposed, registered(result)), changed: true };
  }

  deleteEntity(name: string, etag: string): Promise<void> {
    return this.writes.exclusively(() => this.deleteEntityNow(name, etag));
  }

  private async deleteEntityNow(name: string, etag: string): Promise<void> {
    requireName(name);
    const stored = await this.repository.entities.get(name);
    if (stored === undefined) throw entityNotFound(name);
    checkEtag(etag, stored, `entity ${name}`);
    if (await this.deletedByThisRequest('entity', name, stored)) return;
    const referencing = this.viewsReferencing(name);
    if (referencing.length > 0) {
      throw new FailedPreconditionError(
        `entity ${name} is referenced by feature views ${referencing.join(', ')}`,
        {
          reason: 'ENTITY_IN_USE',
          violations: referencing.map((view) => ({
            type: 'ENTITY_IN_USE',
            subject: `feature_views/${view}`,
            description: `feature view ${view} references entity ${name}`,
          })),
        },
      );
    }
    await this.repository.recordDeletion('entity', name, dateOf(stored.doc.createTime).getTime());
    await this.repository.entities.delete(name, stored.version);
    this.entities.delete(name);
    this.localChanges++;
    this.announce('entity', name, 'deleted', undefined);
  }

  applyFeatureView(message: FeatureView | undefined, validateOnly: boolean): Promise<AppliedView> {
    // A dry run stores nothing: it waits for this replica's writes, not for another replica's.
    const apply = () => this.applyFeatureViewNow(message, validateOnly);
    return validateOnly ? this.writes.serially(apply) : this.writes.exclusively(apply);
  }

  private async applyFeatureViewNow(
    message: FeatureView | undefined,
    validateOnly: boolean,
  ): Promise<AppliedView> {
    if (message === undefined) {
      throw new InvalidArgumentError('feature_view is required', [
        { field: 'feature_view', description: 'must be set', reason: 'REQUIRED' },
      ]);
    }
    const proposed = featureViewDefinitionOf(message);
    const stored = await this.repository.featureViews.get(proposed.name);
    const violations = [...invalidDurations(message), ...validateFeatureView(proposed)].filter(
      (v) => !keptAsStored(v, proposed, stored?.doc.definition),
    );
    const entityCheck = checkViewEntities(proposed, this.entityDefinitions());
    violations.push(...entityCheck.violations);
    if (violations.length > 0) {
      throw new InvalidArgumentError(
        `invalid feature view ${proposed.name}`,
        violations.map((v) => ({ ...v, field: `feature_view.${v.field}` })),
      );
    }
    if (entityCheck.missing.length > 0) {
      throw new NotFoundError(`no entity named ${entityCheck.missing.join(', ')}`, {
        reason: 'ENTITY_NOT_FOUND',
        resource: { type: 'tandem.featurestore.v1.Entity', name: entityCheck.missing[0] ?? '' },
      });
    }
    checkEtag(message.etag, stored, `feature view ${proposed.name}`);
    if (stored !== undefined) {
      const diff = diffFeatureView(stored.doc.definition, proposed);
      if (diff.kind === 'incompatible') {
        throw incompatible(`feature view ${proposed.name}`, diff.changes);
      }
      if (diff.kind === 'unchanged') {
        return writtenByThisRequest(stored)
          ? appliedView(stored)
          : {
              featureView: featureViewMessageOf(stored.doc.definition, registered(stored)),
              changed: false,
            };
      }
    }
    const now = new Date();
    if (validateOnly) {
      const facts = stored === undefined ? undefined : { ...registered(stored), updateTime: now };
      return { featureView: featureViewMessageOf(proposed, facts), changed: true };
    }
    if (stored === undefined) await this.deleteValues(proposed.name);
    const result =
      stored === undefined
        ? await this.repository.featureViews.insert({
            id: proposed.name,
            definition: proposed,
            createTime: now,
            updateTime: now,
          })
        : await this.repository.featureViews.replace(
            viewChangedTo(stored.doc, proposed, now),
            stored.version,
          );
    this.views.set(proposed.name, registered(result));
    this.localChanges++;
    this.notify();
    this.announce(
      'feature_view',
      proposed.name,
      stored === undefined ? 'created' : 'updated',
      registered(result),
    );
    return appliedView(result);
  }

  /**
   * Deletes the view, and returns it; undefined when the request running made this deletion
   * before, and the view stored now is one created again since (see `deletedByThisRequest`).
   */
  deleteFeatureView(
    name: string,
    etag: string,
  ): Promise<Registered<FeatureViewDefinition> | undefined> {
    return this.writes.exclusively(() => this.deleteFeatureViewNow(name, etag));
  }

  private async deleteFeatureViewNow(
    name: string,
    etag: string,
  ): Promise<Registered<FeatureViewDefinition> | undefined> {
    requireName(name);
    const stored = await this.repository.featureViews.get(name);
    if (stored === undefined) throw featureViewNotFound(name);
    checkEtag(etag, stored, `feature view ${name}`);
    if (await this.deletedByThisRequest('feature_view', name, stored)) return undefined;
    const registration = dateOf(stored.doc.createTime).getTime();
    await this.repository.recordDeletion('feature_view', name, registration);
    await this.repository.featureViews.delete(name, stored.version);
    this.deleteValuesInBackground(name, registration);
    this.views.delete(name);
    this.localChanges++;
    this.notify();
    this.announce('feature_view', name, 'deleted', undefined);
    return registered(stored);
  }

  /**
   * The answer to the retry of an ApplyEntity whose first call stored its change but failed
   * before answering (a storage call that timed out after taking effect; see `recover` in
   * `RequestResults.once`): the entity as stored, when its last write was the request of
   * `stamp`'s; undefined when another write changed it since.
   */
  async entityWrittenBy(
    name: string,
    stamp: string,
  ): Promise<{ entity: Entity; changed: boolean } | undefined> {
    const stored = stampedWith(await this.repository.entities.get(name), stamp);
    return (
      stored && {
        entity: entityMessageOf(stored.doc.definition, registered(stored)),
        changed: true,
      }
    );
  }

  /** {@link entityWrittenBy}, for an ApplyFeatureView. */
  async viewWrittenBy(name: string, stamp: string): Promise<AppliedView | undefined> {
    const stored = stampedWith(await this.repository.featureViews.get(name), stamp);
    return stored && appliedView(stored);
  }

  /**
   * For the retry of a delete refused by its first call's own deletion (see
   * {@link entityWrittenBy}): how that deletion left the resource, when it was the last one
   * counted for `name` and took effect: `gone`, or `replaced` by a registration created after
   * it; undefined when it was not that request's, another deleted the resource since, or it was
   * counted but the document was not deleted. A view gone has its stored values deleted in the
   * background, as the first call would have (one replaced had them deleted by its creation).
   */
  async recoverDeletion(
    kind: RegistryKind,
    name: string,
    stamp: string,
  ): Promise<RecoveredDeletion | undefined> {
    const removed = await this.repository.lastDeletedBy(kind, name, stamp);
    if (removed === undefined) return undefined;
    const stored = await (kind === 'entity'
      ? this.repository.entities.get(name)
      : this.repository.featureViews.get(name));
    if (stored !== undefined) {
      return dateOf(stored.doc.createTime).getTime() === removed ? undefined : 'replaced';
    }
    if (kind === 'feature_view') this.deleteValuesInBackground(name, removed);
    return 'gone';
  }

  /**
   * Whether the request running (see `currentRequestStamp`) made the last deletion of `name`
   * before, and `stored` is a registration created again since: the retry of a delete whose
   * first call took effect and then failed (a storage timeout). Sent without an etag, nothing
   * refuses it, and deleting again would delete what another request created; it is answered
   * as done instead.
   */
  private async deletedByThisRequest(
    kind: RegistryKind,
    name: string,
    stored: Versioned<{ readonly createTime: Date }>,
  ): Promise<boolean> {
    const stamp = currentRequestStamp();
    if (stamp === undefined) return false;
    const removed = await this.repository.lastDeletedBy(kind, name, stamp);
    return removed !== undefined && removed !== dateOf(stored.doc.createTime).getTime();
  }

  /** Starts deleting the stored values of the view `name` of `registration` (see the constructor). */
  private deleteValuesInBackground(name: string, registration: number): void {
    this.deleteValues(name, registration).catch((error: unknown) => {
      this.logger.warn({ err: error, view: name }, 'stored values not all deleted');
    });
  }

  private entityDefinitions(): Map<string, EntityDefinition> {
    return new Map([...this.entities].map(([name, e]) => [name, e.definition]));
  }

  private viewsReferencing(entity: string): string[] {
    return [...this.views.values()]
      .filter((v) => v.definition.entities.includes(entity))
      .map((v) => v.definition.name)
      .sort();
  }

  private notify(): void {
    for (const listener of this.listeners) listener(this.views);
  }

  /** Publishes a ConfigChangeEvent; best effort (storage is the source of truth). */
  private announce(
    resourceType: 'entity' | 'feature_view',
    resourceId: string,
    change: 'created' | 'updated' | 'deleted',
    facts: Pick<StoredFacts, 'version' | 'createTime'> | undefined,
  ): void {
    const etag = facts === undefined ? '' : etagOf(facts);
    const event: ConfigChangeEvent = {
      eventId: `featurestore/${resourceType}/${resourceId}/${etag === '' ? `deleted-${randomUUID()}` : etag}`,
      eventTime: new Date(),
      domain: 'featurestore',
      resourceType,
      resourceId,
      changeType:
        change === 'created'
          ? ConfigChangeType.CONFIG_CHANGE_TYPE_CREATED
          : change === 'updated'
            ? ConfigChangeType.CONFIG_CHANGE_TYPE_UPDATED
            : ConfigChangeType.CONFIG_CHANGE_TYPE_DELETED,
      etag,
      configVersion: 0,
      originReplicaId: this.replicaId,
    };
    this.bus
      .publish(CONFIG_SUBJECT, ConfigChangeEvent, event, { eventId: event.eventId })
      .catch((error: unknown) => {
        this.logger.warn({ err: error, resourceType, resourceId }, 'config change not announced');
      });
  }
}

/**
 * Whether two entries are the same write of a definition. The version alone cannot tell: one
 * deleted and applied again starts over at version 1, so the creation time is compared too.
 */
export function sameRegistration<D>(a: Registered<D>, b: Registered<D>): boolean {
  return a.version === b.version && a.createTime.getTime() === b.createTime.getTime();
}

function sameVersions<D>(
  a: ReadonlyMap<string, Registered<D>>,
  b: ReadonlyMap<string, Registered<D>>,
): boolean {
  if (a.size !== b.size) return false;
  for (const [name, entry] of a) {
    const other = b.get(name);
    if (other === undefined || !sameRegistration(entry, other)) return false;
  }
  return true;
}

export function entityNotFound(name: string): NotFoundError {
  return new NotFoundError(`no entity named ${name}`, {
    reason: 'ENTITY_NOT_FOUND',
    resource: { type: 'tandem.featurestore.v1.Entity', name },
  });
}

export function featureViewNotFound(name: string): NotFoundError {
  return new NotFoundError(`no feature view named ${name}`, {
    reason: 'FEATURE_VIEW_NOT_FOUND',
    resource: { type: 'tandem.featurestore.v1.FeatureView', name },
  });
}

function incompatible(
  what: string,
  changes: readonly { subject: string; description: string }[],
): FailedPreconditionError {
  return new FailedPreconditionError(
    `incompatible change to ${what}: ${changes.map((c) => `${c.subject}: ${c.description}`).join('; ')}`,
    {
      reason: 'INCOMPATIBLE_CHANGE',
      violations: changes.map((c) => ({
        type: 'INCOMPATIBLE_CHANGE',
        subject: c.subject,
        description: c.description,
      })),
    },
  );
}

export type { FeatureViewDocument };
