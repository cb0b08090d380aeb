/**
 * Sticky assignments: the variant a unit was first exposed to in a sticky experiment, stored at
 * its first exposure (Apply) with a TTL, so it keeps that variant when weights or coverage change.
 * Read on Resolve only for the sticky experiments of the requested surfaces, through a bounded
 * in-memory LRU cache. A stored assignment never changes, so cached hits stay valid; a miss is
 * cached for one second only, so a unit first exposed on another replica is seen within a second.
 */
import {
  AbortedError,
  AlreadyExistsError,
  NotFoundError,
  UnavailableError,
} from '../../../platform/src/errors';
import { withTimeout } from '../../../platform/src/timeout';
import type {
  Collection,
  DocumentStore,
  Versioned,
} from '../../../platform/src/storage/collection';
import type { StickyAssignment } from '../domain';
import { STICKY_LOOKUP, stickyLookupCounter } from '../assignment-metrics';

interface StickyDocument {
  readonly id: string;
  readonly experimentId: string;
  readonly unitType: string;
  readonly unitId: string;
  readonly variantKey: string;
  readonly allocationSequence: number;
  readonly storeTime: number;
  readonly expiresAt: Date;
}

/** How long "no sticky assignment stored" is believed, as long as the propagation promise. */
const ABSENCE_TTL_MS = 1000;

interface CacheEntry {
  readonly assignment: StickyAssignment | undefined;
  /** For absences only; stored assignments never go stale (until their TTL). */
  readonly checkedAt: number;
  /** When a stored assignment expires (ms); a cached one is not served past it. */
  readonly expiresAt: number;
}

/**
 * A stored assignment's expiry in ms, or undefined once it has expired at `now`. Both stores hide
 * a document past its expiry (an insert replaces it), whenever their sweep runs.
 */
function liveUntil(doc: StickyDocument | undefined, now: number): number | undefined {
  if (doc === undefined) return undefined;
  const expiresAt = doc.expiresAt.getTime();
  return expiresAt > now ? expiresAt : undefined;
}

/**
 * A deleted experiment whose sticky assignments are being freed (see
 * {@link StickyAssignments.release}).
 */
interface ReleaseDocument {
  readonly id: string;
  readonly deleteTime: number;
}

/**
 * How long after a deletion its sticky assignments are looked for once more: longer than an Apply
 * that passed its checks before the deletion takes to store its variant.
 */
export const RELEASE_GRACE_MS = 60_000;

/**
 * How long Resolve waits, by default (`TANDEM_ASSIGNMENT_STICKY_LOOKUP_TIMEOUT`), for the storage
 * read behind a sticky lookup before answering those experiments STICKY_UNAVAILABLE. Without a
 * bound, a storage that stalls rather than fails (a MongoDB election or lost primary: the driver
 * waits up to its 10 s server selection timeout) would hold the whole response, non-sticky
 * experiments included, past the caller's deadline.
 */
export const STICKY_LOOKUP_TIMEOUT_MS = 500;

/** What counts a lookup that is not counted. */
const UNCOUNTED = { add: (): void => undefined };

/** The reason of the error a lookup gives when its read took longer than its timeout. */
const LOOKUP_TIMED_OUT = 'STICKY_LOOKUP_TIMED_OUT';

/** Tries at storing a first assignment while other writers change the same document. */
const STORE_ATTEMPTS = 3;

/** What {@link StickyAssignments.lookup} found. */
export interface StickyLookup {
  /** Stored assignments by experiment id. */
  readonly found: Map<string, StickyAssignment>;
  /** Experiments whose stored assignment could not be read (storage failed); usually none. */
  readonly unavailable: readonly string[];
  /** Why they could not be read. */
  readonly error?: unknown;
}

const NONE: readonly string[] = [];

function stickyId(experimentId: string, unitType: string, unitId: string): string {
  return `${experimentId}\u0001${unitType}\u0001${unitId}`;
}

export class StickyAssignments {
  private readonly cache = new Map<string, CacheEntry>();
  /** `tandem.assignment.sticky.lookups` (see `assignment-metrics.ts`). */
  private readonly lookups = stickyLookupCounter();

