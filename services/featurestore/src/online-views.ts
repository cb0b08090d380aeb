/**
 * The views this replica serves: a fully resident OnlineTable per push-sourced view and a
 * StreamAggregation per stream-sourced view, kept in step with the registry. GetOnlineFeatures is
 * answered from them alone; WriteFeatures writes storage first, then memory; a sync loop applies
 * the rows other replicas wrote (from the change log) so they are visible here within a second.
 */
import {
  AbortedError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  UnavailableError,
} from '../../platform/src/errors';
import { withTimeout } from '../../platform/src/timeout';
import type { ConditionalWriteOutcome } from '../../platform/src/storage/collection';
import type { EventBus } from '../../platform/src/events/bus';
import type { Logger } from '../../platform/src/logging';
import {
  AggregationState,
  type AggregationStatus,
  type GetOnlineFeaturesRequest,
  type GetOnlineFeaturesResponse,
  type WriteFeaturesRequest,
  type WriteFeaturesResponse,
} from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import type { FeatureValue as FeatureValueMessage } from '../../../gen/ts/tandem/featurestore/v1/value';
import type { FeatureStoreConfig } from './config';
import { durationOf, messageOfStoredValue } from './contract-mapping';
import { ValueType, type FieldViolation } from './domain/feature-values';
import { latestRowPerKey, OnlineTable, type OnlineRow } from './domain/online-table';
import {
  sameStreamSource,
  windowAggregationSpecs,
  type FeatureViewDefinition,
} from './domain/registry';
import {
  aggregationDurable,
  StreamAggregation,
  type AggregationProgress,
} from './events/stream-aggregation';
import {
  encodeEventTimes,
  encodeFeatureNames,
  OnlineFeaturesReply,
  type ReplyColumn,
} from './online-response';
import {
  featureViewNotFound,
  sameRegistration,
  type FeatureRegistry,
  type Registered,
} from './feature-registry';
import { keyPartOf, prepareRows, type KeyColumn, type PreparedRow } from './push-rows';
import type { AggregationCheckpoints } from './store/aggregation-checkpoints';
import {
  orderOfVersion,
  rowId,
  rowVersion,
  type ChangeLogEntry,
  type ChangedRow,
  type FeatureRowDocument,
  type FeatureRowRepository,
  type WriteOrigin,
} from './store/feature-rows';

/** INVALID_ARGUMENT with reason LIMIT_EXCEEDED, naming the field over the limit. */
function limitExceeded(field: string, description: string): InvalidArgumentError {
  return new InvalidArgumentError(
    `request over a limit: ${field} ${description}`,
    [{ field, description, reason: 'LIMIT_EXCEEDED' }],
    {
      reason: 'LIMIT_EXCEEDED',
    },
  );
}

type Served =
  | {
      readonly kind: 'push';
      readonly registered: Registered<FeatureViewDefinition>;
      readonly keyColumns: readonly KeyColumn[];
      readonly table: OnlineTable<FeatureValueMessage>;
      /**
       * The change log's last sequence when the table was loaded from storage. Entries up to it
       * are not applied: their rows were stored before their sequence was taken, so the load read
       * them (or newer ones), and applying them again could only bring back rows deleted since
       * with the view (an entry names a view, not which creation of it).
       */
      readonly loadedAfter: number;
      /** Which of this replica's loads read the table: they are numbered as they begin. */
      readonly load: number;
    }
  | {
      readonly kind: 'stream';
      readonly registered: Registered<FeatureViewDefinition>;
      readonly keyColumns: readonly KeyColumn[];
      readonly aggregation: StreamAggregation;
    };

type ServedPush = Extract<Served, { readonly kind: 'push' }>;

/** The features of one view a read asks for. */
interface Reference {
  readonly view: string;
  readonly served: Served;
  /** The registry's entry the reference was resolved against (the plan is valid while it is). */
  readonly registered: Registered<FeatureViewDefinition>;
  readonly features: string[];
  readonly indexes: number[];
  /** Where each of `features` goes in the response, which is in request order, not by view. */
  readonly columns: number[];
  /** The view's join keys and their types, as a string: views with the same share entity keys. */
  readonly signature: string;
}

/**
 * What a list of feature references resolves to, kept between reads of the same list (a ranking
 * service asks for the same features every time): the references, the response's feature names
 * and their encoding. Resolving `view:*` per read made and compared every feature name and, for the
 * response, encoded each one with two native calls.
 */
interface ReadPlan {
  readonly references: readonly Reference[];
  readonly featureNames: readonly string[];
  readonly encodedFeatureNames: Buffer;
  /** The join keys of the views read, each once, in reference order. */
  readonly joinKeys: readonly string[];
}

/** Read plans kept per replica; the cache is emptied when full (feature lists are few). */
const READ_PLAN_CAPACITY = 1024;

/** Rough heap bytes of a served value, for the table's memory metrics. */
function wireValueBytes(value: FeatureValueMessage): number {
  const kind = value.kind;
  if (kind === undefined) return 16;
  switch (kind.$case) {
    case 'stringValue':
      return 64 + kind.value.length * 2;
    case 'floatVectorValue':
      return 80 + kind.value.values.length * 8;
    case 'stringListValue':
      return kind.value.values.reduce((sum, s) => sum + 24 + s.length * 2, 80);
    default:
      return 64;
  }
}

export interface OnlineViewsParts {
  readonly config: FeatureStoreConfig;
  readonly registry: FeatureRegistry;
  readonly rows: FeatureRowRepository;
  readonly checkpoints: AggregationCheckpoints;
  readonly bus: EventBus;
  readonly logger: Logger;
}

/** One stream view's counts (see {@link OnlineViews.aggregationCounts}). */
export interface AggregationCounts {
  readonly view: string;
  readonly processed: number;
  readonly duplicate: number;
  readonly droppedLate: number;
  readonly droppedInvalid: number;
  /** From the last processed event's time to its processing; undefined before the first. */
  readonly delayMs: number | undefined;
}

/** A stream view's counts from its aggregation's progress. */
function countsOf(view: string, progress: AggregationProgress): AggregationCounts {
  const { counters: c, missingKeys } = progress;
  return {
    view,
    processed: c.eventsProcessed,
    duplicate: c.eventsDuplicate,
    droppedLate: c.eventsDroppedLate,
    droppedInvalid: c.eventsDroppedInvalid + missingKeys,
    delayMs:
      c.lastEventTime === null || c.lastProcessedTime === null
        ? undefined
        : Math.max(0, c.lastProcessedTime - c.lastEventTime),
  };
}

/** How long a gap in the change log is waited for (a writer between its sequence and its entry). */
const CHANGE_LOG_GAP_WAIT_MS = 5_000;
/**
 * How long an entry passed over at a gap is still looked for: its writer may have stalled
 * between taking the sequence and storing the entry (a primary election, a long pause), and its
 * rows are in storage. One not stored by then never will be (its writer failed).
 */
const PASSED_OVER_WINDOW_MS = 10 * 60_000;
/** The most passed-over entries looked for at once (each sync reads them by id); oldest go. */
const PASSED_OVER_MAX = 1_000;
/** The most writes whose change-log entry waits to be appended again (see `announceLater`). */
const ANNOUNCING_MAX = 1_000;
/** How long `stop` waits for loads, syncs and refills still reading storage, all together. */
const STOP_WAIT_FOR_READS_MS = 2_000;
/** Bounds of the wait before loading again a view whose load failed (see `noteLoad`). */
const RECONCILE_RETRY_MIN_MS = 500;
const RECONCILE_RETRY_MAX_MS = 30_000;
/**
 * The most push views read from storage at once (see `loadSlot`): a view loads beside the others
 * rather than behind them, but a start with hundreds of views does not scan storage hundreds wide.
 */
const MAX_CONCURRENT_LOADS = 3;

/**
 * What reaches a push view while its table is loaded from storage (see `loadPushTable`), applied
 * to the loaded table before it is served: the scan may have passed it.
 */
interface DuringLoad {
  /** The view's creation the load is of: a write or entry of another creation is not its. */
  readonly createTime: number;
  /** The rows this replica wrote (the sync skips this replica's own entries). */
  readonly written: StoredRow[][];
  /**
   * The rows of other replicas' change-log entries the sync applied meanwhile, by entity key: the
   * sync goes on while a view loads, and the table it applies them to (if any) is the one being
   * replaced. Only the one a table would keep of each key's (see `stageSynced`), so that a load
   * of minutes under heavy writes holds at most a row per key written, not one per write.
   */
  readonly synced: Map<string, { readonly row: ChangedRow; readonly order: number }>;
}

/**
 * UNAVAILABLE for a view the registry holds but this replica does not serve yet: its load is
 * under way or failed (storage not answering; it is tried again). The view exists, so NOT_FOUND,
 * which tells a client it does not, would be wrong; a retry is answered once it is loaded.
 */
function featureViewNotLoaded(views: readonly string[]): UnavailableError {
  return new UnavailableError(
    `feature view ${views.join(', ')} is not loaded on this replica yet; retry`,
    { reason: 'FEATURE_VIEW_NOT_LOADED', retryDelayMs: RECONCILE_RETRY_MIN_MS },
  );
}

