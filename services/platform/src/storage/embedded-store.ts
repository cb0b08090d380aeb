/**
 * The embedded adapter of the storage port (the default when `MONGODB_URI` is unset): LMDB files
 * under `TANDEM_DATA_DIR/<service>`, so one machine runs the whole platform with no server.
 *
 * Why LMDB: reads are what the services do most (caches are warmed and refreshed from storage),
 * and LMDB serves them from a memory-mapped B+tree in-process, with no copy through a server and
 * no I/O once pages are resident. Writes are ACID transactions that survive restarts and crashes
 * (copy-on-write pages; a write resolves once flushed), and a single writer lock makes every
 * read-check-write below atomic without extra locking, across processes too.
 *
 * Layout, all in one LMDB environment (named sub-databases):
 * - `d:<collection>`: id → `{ v: version, d: document }` as MessagePack (Dates and Uint8Arrays
 *   round-trip as such; binary comes back as a Buffer, which is a Uint8Array);
 * - `i:<collection>:<fields>[:u]`: one per declared index, keys `[value..., id]` (a missing field
 *   is null, a Date its epoch ms) with no value, so entries for equal values are in id order;
 * - `x:<collection>`: the expiry index, keys `[expiresAtMs, id]`, read by the sweep;
 * - `_meta`: per collection, the indexes and expiry field that have been built, so an index
 *   declared later is backfilled at open and one no longer declared is dropped.
 *
 * Versions are an ordinary `v` beside the document (not LMDB's `useVersions`), read and written
 * in the same transaction as the document and its index entries. Each write runs as an LMDB
 * child transaction inside the batched asynchronous write transaction: the callback sees
 * committed state plus earlier writes of the batch, and if it throws (a unique conflict, a stale
 * version) its own writes are rolled back, never the batch's.
 *
 * Expired documents are filtered on every read and deleted by a sweep at open and then every
 * `sweepIntervalMs` (an unref'd timer, so it never keeps a process alive).
 */
import { compareKeys, open, type Database, type Key, type RootDatabase } from 'lmdb';
import {
  AbortedError,
  AlreadyExistsError,
  InvalidArgumentError,
  NotFoundError,
  UnavailableError,
} from '../errors';
import {
  checkCollectionSpec,
  checkDocument,
  checkIdArgument,
  isStorableId,
  indexedBytes,
  MAX_ID_BYTES,
  MAX_INDEXED_BYTES,
  checkIncrement,
  checkListOptions,
  checkVersionField,
  checkDeleteWhere,
  checkWhere,
  compareVersionField,
  fieldValue,
  indexValue,
  type Collection,
  type CollectionSpec,
  type ConditionalWriteOutcome,
  type DocumentStore,
  type IndexSpec,
  type IndexValue,
  type ListOptions,
  type Page,
  type Versioned,
  type Where,
  isDate,
} from './collection';

export interface EmbeddedStoreOptions {
  /** The directory holding the LMDB files; created if missing. */
  readonly path: string;
  /** How often expired documents are deleted (reads hide them meanwhile). @default 60000 */
  readonly sweepIntervalMs?: number;
}

/** Named databases one environment can hold: a few per collection (documents, expiry, indexes). */
const MAX_DATABASES = 1000;

/** Documents deleted per sweep transaction, so a large backlog never holds the writer for long. */
const SWEEP_BATCH = 1000;
/** Documents read per `deleteWhere` transaction, most of which a filter may pass over. */
const SWEEP_READS = 10 * SWEEP_BATCH;

/** Documents per page of `scan`: short read transactions, so LMDB can reuse freed pages. */
const SCAN_PAGE_SIZE = 1000;

/**
 * Sorts after any key element (it is ordered-binary's MAXIMUM_KEY): `[...prefix, KEY_END]` ends
 * the range of every key that starts with `prefix`.
 */
const KEY_END = new Uint8Array([0xff]);

