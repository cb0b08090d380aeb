/**
 * Which request last wrote or deleted a resource, for the retry of an admin write whose own
 * storage call failed after it took effect (a timeout): the first call fails, and its retry, run
 * again, is refused by the change itself (ABORTED for the etag it moved, NOT_FOUND for what it
 * deleted, ALREADY_EXISTS for what it created). Every write of a `request_id` stores its
 * request's stamp (see `currentRequestStamp`) with the resource, and a deletion's beside it; the
 * retry finds its own stamp there and answers the change instead of refusing it (see `recover`
 * in `RequestResults.once`). A change another request made since leaves another stamp, or none:
 * the refusal stands.
 */
import type {
  Collection,
  ConditionalWriteOutcome,
  DocumentStore,
  ListOptions,
  Page,
  Versioned,
  Where,
} from './collection';
import { currentRequestStamp } from './request-results';

/**
 * Which write of a `request_id` last stored a resource (with the document's update time, see
 * {@link stampOf}): a field of every document a {@link StampingCollection} stored for one,
 * absent otherwise.
 */
export interface Stamped {
  readonly writtenBy?: string;
}

/**
 * The stamp a document written by the request of `stamp` carries: with the document's update
 * time, which every write sets, so that a write that copies the field without knowing it (a
 * replica of an earlier build, during a rolling update) leaves a stamp that no longer matches. A
 * Date is taken to the millisecond (its text would keep whole seconds only).
 */
export function stampOf(stamp: string, doc: object): string {
  const time = (doc as { updateTime?: unknown }).updateTime;
  return `${stamp}@${String(time instanceof Date ? time.getTime() : time)}`;
}

/** `stored`, when its last write was the request of `stamp`'s. */
export function stampedWith<T extends object>(
  stored: Versioned<T> | undefined,
  stamp: string,
): Versioned<T> | undefined {
  return stored !== undefined && (stored.doc as Stamped).writtenBy === stampOf(stamp, stored.doc)
    ? stored
    : undefined;
}

/**
 * A collection whose writes carry the stamp of the request running them (and drop the one a
 * document read back carried, when none runs), so that a stamp always names the last write. Its
 * own object, not a proxy, so that tests can spy on its methods as on any collection's.
 */
export class StampingCollection<T extends { readonly id: string }> implements Collection<T> {
  readonly name: string;

  constructor(private readonly inner: Collection<T>) {
    this.name = inner.name;
  }

  private stamp(doc: T): T {
    const { writtenBy, ...rest } = doc as T & Stamped;
    const by = currentRequestStamp();
    if (by === undefined) return writtenBy === undefined ? doc : (rest as unknown as T);
    return { ...rest, writtenBy: stampOf(by, doc) } as unknown as T;
  }

  insert(doc: T): Promise<Versioned<T>> {
    return this.inner.insert(this.stamp(doc));
  }

  replace(doc: T, expectedVersion: number): Promise<Versioned<T>> {
    return this.inner.replace(this.stamp(doc), expectedVersion);
  }

  upsert(doc: T): Promise<Versioned<T>> {
    return this.inner.upsert(this.stamp(doc));
  }

  upsertIfNewer(docs: readonly T[], field: string): Promise<ConditionalWriteOutcome[]> {
    return this.inner.upsertIfNewer(
      docs.map((doc) => this.stamp(doc)),
      field,
    );
  }

  get(id: string): Promise<Versioned<T> | undefined> {
    return this.inner.get(id);
  }

  getMany(ids: readonly string[]): Promise<Map<string, Versioned<T>>> {
    return this.inner.getMany(ids);
  }

  increment(
    id: string,
    deltas: Readonly<Record<string, number>>,
    onInsert?: Partial<T>,
  ): Promise<Versioned<T>> {
    return this.inner.increment(id, deltas, onInsert);
  }

  delete(id: string, expectedVersion?: number): Promise<boolean> {
    return this.inner.delete(id, expectedVersion);
  }