export class OnlineViews {
  private readonly served = new Map<string, Served>();
  /**
   * The work queued for each view (see `queue`): its loads, changes and removal, one at a time
   * per view, each view's beside the others'. An entry goes once its work is done.
   */
  private readonly pending = new Map<string, Promise<void>>();
  /** Push views being read from storage now, and the waits for a turn (see `loadSlot`). */
  private loadsRunning = 0;
  private readonly loadWaiters: (() => void)[] = [];
  /** The loads of push views begun so far (see `reloadPushTables`). */
  private loadsBegun = 0;
  /** The views whose last load failed, loaded again by a sync (see `retryReconcileAt`). */
  private readonly failedLoads = new Set<string>();
  private position = 0;
  private readonly appliedAhead = new Set<number>();
  private gapSince: number | undefined;
  /** The highest sequence seen ahead when `gapSince` was set (see `advancePosition`). */
  private gapCovers = 0;
  /** Sequences the position moved past without their entry, and when (see `applyPassedOver`). */
  private readonly passedOver = new Map<number, number>();
  private lastSyncAt = new Date(0);
  /** The sync running, as its callers see it (see `syncChanges`). */
  private syncing: Promise<void> | undefined;
  /** What reaches each push view whose table is being loaded (see `loadPushTable`). */
  private readonly duringLoad = new Map<string, DuringLoad>();
  /** When a failed `reloadPushTables` may be tried again, and the wait before that. */
  private reloadRetry = { at: 0, waitMs: 0 };
  /** Set by `stop`: nothing is loaded or started afterwards. */
  private stopped = false;
  /** `stopped`, read where a check before an `await` would narrow it for the compiler. */
  private isStopping(): boolean {
    return this.stopped;
  }
  /** Background loads of features added to push views (see `refill`), awaited by `stop`. */
  private readonly refilling = new Set<Promise<void>>();
  /**
   * Read-backs and announcements whose timer has fired (see `announceLater`), awaited by `stop`
   * so that none outlives the storage it writes to.
   */
  private readonly settling = new Set<Promise<void>>();
  /** Stored rows whose change-log entry is appended again at their timer (see `announceLater`). */
  private readonly announcing = new Map<NodeJS.Timeout, RowsNotAnnouncedError>();
  /**
   * Failed writes read back at their timer (see `announceLater`): apart from `announcing`, so
   * that the writes refused in an outage never push out rows known to be stored.
   */
  private readonly readingBack = new Map<NodeJS.Timeout, RowsMaybeStoredError>();
  /** Whether `readingBack` has given up a write since it was last half empty (logged once). */
  private readBackFull = false;
  /** The refill of each view that is current: an older one stops at its next row. */
  private readonly refills = new Map<string, object>();
  /** The sync running, if any, awaited by `stop`. */
  private syncRun: Promise<void> = Promise.resolve();
  /**
   * When the views whose load failed (a storage failure, see `failedLoads`) are tried again, by
   * a sync; undefined when none failed, or while they are being tried. The wait doubles from
   * 0.5 s to 30 s while they fail.
   */
  private retryReconcileAt: number | undefined;
  private retryReconcileMs = 0;
  private readonly readPlans = new Map<string, ReadPlan>();

  constructor(private readonly parts: OnlineViewsParts) {}

  /**
   * Loads every registered view into memory; resolves once all are served, and throws when one
   * cannot be loaded (a replica missing a view would answer NOT_FOUND for it).
   */
  async load(): Promise<void> {
    // Follow the change log from its current end: entries up to it are in the tables about to be
    // loaded (see `loadedAfter`), later ones are applied as they come.
    this.position = await this.parts.rows.lastSequence();
    const syncStarted = new Date();
    const failures = await this.reconcileViews(this.parts.registry.allViews());
    if (failures.length > 0) throw failures[0];
    this.lastSyncAt = syncStarted;
  }

  /**
   * Brings the served views in line with the registry. Each view's work is queued behind the
   * work queued for that view before (see `queue`), not behind other views': loading a big view
   * (applied, or applied again) takes minutes, and a view applied meanwhile is served once its
   * own load is done. Resolves once the work of every view of `views` is done.
   */
  reconcile(views: ReadonlyMap<string, Registered<FeatureViewDefinition>>): Promise<void> {
    // A compatible change to a push view served here (a feature added, a TTL or description
    // changed) replaces no table, so it takes effect at once rather than behind the view's queue:
    // a reload of every table after an outage (see `reloadPushTables`) takes minutes, and
    // meanwhile the change's features were NOT_FOUND and every write to the view waited.
    if (!this.stopped) {
      for (const [name, registered] of views) {
        const current = this.served.get(name);
        try {
          if (current?.kind === 'push') this.redefinePush(name, current, registered);
        } catch {
          // Left to the queued reconcile, which logs it and retries.
        }
      }
    }
    return this.reconcileViews(views).then(() => undefined);
  }

  /**
   * Settles once the work queued for view `name` so far (by `reconcile`, `reloadPushTables`) is
   * done, however it ended: a caller that changed the view waits for its own view only.
   */
  untilReconciled(name: string): Promise<void> {
    return this.pending.get(name) ?? Promise.resolve();
  }

  /**
   * Whether view `name` is served here as the registry holds it now: nothing of it is left for a
   * queued reconcile to load (a compatible change to a push view is applied at once).
   */
  servesAsRegistered(name: string): boolean {
    const served = this.served.get(name);
    const registered = this.parts.registry.view(name);
    return (
      served !== undefined &&
      registered !== undefined &&
      sameRegistration(served.registered, registered)
    );
  }

  /** The time up to which this replica is known to hold every stored write. */
  asOf(): Date {
    return this.lastSyncAt;
  }

  /**
   * Runs `work` for view `name` once the work queued for it before has ended (and `after`, which
   * must not reject): two loads of one view never run together, or one that began earlier could
   * serve its older table over the newer one. Another view's work does not wait for it. The
   * queue goes on whatever `work` does; its outcome is returned.
   */
  private queue<T>(name: string, work: () => Promise<T>, after?: Promise<unknown>): Promise<T> {
    const previous = this.pending.get(name) ?? Promise.resolve();
    const running = (after === undefined ? previous : Promise.all([previous, after])).then(work);
    const done = running.then(
      () => undefined,
      () => undefined,
    );
    this.pending.set(name, done);
    void done.then(() => {
      if (this.pending.get(name) === done) this.pending.delete(name);
    });
    return running;
  }

