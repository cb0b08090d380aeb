/**
 * The configuration held in memory: every stored layer, experiment, holdout and allocation, and the
 * evaluator snapshot compiled from them. Resolve and the read RPCs are served from here and never
 * touch storage. It changes in three ways, serialized so a reload never interleaves with a change:
 * - a change made by this replica is applied at once (when it is the next version; otherwise the
 *   whole configuration is reloaded, since another replica's change came in between);
 * - a `ConfigChangeEvent` from another replica triggers a reload;
 * - a periodic check compares the stored version with the one held, so a replica sees every
 *   change within one interval even when NATS is down.
 */
import type { Logger } from '../../platform/src/logging';
import {
  buildSnapshot,
  EMPTY_ALL,
  OPERATOR_IN_ALL,
  NOT_OF_VALUE,
  UNSUPPORTED_REGEX,
  type AssignmentSnapshot,
  type ExperimentDefinition,
} from './domain';
import type { ConfigurationRecords, ConfigurationStore } from './store/configuration-store';
import { FreshRuns } from '../../platform/src/fresh-runs';
import {
  allocationDefinition,
  etagOf,
  experimentDefinition,
  holdoutDefinition,
  layerDefinition,
  type AllocationDocument,
  type ExperimentDocument,
  type HoldoutDocument,
  type LayerDocument,
  type Stored,
} from './store/documents';

/** One stored resource changed by this replica: its new state, or undefined when deleted. */
export type ConfigurationChange =
  | {
      readonly type: 'layer';
      readonly id: string;
      readonly stored: Stored<LayerDocument> | undefined;
    }
  | {
      readonly type: 'experiment';
      readonly id: string;
      readonly stored: Stored<ExperimentDocument> | undefined;
    }
  | {
      readonly type: 'holdout';
      readonly id: string;
      readonly stored: Stored<HoldoutDocument> | undefined;
    }
  | {
      readonly type: 'allocation';
      readonly id: string;
      readonly stored: Stored<AllocationDocument> | undefined;
    };

/** One immutable configuration version: records by id, sorted ids and the compiled snapshot. */
export interface ConfigurationView {
  readonly version: number;
  readonly layers: ReadonlyMap<string, Stored<LayerDocument>>;
  readonly experiments: ReadonlyMap<string, Stored<ExperimentDocument>>;
  readonly holdouts: ReadonlyMap<string, Stored<HoldoutDocument>>;
  readonly allocations: ReadonlyMap<string, Stored<AllocationDocument>>;
  /** Experiment definitions (with etags), for validation contexts. */
  readonly experimentDefinitions: readonly ExperimentDefinition[];
  readonly snapshot: AssignmentSnapshot;
  /** Every surface an experiment or holdout names, sorted: what an empty Resolve surface list means. */
  readonly surfaces: readonly string[];
}

/** What a load says of conditions stored before a rule they break (see `outdatedConditions`). */
const OUTDATED_CONDITION_WARNINGS: readonly { reasons: readonly string[]; message: string }[] = [
  {
    reasons: [UNSUPPORTED_REGEX],
    message:
      'conditions with a $regex RE2 does not accept (stored before $regex was RE2) are evaluated with JavaScript RegExp, which can backtrack for seconds; rewrite them in RE2 syntax',
  },
  {
    reasons: [EMPTY_ALL, NOT_OF_VALUE],
    message:
      'conditions with an empty $all (matching every unit) or a $not of a plain value (read as "not equal"), stored before those were refused, are evaluated as they were; rewrite them',
  },
  {
    reasons: [OPERATOR_IN_ALL],
    message:
      'conditions with an invalid operator inside $all (MongoDB takes only {$elemMatch: …} there), stored before it was refused, are evaluated as they were; rewrite them',
  },
];

function byId<T extends { readonly id: string }>(
  items: readonly Stored<T>[],
): Map<string, Stored<T>> {
  const sorted = [...items].sort((a, b) =>
    a.doc.id < b.doc.id ? -1 : a.doc.id > b.doc.id ? 1 : 0,
  );
  return new Map(sorted.map((item) => [item.doc.id, item]));
}