/** The earliest time a Date can hold; the start of the expiry index. */
const MIN_DATE_MS = -8.64e15;

/** The value stored under a document's id. */
interface StoredRecord<T> {
  readonly v: number;
  readonly d: T;
}

/** What `_meta` remembers of a collection: the structures that have been built. */
interface CollectionMeta {
  readonly indexes: readonly string[];
  readonly expireAtField: string | null;
}

/** A declared index and its LMDB database. */
interface IndexTable {
  readonly dbName: string;
  readonly fields: readonly string[];
  readonly unique: boolean;
  readonly db: Database<null>;
}

/**
 * Opens (creating if needed) the LMDB environment at `options.path`. Each collection sweeps its
 * expired documents when it is opened, then every `sweepIntervalMs`.
 */
export function openEmbeddedStore(options: EmbeddedStoreOptions): Promise<DocumentStore> {
  return settle(() => {
    const root = open({ path: options.path, maxDbs: MAX_DATABASES });
    return new EmbeddedStore(root, options.sweepIntervalMs ?? 60_000);
  });
}

class EmbeddedStore implements DocumentStore {
  readonly kind = 'embedded';
  private readonly meta: Database<CollectionMeta, string>;
  /** Opened collections by name: the ones with expiry are swept by the timer. */
  private readonly collections = new Map<string, { sweep(): Promise<number> }>();
  private readonly sweepTimer: NodeJS.Timeout;
  private closed = false;

  constructor(
    private readonly root: RootDatabase,
    sweepIntervalMs: number,
  ) {
    this.meta = root.openDB<CollectionMeta, string>('_meta', {});
    this.sweepTimer = setInterval(() => {
      void this.sweepAll();
    }, sweepIntervalMs);
    this.sweepTimer.unref();
  }

  async collection<T extends { readonly id: string }>(
    spec: CollectionSpec,
  ): Promise<Collection<T>> {
    checkCollectionSpec(spec);
    this.ensureOpen();
    const docs = new DocumentTable<T>(
      this.root.openDB<StoredRecord<T>, string>(`d:${spec.name}`, {}),
    );
    const expiry = this.root.openDB<null, Key>(`x:${spec.name}`, {});
    const indexes = (spec.indexes ?? []).map((index) => this.openIndex(spec.name, index));
    const collection = new EmbeddedCollection<T>(this.root, spec, docs, indexes, expiry, () => {
      this.ensureOpen();
    });
    const dropped = await this.root.childTransaction(() => this.reconcile(collection, indexes));
    for (const dbName of dropped) await this.root.openDB(dbName, {}).drop();
    await collection.sweep();
    this.collections.set(spec.name, collection);
    return collection;
  }

  ping(): Promise<void> {
    return settle(() => {
      this.ensureOpen();
      this.meta.get('');
    });
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.sweepTimer);
    await this.root.close();
  }

  private ensureOpen(): void {
    if (this.closed) throw new UnavailableError('the embedded store is closed');
  }

  private openIndex(collection: string, index: IndexSpec): IndexTable {
    const dbName = `i:${collection}:${index.fields.join(',')}${index.unique ? ':u' : ''}`;
    return {
      dbName,
      fields: index.fields,
      unique: index.unique ?? false,
      db: this.root.openDB<null, Key>(dbName, {}),
    };
  }

  /**
   * Inside a write transaction: builds the indexes (and expiry index) declared since the last
   * open, forgets those no longer declared and records the new state. Returns the databases to
   * drop (LMDB cannot drop one inside a transaction). A unique index that the stored documents
   * already violate throws `AlreadyExistsError`, and nothing changes.
   */
  private reconcile<T extends { readonly id: string }>(
    collection: EmbeddedCollection<T>,
    indexes: readonly IndexTable[],
  ): string[] {
    const name = collection.name;
    const previous = this.meta.get(name) ?? { indexes: [], expireAtField: null };
    const wanted = new Set(indexes.map((index) => index.dbName));
    for (const index of indexes) {
      if (!previous.indexes.includes(index.dbName)) collection.buildIndex(index);
    }
    const expireAtField = collection.spec.expireAtField ?? null;
    if (previous.expireAtField !== expireAtField) collection.buildExpiryIndex();
    this.meta.putSync(name, { indexes: [...wanted], expireAtField });
    return previous.indexes.filter((dbName) => !wanted.has(dbName));
  }

  /** Sweeps every open collection with expiry. Errors are dropped: reads hide expired data anyway. */
  private async sweepAll(): Promise<void> {
    for (const collection of this.collections.values()) {
      if (this.closed) return;
      try {
        await collection.sweep();
      } catch {
        // The next tick tries again; until then expired documents only take disk space.
      }
    }
  }
}