  /**
   * Waits for a turn to read a push view from storage (at most {@link MAX_CONCURRENT_LOADS} at
   * once) and returns the call that gives it back. `stop` ends the waits: a caller checks.
   */
  private async loadSlot(): Promise<() => void> {
    while (this.loadsRunning >= MAX_CONCURRENT_LOADS && !this.stopped) {
      await new Promise<void>((resolve) => this.loadWaiters.push(resolve));
    }
    this.loadsRunning++;
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.loadsRunning--;
      this.loadWaiters.shift()?.();
    };
  }

  /**
   * Notes how a view's load (or other reconcile work) ended. A failure has every view that
   * failed tried again by a sync (see `syncOnce`), after a wait that doubles from 0.5 s to 30 s
   * while they fail; once none has failed, the wait starts over.
   */
  private noteLoad(name: string, failed: boolean): void {
    if (!failed) {
      this.failedLoads.delete(name);
      if (this.failedLoads.size === 0) {
        this.retryReconcileAt = undefined;
        this.retryReconcileMs = 0;
      }
      return;
    }
    this.failedLoads.add(name);
    // A retry already set keeps its time: each view's failure does not push it further away.
    if (this.retryReconcileAt !== undefined) return;
    this.retryReconcileMs = Math.min(
      RECONCILE_RETRY_MAX_MS,
      Math.max(RECONCILE_RETRY_MIN_MS, 2 * this.retryReconcileMs),
    );
    this.retryReconcileAt = Date.now() + this.retryReconcileMs;
  }

  /**
   * {@link reconcile}'s work, queued per view; resolves once it is all done, with the failure of
   * each view that could not be loaded, logged.
   */
  private async reconcileViews(
    views: ReadonlyMap<string, Registered<FeatureViewDefinition>>,
  ): Promise<unknown[]> {
    const failures: unknown[] = [];
    const outcome = (name: string, running: Promise<void>): Promise<void> =>
      running.then(
        () => {
          this.noteLoad(name, false);
        },
        (error: unknown) => {
          // The others are still loaded; this one is tried again by a sync.
          this.parts.logger.error({ err: error, view: name }, 'cannot load feature view');
          failures.push(error);
          this.noteLoad(name, true);
        },
      );
    // A view whose load failed and that is gone since is not tried again: left among the failed
    // ones, it would keep the retry's wait from starting over once the others load.
    for (const name of [...this.failedLoads]) {
      if (!views.has(name)) this.noteLoad(name, false);
    }
    const done: Promise<void>[] = [];
    // Views no longer registered: served, or with work queued (a load that would serve them).
    // Retired one after another (each also after its view's own queued work), as before: nothing
    // but a deletion's answer waits for them, and the views after one stalled in storage stay
    // served, which `stop` stops without a last checkpoint.
    let removals: Promise<unknown> = Promise.resolve();
    for (const name of new Set([...this.served.keys(), ...this.pending.keys()])) {
      if (views.has(name)) continue;
      const removal = outcome(
        name,
        this.queue(name, () => this.unserve(name), removals),
      );
      removals = removal;
      done.push(removal);
    }
    for (const [name, registered] of views) {
      done.push(
        outcome(
          name,
          this.queue(name, () => this.reconcileView(name, registered)),
        ),
      );
    }
    await Promise.all(done);
    return failures;
  }

  /** Stops serving view `name`, gone from the registry (its aggregation retired). */
  private async unserve(name: string): Promise<void> {
    // Stopping: `stop` stops the aggregations still served (the rest is left to the next start).
    if (this.isStopping()) return;
    const served = this.served.get(name);
    if (served === undefined) return;
    this.served.delete(name);
    if (served.kind === 'stream') await this.retire(name, served.aggregation);
    this.parts.logger.info({ view: name }, 'feature view no longer served');
  }

  private async reconcileView(
    name: string,
    registered: Registered<FeatureViewDefinition>,
  ): Promise<void> {
    if (this.isStopping()) return;
    const current = this.served.get(name);
    const definition = registered.definition;
    // The join keys and types as the registry holds the view's entities now, not as they were
    // when the view was loaded: a registry reload reads the entities, then the views (not one
    // snapshot), so a view deleted and applied again after its entity's join key or type changed
    // can be loaded with the entity as it was, and the next reload brings only the entity.
    // Served by the old keys, the view would refuse every read and write by the new ones.
    const keyColumns = this.keyColumnsOf(definition);
    if (current !== undefined && sameRegistration(current.registered, registered)) {
      if (keyColumns !== undefined && !sameKeyColumns(current.keyColumns, keyColumns)) {
        // The records are keyed by their key values, which the writers encoded by the entity
        // as it is: only how requests are read changes.
        this.served.set(name, { ...current, keyColumns });
      }
      return;
    }
    // A view deleted and applied again (between two registry reloads) is another view: its
    // values are loaded anew rather than kept.
    const recreated =
      current !== undefined &&
      current.registered.createTime.getTime() !== registered.createTime.getTime();
    if (current?.kind === 'push' && this.redefinePush(name, current, registered)) return;
    if (
      current?.kind === 'stream' &&
      !recreated &&
      sameStreamView(current.registered.definition, definition)
    ) {
      // Only what does not change the aggregation changed: it goes on serving (restarting it
      // left the view unknown to reads until its checkpoint was restored).
      current.aggregation.redefine(definition);
      this.served.set(name, {
        ...current,
        registered,
        keyColumns: keyColumns ?? current.keyColumns,
      });
      return;
    }
    // Another view, or one of another source: the one served is gone (a push view's table
    // would otherwise go on serving the deleted view's values should the load below fail).
    this.served.delete(name);
    if (current?.kind === 'stream') {
      // A stream view again resets the durable and discards the checkpoint itself (see
      // StreamAggregation.start); a push view of that name leaves them to nobody.
      if (definition.source?.kind === 'stream') await current.aggregation.stop();
      else await this.retire(name, current.aggregation);
    }
    // Read again: the registry may have been reloaded while the aggregation stopped.
    const loadColumns = this.keyColumnsOf(definition);
    if (loadColumns === undefined || this.isStopping()) return;
    if (definition.source?.kind === 'push') {
      await this.loadPushTable({ kind: 'push', registered, keyColumns: loadColumns });
    } else if (definition.source?.kind === 'stream') {
      const aggregation = new StreamAggregation({
        view: definition,
        bus: this.parts.bus,
        checkpoints: this.parts.checkpoints.forOwner(name, this.parts.config.replicaId, {
          logger: this.parts.logger,
          registration: registered.createTime.getTime(),
        }),
        logger: this.parts.logger,
        stream: this.parts.config.outcomeStream,
        durable: aggregationDurable(name, this.parts.config.replicaId),
        checkpointIntervalMs: this.parts.config.checkpointIntervalMs,
        inFlight: this.parts.config.aggregationInFlight,
      });
      await aggregation.start();
      // Stopping meanwhile: `stop` stopped the aggregations served when it began.
      if (this.isStopping()) {
        await aggregation.stop();
        return;
      }
      this.served.set(name, { kind: 'stream', registered, keyColumns: loadColumns, aggregation });
    }
  }

  /**
   * Applies a compatible change of push view `name` (the same registration, still push-sourced)
   * to the table served, in place; returns false when `registered` is another view (applied
   * again, or of another source), which needs loading. A definition older than the one served (a
   * reconcile queued with an earlier registry snapshot) changes nothing: applied after the newer
   * one, its TTL would drop, once the newer one came back, the records between the two TTLs.
   */
  private redefinePush(
    name: string,
    current: ServedPush,
    registered: Registered<FeatureViewDefinition>,
  ): boolean {
    const definition = registered.definition;
    if (
      definition.source?.kind !== 'push' ||
      current.registered.createTime.getTime() !== registered.createTime.getTime()
    ) {
      return false;
    }
    if (registered.version <= current.registered.version) return true;
    const features = definition.features.map((f) => f.name);
    const added = features.some((f) => current.table.featureIndex(f) < 0);
    // Records past the old TTL when the change was made go (the definition's update time,
    // which is the change's when it is the latest), not those past it when this replica hears
    // of it, which storage may keep by then. Approximate: the writer's clock dates the change,
    // and a replica's sweep before it hears (every minute) drops by the old TTL.
    current.table.redefine(
      features,
      definition.ttlMs,
      Math.min(Date.now(), registered.updateTime.getTime()),
    );
    this.served.set(name, {
      ...current,
      registered,
      keyColumns: this.keyColumnsOf(definition) ?? current.keyColumns,
    });
    // A feature added gets its values from storage, in the background (a view may hold
    // millions of records, and writes wait for a reconcile): rows written with it on another
    // replica may have been synced here, without it, before this replica knew of it.
    if (added) this.refill(name, current.table, registered);
    return true;
  }

  /**
   * Stops the aggregation of a stream view that is gone, deleting this replica's checkpoint and
   * durable consumer (a failure to is logged, and leaves them behind).
   */
  private async retire(view: string, aggregation: StreamAggregation): Promise<void> {
    try {
      await aggregation.retire();
    } catch (error) {
      this.parts.logger.warn(
        { err: error, view },
        'aggregation checkpoint of a deleted view remains',
      );
    }
    await this.deleteDurable(view);
  }

  /**
   * Writes every stored record of a push view into its table again, through the table's rule: a
   * record the table holds newer is kept, the same write (equal event time and order) is written
   * again with the features the table has now. One per view at a time: a newer one (another
   * feature added) supersedes it, since it would write the records without that feature. Stops
   * once the table is no longer served; tried again when storage fails, after 5 s doubling to
   * 60 s.
   */
  private refill(
    name: string,
    table: OnlineTable<FeatureValueMessage>,
    registered: Registered<FeatureViewDefinition>,
    retryMs = 5_000,
  ): void {
    const mine = {};
    this.refills.set(name, mine);
    const current = () => {
      const served = this.served.get(name);
      return (
        !this.stopped &&
        this.refills.get(name) === mine &&
        served?.kind === 'push' &&
        served.table === table
      );
    };
    const run = async (): Promise<void> => {
      const types = featureTypes(registered.definition);
      let batch: OnlineRow<FeatureValueMessage>[] = [];
      const registration = registered.createTime.getTime();
      for await (const row of this.parts.rows.scanView(name, registration)) {
        if (!current()) return;
        batch.push(onlineRowOf(row, types, orderOfVersion(row.version)));
        if (batch.length === 1_000) {
          table.write(batch, Date.now());
          batch = [];
        }
      }
      if (current()) table.write(batch, Date.now());
    };
    let retrying = false;
    const refilling = run()
      .catch((error: unknown) => {
        if (!current()) return;
        retrying = true;
        this.parts.logger.warn(
          { err: error, view: name },
          `new features not loaded; trying again in ${retryMs / 1000} s`,
        );
        const retry = setTimeout(() => {
          if (current()) this.refill(name, table, registered, Math.min(60_000, 2 * retryMs));
        }, retryMs);
        retry.unref();
      })
      .finally(() => {
        this.refilling.delete(refilling);
        if (!retrying && this.refills.get(name) === mine) this.refills.delete(name);
      });
    this.refilling.add(refilling);
  }

  /**
   * Deletes this replica's durable consumer of a stream view that is gone, deleted here or on
   * another replica, as DeleteFeatureView promises: left behind, it would keep its place in the
   * stream for nothing. Called once the aggregation has stopped (a running subscription would
   * declare it again). A failure is logged: applied again, the view deletes its durable before
   * subscribing anyway (see StreamAggregation).
   */
  private async deleteDurable(view: string): Promise<void> {
    const durable = aggregationDurable(view, this.parts.config.replicaId);
    try {
      await this.parts.bus.deleteConsumer?.(this.parts.config.outcomeStream, durable);
    } catch (error) {
      this.parts.logger.warn(
        { err: error, view, durable },
        'aggregation consumer of a deleted view remains',
      );
    }
  }

  private keyColumnsOf(definition: FeatureViewDefinition): KeyColumn[] | undefined {
    const columns: KeyColumn[] = [];
    for (const name of definition.entities) {
      const entity = this.parts.registry.entity(name)?.definition;
      if (entity === undefined) return undefined;
      columns.push({ joinKey: entity.joinKey, valueType: entity.valueType });
    }
    return columns;
  }

  /**
   * Loads a push view's table from storage and serves it, once a turn to read storage comes (see
   * `loadSlot`). What reaches the view meanwhile is applied to it before it is served (see
   * {@link DuringLoad}): the rows this replica writes, which the sync skips, and the entries the
   * sync applies, which goes on while the view loads. Applying a row the scan read as well, or
   * one the table holds newer, changes nothing (a table keeps the newer of two writes).
   */
  private async loadPushTable(
    served: Pick<Extract<Served, { kind: 'push' }>, 'kind' | 'registered' | 'keyColumns'>,
  ): Promise<void> {
    const release = await this.loadSlot();
    const { definition, createTime } = served.registered;
    const during: DuringLoad = {
      createTime: createTime.getTime(),
      written: [],
      synced: new Map(),
    };
    try {
      if (this.stopped) return;
      // Collected before the change log's end is read: an entry the sync applies from then on
      // is either at most `loadedAfter` (the scan reads its rows) or in `synced`.
      this.duringLoad.set(definition.name, during);
      const load = ++this.loadsBegun;
      const loadedAfter = await this.parts.rows.lastSequence();
      const table = await this.loadTable(served.registered);
      if (this.isStopping()) return;
      // From here to serving the table, nothing waits: no write or entry falls in between.
      const now = Date.now();
      for (const rows of during.written) table.write(rows, now);
      // Rows the scan read as well, or older than the table's, change nothing.
      if (during.synced.size > 0) {
        const types = featureTypes(definition);
        table.write(
          [...during.synced.values()].map(({ row, order }) => onlineRowOf(row, types, order)),
          now,
        );
      }
      // A compatible change applied meanwhile to the table served (see `reconcile`: at once, not
      // queued behind this load, which may be a reload of every table after an outage) holds for
      // the loaded one too; served by the registration the load began with, a feature just
      // added would read NOT_FOUND until the view's queued reconcile.
      const latest = this.served.get(definition.name);
      const loaded = { ...served, kind: 'push' as const, table, loadedAfter, load };
      this.served.set(definition.name, loaded);
      if (
        latest?.kind === 'push' &&
        latest.registered.createTime.getTime() === createTime.getTime()
      ) {
        this.redefinePush(definition.name, loaded, latest.registered);
      }
    } finally {
      if (this.duringLoad.get(definition.name) === during) {
        this.duringLoad.delete(definition.name);
      }
      release();
    }
  }

  private async loadTable({
    definition,
    createTime,
  }: Registered<FeatureViewDefinition>): Promise<OnlineTable<FeatureValueMessage>> {
    const started = Date.now();
    const table = new OnlineTable<FeatureValueMessage>({
      features: definition.features.map((f) => f.name),
      ttlMs: definition.ttlMs,
      sizeOf: wireValueBytes,
    });
    const types = featureTypes(definition);
    let batch: OnlineRow<FeatureValueMessage>[] = [];
    let loaded = 0;
    for await (const row of this.parts.rows.scanView(definition.name, createTime.getTime())) {
      batch.push(onlineRowOf(row, types, orderOfVersion(row.version)));
      if (batch.length === 1_000) {
        if (this.stopped) throw new UnavailableError('stopping: feature view not loaded');
        table.write(batch, Date.now());
        loaded += batch.length;
        batch = [];
        if (loaded % 100_000 === 0) {
          this.parts.logger.info({ view: definition.name, loaded }, 'loading feature view');
        }
      }
    }
    table.write(batch, Date.now());
    loaded += batch.length;
    this.parts.logger.info(
      { view: definition.name, entities: loaded, ms: Date.now() - started },
      'feature view loaded into memory',
    );
    return table;
  }

  /** GetOnlineFeatures, from memory, as the generated message. */
  read(request: GetOnlineFeaturesRequest, now: number): GetOnlineFeaturesResponse {
    return this.readReply(request, now).toMessage();
  }

  /** GetOnlineFeatures, from memory, ready to encode (see online-response.ts). */
  readReply(request: GetOnlineFeaturesRequest, now: number): OnlineFeaturesReply {
    const { limits } = this.parts.config;
    if (request.features.length === 0) {
      throw new InvalidArgumentError('features is required', [
        { field: 'features', description: 'must name at least one feature', reason: 'REQUIRED' },
      ]);
    }
    if (request.features.length > limits.maxFeatureRefs) {
      throw limitExceeded('features', `must hold at most ${limits.maxFeatureRefs} references`);
    }
    const { references, featureNames, encodedFeatureNames, joinKeys } = this.readPlan(
      request.features,
    );

    // Entity rows: every column a requested view uses present and of the same length, within the
    // limits; the others are ignored.
    const violations: FieldViolation[] = [];
    const columns: [string, { readonly values: readonly unknown[] }][] = [];
    for (const joinKey of joinKeys) {
      const column = ownColumn(request, joinKey);
      if (column !== undefined) columns.push([joinKey, column]);
      else {
        violations.push({
          field: `entity_rows.${joinKey}`,
          description: 'is required by a requested view',
          reason: 'REQUIRED',
        });
      }
    }
    const rowCount = columns[0]?.[1].values.length ?? 0;
    if (rowCount === 0 && columns.length > 0) {
      violations.push({
        field: 'entity_rows',
        description: 'must hold at least one row',
        reason: 'REQUIRED',
      });
    }
    for (const [joinKey, column] of columns) {
      if (column.values.length !== rowCount) {
        violations.push({
          field: `entity_rows.${joinKey}`,
          description: `has ${column.values.length} values; every column must have ${rowCount}`,
          reason: 'COLUMN_LENGTH_MISMATCH',
        });
      }
    }
    if (violations.length > 0) throw new InvalidArgumentError('invalid entity_rows', violations);
    if (rowCount > limits.maxEntityRows) {
      throw limitExceeded('entity_rows', `must hold at most ${limits.maxEntityRows} rows`);
    }
    const columnCount = references.reduce((n, r) => n + r.features.length, 0);
    if (rowCount * columnCount > limits.maxValuesPerRead) {
      throw limitExceeded(
        'features',
        `rows × features must be at most ${limits.maxValuesPerRead} (got ${rowCount} × ${columnCount})`,
      );
    }

    // Entity keys per distinct set of join keys (views of the same entities share them).
    const keysBySignature = new Map<string, string[]>();
    for (const reference of references) {
      if (keysBySignature.has(reference.signature)) continue;
      keysBySignature.set(
        reference.signature,
        this.entityKeys(request, reference.served.keyColumns, rowCount, violations),
      );
    }
    if (violations.length > 0) throw new InvalidArgumentError('invalid entity_rows', violations);

    const out = new Array<ReplyColumn>(columnCount);
    let asOf = now;
    for (const reference of references) {
      const { served } = reference;
      const keys = keysBySignature.get(reference.signature) ?? [];
      const types = served.registered.definition.features;
      let result: { values: readonly unknown[]; statuses: Uint8Array; eventTimes: Float64Array };
      if (served.kind === 'push') {
        if (this.lastSyncAt.getTime() < asOf) asOf = this.lastSyncAt.getTime();
        result = served.table.read(keys, reference.indexes, now);
      } else {
        result = selectColumns(served.aggregation.read(keys, now), reference.indexes);
      }
      const eventTimes = request.omitEventTimes ? undefined : result.eventTimes;
      const encodedEventTimes =
        eventTimes === undefined ? undefined : encodeEventTimes(eventTimes, rowCount);
      for (let f = 0; f < reference.features.length; f++) {
        out[reference.columns[f] as number] = {
          values: result.values,
          statuses: result.statuses,
          base: f * rowCount,
          aggregateType:
            served.kind === 'stream'
              ? (types[reference.indexes[f] ?? 0]?.valueType ?? ValueType.Unspecified)
              : undefined,
          eventTimes,
          encodedEventTimes,
        };
      }
    }
    return new OnlineFeaturesReply(featureNames, now, asOf, rowCount, out, encodedFeatureNames);
  }

  /**
   * The read plan of a feature list: kept from an earlier read while every view it names is still
   * served as it was then, else resolved (and validated) again.
   */
  private readPlan(features: readonly string[]): ReadPlan {
    // The count first: a valid reference holds no newline, so no other list (a malformed
    // reference that does, say) has the key of a valid one.
    const key = `${features.length}\n${features.join('\n')}`;
    const kept = this.readPlans.get(key);
    if (
      kept !== undefined &&
      kept.references.every(
        (r) =>
          this.served.get(r.view) === r.served && this.parts.registry.view(r.view) === r.registered,
      )
    ) {
      return kept;
    }
    const { references, featureNames } = this.resolveReferences(features);
    const plan: ReadPlan = {
      references,
      featureNames: Object.freeze(featureNames),
      encodedFeatureNames: encodeFeatureNames(featureNames),
      joinKeys: [...new Set(references.flatMap((r) => r.served.keyColumns.map((k) => k.joinKey)))],
    };
    if (this.readPlans.size >= READ_PLAN_CAPACITY) this.readPlans.clear();
    this.readPlans.set(key, plan);
    return plan;
  }

  /**
   * The references of a feature list, one per view, and the response's feature names in request
   * order (`view:*` expanded in place).
   */
  private resolveReferences(features: readonly string[]): {
    references: Reference[];
    featureNames: string[];
  } {
    const malformed: FieldViolation[] = [];
    const unknownViews: FieldViolation[] = [];
    const unknownFeatures: FieldViolation[] = [];
    const offline: string[] = [];
    const notLoaded: string[] = [];
    const byView = new Map<string, Reference>();
    const featureNames: string[] = [];
    const seen = new Set<string>();
    /** The features read so far, as `<view>:<feature>` (with `<view>:*` expanded). */
    const read = new Set<string>();
    features.forEach((reference, i) => {
      const field = `features[${i}]`;
      const colon = reference.indexOf(':');
      const viewName = reference.slice(0, colon);
      const featureName = reference.slice(colon + 1);
      if (colon <= 0 || featureName === '' || featureName.includes(':')) {
        malformed.push({
          field,
          description: `"${reference}" is not <view>:<feature> or <view>:*`,
          reason: 'INVALID_REFERENCE',
        });
        return;
      }
      if (seen.has(reference)) {
        malformed.push({
          field,
          description: `repeats ${reference}`,
          reason: 'DUPLICATE_REFERENCE',
        });
        return;
      }
      seen.add(reference);
      const served = this.served.get(viewName);
      const registered = this.parts.registry.view(viewName);
      if (served === undefined && registered !== undefined) {
        // Registered but not loaded here yet (a load under way, or one that failed and is
        // tried again): it exists (see `featureViewNotLoaded`).
        if (registered.definition.online === false) offline.push(viewName);
        else notLoaded.push(viewName);
        return;
      }
      if (served === undefined || registered === undefined) {
        unknownViews.push({
          field,
          description: `no feature view named ${viewName}`,
          reason: 'FEATURE_VIEW_NOT_FOUND',
        });
        return;
      }
      const definition = served.registered.definition;
      if (definition.online === false) {
        offline.push(viewName);
        return;
      }
      let entry = byView.get(viewName);
      if (entry === undefined) {
        entry = {
          view: viewName,
          served,
          registered,
          features: [],
          indexes: [],
          columns: [],
          signature: served.keyColumns.map((k) => `${k.joinKey}:${k.valueType}`).join('|'),
        };
        byView.set(viewName, entry);
      }
      const names = definition.features.map((f) => f.name);
      const wanted = featureName === '*' ? names : [featureName];
      for (const name of wanted) {
        const index = names.indexOf(name);
        if (index < 0) {
          unknownFeatures.push({
            field,
            description: `feature view ${viewName} has no feature ${name}`,
            reason: 'FEATURE_NOT_FOUND',
          });
        } else if (read.has(`${viewName}:${name}`)) {
          // `v:*` beside `v:f`: the response would name the column twice.
          malformed.push({
            field,
            description: `repeats ${viewName}:${name}, which another reference reads`,
            reason: 'DUPLICATE_REFERENCE',
          });
        } else {
          read.add(`${viewName}:${name}`);
          entry.features.push(name);
          entry.indexes.push(index);
          entry.columns.push(featureNames.length);
          featureNames.push(`${viewName}:${name}`);
        }
      }
    });
    if (malformed.length > 0)
      throw new InvalidArgumentError('invalid feature references', malformed);
    if (unknownViews.length > 0 || unknownFeatures.length > 0) {
      const named = [...unknownViews, ...unknownFeatures];
      throw new NotFoundError(named.map((v) => v.description).join('; '), {
        violations: named,
        reason: unknownViews.length > 0 ? 'FEATURE_VIEW_NOT_FOUND' : 'FEATURE_NOT_FOUND',
      });
    }
    if (offline.length > 0) {
      throw new FailedPreconditionError(`feature view ${offline.join(', ')} is not online`, {
        reason: 'FEATURE_VIEW_NOT_ONLINE',
        violations: [...new Set(offline)].map((view) => ({
          type: 'FEATURE_VIEW_NOT_ONLINE',
          subject: `feature_views/${view}`,
          description: 'the view is registered with online = false',
        })),
      });
    }
    if (notLoaded.length > 0) throw featureViewNotLoaded([...new Set(notLoaded)]);
    return { references: [...byView.values()], featureNames };
  }

  private entityKeys(
    request: GetOnlineFeaturesRequest,
    keyColumns: readonly KeyColumn[],
    rowCount: number,
    violations: FieldViolation[],
  ): string[] {
    const keys = new Array<string>(rowCount);
    const single = keyColumns.length === 1 ? keyColumns[0] : undefined;
    if (single !== undefined) {
      const column = ownColumn(request, single.joinKey);
      if (column === undefined) {
        violations.push({
          field: `entity_rows.${single.joinKey}`,
          description: 'is required by a requested view',
          reason: 'REQUIRED',
        });
        return keys;
      }
      for (let row = 0; row < rowCount; row++) {
        const kind = column.values[row]?.kind;
        // The common case, checked inline: a string key of a string entity.
        if (kind?.$case === 'stringValue' && single.valueType === ValueType.String) {
          keys[row] = kind.value;
          continue;
        }
        const result = keyPartOf(
          single.valueType,
          column.values[row],
          `entity_rows.${single.joinKey}.values[${row}]`,
        );
        if ('violation' in result) violations.push(result.violation);
        else keys[row] = String(result.part);
      }
      return keys;
    }
    const parts: (string | number)[][] = Array.from({ length: rowCount }, () => []);
    for (const key of keyColumns) {
      const column = ownColumn(request, key.joinKey);
      if (column === undefined) {
        violations.push({
          field: `entity_rows.${key.joinKey}`,
          description: 'is required by a requested view',
          reason: 'REQUIRED',
        });
        continue;
      }
      for (let row = 0; row < rowCount; row++) {
        const result = keyPartOf(
          key.valueType,
          column.values[row],
          `entity_rows.${key.joinKey}.values[${row}]`,
        );
        if ('violation' in result) violations.push(result.violation);
        else parts[row]?.push(result.part);
      }
    }
    return parts.map((p) => JSON.stringify(p));
  }

  /** WriteFeatures: validate all, store, then serve. */
  async write(
    request: WriteFeaturesRequest,
    now: number,
    reloaded = false,
  ): Promise<WriteFeaturesResponse> {
    const { limits } = this.parts.config;
    if (request.featureView === '') {
      throw new InvalidArgumentError('feature_view is required', [
        { field: 'feature_view', description: 'must not be empty', reason: 'REQUIRED' },
      ]);
    }
    const registered = this.parts.registry.view(request.featureView);
    if (registered === undefined) {
      // Perhaps applied on another replica since this one last reloaded (a pipeline applying a
      // view, then writing through a load balancer): refused only once storage says so too.
      if (
        !reloaded &&
        (await this.parts.registry.storedRegistration(request.featureView)) !== undefined
      ) {
        await this.parts.registry.reloadShared();
        await this.untilReconciled(request.featureView);
        return this.write(request, now, true);
      }
      throw featureViewNotFound(request.featureView);
    }
    if (registered.definition.source?.kind !== 'push') {
      throw new FailedPreconditionError(
        `feature view ${request.featureView} is stream-sourced: its values come from events`,
        {
          reason: 'NOT_PUSH_SOURCED',
          violations: [
            {
              type: 'NOT_PUSH_SOURCED',
              subject: `feature_views/${request.featureView}`,
              description: 'WriteFeatures writes to push-sourced views only',
            },
          ],
        },
      );
    }
    if (request.rows.length === 0) {
      throw new InvalidArgumentError('rows is required', [
        { field: 'rows', description: 'must hold at least one row', reason: 'REQUIRED' },
      ]);
    }
    if (request.rows.length > limits.maxRowsPerWrite) {
      throw limitExceeded('rows', `must hold at most ${limits.maxRowsPerWrite} rows`);
    }
    if (request.requestId.length > 128) {
      throw new InvalidArgumentError('request_id is too long', [
        { field: 'request_id', description: 'must be at most 128 characters', reason: 'TOO_LONG' },
      ]);
    }
    // Only a view not yet served as the registry has it waits, and for its own load only: a
    // long load (of another view, or of this one again after a long outage) would hold every
    // write.
    const before = this.served.get(request.featureView);
    if (before === undefined || !sameRegistration(before.registered, registered)) {
      await this.untilReconciled(request.featureView);
    }
    const served = this.served.get(request.featureView);
    if (served?.kind !== 'push') {
      // Registered but not loaded here (its load failed): it exists, and a retry may find it.
      if (this.parts.registry.view(request.featureView)?.definition.source?.kind === 'push') {
        throw featureViewNotLoaded([request.featureView]);
      }
      throw featureViewNotFound(request.featureView);
    }
    const definition = served.registered.definition;
    const prepared = prepareRows(request.rows, served.keyColumns, definition.features, now);
    if (prepared.violations.length > 0) {
      // Checked against this replica's copy of the view, which may be a reload behind storage's
      // (a feature added on another replica): refused only once that is ruled out.
      if (
        !reloaded &&
        (await this.parts.registry.storedDiffers(request.featureView, served.registered))
      ) {
        await this.parts.registry.reloadShared();
        await this.untilReconciled(request.featureView);
        return this.write(request, now, true);
      }
      throw new InvalidArgumentError(
        `invalid rows for feature view ${request.featureView}`,
        prepared.violations,
      );
    }
    // This replica's registry may be a reload behind storage's: a view deleted and applied again
    // on another replica meanwhile is another view, perhaps with other types, and rows checked
    // against the old one would land among its values. Asked of storage at every write (one read).
    const registration = await this.parts.registry.storedRegistration(request.featureView);
    if (registration !== served.registered.createTime.getTime()) {
      if (reloaded) {
        throw new AbortedError(
          `feature view ${request.featureView} changed while being written; retry`,
          { reason: 'FEATURE_VIEW_CHANGED' },
        );
      }
      await this.parts.registry.reloadShared();
      await this.untilReconciled(request.featureView);
      return this.write(request, now, true);
    }
    let stored: StoredRow[];
    try {
      stored = await storeRows(
        this.parts.rows,
        this.parts.config.replicaId,
        served.registered,
        prepared.rows,
      );
    } catch (error) {
      if (error instanceof RowsMaybeStoredError) {
        // Those storage took are served here and announced once a read of them says which.
        this.announceLater(error);
        throw error.cause;
      }
      if (!(error instanceof RowsNotAnnouncedError)) throw error;
      // Stored: served here as storage holds them, and announced to the others once it can be.
      this.serveWritten(request.featureView, served, error.rows, now);
      this.announceLater(error);
      throw error;
    }
    this.serveWritten(request.featureView, served, stored, now);
    return { rowsWritten: stored.length, rowsSkippedOlder: request.rows.length - stored.length };
  }

  /** The rows of a failed write that storage holds as that write stored them. */
  private async storedOf(pending: RowsMaybeStoredError): Promise<StoredRow[]> {
    const found = await this.parts.rows.readRows(pending.attempted.map((a) => a.id));
    return pending.attempted
      .filter(({ id, version }) => found.get(id)?.version === version)
      .map(({ row }) => row);
  }

  /** Serves rows of a failed write found stored, if the view served is still the one written. */
  private serveSettled(write: WriteOrigin, rows: StoredRow[]): void {
    const served = this.served.get(write.view);
    if (served?.kind === 'push' && served.registered.createTime.getTime() === write.registration) {
      this.serveWritten(write.view, served, rows, Date.now());
    }
  }

  /** Writes rows this replica stored to the view's table. */
  private serveWritten(view: string, served: ServedPush, stored: StoredRow[], now: number): void {
    served.table.write(stored, now);
    // The table may be being loaded again (a reconcile, a reload), or have been while the rows
    // were stored, from a scan that passed them; and the sync skips this replica's own entries.
    const loading = this.duringLoad.get(view);
    if (loading?.createTime === served.registered.createTime.getTime()) {
      loading.written.push(stored);
    }
    const current = this.served.get(view);
    if (
      current !== served &&
      current?.kind === 'push' &&
      current.registered.createTime.getTime() === served.registered.createTime.getTime()
    ) {
      current.table.write(stored, now);
    }
  }

  /**
   * Appends the change-log entry of rows stored without one (see {@link RowsNotAnnouncedError}),
   * trying again after 0.5 s, doubling to 30 s, while storage fails; until this replica stops
   * (the others then serve the rows after their next load of the view). Not once the view was
   * deleted: the rows went with it (and replicas serving a view created since under its name
   * skip the entry, which names the view's creation). At most {@link ANNOUNCING_MAX} writes wait,
   * and as many failed writes wait to be read back; beyond, the oldest is given up.
   *
   * Rows whose write failed (see {@link RowsMaybeStoredError}) are read back first: those stored
   * with this write's version (not since replaced by a newer write) are served here and announced;
   * without the read, this replica and the others would serve the values before the write while
   * a replica started later serves the write's.
   */
  private announceLater(pending: RowsNotAnnouncedError | RowsMaybeStoredError, waitMs = 500): void {
    const { write } = pending;
    const rowCount =
      pending instanceof RowsMaybeStoredError ? pending.attempted.length : pending.rows.length;
    if (this.stopped) {
      this.parts.logger.warn(
        { view: write.view, rows: rowCount },
        pending instanceof RowsMaybeStoredError
          ? 'stopping with rows whose write failed unsettled: other replicas serve what storage took after their next load'
          : 'stopping with stored rows not announced: other replicas serve them after their next load',
      );
      return;
    }
    const timer = setTimeout(() => {
      this.announcing.delete(timer);
      this.readingBack.delete(timer);
      let next = pending;
      const attempt = async () => {
        const registration = await this.parts.registry.storedRegistration(write.view);
        if (registration !== write.registration) return;
        let rows: StoredRow[];
        if (pending instanceof RowsMaybeStoredError) {
          rows = await this.storedOf(pending);
          if (rows.length === 0) return;
          this.serveSettled(write, rows);
          next = new RowsNotAnnouncedError(write, rows, pending.cause);
        } else {
          rows = pending.rows;
        }
        await this.parts.rows.appendChanges(write, rows.map(changedRowOf));
        this.parts.logger.info(
          { view: write.view, rows: rows.length },
          'stored rows announced after a failure',
        );
      };
      const running = attempt().catch((error: unknown) => {
        // Stopping (storage may be closed): said once, by the call below.
        if (this.stopped) {
          this.announceLater(next);
          return;
        }
        if (next instanceof RowsMaybeStoredError) {
          // Every write refused in an outage waits here: its client was told, so only debug.
          this.parts.logger.debug(
            { err: error, view: write.view, rows: rowCount },
            'rows whose write failed not read back yet; trying again',
          );
        } else {
          this.parts.logger.warn(
            { err: error, view: write.view, rows: next.rows.length },
            'stored rows not announced to the other replicas yet; trying again',
          );
        }
        this.announceLater(next, Math.min(30_000, 2 * waitMs));
      });
      this.settling.add(running);
      void running.finally(() => this.settling.delete(running));
    }, waitMs);
    if (pending instanceof RowsMaybeStoredError) {
      this.readingBack.set(timer, pending);
      if (this.readingBack.size <= ANNOUNCING_MAX / 2) this.readBackFull = false;
      const given = giveUpOldest(this.readingBack);
      if (given !== undefined) {
        // Once per spell: in an outage every refused write comes here, and its client was told.
        this.parts.logger[this.readBackFull ? 'debug' : 'warn'](
          { view: given.write.view, rows: given.attempted.length },
          'too many failed writes waiting to be read back: given up on the oldest; other replicas serve what storage took of them after their next load',
        );
        this.readBackFull = true;
      }
      return;
    }
    this.announcing.set(timer, pending);
    const given = giveUpOldest(this.announcing);
    if (given !== undefined) {
      this.parts.logger.error(
        { view: given.write.view, rows: given.rows.length },
        'too many stored writes not announced: given up; other replicas serve them after their next load',
      );
    }
  }

  /**
   * Applies the change-log entries written since the last sync, whatever views are loading
   * meanwhile: a write to one view must not wait minutes for another's load to be seen here. A
   * table being loaded gets the entries applied meanwhile before it is served (see
   * `loadPushTable`). First starts loading again the views whose load failed.
   */
  syncChanges(): Promise<void> {
    if (this.stopped) return Promise.resolve();
    // A call while one runs (a long reload) shares its outcome.
    this.syncing ??= this.syncOnce().finally(() => {
      this.syncing = undefined;
    });
    return this.syncing;
  }

  private async syncOnce(): Promise<void> {
    if (this.retryReconcileAt !== undefined && Date.now() >= this.retryReconcileAt) {
      // Not awaited: the sync goes on while they load. Cleared so that the next syncs do not
      // start them again meanwhile; a failure sets it again, a longer wait away (`noteLoad`).
      this.retryReconcileAt = undefined;
      void this.reconcile(this.parts.registry.allViews());
    }
    if (this.stopped) return;
    // Entries older than the change log's retention are gone: after as long without a sync
    // (storage unreachable), following the log would miss the writes in them.
    const reload =
      Date.now() - this.lastSyncAt.getTime() > this.parts.config.changeLogRetentionMs / 2;
    // A reload that failed is tried again after a wait (1 s doubling to 30 s): each is a scan.
    // Meanwhile this replica is not in sync, which the caller hears.
    if (reload && Date.now() < this.reloadRetry.at) {
      throw new UnavailableError('push-sourced views not loaded again yet after a failure');
    }
    const run = reload ? this.reloadPushTables() : this.syncNow();
    this.syncRun = run.then(
      () => undefined,
      () => undefined,
    );
    try {
      await run;
      if (reload) this.reloadRetry = { at: 0, waitMs: 0 };
    } catch (error) {
      if (reload) {
        const waitMs = Math.min(30_000, Math.max(1_000, 2 * this.reloadRetry.waitMs));
        this.reloadRetry = { at: Date.now() + waitMs, waitMs };
      }
      throw error;
    }
  }

  /**
   * Loads every push-sourced view from storage again, and follows the change log from its current
   * end, as at start-up (see `load`). One view after another (every replica reloads at once when
   * storage returns from an outage), each in its view's queue (see `queue`): a load of the view
   * under way (a reconcile's) ends first, and a table whose load began after `position` was read
   * is not loaded again: it holds everything up to it.
   */
  private async reloadPushTables(): Promise<void> {
    const position = await this.parts.rows.lastSequence();
    const started = new Date();
    this.parts.logger.warn(
      { lastSync: this.lastSyncAt },
      'no sync for half the change log retention; loading push-sourced views again',
    );
    // Read after `position`: the loads numbered later read the change log's end after it. A
    // view loading now is among those loaded again: its load may have read storage before the
    // outage, and the sync, failing since, kept nothing of what was written meanwhile.
    const loadedBefore = this.loadsBegun;
    for (const name of new Set([...this.served.keys(), ...this.pending.keys()])) {
      if (this.stopped) throw new UnavailableError('stopping: feature views not loaded again');
      // Not behind a stream view's work (an aggregation starting or stopping): no sync runs
      // meanwhile, for any view.
      const kind =
        this.served.get(name)?.kind ?? this.parts.registry.view(name)?.definition.source?.kind;
      if (kind !== 'push') continue;
      await this.queue(name, async () => {
        const served = this.served.get(name);
        if (served?.kind !== 'push' || served.load > loadedBefore || this.stopped) return;
        await this.loadPushTable(served);
      });
    }
    this.position = position;
    this.appliedAhead.clear();
    this.passedOver.clear();
    this.gapSince = undefined;
    this.lastSyncAt = started;
  }

  private async syncNow(): Promise<void> {
    const started = new Date();
    if (this.passedOver.size > 0) await this.applyPassedOver(started.getTime());
    for await (const entry of this.parts.rows.changesAfter(this.position)) {
      if (entry.sequence <= this.position || this.appliedAhead.has(entry.sequence)) continue;
      this.applyEntry(entry);
      this.appliedAhead.add(entry.sequence);
    }
    this.advancePosition(started.getTime());
    this.lastSyncAt = started;
  }

  /**
   * Writes another replica's rows of `entry` to the table it is newer than, and keeps the entry
   * for the view's table being loaded, if any (see `loadPushTable`).
   */
  private applyEntry(entry: ChangeLogEntry): void {
    if (entry.origin === this.parts.config.replicaId) return;
    const loading = this.duringLoad.get(entry.view);
    if (
      loading !== undefined &&
      (entry.registration === undefined || entry.registration === loading.createTime)
    ) {
      stageSynced(loading, entry);
    }
    const served = this.served.get(entry.view);
    if (
      served?.kind !== 'push' ||
      entry.sequence <= served.loadedAfter ||
      // Rows of a view deleted since (the entry written late, after its sequence was taken).
      (entry.registration !== undefined &&
        entry.registration !== served.registered.createTime.getTime())
    ) {
      return;
    }
    const types = featureTypes(served.registered.definition);
    served.table.write(
      entry.rows.map((row) => onlineRowOf(row, types, entry.order)),
      Date.now(),
    );
  }

  /**
   * Applies the entries the position moved past at a gap that have been stored since (a writer
   * that stalled between its sequence and its entry): following the log from the position alone
   * would never read them, and their rows would be missing here until written again. Looked for
   * at every sync for {@link PASSED_OVER_WINDOW_MS}. Applying one late is safe: a table keeps the
   * newer of two writes of a record, whatever the order they arrive in.
   */
  private async applyPassedOver(now: number): Promise<void> {
    for (const [sequence, at] of this.passedOver) {
      if (now - at <= PASSED_OVER_WINDOW_MS) break;
      this.passedOver.delete(sequence);
    }
    if (this.passedOver.size === 0) return;
    for (const entry of await this.parts.rows.changesAmong([...this.passedOver.keys()])) {
      this.passedOver.delete(entry.sequence);
      this.applyEntry(entry);
    }
  }

  private advancePosition(now: number): void {
    for (;;) {
      // The sequences up to the highest seen when the wait began were all taken by then: one
      // still missing has been waited for as long, and is passed at once.
      if (this.position >= this.gapCovers) this.gapSince = undefined;
      if (this.appliedAhead.delete(this.position + 1)) {
        this.position++;
        continue;
      }
      if (this.appliedAhead.size === 0) return;
      // A gap: a writer took the sequence number but its entry is not there yet (or never will
      // be, if it failed in between). Wait a while, then move on.
      if (this.gapSince === undefined) {
        this.gapSince = now;
        this.gapCovers = 0;
        for (const sequence of this.appliedAhead) {
          if (sequence > this.gapCovers) this.gapCovers = sequence;
        }
      }
      if (now - this.gapSince < CHANGE_LOG_GAP_WAIT_MS) return;
      this.position++;
      // The position only grows (a reload clears the map): the map is in time order.
      this.passedOver.set(this.position, now);
      if (this.passedOver.size > PASSED_OVER_MAX) {
        this.passedOver.delete(this.passedOver.keys().next().value as number);
      }
      this.parts.logger.warn(
        { sequence: this.position },
        `change-log entry missing ${CHANGE_LOG_GAP_WAIT_MS / 1000} s after its sequence was taken; following the later ones, and looking for it for ${PASSED_OVER_WINDOW_MS / 60_000} min`,
      );
    }
  }

  /** Sheds records past their TTL from memory, as storage's TTL index does. */
  removeExpired(now: number): void {
    for (const served of this.served.values()) {
      if (served.kind === 'push') served.table.removeExpired(now);
    }
  }

  /**
   * Each stream view's event counts and processing delay, as GetAggregationStatus reports them,
   * without the pending count (which asks NATS).
   */
  aggregationCounts(): AggregationCounts[] {
    const counts: AggregationCounts[] = [];
    for (const [view, served] of this.served) {
      if (served.kind === 'stream') counts.push(countsOf(view, served.aggregation.progress(true)));
    }
    return counts;
  }

  /** GetAggregationStatus. */
  async aggregationStatus(name: string, connected: boolean): Promise<AggregationStatus> {
    if (name === '') {
      throw new InvalidArgumentError('feature_view is required', [
        { field: 'feature_view', description: 'must not be empty', reason: 'REQUIRED' },
      ]);
    }
    const registered = this.parts.registry.view(name);
    if (registered === undefined) throw featureViewNotFound(name);
    if (registered.definition.source?.kind !== 'stream') {
      throw new FailedPreconditionError(
        `feature view ${name} is push-sourced: it has no aggregation`,
        {
          reason: 'NOT_STREAM_SOURCED',
          violations: [
            {
              type: 'NOT_STREAM_SOURCED',
              subject: `feature_views/${name}`,
              description: 'GetAggregationStatus reports on stream-sourced views only',
            },
          ],
        },
      );
    }
    const served = this.served.get(name);
    if (served?.kind !== 'stream') {
      return {
        featureView: name,
        state: AggregationState.AGGREGATION_STATE_BACKFILLING,
        stateMessage: 'starting',
        pendingEvents: 0,
        pendingEventsUnknown: true,
        lastEventTime: undefined,
        lastProcessedTime: undefined,
        lastCheckpointTime: undefined,
        processingDelay: undefined,
        eventsProcessed: 0,
        eventsDroppedLate: 0,
        eventsDroppedInvalid: 0,
        eventsDuplicate: 0,
      };
    }
    // The lag as NATS counts it; unknown while NATS is unreachable (the state says so).
    const pending = connected
      ? await served.aggregation.pending().catch(() => undefined)
      : undefined;
    const progress = served.aggregation.progress(connected);
    const c = progress.counters;
    const counts = countsOf(name, progress);
    const state = {
      backfilling: AggregationState.AGGREGATION_STATE_BACKFILLING,
      running: AggregationState.AGGREGATION_STATE_RUNNING,
      paused: AggregationState.AGGREGATION_STATE_PAUSED,
      failed: AggregationState.AGGREGATION_STATE_FAILED,
    }[progress.phase];
    return {
      featureView: name,
      state,
      stateMessage: progress.message,
      pendingEvents: pending ?? 0,
      pendingEventsUnknown: pending === undefined,
      lastEventTime: c.lastEventTime === null ? undefined : new Date(c.lastEventTime),
      lastProcessedTime: c.lastProcessedTime === null ? undefined : new Date(c.lastProcessedTime),
      lastCheckpointTime: progress.lastCheckpointTime,
      processingDelay: counts.delayMs === undefined ? undefined : durationOf(counts.delayMs),
      eventsProcessed: counts.processed,
      eventsDroppedLate: counts.droppedLate,
      eventsDroppedInvalid: counts.droppedInvalid,
      eventsDuplicate: counts.duplicate,
    };
  }

  /**
   * The entity keys of push view `name`'s records that a TTL of `ttlMs` drops within the next
   * `horizonMs`, soonest first, at most `limit` (see `ExpiryRetiming.start`); none for a view not
   * served here.
   */
  expiringSoon(name: string, ttlMs: number, horizonMs: number, limit: number): string[] {
    const served = this.served.get(name);
    if (served?.kind !== 'push') return [];
    const now = Date.now();
    return served.table.expiringWithin(ttlMs, now, now + horizonMs, limit);
  }

  /** Stops every aggregation (with a last checkpoint). */
  async stop(): Promise<void> {
    this.stopped = true;
    if (this.announcing.size > 0) {
      this.parts.logger.warn(
        { writes: this.announcing.size },
        'stopping with stored rows not announced: other replicas serve them after their next load',
      );
    }
    if (this.readingBack.size > 0) {
      this.parts.logger.warn(
        { writes: this.readingBack.size },
        'stopping with failed writes not read back: other replicas serve what storage took of them after their next load',
      );
    }
    for (const timer of [...this.announcing.keys(), ...this.readingBack.keys()]) {
      clearTimeout(timer);
    }
    this.announcing.clear();
    this.readingBack.clear();
    // Loads waiting for a turn to read storage give up at once.
    for (const wake of this.loadWaiters.splice(0)) wake();
    // A load under way (a reconcile's, a reload's, a refill's) ends at its next 1,000 records, and
    // a reconcile starts nothing more (an aggregation it was starting is stopped once started).
    // Storage that does not answer is waited for only so long: the aggregations' last checkpoints
    // must be taken within the shutdown deadline.
    const deadline = Date.now() + STOP_WAIT_FOR_READS_MS;
    await settledBy(Promise.all(this.pending.values()), deadline);
    // A view deleted (or applied again) that a reconcile stalled in storage did not retire yet
    // takes no last checkpoint (its checkpoints are deleted), as a retired one.
    await Promise.all(
      [...this.served].map(([name, served]) =>
        served.kind === 'stream'
          ? served.aggregation.stop(
              this.parts.registry.view(name)?.createTime.getTime() ===
                served.registered.createTime.getTime(),
            )
          : Promise.resolve(),
      ),
    );
    // A sync, refill, read-back or announcement still using storage (a slow one) is waited for a
    // little more, so that it does not outlive the storage it uses.
    await settledBy(Promise.all([this.syncRun, ...this.refilling, ...this.settling]), deadline);
  }
}

