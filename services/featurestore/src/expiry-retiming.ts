/**
 * After a push view's TTL changes, its stored records are re-timed to the new TTL in the
 * background (`FeatureRowRepository.restampExpiry`: one conditional write per record, so minutes
 * for millions). On a longer TTL, the replica that applied it first re-times at once, soonest
 * first, the records the old TTL drops within the next minutes (it holds them all in memory):
 * storage would otherwise drop them before the run below reaches them, while replicas serve them
 * under the new TTL. Then one run per view at a time: a newer TTL change or the view's deletion
 * supersedes a run, which stops at its next record, on whichever replica it runs. Each run checks
 * before every record that the view is still as the run was started for (the registry, which
 * every replica brings up to date within a second), and a run for a change starts
 * {@link SETTLE_MS} after it, once a run for an earlier TTL on another replica has seen the change
 * and stopped. Otherwise a slower run for the earlier TTL could overwrite records the later run
 * had already re-timed, and storage would drop them by the wrong TTL.
 *
 * A run is recorded by a marker document (view, TTL, the view's creation time) written before it
 * starts and deleted when it ends. A replica that stops mid-run leaves the marker, and every
 * replica resumes the runs whose markers it finds at start-up (several may run one at once:
 * each write is conditional, so they only repeat work). A marker whose view was deleted, applied
 * again, or given another TTL since is dropped. Markers are written in the order of the changes
 * (`change`, compared by the store), so of two changes applied at once, on one replica or two, the
 * later one's marker is what a restart finds, whichever write lands last.
 */
import type { Logger } from '../../platform/src/logging';
import { AbortedError } from '../../platform/src/errors';
import { Signal } from '../../platform/src/events/signal';
import type { Collection, DocumentStore } from '../../platform/src/storage/collection';
import type { FeatureRegistry } from './feature-registry';
import type { FeatureRowRepository } from './store/feature-rows';

/** A re-timing started and not finished. */
export interface RetimingMarker {
  /** The view's name. */
  readonly id: string;
  readonly ttlMs: number;
  /** The view's creation time, in milliseconds: which registration of the name it is for. */
  readonly registration: number;
  /**
   * Which change of the view the run is for: the registration, then the view's stored version,
   * each zero-padded, so that a later change compares greater as a string. Absent from markers
   * written before it existed, which any change replaces.
   */
  readonly change?: string;
}

/** {@link RetimingMarker.change} of the view registered at `registration`, at `version`. */
export function retimingChange(registration: number, version: number): string {
  return `${String(registration).padStart(16, '0')}:${String(version).padStart(16, '0')}`;
}

/** Twice the propagation promise (a change reaches every replica within one second). */
export const SETTLE_MS = 2_000;

interface Run {
  readonly run: symbol;
  readonly done: Promise<void>;
}

export class ExpiryRetiming {
  private readonly runs = new Map<string, Run>();
  /** Notified by `stop()`, which cuts a run's settling wait short. */
  private readonly stopping = new Signal();

  private constructor(
    private readonly markers: Collection<RetimingMarker>,
    private readonly rows: FeatureRowRepository,
    private readonly registry: FeatureRegistry,
    private readonly logger: Logger,
    private readonly settleMs: number,
  ) {}

  static async open(
    store: DocumentStore,
    rows: FeatureRowRepository,
    registry: FeatureRegistry,
    logger: Logger,
    settleMs = SETTLE_MS,
  ): Promise<ExpiryRetiming> {
    const markers = await store.collection<RetimingMarker>({ name: 'expiry_retiming' });
    return new ExpiryRetiming(markers, rows, registry, logger, settleMs);
  }

  /**
   * Records, then starts in the background, the re-timing of `view`'s records to `ttlMs` (0: no
   * expiry) for the change that left the view at `version`, superseding a run under way for the
   * view. When the marker cannot be stored the run still starts, but a restart does not resume it.
   */
  async start(
    view: string,
    ttlMs: number,
    registration: number,
    version: number,
    soonest: readonly string[] = [],
  ): Promise<void> {
    // A start overtaken by a later change (two applies at once) leaves the run to the later one.
    if (!this.viewIsStill(view, ttlMs, registration)) return;
    const change = retimingChange(registration, version);
    let recorded = false;
    try {
      if (!(await this.storeMarker({ id: view, ttlMs, registration, change }))) return;
      recorded = true;
    } catch (error) {
      this.logger.warn(
        { err: error, view },
        'the re-timing of records to the new TTL is not recorded; a restart does not resume it',
      );
    }
    this.run(view, ttlMs, registration, recorded ? change : undefined, soonest);
  }