class EmbeddedCollection<T extends { readonly id: string }> implements Collection<T> {
  readonly name: string;

  constructor(
    private readonly root: RootDatabase,
    readonly spec: CollectionSpec,
    private readonly docs: DocumentTable<T>,
    private readonly indexes: readonly IndexTable[],
    private readonly expiry: Database<null>,
    private readonly ensureOpen: () => void,
  ) {
    this.name = spec.name;
  }

  get(id: string): Promise<Versioned<T> | undefined> {
    return settle(() => {
      this.ensureOpen();
      if (!isStorableId(id)) return undefined;
      const record = this.liveRecord(id);
      return record && versioned(record);
    });
  }

  getMany(ids: readonly string[]): Promise<Map<string, Versioned<T>>> {
    return settle(() => {
      this.ensureOpen();
      const now = Date.now();
      const found = new Map<string, Versioned<T>>();
      for (const id of ids) {
        if (!isStorableId(id)) continue;
        const record = this.docs.get(id);
        if (record && this.isLive(record.d, now)) found.set(id, versioned(record));
      }
      return found;
    });
  }

  async insert(doc: T): Promise<Versioned<T>> {
    checkDocument(doc, this.spec);
    return this.write(() => {
      const previous = this.docs.get(doc.id);
      if (previous && this.isLive(previous.d, Date.now())) {
        throw new AlreadyExistsError(`${this.name} "${doc.id}" already exists`);
      }
      return this.writeRecord(doc, 1, previous);
    });
  }

  async replace(doc: T, expectedVersion: number): Promise<Versioned<T>> {
    checkDocument(doc, this.spec);
    return this.write(() => {
      const previous = this.liveRecord(doc.id);
      if (!previous) throw new NotFoundError(`${this.name} "${doc.id}" does not exist`);
      if (previous.v !== expectedVersion) throw this.stale(doc.id, previous.v, expectedVersion);
      return this.writeRecord(doc, previous.v + 1, previous);
    });
  }

  async upsert(doc: T): Promise<Versioned<T>> {
    checkDocument(doc, this.spec);
    return this.write(() => {
      const previous = this.docs.get(doc.id);
      const live = previous && this.isLive(previous.d, Date.now());
      return this.writeRecord(doc, live ? previous.v + 1 : 1, previous);
    });
  }

  async upsertIfNewer(docs: readonly T[], field: string): Promise<ConditionalWriteOutcome[]> {
    docs.forEach((doc) => {
      checkDocument(doc, this.spec);
    });
    checkVersionField(docs, field);
    if (docs.length === 0) return [];
    // One transaction for the batch: each document is compared with what is stored at that
    // instant (including earlier documents of the same batch) and written or skipped.
    return this.write(() => {
      const now = Date.now();
      return docs.map((doc): ConditionalWriteOutcome => {
        const previous = this.docs.get(doc.id);
        if (!previous || !this.isLive(previous.d, now)) {
          this.writeRecord(doc, 1, previous);
          return 'inserted';
        }
        const stored = fieldValue(previous.d, field);
        const order = compareVersionField(stored, fieldValue(doc, field));
        // As MongoDB's filter `{$or: [{field: {$lt: v}}, {field: {$exists: false}}]}`.
        if (stored !== undefined && (order === undefined || order >= 0)) return 'skipped';
        this.writeRecord(doc, previous.v + 1, previous);
        return 'updated';
      });
    });
  }