/** Whether two views' key columns read entity keys alike (the same join keys and types, in order). */
function sameKeyColumns(a: readonly KeyColumn[], b: readonly KeyColumn[]): boolean {
  return (
    a.length === b.length &&
    a.every((k, i) => {
      const other = b[i];
      return other !== undefined && k.joinKey === other.joinKey && k.valueType === other.valueType;
    })
  );
}

/** Waits for `promise` to settle, or for `deadline` (ms since the epoch) to pass. */
async function settledBy(promise: Promise<unknown>, deadline: number): Promise<void> {
  const left = Math.max(0, deadline - Date.now());
  await withTimeout(promise, left, () => new Error('deadline')).catch(() => undefined);
}

function selectColumns<V>(
  all: { rowCount: number; values: (V | null)[]; statuses: Uint8Array; eventTimes: Float64Array },
  indexes: readonly number[],
): { values: (V | null)[]; statuses: Uint8Array; eventTimes: Float64Array } {
  const rowCount = all.rowCount;
  const values = new Array<V | null>(rowCount * indexes.length);
  const statuses = new Uint8Array(rowCount * indexes.length);
  indexes.forEach((index, f) => {
    for (let row = 0; row < rowCount; row++) {
      values[f * rowCount + row] = all.values[index * rowCount + row] ?? null;
      statuses[f * rowCount + row] = all.statuses[index * rowCount + row] ?? 0;
    }
  });
  return { values, statuses, eventTimes: all.eventTimes };
}