  private constructor(
    private readonly collection: Collection<StickyDocument>,
    private readonly releases: Collection<ReleaseDocument>,
    private readonly capacity: number,
    private readonly lookupTimeoutMs: number,
  ) {}

  static async open(
    store: DocumentStore,
    capacity: number,
    lookupTimeoutMs: number = STICKY_LOOKUP_TIMEOUT_MS,
  ): Promise<StickyAssignments> {
    const collection = await store.collection<StickyDocument>({
      name: 'sticky_assignments',
      indexes: [{ fields: ['experimentId'] }],
      expireAtField: 'expiresAt',
    });
    const releases = await store.collection<ReleaseDocument>({ name: 'sticky_releases' });
    return new StickyAssignments(collection, releases, capacity, lookupTimeoutMs);
  }

  /**
   * The unit's stored assignments in these experiments (one storage read for the misses). When
   * that read fails, or takes longer than the lookup timeout (unless `bounded` is false), the
   * misses are `unavailable` (with the `error`): the cached hits still count. Resolve bounds the
   * read, which would hold its whole response; Apply, which waits for its writes anyway, does
   * not, so a slow read does not skip storing a variant again. Counted by outcome in
   * `tandem.assignment.sticky.lookups`, unless `counted` is false (a second look at what the same
   * call just looked up).
   */
  async lookup(
    unitType: string,
    unitId: string,
    experimentIds: readonly string[],
    now: number,
    { bounded = true, counted = true }: { bounded?: boolean; counted?: boolean } = {},
  ): Promise<StickyLookup> {
    const lookups = counted ? this.lookups : UNCOUNTED;
    const found = new Map<string, StickyAssignment>();
    const missing: string[] = [];
    const missingIds: string[] = [];
    for (const experimentId of experimentIds) {
      const key = stickyId(experimentId, unitType, unitId);
      const entry = this.cache.get(key);
      if (
        entry === undefined ||
        (entry.assignment ? entry.expiresAt <= now : now - entry.checkedAt > ABSENCE_TTL_MS)
      ) {
        missing.push(key);
        missingIds.push(experimentId);
      } else {
        this.touch(key, entry);
        if (entry.assignment) found.set(experimentId, entry.assignment);
      }
    }
    if (missing.length === 0) {
      lookups.add(1, STICKY_LOOKUP.cached);
      return { found, unavailable: NONE };
    }
    let stored: Map<string, Versioned<StickyDocument>>;
    try {
      const read = this.collection.getMany(missing);
      stored = await (bounded
        ? withTimeout(
            read,
            this.lookupTimeoutMs,
            () =>
              new UnavailableError(
                `sticky assignments were not read within ${this.lookupTimeoutMs} ms`,
                { reason: LOOKUP_TIMED_OUT },
              ),
          )
        : read);
    } catch (error) {
      const timedOut = error instanceof UnavailableError && error.reason === LOOKUP_TIMED_OUT;
      lookups.add(1, timedOut ? STICKY_LOOKUP.timed_out : STICKY_LOOKUP.failed);
      return { found, unavailable: missingIds, error };
    }
    lookups.add(1, STICKY_LOOKUP.read);
    missing.forEach((key, i) => {
      const doc = stored.get(key)?.doc;
      const expiresAt = liveUntil(doc, now);
      const assignment =
        doc && expiresAt !== undefined
          ? { variantKey: doc.variantKey, allocationSequence: doc.allocationSequence }
          : undefined;
      const cached = this.cache.get(key);
      if (assignment === undefined && cached?.assignment && cached.expiresAt > now) {
        // Stored by this replica while the read was under way (an Apply): the read is older.
        found.set(missingIds[i] ?? '', cached.assignment);
        return;
      }
      this.remember(key, { assignment, checkedAt: now, expiresAt: expiresAt ?? 0 });
      if (assignment) found.set(missingIds[i] ?? '', assignment);
    });
    return { found, unavailable: NONE };
  }