  async increment(
    id: string,
    deltas: Readonly<Record<string, number>>,
    onInsert?: Partial<T>,
  ): Promise<Versioned<T>> {
    checkIdArgument(id);
    checkIncrement(deltas, onInsert);
    checkDocument({ ...insertBase(id, deltas, onInsert), ...deltas }, this.spec);
    return this.write(() => {
      const stored = this.docs.get(id);
      const previous = stored && this.isLive(stored.d, Date.now()) ? stored : undefined;
      const next: Record<string, unknown> = previous
        ? { ...previous.d }
        : insertBase(id, deltas, onInsert);
      for (const [field, delta] of Object.entries(deltas)) {
        // Only a missing field counts as 0: a stored null is not a number (as MongoDB's `$inc`).
        const current = next[field] === undefined ? 0 : next[field];
        if (typeof current !== 'number') {
          throw new InvalidArgumentError(`${this.name} "${id}" field "${field}" is not a number`, [
            { field: `deltas.${field}`, description: 'the stored field must hold a number' },
          ]);
        }
        next[field] = current + delta;
      }
      return this.writeRecord(next as T, previous ? previous.v + 1 : 1, stored);
    });
  }

  async delete(id: string, expectedVersion?: number): Promise<boolean> {
    if (!isStorableId(id)) return false;
    return this.write(() => {
      const previous = this.docs.get(id);
      if (!previous) return false;
      const live = this.isLive(previous.d, Date.now());
      if (live && expectedVersion !== undefined && previous.v !== expectedVersion) {
        throw this.stale(id, previous.v, expectedVersion);
      }
      // An expired document is removed too, as the sweep would, but was not there to delete.
      this.removeRecord(previous);
      return live;
    });
  }

  async deleteWhere(where: Where): Promise<number> {
    checkDeleteWhere(where);
    const filters = Object.entries(where);
    let total = 0;
    // Passes over the candidates in id order, each in transactions that read at most
    // SWEEP_READS documents and remove at most SWEEP_BATCH, each going on after the last id the
    // one before read (restarting from the first id would read the non-matching ones again:
    // quadratic, with the writer held). Another pass then takes what was written behind the
    // cursor, until a pass is one transaction (nothing can be behind it) or removes nothing.
    for (;;) {
      let removedInPass = 0;
      let transactions = 0;
      let after: string | undefined;
      do {
        const step = await this.write(() => {
          this.ensureOpen();
          return this.deleteStep(filters, after);
        });
        removedInPass += step.removed;
        transactions++;
        after = step.last;
      } while (after !== undefined);
      total += removedInPass;
      if (transactions === 1 || removedInPass === 0) return total;
    }
  }

  /**
   * One transaction of {@link deleteWhere}: removes the live documents matching `filters` after
   * `afterId`, stopping after SWEEP_BATCH removed or SWEEP_READS read. `last` is the last id read
   * when it stopped early, undefined when it read to the end.
   */
  private deleteStep(
    filters: [string, IndexValue][],
    afterId: string | undefined,
  ): { removed: number; last: string | undefined } {
    const now = Date.now();
    const { ids, fits } = this.idsMatching(filters, afterId);
    const batch: StoredRecord<T>[] = [];
    let read = 0;
    let last: string | undefined;
    let early = false;
    for (const id of ids) {
      if (batch.length === SWEEP_BATCH || read === SWEEP_READS) {
        early = true;
        break;
      }
      read++;
      last = id;
      const record = this.docs.get(id);
      if (record && fits(record.d) && this.isLive(record.d, now)) batch.push(record);
    }
    for (const record of batch) this.removeRecord(record);
    return { removed: batch.length, last: early ? last : undefined };
  }