/**
 * The request's column for `joinKey`, if it sent one. Not a plain index: the decoded map is an
 * object, where a join key such as `constructor` would find Object's own property.
 */
function ownColumn(
  request: GetOnlineFeaturesRequest,
  joinKey: string,
): GetOnlineFeaturesRequest['entityRows'][string] | undefined {
  return Object.hasOwn(request.entityRows, joinKey) ? request.entityRows[joinKey] : undefined;
}

/** Each feature's name and value type, as {@link onlineRowOf} reads a row's values. */
function featureTypes(definition: FeatureViewDefinition): (readonly [string, ValueType])[] {
  return definition.features.map((f) => [f.name, f.valueType] as const);
}

/** A stored or logged row as served from memory, `order` its write's order (see `rowVersion`). */
function onlineRowOf(
  row: FeatureRowDocument | ChangedRow,
  types: readonly (readonly [string, ValueType])[],
  order: number,
): OnlineRow<FeatureValueMessage> {
  const values: Record<string, FeatureValueMessage | null> = {};
  for (const [name, type] of types)
    values[name] = messageOfStoredValue(type, row.values[name]) ?? null;
  return { entityKey: row.entityKey, eventTime: row.eventTime, values, order };
}

/**
 * Keeps, of each row of `entry` and the row staged for its key, the one a table keeps (the later
 * event time; on a tie, the higher order, then the later write: see online-table.ts).
 */