function compile(records: ConfigurationRecords): ConfigurationView {
  const layers = byId(records.layers);
  const experiments = byId(records.experiments);
  const holdouts = byId(records.holdouts);
  const allocations = byId(records.allocations);
  const experimentDefinitions = [...experiments.values()].map((s) =>
    experimentDefinition(s.doc, etagOf(s)),
  );
  const snapshot = buildSnapshot({
    layers: [...layers.values()].map(layerDefinition),
    experiments: experimentDefinitions,
    holdouts: [...holdouts.values()].map((s) => holdoutDefinition(s.doc, etagOf(s))),
    allocations: [...allocations.values()].map((s) => allocationDefinition(s.doc)),
  });
  const surfaces = new Set<string>();
  for (const { doc } of experiments.values()) for (const s of doc.surfaces) surfaces.add(s);
  for (const { doc } of holdouts.values()) for (const s of doc.surfaces) surfaces.add(s);
  return {
    version: records.version,
    layers,
    experiments,
    holdouts,
    allocations,
    experimentDefinitions,
    snapshot,
    surfaces: [...surfaces].sort(),
  };
}

/** The records of `view` with `change` applied, as `version`. */
function withChange(
  view: ConfigurationView,
  version: number,
  change: ConfigurationChange,
): ConfigurationRecords {
  // Each kind's records as they are, or with the changed one replaced (or gone).
  const records = <T>(type: ConfigurationChange['type'], map: ReadonlyMap<string, Stored<T>>) =>
    change.type === type
      ? replaced(map, change.id, change.stored as Stored<T> | undefined)
      : [...map.values()];
  return {
    version,
    layers: records('layer', view.layers),
    experiments: records('experiment', view.experiments),
    holdouts: records('holdout', view.holdouts),
    allocations: records('allocation', view.allocations),
  };
}

function replaced<T>(
  map: ReadonlyMap<string, Stored<T>>,
  id: string,
  stored: Stored<T> | undefined,
): Stored<T>[] {
  const items = [...map.values()].filter((item) => (item.doc as { id: string }).id !== id);
  if (stored) items.push(stored);
  return items;
}

/** How long a version storage did not hold is not looked for again (see `catchUp`). */
const CATCH_UP_INTERVAL_MS = 1_000;

export class LiveConfiguration {
  private view: ConfigurationView | undefined;
  private chain: Promise<unknown> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;
  /** Whether the periodic check runs (see `startPolling`). */
  private polling = false;
  /** The check under way, and the last schedule step started (see `stopPolling`). */
  private checking: Promise<void> | undefined;
  private scheduling: Promise<void> | undefined;
  /**
   * A change of this replica is stored but its version bump failed, so no replica would reload
   * for it (nor this one: its view is the one before). The next check bumps the version.
   */
  private unannounced = false;
  /** Storage may hold a change no version bump announced (see {@link unsure}). */
  private unsureOfStorage = false;
  /** The outdated conditions last warned about, to warn again only when they change. */
  private legacyWarned = '';
  /** The refresh `catchUp` callers share, while one runs. */
  private catchingUp: Promise<boolean> | undefined;
  /** The full reads `readAgain` callers share. */
  private readonly fullReads = new FreshRuns(() => this.load());
  /** The last version a catch-up found storage not to hold, and when (see `catchUp`). */
  private missingFrom = Infinity;
  private missingAt = -Infinity;

  constructor(
    private readonly store: ConfigurationStore,
    private readonly logger: Logger,
  ) {}

  /** The configuration in effect. Throws when nothing has been loaded yet. */
  current(): ConfigurationView {
    if (!this.view) throw new Error('the configuration has not been loaded');
    return this.view;
  }

  /** Whether the periodic check runs: started, and not stopped (see `stopPolling`). */
  isPolling(): boolean {
    return this.polling;
  }

  /** Whether a configuration has been loaded. */
  loaded(): boolean {
    return this.view !== undefined;
  }

  /** Whether a change of this replica is stored but its version bump failed (see `commit`). */
  hasUnannouncedChange(): boolean {
    return this.unannounced;
  }

  /** Loads everything from storage; throws when storage is unreachable. */
  load(): Promise<void> {
    return this.exclusive(async () => {
      this.adopt(compile(await this.store.readAll()));
    });
  }