  list(options: ListOptions): Promise<Page<T>> {
    return settle(() => {
      checkListOptions(options);
      this.ensureOpen();
      const items: Versioned<T>[] = [];
      let more = false;
      for (const record of this.matching(options.where, options.afterId)) {
        if (items.length === options.limit) {
          more = true;
          break;
        }
        items.push(versioned(record));
      }
      const last = items[items.length - 1];
      return { items, nextAfterId: more && last ? last.doc.id : undefined };
    });
  }

  async *scan(where?: Where): AsyncIterable<Versioned<T>> {
    checkWhere(where);
    let afterId: string | undefined;
    do {
      const page = await this.list({ where, afterId, limit: SCAN_PAGE_SIZE });
      yield* page.items;
      afterId = page.nextAfterId;
    } while (afterId !== undefined);
  }

  count(where?: Where): Promise<number> {
    return settle(() => {
      checkWhere(where);
      this.ensureOpen();
      if (where === undefined || Object.keys(where).length === 0) {
        // Keys only: every document minus the expired ones the sweep has not removed yet.
        const expired = this.spec.expireAtField
          ? this.expiry.getCount(expiredRange(Date.now()))
          : 0;
        return this.docs.getCount() - expired;
      }
      let count = 0;
      const records = this.matching(where, undefined)[Symbol.iterator]();
      while (!records.next().done) count++;
      return count;
    });
  }

  /** Deletes expired documents, a batch per transaction. Returns how many it deleted. */
  async sweep(): Promise<number> {
    if (!this.spec.expireAtField) return 0;
    let total = 0;
    for (;;) {
      const removed = await this.write(() => {
        const keys = [...this.expiry.getKeys({ ...expiredRange(Date.now()), limit: SWEEP_BATCH })];
        for (const key of keys) {
          const id = (key as Key[])[1] as string;
          const record = this.docs.get(id);
          // A key whose document moved on is stale; removing the record clears its own keys.
          if (record && !this.isLive(record.d, Date.now())) this.removeRecord(record);
          else this.expiry.removeSync(key);
        }
        return keys.length;
      });
      total += removed;
      if (removed < SWEEP_BATCH) return total;
    }
  }

  /** Inside the open transaction: fills a new index from every document, checking uniqueness. */
  buildIndex(index: IndexTable): void {
    index.db.clearSync();
    for (const { value: record } of this.docs.getRange({})) {
      if (index.unique) this.checkUnique(index, record.d);
      index.db.putSync(indexKey(index, record.d), null);
    }
  }

  /** Inside the open transaction: refills the expiry index for the declared expiry field. */
  buildExpiryIndex(): void {
    this.expiry.clearSync();
    if (!this.spec.expireAtField) return;
    for (const { value: record } of this.docs.getRange({})) {
      const key = this.expiryKey(record.d);
      if (key) this.expiry.putSync(key, null);
    }
  }

  /**
   * Runs `action` in its own child transaction of the next batched write transaction, and
   * resolves once that transaction is on disk. lmdb-js resolves a write when its transaction is
   * committed and visible; with `overlappingSync` (its default off Windows) the flush to disk
   * follows, overlapping the next transactions. A write acknowledged before then survives the
   * process but not the machine (a power loss restores the last flushed transaction), so the
   * flush is waited for: about half a millisecond more per write in sequence here, nothing in
   * throughput, since writes in flight share their flushes.
   */
  private async write<R>(action: () => R): Promise<R> {
    this.ensureOpen();
    const result = await this.root.childTransaction(action);
    await this.root.flushed;
    return result;
  }