function stageSynced(during: DuringLoad, entry: ChangeLogEntry): void {
  for (const row of entry.rows) {
    const staged = during.synced.get(row.entityKey);
    if (
      staged === undefined ||
      row.eventTime > staged.row.eventTime ||
      (row.eventTime === staged.row.eventTime && entry.order >= staged.order)
    ) {
      during.synced.set(row.entityKey, { row, order: entry.order });
    }
  }
}

/**
 * Past {@link ANNOUNCING_MAX} waiting writes, cancels the oldest one's timer and returns it.
 */
function giveUpOldest<W>(waiting: Map<NodeJS.Timeout, W>): W | undefined {
  if (waiting.size <= ANNOUNCING_MAX) return undefined;
  const oldest = waiting.entries().next();
  if (oldest.done) return undefined;
  const [timer, write] = oldest.value;
  clearTimeout(timer);
  waiting.delete(timer);
  return write;
}

/** A row stored by {@link storeRows}, with its place among writes of its event time. */
export type StoredRow = PreparedRow & { readonly order: number };

/**
 * Rows were stored but their change-log entry could not be appended (storage failed between the
 * two): the other replicas would not learn of them until they load the view again. UNAVAILABLE,
 * since a retry is safe (it writes them again, as a newer write, and announces that).
 */