  /**
   * Stores `marker` unless the marker of the same or a later change of the view is stored (that
   * change's start runs it): false then. A marker left by an earlier registration of the name (the
   * view was deleted and created again, and its creation time, read from another replica's clock,
   * may even sort later) is replaced, once storage confirms that the marker's registration is the
   * view's current one (this replica's registry may be a reload behind). Throws when the marker
   * keeps changing under it.
   */
  private async storeMarker(marker: Required<RetimingMarker>): Promise<boolean> {
    for (let attempt = 0; attempt < 3; attempt++) {
      const [outcome] = await this.markers.upsertIfNewer([marker], 'change');
      if (outcome !== 'skipped') return true;
      const stored = await this.markers.get(marker.id);
      if (stored !== undefined) {
        if (stored.doc.registration === marker.registration) return false;
        // Another registration's marker is stale only if this one is the view's current one.
        if ((await this.registry.storedRegistration(marker.id)) !== marker.registration) {
          return false;
        }
        await this.markers.delete(marker.id, stored.version).catch(ignoreStale);
      }
    }
    throw new Error(`the re-timing marker of ${marker.id} kept changing while it was stored`);
  }

  /** Stops the run for a deleted view and drops its marker. */
  async forget(view: string): Promise<void> {
    this.runs.delete(view);
    await this.markers.delete(view);
  }

  /** Stops every run at its next record, leaving the markers for the next start. */
  stop(): Promise<void> {
    this.stopping.notify();
    const runs = [...this.runs.values()].map((r) => r.done);
    this.runs.clear();
    return Promise.all(runs).then(() => undefined);
  }

  /**
   * Resumes the runs a stopped replica left unfinished, for views that are still as the marker
   * says; drops the other markers.
   */
  async resume(): Promise<void> {
    for await (const { doc, version } of this.markers.scan()) {
      if (!this.viewIsStill(doc.id, doc.ttlMs, doc.registration)) {
        await this.markers.delete(doc.id, version).catch(ignoreStale);
        continue;
      }
      if (this.runs.has(doc.id)) continue;
      this.logger.info({ view: doc.id }, 'resuming the re-timing of records to the TTL');
      // Settling too: the change may be a second old, with a run for the earlier TTL still going.
      this.run(doc.id, doc.ttlMs, doc.registration, doc.change ?? version);
    }
  }

  /** True while `view` is the push view registered at `registration` with `ttlMs`. */
  private viewIsStill(view: string, ttlMs: number, registration: number): boolean {
    const registered = this.registry.view(view);
    return (
      registered !== undefined &&
      registered.definition.source?.kind !== 'stream' &&
      registered.createTime.getTime() === registration &&
      registered.definition.ttlMs === ttlMs
    );
  }

  /**
   * `marker` says which stored marker is this run's, to delete when it ends: its `change`, or for
   * a marker written before `change` existed, its stored version.
   */
  private run(
    view: string,
    ttlMs: number,
    registration: number,
    marker: string | number | undefined,
    soonest: readonly string[] = [],
  ): void {
    if (!this.viewIsStill(view, ttlMs, registration)) return;
    const run = Symbol(view);
    const previous = this.runs.get(view)?.done ?? Promise.resolve();
    const current = (): boolean =>
      this.runs.get(view)?.run === run && this.viewIsStill(view, ttlMs, registration);
    // After the run it supersedes here has stopped (at its next record), so the two never write
    // the same record at once; and after the settling wait, for runs on other replicas.
    const settled = Date.now() + this.settleMs;
    const done = previous
      // The records the old TTL drops soonest, at once: storage would drop them before the
      // settling wait ends (a run for an earlier TTL elsewhere may still overwrite a few; the
      // full pass below sets them again, if they have not expired meanwhile).
      .then(() =>
        current() && soonest.length > 0
          ? this.rows.restampExpiryOf(view, registration, ttlMs, soonest, current)
          : undefined,
      )
      .then(() => (current() ? this.stopping.wait(settled - Date.now()) : undefined))
      .then(() =>
        current() ? this.rows.restampExpiry(view, registration, ttlMs, current) : undefined,
      )
      .then(async (changed) => {
        if (this.runs.get(view)?.run !== run) return;
        this.runs.delete(view);
        // Superseded by a change made elsewhere: the marker is that change's to remove.
        if (!this.viewIsStill(view, ttlMs, registration)) return;
        // Only this run's marker: a later change has stored its own.
        if (marker !== undefined) {
          await this.deleteMarker(view, marker).catch((error: unknown) => {
            this.logger.warn(
              { err: error, view },
              'the re-timing marker was not removed; the next start repeats the (finished) run',
            );
          });
        }
        this.logger.info({ view, changed }, 'records re-timed to the new TTL');
      })
      .catch((error: unknown) => {
        if (this.runs.get(view)?.run === run) this.runs.delete(view);
        this.logger.warn(
          { err: error, view },
          'records not all re-timed to the new TTL; a replica resumes it at its next start',
        );
      });
    this.runs.set(view, { run, done });
  }

  /** Deletes `view`'s marker if it is still the one `marker` names (see `run`). */
  private async deleteMarker(view: string, marker: string | number): Promise<void> {
    if (typeof marker === 'number') {
      await this.markers.delete(view, marker).catch(ignoreStale);
      return;
    }
    const stored = await this.markers.get(view);
    // Deleted at the version read: a marker stored for a later change in between is kept.
    if (stored?.doc.change === marker) {
      await this.markers.delete(view, stored.version).catch(ignoreStale);
    }
  }
}

function ignoreStale(error: unknown): void {
  if (!(error instanceof AbortedError)) throw error;
}