  deleteWhere(where: Where): Promise<number> {
    return this.inner.deleteWhere(where);
  }

  list(options: ListOptions): Promise<Page<T>> {
    return this.inner.list(options);
  }

  scan(where?: Where): AsyncIterable<Versioned<T>> {
    return this.inner.scan(where);
  }

  count(where?: Where): Promise<number> {
    return this.inner.count(where);
  }
}

/**
 * How many times a resource key (`<kind>/<id>`) was deleted: what tells a deletion from the next
 * one, and a resource created again under the key from the one deleted before.
 */
interface DeletedIdDocument {
  readonly id: string;
  readonly deletions: number;
}

/**
 * The request that last deleted the resource of a key, with the count of that deletion, for a
 * retry of a delete that took effect; kept as long as a `request_id` can be retried.
 */
interface DeletionStampDocument {
  readonly id: string;
  /** `<stamp>#<deletions>`. */
  readonly writtenBy: string;
  /** What the deletion removed, as its service names it (absent when it names none). */
  readonly removed?: string;
  readonly expiresAt: Date;
}

/** The last deletion of a key, made by the request asked about (see {@link DeletionStamps.lastBy}). */
export interface LastDeletion {
  /** What it removed, as given to {@link DeletionStamps.record}. */
  readonly removed?: string;
}

/**
 * The deletions of a service's resources, counted per key (the `deleted_ids` collection) and
 * stamped by the request that made the last one (`deletion_stamps`): a deletion leaves no
 * document to carry its stamp.
 */
export class DeletionStamps {
  private constructor(
    private readonly counts: Collection<DeletedIdDocument>,
    private readonly stamps: Collection<DeletionStampDocument>,
    private readonly ttlMs: number,
  ) {}

  /**
   * Opens (and creates) the collections. `ttlMs`: how long a stamp is kept, as long as the
   * service remembers a `request_id`: a request sent again after that is a new one, which a
   * deletion it made long before must not answer.
   */
  static async open(store: DocumentStore, ttlMs: number): Promise<DeletionStamps> {
    return new DeletionStamps(
      await store.collection<DeletedIdDocument>({ name: 'deleted_ids' }),
      await store.collection<DeletionStampDocument>({
        name: 'deletion_stamps',
        expireAtField: 'expiresAt',
      }),
      ttlMs,
    );
  }

  /**
   * Counts a deletion of `key`, stamped by the running request when there is one; `removed`
   * names what it removes, for its retry to tell it from what is stored then. Call it before
   * deleting the resource: a crash in between only counts a deletion that was not made.
   */
  async record(key: string, removed?: string): Promise<void> {
    const counted = await this.counts.increment(key, { deletions: 1 });
    const by = currentRequestStamp();
    if (by !== undefined) {
      // With the count it belongs to: a later deletion, by a request without a stamp or by a
      // build that stamps none, counts again and leaves this stamp naming an earlier one.
      await this.stamps.upsert({
        id: key,
        writtenBy: `${by}#${counted.doc.deletions}`,
        ...(removed === undefined ? {} : { removed }),
        expiresAt: new Date(Date.now() + this.ttlMs),
      });
    }
  }

  /**
   * The last deletion counted for `key`, when the request of `stamp` made it: stamped by it, and
   * no deletion counted since; undefined otherwise. It was counted before the resource went: the
   * caller tells from what is stored whether it did.
   */
  async lastBy(key: string, stamp: string): Promise<LastDeletion | undefined> {
    const [stamped, counted] = await Promise.all([this.stamps.get(key), this.counts.get(key)]);
    if (counted === undefined || stamped?.doc.writtenBy !== `${stamp}#${counted.doc.deletions}`) {
      return undefined;
    }
    return stamped.doc.removed === undefined ? {} : { removed: stamped.doc.removed };
  }

  /** How many deletions of `key` were counted. */
  async count(key: string): Promise<number> {
    return (await this.counts.get(key))?.doc.deletions ?? 0;
  }
}