export class RowsNotAnnouncedError extends UnavailableError {
  constructor(
    readonly write: WriteOrigin,
    readonly rows: StoredRow[],
    cause: unknown,
  ) {
    super(
      `rows of feature view ${write.view} stored, but not announced to the other replicas yet; writing them again is safe`,
      { cause },
    );
  }
}

/**
 * Storage failed to answer a write of rows, perhaps after taking some or all of them (a reply lost
 * after the commit, a MongoDB bulk write that failed part-way): which, only a read can tell. The
 * caller gets `cause`, the failure; the writer settles the rows by reading them back
 * (see `OnlineViews.announceLater`).
 */
export class RowsMaybeStoredError extends Error {
  constructor(
    readonly write: WriteOrigin,
    /** Every row the write tried, with the id and version each was written with. */
    readonly attempted: readonly {
      readonly row: StoredRow;
      readonly id: string;
      readonly version: string;
    }[],
    cause: unknown,
  ) {
    super(
      `the write of ${attempted.length} rows of feature view ${write.view} failed, perhaps after storing some of them`,
      { cause },
    );
  }
}

/**
 * Writes prepared rows of a push-sourced view to storage, only where newer than the stored
 * record, then appends the stored ones to the change log. The write's order is taken first: it
 * orders writes of equal event times (see `rowVersion`). Returns the rows stored; throws
 * {@link RowsNotAnnouncedError} when they were stored but the change log could not be written,
 * and {@link RowsMaybeStoredError} when the write itself failed.
 */