  /**
   * Stores the unit's first assignment in an experiment and returns the one in force: `assignment`,
   * or the live one stored before it (another replica or an earlier Apply got there first), which
   * wins and is what gets cached. An expired one still stored (the store's expiry runs later) is
   * replaced.
   */
  async store(
    experimentId: string,
    unitType: string,
    unitId: string,
    assignment: StickyAssignment,
    ttlMs: number,
    now: number,
  ): Promise<StickyAssignment> {
    const id = stickyId(experimentId, unitType, unitId);
    const doc: StickyDocument = {
      id,
      experimentId,
      unitType,
      unitId,
      variantKey: assignment.variantKey,
      allocationSequence: assignment.allocationSequence,
      storeTime: now,
      expiresAt: new Date(now + ttlMs),
    };
    const stored = (): StickyAssignment => {
      this.remember(id, { assignment, checkedAt: now, expiresAt: now + ttlMs });
      return assignment;
    };
    // Each pass loses only to another writer's change of the same document, so a few suffice.
    for (let attempt = 1; attempt <= STORE_ATTEMPTS; attempt++) {
      try {
        await this.collection.insert(doc);
        return stored();
      } catch (error) {
        if (!(error instanceof AlreadyExistsError)) throw error;
      }
      const existing = await this.collection.get(id);
      if (existing === undefined) continue; // expired and removed meanwhile
      const expiresAt = liveUntil(existing.doc, now);
      if (expiresAt !== undefined) {
        const kept = {
          variantKey: existing.doc.variantKey,
          allocationSequence: existing.doc.allocationSequence,
        };
        this.remember(id, { assignment: kept, checkedAt: now, expiresAt });
        return kept;
      }
      try {
        await this.collection.replace(doc, existing.version);
        return stored();
      } catch (error) {
        if (!(error instanceof AbortedError || error instanceof NotFoundError)) throw error;
      }
    }
    throw new AbortedError(
      `the sticky assignment of ${unitType} "${unitId}" in experiment "${experimentId}" kept changing while it was stored; try again`,
      { reason: 'STICKY_WRITE_CONFLICT' },
    );
  }

  /**
   * Records that a deleted experiment's sticky assignments are to be freed: call it before the
   * deletion (a failure then leaves the experiment stored), then {@link forget}. An Apply that
   * passed its checks before the deletion may still store one after `forget` looked, and `forget`
   * itself may fail; {@link sweepReleased} looks again, on every replica, until one pass after
   * {@link RELEASE_GRACE_MS} succeeded. Only for an experiment that served: the id of one that
   * did not may be used again, and its assignments would be the new one's.
   */
  async release(experimentId: string, now: number): Promise<void> {
    await this.releases.upsert({ id: experimentId, deleteTime: now });
  }

  /**
   * Frees, once more, the sticky assignments of every experiment released at least
   * {@link RELEASE_GRACE_MS} before `now`, and forgets the release once that succeeded. Returns
   * how many assignments it deleted. A failure leaves the release for the next sweep.
   */
  async sweepReleased(now: number): Promise<number> {
    const due: Versioned<ReleaseDocument>[] = [];
    for await (const release of this.releases.scan()) {
      if (now - release.doc.deleteTime >= RELEASE_GRACE_MS) due.push(release);
    }
    let deleted = 0;
    for (const release of due) {
      deleted += await this.forget(release.doc.id);
      await this.releases.delete(release.doc.id, release.version);
    }
    return deleted;
  }

  /**
   * Deletes every stored assignment of a deleted experiment (in batches: an experiment may hold
   * millions), and drops the ones cached here.
   */
  async forget(experimentId: string): Promise<number> {
    const deleted = await this.collection.deleteWhere({ experimentId });
    const prefix = `${experimentId}\u0001`;
    for (const key of this.cache.keys()) if (key.startsWith(prefix)) this.cache.delete(key);
    return deleted;
  }

  private touch(key: string, entry: CacheEntry): void {
    this.cache.delete(key);
    this.cache.set(key, entry);
  }

  private remember(key: string, entry: CacheEntry): void {
    this.cache.delete(key);
    this.cache.set(key, entry);
    if (this.cache.size > this.capacity) {
      const oldest = this.cache.keys().next();
      if (!oldest.done) this.cache.delete(oldest.value);
    }
  }
}