  /**
   * Records that a write of this replica may have changed storage with no version bump for it: a
   * storage call answered as failed may have been made all the same (a timeout after the write
   * landed). As after a failed bump, the next check bumps the version, so that every replica,
   * this one too, reads everything, and a change this replica commits before then reads
   * everything as well; unlike it, the write goes on as made (what it was asked to change is
   * announced; only its aftermath is in doubt).
   */
  unsure(): void {
    this.unsureOfStorage = true;
  }

  /**
   * Whether storage may hold a change of this replica no bump announced yet (see {@link unsure}):
   * its write lease is then released unsettled, so that whichever replica takes it next reads
   * everything and announces it, should this one stop before its next check.
   */
  isUnsure(): boolean {
    return this.unsureOfStorage;
  }

  /**
   * Reloads when the stored version differs from the one held, after announcing a change whose
   * version bump failed. Returns true when it reloaded.
   *
   * `everything`: under a write lease taken over from a writer that may have stored a change
   * without bumping the version (it died, or its bump failed; see `HeldLease.takenOver`), the
   * version cannot tell, so this reloads whatever it says, and then bumps it so that every other
   * replica reloads that change too. Only once read: a read that keeps failing (each next holder
   * tries again) would otherwise make every replica reload at each takeover.
   */
  refresh(everything = false): Promise<boolean> {
    return this.exclusive(async () => {
      if ((this.unannounced || this.unsureOfStorage) && !everything) {
        // Cleared before the bump, so that a doubt raised while it is under way is kept for the
        // next check; restored should the bump fail.
        const unsure = this.unsureOfStorage;
        this.unsureOfStorage = false;
        try {
          await this.store.bumpVersion();
        } catch (error) {
          this.unsureOfStorage ||= unsure;
          throw error;
        }
        if (this.unannounced) {
          this.logger.info({}, 'configuration change announced after its version bump had failed');
        }
        this.unannounced = false;
      }
      if (!everything && this.view && (await this.store.version()) === this.view.version) {
        return false;
      }
      // A doubt this read and bump settle; one raised meanwhile is kept for the next check.
      const unsure = everything && this.unsureOfStorage;
      if (unsure) this.unsureOfStorage = false;
      let records: ConfigurationRecords;
      try {
        records = await this.store.readAll();
      } catch (error) {
        this.unsureOfStorage ||= unsure;
        throw error;
      }
      if (everything) {
        let version: number;
        try {
          version = await this.store.bumpVersion();
        } catch (error) {
          // What was read is served; the next periodic check announces it.
          this.adopt(compile(records));
          this.unannounced = true;
          throw error;
        }
        this.unannounced = false;
        // Nothing stored in between: what was read is that version (as `commit` takes it).
        if (version === records.version + 1) records = { ...records, version };
      }
      const view = this.adopt(compile(records));
      this.logger.debug({ version: view.version }, 'configuration reloaded');
      return true;
    });
  }

  /**
   * Brings the configuration up to `version` when a newer one is stored: for a caller holding a
   * version another replica has seen (a resolve token's). Callers share a refresh under way; one
   * that joined a refresh begun before it came, and is still behind after it, refreshes once more
   * (that refresh may have read the stored version before the caller's was stored). A version
   * storage does not hold (a token from another deployment, a store restored from a backup) is
   * not looked for again, nor any later one, within {@link CATCH_UP_INTERVAL_MS}; the periodic
   * check brings any later change.
   */
  async catchUp(version: number): Promise<void> {
    if (version <= this.current().version) return;
    if (version >= this.missingFrom && Date.now() - this.missingAt < CATCH_UP_INTERVAL_MS) return;
    const joined = this.catchingUp !== undefined;
    await this.sharedRefresh();
    if (joined && version > this.current().version) await this.sharedRefresh();
    if (version > this.current().version) {
      this.missingFrom = version;
      this.missingAt = Date.now();
    }
  }

  /**
   * Reads everything again, whatever the stored version says, in a read begun after this call
   * (see {@link FreshRuns}): for a caller that found this view behind another replica's at the
   * same version (a resolve token naming as assigned an experiment this view has not started:
   * the replica that resolved it read the start before its version was bumped, and labelled it
   * with the version before).
   */
  readAgain(): Promise<void> {
    return this.fullReads.afterNow();
  }