  /**
   * Inside a write transaction: stores `next` at `version` in place of `previous` (the record
   * physically there, live or expired) and keeps index and expiry entries in step. Unique
   * conflicts are checked before anything is written.
   */
  private writeRecord(
    next: T,
    version: number,
    previous: StoredRecord<T> | undefined,
  ): Versioned<T> {
    for (const index of this.indexes) {
      if (index.unique) this.checkUnique(index, next);
    }
    for (const index of this.indexes) {
      const key = indexKey(index, next);
      const oldKey = previous && indexKey(index, previous.d);
      if (oldKey && compareKeys(oldKey, key) === 0) continue;
      if (oldKey) index.db.removeSync(oldKey);
      index.db.putSync(key, null);
    }
    const expiryKey = this.expiryKey(next);
    const oldExpiryKey = previous && this.expiryKey(previous.d);
    if (oldExpiryKey && !(expiryKey && compareKeys(oldExpiryKey, expiryKey) === 0)) {
      this.expiry.removeSync(oldExpiryKey);
    }
    if (expiryKey) this.expiry.putSync(expiryKey, null);
    const record = { v: version, d: next };
    this.docs.putSync(next.id, record);
    return versioned(record);
  }

  /** Inside a write transaction: deletes a record and its index and expiry entries. */
  private removeRecord(record: StoredRecord<T>): void {
    for (const index of this.indexes) index.db.removeSync(indexKey(index, record.d));
    const expiryKey = this.expiryKey(record.d);
    if (expiryKey) this.expiry.removeSync(expiryKey);
    this.docs.removeSync(record.d.id);
  }

  /** Throws `AlreadyExistsError` when another document holds `doc`'s values in a unique index. */
  private checkUnique(index: IndexTable, doc: T): void {
    const prefix = indexValues(index, doc);
    const range = { start: prefix as Key[], end: [...prefix, KEY_END] as Key[], limit: 2 };
    for (const key of index.db.getKeys(range)) {
      const holder = (key as Key[])[prefix.length];
      if (holder !== doc.id) {
        const values = index.fields.map((field, i) => `${field}=${JSON.stringify(prefix[i])}`);
        throw new AlreadyExistsError(
          `${this.name} "${String(holder)}" already has ${values.join(', ')} (unique index)`,
        );
      }
    }
  }

  /** The live record stored under `id`, if any. */
  private liveRecord(id: string): StoredRecord<T> | undefined {
    const record = this.docs.get(id);
    return record && this.isLive(record.d, Date.now()) ? record : undefined;
  }

  /** Live documents matching `where`, in id order, after `afterId`; within one read snapshot. */
  private *matching(
    where: Where | undefined,
    pageAfter: string | undefined,
  ): Iterable<StoredRecord<T>> {
    const now = Date.now();
    const afterId = pageAfter === undefined ? undefined : keyBound(pageAfter);
    const filters = Object.entries(where ?? {});
    if (filters.length === 0) {
      const range = afterId === undefined ? {} : { start: afterId, exclusiveStart: true };
      for (const { value } of this.docs.getRange(range)) {
        if (this.isLive(value.d, now)) yield value;
      }
      return;
    }
    const { ids, fits } = this.idsMatching(filters, afterId);
    for (const id of ids) {
      const record = this.docs.get(id);
      if (record && fits(record.d) && this.isLive(record.d, now)) yield record;
    }
  }

