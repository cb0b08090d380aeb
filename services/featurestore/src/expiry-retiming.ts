/**
 * After a push view's TTL changes, its stored records are re-timed to the new TTL in the
 * background (`FeatureRowRepository.restampExpiry`: one conditional write per record, so minutes
 * for millions), one run per view at a time: a newer TTL change or the view's deletion
 * supersedes a run, which stops at its next record.
 *
 * A run is recorded by a marker document (view, TTL, the view's creation time) written before it
 * starts and deleted when it ends. A replica that stops mid-run leaves the marker, and every
 * replica resumes the runs whose markers it finds at start-up (several may run one at once:
 * each write is conditional, so they only repeat work). A marker whose view was deleted, applied
 * again, or given another TTL since is dropped.
 */
import type { Logger } from '../../platform/src/logging';
import { AbortedError } from '../../platform/src/errors';
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
}

interface Run {
  readonly run: symbol;
  readonly done: Promise<void>;
}

export class ExpiryRetiming {
  private readonly runs = new Map<string, Run>();

  private constructor(
    private readonly markers: Collection<RetimingMarker>,
    private readonly rows: FeatureRowRepository,
    private readonly registry: FeatureRegistry,
    private readonly logger: Logger,
  ) {}

  static async open(
    store: DocumentStore,
    rows: FeatureRowRepository,
    registry: FeatureRegistry,
    logger: Logger,
  ): Promise<ExpiryRetiming> {
    const markers = await store.collection<RetimingMarker>({ name: 'expiry_retiming' });
    return new ExpiryRetiming(markers, rows, registry, logger);
  }

  /**
   * Records, then starts in the background, the re-timing of `view`'s records to `ttlMs` (0: no
   * expiry), superseding a run under way for the view. When the marker cannot be stored the run
   * still starts, but a restart does not resume it.
   */
  async start(view: string, ttlMs: number, registration: number): Promise<void> {
    let markerVersion: number | undefined;
    try {
      markerVersion = (await this.markers.upsert({ id: view, ttlMs, registration })).version;
    } catch (error) {
      this.logger.warn(
        { err: error, view },
        'the re-timing of records to the new TTL is not recorded; a restart does not resume it',
      );
    }
    this.run(view, ttlMs, markerVersion);
  }

  /** Stops the run for a deleted view and drops its marker. */
  async forget(view: string): Promise<void> {
    this.runs.delete(view);
    await this.markers.delete(view);
  }

  /** Stops every run at its next record, leaving the markers for the next start. */
  stop(): Promise<void> {
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
      const view = this.registry.view(doc.id);
      if (
        view === undefined ||
        view.definition.source?.kind === 'stream' ||
        view.createTime.getTime() !== doc.registration ||
        view.definition.ttlMs !== doc.ttlMs
      ) {
        await this.markers.delete(doc.id, version).catch(ignoreStale);
        continue;
      }
      if (this.runs.has(doc.id)) continue;
      this.logger.info({ view: doc.id }, 'resuming the re-timing of records to the TTL');
      this.run(doc.id, doc.ttlMs, version);
    }
  }

  private run(view: string, ttlMs: number, markerVersion: number | undefined): void {
    const run = Symbol(view);
    const previous = this.runs.get(view)?.done ?? Promise.resolve();
    const current = (): boolean => this.runs.get(view)?.run === run;
    // After the run it supersedes has stopped (at its next record), so the two never write the
    // same record at once.
    const done = previous
      .then(() => (current() ? this.rows.restampExpiry(view, ttlMs, current) : undefined))
      .then(async (changed) => {
        if (!current()) return;
        this.runs.delete(view);
        // Only this run's marker: a later change has stored its own.
        if (markerVersion !== undefined) {
          await this.markers.delete(view, markerVersion).catch(ignoreStale);
        }
        this.logger.info({ view, changed }, 'records re-timed to the new TTL');
      })
      .catch((error: unknown) => {
        if (current()) this.runs.delete(view);
        this.logger.warn(
          { err: error, view },
          'records not all re-timed to the new TTL; a replica resumes it at its next start',
        );
      });
    this.runs.set(view, { run, done });
  }
}

function ignoreStale(error: unknown): void {
  if (!(error instanceof AbortedError)) throw error;
}