  private sharedRefresh(): Promise<boolean> {
    this.catchingUp ??= this.refresh().finally(() => {
      this.catchingUp = undefined;
    });
    return this.catchingUp;
  }

  /**
   * Records a change this replica has just written: bumps the stored version and applies the
   * change in memory when no other change came in between, else reloads everything; returns the
   * version the view is at then.
   *
   * When the bump fails the change is stored all the same: it is served here at once, under the
   * version held, and the write goes on (keeping its result for its request id); the write then
   * answers UNAVAILABLE, so that it is retried (see `ConfigurationWrites.exclusively`), and the
   * retry or this replica's next check makes the bump (see {@link refresh}).
   */
  commit(change: ConfigurationChange): Promise<number> {
    return this.exclusive(async () => {
      const view = this.view;
      let version: number;
      try {
        version = await this.store.bumpVersion();
      } catch (error) {
        this.unannounced = true;
        if (!view) throw error;
        this.logger.warn(
          { err: error, type: change.type, id: change.id },
          'configuration change stored, but its version bump failed: the next check announces it',
        );
        return this.adopt(compile(withChange(view, view.version, change))).version;
      }
      // After a failed bump, this bump announces that change too (and the view holds it under
      // the version before: read it all, as the other replicas will); so too a change storage
      // may hold unannounced.
      if (!view || version !== view.version + 1 || this.unannounced || this.unsureOfStorage) {
        this.unannounced = false;
        this.unsureOfStorage = false;
        return this.adopt(compile(await this.store.readAll())).version;
      }
      this.adopt(compile(withChange(view, version, change)));
      return version;
    });
  }

  /** Takes `view` as the one in effect, warning when its outdated conditions changed. */
  private adopt(view: ConfigurationView): ConfigurationView {
    this.view = view;
    const outdated = view.snapshot.outdatedConditions;
    const key = JSON.stringify([...outdated]);
    if (key !== this.legacyWarned) {
      this.legacyWarned = key;
      for (const { reasons, message } of OUTDATED_CONDITION_WARNINGS) {
        const experiments = [...outdated]
          .filter(([, broken]) => broken.some((r) => reasons.includes(r)))
          .map(([id]) => id);
        if (experiments.length > 0) this.logger.warn({ experiments }, message);
      }
    }
    return view;
  }

  /**
   * Starts the periodic check. `beforeCheck` runs first at each check, awaited (it may bring the
   * configuration up itself, which the check then finds done); it must not throw. `onTick` (the
   * schedule) starts after each check, one run at a time; the checks do not wait for it, since it
   * queues behind this replica's configuration writes.
   */
  startPolling(
    intervalMs: number,
    onTick: () => Promise<void>,
    beforeCheck: () => Promise<void> = () => Promise.resolve(),
  ): void {
    if (this.polling) throw new Error('the periodic check is already running');
    this.polling = true;
    let ticking = false;
    const tick = async (): Promise<void> => {
      await beforeCheck();
      let checked = false;
      try {
        await this.refresh();
        checked = true;
      } catch (error) {
        this.logger.warn({ err: error }, 'configuration check failed; serving the last one loaded');
      }
      // After a failed check storage is likely down, and the step would only fail too.
      if (checked && !ticking && this.polling) {
        ticking = true;
        this.scheduling = onTick()
          .catch((error: unknown) => {
            this.logger.warn({ err: error }, 'the schedule step failed; it runs again next check');
          })
          .finally(() => (ticking = false));
      }
      if (this.polling) this.timer = setTimeout(run, intervalMs).unref();
    };
    const run = (): void => {
      if (this.polling) this.checking = tick();
    };
    this.timer = setTimeout(run, intervalMs).unref();
  }

  /**
   * Stops the periodic check, and waits for a check and a schedule step under way: a shutdown
   * closes storage after this, under a write lease such a step may hold.
   */
  async stopPolling(): Promise<void> {
    this.polling = false;
    if (this.timer !== undefined) clearTimeout(this.timer);
    this.timer = undefined;
    await this.checking;
    await this.scheduling;
  }

  private exclusive<T>(work: () => Promise<T>): Promise<T> {
    const run = this.chain.then(work, work);
    this.chain = run.catch(() => undefined);
    return run;
  }
}