  /**
   * Ids of the documents that may match the equality filters, in id order, and `fits`, which the
   * caller checks on each document it reads. The index that starts with the most filtered fields
   * is read: in order when it has no other field, its ids sorted otherwise; `fits` checks the
   * filters beyond those fields. Without one, every id (fine at embedded sizes; declare the index).
   */
  private idsMatching(
    filters: [string, IndexValue][],
    afterId: string | undefined,
  ): { ids: Iterable<string>; fits: (doc: T) => boolean } {
    // As index entries hold them (−0 as 0).
    const values = new Map(filters.map(([field, value]) => [field, indexValue(value)]));
    const leadingFiltered = (index: IndexTable): number => {
      let n = 0;
      while (n < index.fields.length && values.has(index.fields[n] as string)) n++;
      return n;
    };
    let chosen: IndexTable | undefined;
    let covered = 0;
    for (const index of this.indexes) {
      const n = leadingFiltered(index);
      // More filtered fields first; then one with no other field, whose ids come in order.
      const better =
        n > covered ||
        (n > 0 && n === covered && index.fields.length < (chosen?.fields.length ?? 0));
      if (better) [chosen, covered] = [index, n];
    }
    const unchecked = filters.filter(
      ([field]) => !chosen?.fields.slice(0, covered).includes(field),
    );
    const fits = (doc: T): boolean =>
      unchecked.every(([field, wanted]) => (fieldValue(doc, field) ?? null) === wanted);
    if (chosen === undefined) {
      const range = afterId === undefined ? {} : { start: afterId, exclusiveStart: true };
      return { ids: this.docs.getKeys(range), fits };
    }
    return { ids: this.indexIds(chosen, covered, values, afterId), fits };
  }

  /** Ids of `index`'s entries whose first `covered` fields hold `values`, in id order. */
  private *indexIds(
    chosen: IndexTable,
    covered: number,
    values: Map<string, IndexValue>,
    afterId: string | undefined,
  ): Iterable<string> {
    const prefix = chosen.fields.slice(0, covered).map((field) => values.get(field)) as Key[];
    // No document holds strings this long in an index (checkDocument), nor could LMDB key them.
    if (indexedBytes(prefix) > MAX_INDEXED_BYTES) return;
    const end = [...prefix, KEY_END];
    if (chosen.fields.length === covered) {
      const start = afterId === undefined ? prefix : [...prefix, afterId];
      for (const key of chosen.db.getKeys({ start, end, exclusiveStart: afterId !== undefined })) {
        yield (key as Key[])[covered] as string;
      }
      return;
    }
    const ids = new Set<string>();
    for (const key of chosen.db.getKeys({ start: prefix, end })) {
      const id = (key as Key[])[chosen.fields.length] as string;
      if (afterId === undefined || byteOrder(id, afterId) > 0) ids.add(id);
    }
    yield* [...ids].sort(byteOrder);
  }

  private isLive(doc: T, nowMs: number): boolean {
    const field = this.spec.expireAtField;
    if (!field) return true;
    const expiresAt = fieldValue(doc, field);
    return !isDate(expiresAt) || expiresAt.getTime() > nowMs;
  }

  private expiryKey(doc: T): Key[] | undefined {
    const field = this.spec.expireAtField;
    const expiresAt = field === undefined ? undefined : fieldValue(doc, field);
    return isDate(expiresAt) ? [expiresAt.getTime(), doc.id] : undefined;
  }

  private stale(id: string, current: number, expected: number): AbortedError {
    return new AbortedError(`${this.name} "${id}" is at version ${current}, not ${expected}`, {
      metadata: { currentVersion: String(current) },
    });
  }
}

/**
 * The document `increment` creates before adding the deltas: `onInsert` without `id` and without
 * the counters (a counter starts at its delta, as MongoDB's `$setOnInsert` cannot name it).
 */
function insertBase(
  id: string,
  deltas: Readonly<Record<string, number>>,
  onInsert: object | undefined,
): Record<string, unknown> {
  const base: Record<string, unknown> = { id };
  for (const [name, value] of Object.entries(onInsert ?? {})) {
    if (name !== 'id' && !(name in deltas)) base[name] = value;
  }
  return base;
}

/** Runs a synchronous LMDB call as a promise, so a throw reaches the caller as a rejection. */
function settle<R>(call: () => R): Promise<R> {
  return new Promise((resolve) => {
    resolve(call());
  });
}

/** A Date as stored: `_` starts no caller's field name, so the tag cannot collide with data. */
interface StoredDate {
  readonly _date: number;
}

function isStoredDate(value: object): value is StoredDate {
  const keys = Object.keys(value);
  return (
    keys.length === 1 && keys[0] === '_date' && typeof (value as StoredDate)._date === 'number'
  );
}