export async function storeRows(
  repository: FeatureRowRepository,
  origin: string,
  registered: Pick<Registered<FeatureViewDefinition>, 'definition' | 'createTime'>,
  rows: readonly PreparedRow[],
): Promise<StoredRow[]> {
  const definition = registered.definition;
  const winners = latestRowPerKey(rows);
  const candidates =
    winners === undefined
      ? [...rows]
      : [...winners.values()].sort((a, b) => a - b).map((i) => rows[i] as PreparedRow);
  if (candidates.length === 0) return [];
  const order = await repository.takeWriteOrder(definition.name);
  const registration = registered.createTime.getTime();
  const documents: FeatureRowDocument[] = candidates.map((row) => ({
    id: rowId(definition.name, registration, row.entityKey),
    view: definition.name,
    entityKey: row.entityKey,
    eventTime: row.eventTime,
    version: rowVersion(row.eventTime, order),
    values: row.stored,
    ...(definition.ttlMs > 0 ? { expiresAt: new Date(row.eventTime + definition.ttlMs) } : {}),
    registration,
  }));
  const write = {
    view: definition.name,
    registration,
    origin,
    order,
  };
  let outcomes: ConditionalWriteOutcome[];
  try {
    outcomes = await repository.write(documents);
  } catch (error) {
    throw new RowsMaybeStoredError(
      write,
      candidates.map((row, i) => {
        const { id, version } = documents[i] as FeatureRowDocument;
        return { row: { ...row, order }, id, version };
      }),
      error,
    );
  }
  const stored = candidates
    .filter((_, i) => outcomes[i] !== 'skipped')
    .map((row) => ({ ...row, order }));
  try {
    await repository.appendChanges(write, stored.map(changedRowOf));
  } catch (error) {
    throw new RowsNotAnnouncedError(write, stored, error);
  }
  return stored;
}

function changedRowOf(row: PreparedRow): ChangedRow {
  return { entityKey: row.entityKey, eventTime: row.eventTime, values: row.stored };
}

/**
 * Whether a stream view's new definition aggregates what its current one does, column for column:
 * the same stream source (every field of which is immutable, but a registry written by another
 * build may differ), the same entities (so the same key columns) and the same aggregations in
 * the same feature order with the same value types (the running aggregator's columns, which
 * reads index by the new definition; features may be reordered).
 */
function sameStreamView(current: FeatureViewDefinition, next: FeatureViewDefinition): boolean {
  return (
    current.source?.kind === 'stream' &&
    next.source?.kind === 'stream' &&
    sameStreamSource(current.source, next.source) &&
    JSON.stringify(current.entities) === JSON.stringify(next.entities) &&
    JSON.stringify(windowAggregationSpecs(current)) === JSON.stringify(windowAggregationSpecs(next))
  );
}