/**
 * Dates are stored as tagged milliseconds rather than left to MessagePack's timestamp extension:
 * what that extension decodes to depends on the decoder's realm and settings (under jest, a worker's
 * later test files got values that were no Date at all), while a tag decodes to a Date of the
 * reader's own realm, always.
 */
function encodeValue(value: unknown): unknown {
  if (value === null || typeof value !== 'object') return value;
  if (isDate(value)) return { _date: value.getTime() } satisfies StoredDate;
  if (ArrayBuffer.isView(value)) return value;
  if (Array.isArray(value)) return value.map(encodeValue);
  const out: Record<string, unknown> = {};
  for (const [key, inner] of Object.entries(value)) out[key] = encodeValue(inner);
  return out;
}

function decodeValue(value: unknown): unknown {
  if (value === null || typeof value !== 'object') return value;
  if (ArrayBuffer.isView(value)) return value;
  if (Array.isArray(value)) return value.map(decodeValue);
  if (isStoredDate(value)) return new Date(value._date);
  const out: Record<string, unknown> = {};
  for (const [key, inner] of Object.entries(value)) out[key] = decodeValue(inner);
  return out;
}

/** The documents database of a collection, encoding and decoding documents on the way. */
class DocumentTable<T> {
  constructor(private readonly db: Database<StoredRecord<T>, string>) {}

  get(id: string): StoredRecord<T> | undefined {
    const raw = this.db.get(id);
    return raw && { v: raw.v, d: decodeValue(raw.d) as T };
  }

  *getRange(
    range: Parameters<Database<StoredRecord<T>, string>['getRange']>[0],
  ): Generator<{ key: string; value: StoredRecord<T> }> {
    for (const { key, value } of this.db.getRange(range)) {
      yield { key, value: { v: value.v, d: decodeValue(value.d) as T } };
    }
  }

  *getKeys(range: Parameters<Database<StoredRecord<T>, string>['getKeys']>[0]): Generator<string> {
    for (const key of this.db.getKeys(range)) yield key;
  }

  getCount(): number {
    return this.db.getCount();
  }

  putSync(id: string, record: StoredRecord<T>): void {
    this.db.putSync(id, { v: record.v, d: encodeValue(record.d) as T });
  }

  removeSync(id: string): void {
    this.db.removeSync(id);
  }
}

function versioned<T>(record: StoredRecord<T>): Versioned<T> {
  return { doc: record.d, version: record.v };
}

/**
 * Two ids in the order of their UTF-8 bytes, as LMDB keys them and MongoDB compares them (lmdb's
 * `compareKeys` orders strings by UTF-16 code unit, which differs past U+FFFF).
 */
function byteOrder(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a), Buffer.from(b));
}

/**
 * `afterId` as a key bound: one too long for a key is cut after the character that takes it past
 * {@link MAX_ID_BYTES}. A stored id (at most that long) compares with `afterId` within those
 * bytes, so the ids after either are the same.
 */
function keyBound(afterId: string): string {
  if (Buffer.byteLength(afterId) <= MAX_ID_BYTES) return afterId;
  let bytes = 0;
  let end = 0;
  for (const char of afterId) {
    bytes += Buffer.byteLength(char);
    end += char.length;
    if (bytes > MAX_ID_BYTES) break;
  }
  return afterId.slice(0, end);
}

function indexValues(index: IndexTable, doc: object): IndexValue[] {
  return index.fields.map((field) => indexValue(fieldValue(doc, field)));
}

function indexKey(index: IndexTable, doc: { readonly id: string }): Key[] {
  return [...indexValues(index, doc), doc.id] as Key[];
}

/** The keys of the expiry index at or before `nowMs` (a document expires when its time is reached). */
function expiredRange(nowMs: number): { start: Key; end: Key } {
  return { start: [MIN_DATE_MS], end: [nowMs, KEY_END] };
}
