/**
 * The MongoDB adapter of the storage port (production; `MONGODB_URI`). One database per service.
 *
 * Layout: each document is stored as `{ _id: id, ...fields, _v: version }`, the caller's fields as
 * they are, so the data reads naturally in mongosh. Declared indexes are created at open, and the
 * expiry field gets a TTL index (`expireAfterSeconds: 0`) directly on it: the field already holds
 * the Date, so no shadow `_expiresAt` copy has to be kept in step. The TTL monitor deletes about
 * once a minute, so reads also filter out documents whose expiry has passed.
 *
 * Every write is a single atomic server-side operation (conditional `replaceOne`, `$inc`, upserts
 * with a pipeline update); nothing reads, changes in memory and writes back. The only follow-ups
 * are a read after a failed conditional write, to tell NOT_FOUND from ABORTED, and on collections
 * with expiry a conditional delete of the one expired-but-not-yet-collected document a write
 * targets, so that an expired id behaves as absent (exactly what the TTL monitor would do).
 *
 * Engine errors are mapped once, in `guard`: unreachable server → `UnavailableError`, duplicate
 * key → `AlreadyExistsError`, a type mismatch (`$inc` on a string) → `InvalidArgumentError`.
 * Their messages reach callers, so they say what failed without the driver's message, which
 * names hosts, ports, replica sets, databases and indexes: that one stays in `cause`, which the
 * call's span and the logs record.
 */
import {
  MongoBulkWriteError,
  MongoClient,
  MongoNetworkError,
  MongoNotConnectedError,
  MongoServerError,
  MongoServerSelectionError,
  MongoTopologyClosedError,
  type AnyBulkWriteOperation,
  type Collection as MongoCollection,
  type Db,
  type Document,
  type Filter,
  type IndexDescription,
  type WriteError,
} from 'mongodb';
import {
  AbortedError,
  AlreadyExistsError,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  UnavailableError,
  type TandemError,
} from '../errors';
import {
  checkCollectionSpec,
  checkDocument,
  checkIdArgument,
  isStorableId,
  checkIncrement,
  checkListOptions,
  checkVersionField,
  checkDeleteWhere,
  checkWhere,
  fieldValue,
  type Collection,
  type CollectionSpec,
  type ConditionalWriteOutcome,
  type DocumentStore,
  type ListOptions,
  type Page,
  type Versioned,
  type Where,
} from './collection';

export interface MongoStoreOptions {
  /** A MongoDB connection string, for example `mongodb://mongo:27017/?replicaSet=rs0`. */
  readonly uri: string;
  /** The service's database, for example `tandem_assignment`. */
  readonly database: string;
  /** Shown in the server's logs and `currentOp`. @default 'tandem' */
  readonly appName?: string;
  /** How long an operation waits for a usable server before `UnavailableError`. @default 10000 */
  readonly serverSelectionTimeoutMs?: number;
}

/** Documents per round trip of `scan`: large enough to amortize latency, small enough for memory. */
const SCAN_PAGE_SIZE = 1000;

/**
 * Server error codes that mean "this node cannot take the operation now" (failover, shutdown, an
 * overloaded or lagging node): the driver's retryable read and write codes, which include
 * ExceededTimeLimit (262) and ReadConcernMajorityNotAvailableYet (134).
 */
const UNAVAILABLE_CODES = new Set([
  6, 7, 89, 91, 134, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,
]);

const DUPLICATE_KEY = 11000;
/** IndexOptionsConflict and IndexKeySpecsConflict. */
const INDEX_CONFLICT_CODES = new Set([85, 86]);
const TYPE_MISMATCH = 14;

/** What a caller is told when storage cannot take an operation now (see the module comment). */
const STORAGE_UNAVAILABLE = 'storage is unavailable; retry with backoff';

/** The stored shape: the caller's fields plus `_id` and `_v`. */
interface StoredDocument extends Document {
  _id: string;
  _v: number;
}

/**
 * Connects to MongoDB and returns the service's store. Throws `UnavailableError` when no server,
 * or no primary, answers within `serverSelectionTimeoutMs`, so a service fails fast at start-up.
 */
export async function openMongoStore(options: MongoStoreOptions): Promise<DocumentStore> {
  const client = new MongoClient(options.uri, {
    appName: options.appName ?? 'tandem',
    // A `serverSelectionTimeoutMS` in the URI wins over the default (options given here would win
    // over the URI's).
    serverSelectionTimeoutMS:
      options.serverSelectionTimeoutMs ??
      (/[?&]serverSelectionTimeoutMS=/i.test(options.uri) ? undefined : 10_000),
    // An `undefined` field means "absent", as in the embedded store, not null.
    ignoreUndefined: true,
    // Binary comes back as a Buffer (a Uint8Array), not as bson's Binary wrapper.
    promoteBuffers: true,
  });
  try {
    await guard(() => client.connect());
    // Every service writes, and writes go to the primary whatever the URI's read preference:
    // connected to a secondary only (an election, the majority down), start-up would go on and
    // fail at its first write, where this waits NOT_SERVING for a primary like for no server.
    // The read preference alone does not ensure it: with `directConnection=true` (a one-node
    // replica set, deploy/compose.yaml) the driver sends every command to that member, whatever
    // its role, so the member is asked whether it takes writes.
    const hello = await guard(() =>
      client.db('admin').command({ hello: 1 }, { readPreference: 'primary' }),
    );
    // A mongos (and a load balancer in front of one) answers true as well.
    if (hello.isWritablePrimary !== true) {
      const member = typeof hello.me === 'string' ? ` ${hello.me}` : '';
      throw new UnavailableError(STORAGE_UNAVAILABLE, {
        cause: new Error(`MongoDB member${member} is not a writable primary (yet)`),
      });
    }
  } catch (error) {
    await client.close().catch(() => undefined);
    throw error;
  }
  return new MongoStore(client, client.db(options.database));
}

class MongoStore implements DocumentStore {
  readonly kind = 'mongodb';

  constructor(
    private readonly client: MongoClient,
    private readonly db: Db,
  ) {}

  async collection<T extends { readonly id: string }>(
    spec: CollectionSpec,
  ): Promise<Collection<T>> {
    checkCollectionSpec(spec);
    const collection = this.db.collection<StoredDocument>(spec.name);
    const indexes = indexDescriptions(spec);
    if (indexes.length > 0) {
      try {
        await guard(() => collection.createIndexes(indexes));
      } catch (error) {
        throw indexConflict(spec.name, error) ?? error;
      }
    }
    return new MongoDocumentCollection<T>(collection, spec);
  }

  async ping(): Promise<void> {
    await guard(() => this.db.command({ ping: 1 }));
  }

  async close(): Promise<void> {
    await this.client.close();
  }
}

/**
 * The indexes a spec declares, plus the TTL index on the expiry field. A declared single-field,
 * non-unique index on the expiry field is served by the TTL index (MongoDB refuses two indexes
 * with the same key and different options).
 */
function indexDescriptions(spec: CollectionSpec): IndexDescription[] {
  const ttlField = spec.expireAtField;
  const declared = (spec.indexes ?? []).filter(
    (index) =>
      !(ttlField && index.fields.length === 1 && index.fields[0] === ttlField && !index.unique),
  );
  const descriptions: IndexDescription[] = declared.map((index) => ({
    key: Object.fromEntries(index.fields.map((field) => [field, 1] as const)),
    unique: index.unique ?? false,
  }));
  if (ttlField) descriptions.push({ key: { [ttlField]: 1 }, expireAfterSeconds: 0 });
  return descriptions;
}

/**
 * An index declared with other options (unique, expiry) than the one stored on the same fields, as
 * a build that declared it otherwise left it: FAILED_PRECONDITION naming it, rather than a raw
 * server error. Not resolved by dropping the stored index: a replica of the other build starting
 * meanwhile would fail in turn, and a unique index the data breaks would leave none at all; such
 * a change needs the index dropped by hand during the rollout (the README's "Deploying").
 */
function indexConflict(collection: string, error: unknown): FailedPreconditionError | undefined {
  if (!(error instanceof MongoServerError) || !INDEX_CONFLICT_CODES.has(error.code as number)) {
    return undefined;
  }
  return new FailedPreconditionError(
    `collection ${collection}: an index on the same fields exists with other options than declared (${error.message}); drop or migrate it before starting this build`,
    { reason: 'INDEX_CONFLICT', cause: error },
  );
}

class MongoDocumentCollection<T extends { readonly id: string }> implements Collection<T> {
  readonly name: string;

  constructor(
    private readonly collection: MongoCollection<StoredDocument>,
    private readonly spec: CollectionSpec,
  ) {
    this.name = spec.name;
  }

  async get(id: string): Promise<Versioned<T> | undefined> {
    if (!isStorableId(id)) return undefined;
    const stored = await guard(() => this.collection.findOne(this.live({ _id: id })));
    return stored ? fromStored<T>(stored) : undefined;
  }

  async getMany(ids: readonly string[]): Promise<Map<string, Versioned<T>>> {
    const found = new Map<string, Versioned<T>>();
    const unique = [...new Set(ids.filter(isStorableId))];
    if (unique.length === 0) return found;
    const stored = await guard(() =>
      this.collection
        .find(this.live({ _id: { $in: unique } }), { batchSize: unique.length })
        .toArray(),
    );
    for (const raw of stored) found.set(raw._id, fromStored<T>(raw));
    return found;
  }

  async insert(doc: T): Promise<Versioned<T>> {
    checkDocument(doc, this.spec);
    const stored = toStored(doc, 1);
    try {
      await guard(() => this.collection.insertOne(stored));
    } catch (error) {
      // The id may belong to an expired document the TTL monitor has not collected yet: collect
      // it as the monitor would, then try once more.
      const collected = error instanceof AlreadyExistsError && (await this.purgeExpired([doc.id]));
      if (!collected) throw error;
      await guard(() => this.collection.insertOne(stored));
    }
    return { doc, version: 1 };
  }

  async replace(doc: T, expectedVersion: number): Promise<Versioned<T>> {
    checkDocument(doc, this.spec);
    const version = expectedVersion + 1;
    const result = await guard(() =>
      this.collection.replaceOne(
        this.live({ _id: doc.id, _v: expectedVersion }),
        toStored(doc, version),
      ),
    );
    if (result.matchedCount === 0) throw await this.conditionFailure(doc.id, expectedVersion);
    return { doc, version };
  }

  async upsert(doc: T): Promise<Versioned<T>> {
    checkDocument(doc, this.spec);
    await this.purgeExpired([doc.id]);
    const stored = await retryIdRace(() =>
      this.collection.findOneAndUpdate({ _id: doc.id }, replaceAndBump(doc), {
        upsert: true,
        returnDocument: 'after',
        projection: { _v: 1 },
      }),
    );
    if (!stored) throw new Error(`upsert of "${doc.id}" returned no document`);
    return { doc, version: stored._v };
  }

  async upsertIfNewer(docs: readonly T[], field: string): Promise<ConditionalWriteOutcome[]> {
    docs.forEach((doc) => {
      checkDocument(doc, this.spec);
    });
    checkVersionField(docs, field);
    const outcomes = new Array<ConditionalWriteOutcome>(docs.length).fill('skipped');
    if (docs.length === 0) return outcomes;
    await this.purgeExpired(docs.map((doc) => doc.id));
    let pending = docs.map((_, i) => i);
    // A duplicate _id means the filter missed because the stored document is at least as new;
    // but when two writers create the same id at once, the loser gets one too, though its value
    // may be the newer. So the ops that got one run once more: the document now exists, so a
    // second duplicate means "stored is at least as new" (skipped). A batch with skips therefore
    // costs two round trips; one without, one.
    for (let attempt = 0; attempt < 2 && pending.length > 0; attempt++) {
      pending = await this.conditionalWrites(docs, pending, field, outcomes);
    }
    return outcomes;
  }

  async increment(
    id: string,
    deltas: Readonly<Record<string, number>>,
    onInsert?: Partial<T>,
  ): Promise<Versioned<T>> {
    checkIdArgument(id);
    checkIncrement(deltas, onInsert);
    // `$setOnInsert` must not name a counter (MongoDB rejects the conflict) nor `id` (it is `_id`).
    const setOnInsert = Object.fromEntries(
      Object.entries(onInsert ?? {}).filter(([name]) => name !== 'id' && !(name in deltas)),
    );
    // The document it may create must be valid too (indexed fields scalar, expiry a Date).
    checkDocument({ ...setOnInsert, ...deltas, id }, this.spec);
    await this.purgeExpired([id]);
    const update: Document = { $inc: { ...deltas, _v: 1 } };
    if (Object.keys(setOnInsert).length > 0) update.$setOnInsert = setOnInsert;
    const stored = await retryIdRace(() =>
      this.collection.findOneAndUpdate({ _id: id }, update, {
        upsert: true,
        returnDocument: 'after',
      }),
    );
    if (!stored) throw new Error(`increment of "${id}" returned no document`);
    return fromStored<T>(stored);
  }

  async delete(id: string, expectedVersion?: number): Promise<boolean> {
    if (!isStorableId(id)) return false;
    const filter = this.live(
      expectedVersion === undefined ? { _id: id } : { _id: id, _v: expectedVersion },
    );
    const result = await guard(() => this.collection.deleteOne(filter));
    if (result.deletedCount === 1) return true;
    if (expectedVersion === undefined) return false;
    const failure = await this.conditionFailure(id, expectedVersion);
    if (failure instanceof NotFoundError) return false;
    throw failure;
  }

  async deleteWhere(where: Where): Promise<number> {
    checkDeleteWhere(where);
    // Expired ones too: TTL deletion is lazy, and nothing of them should outlive this.
    const result = await guard(() => this.collection.deleteMany({ ...where }));
    return result.deletedCount;
  }

  async list(options: ListOptions): Promise<Page<T>> {
    checkListOptions(options);
    const filter: Filter<StoredDocument> = { ...(options.where ?? {}) };
    if (options.afterId !== undefined) filter._id = { $gt: options.afterId };
    // One document more than asked tells whether another page follows.
    const stored = await guard(() =>
      this.collection
        .find(this.live(filter), {
          sort: { _id: 1 },
          limit: options.limit + 1,
          batchSize: options.limit + 1,
        })
        .toArray(),
    );
    const items = stored.slice(0, options.limit).map((raw) => fromStored<T>(raw));
    const last = items[items.length - 1];
    return {
      items,
      nextAfterId: stored.length > options.limit && last ? last.doc.id : undefined,
    };
  }

  async *scan(where?: Where): AsyncIterable<Versioned<T>> {
    checkWhere(where);
    // Keyset pages rather than one long cursor: no cursor can time out under a slow consumer.
    let afterId: string | undefined;
    do {
      const page = await this.list({ where, afterId, limit: SCAN_PAGE_SIZE });
      yield* page.items;
      afterId = page.nextAfterId;
    } while (afterId !== undefined);
  }

  async count(where?: Where): Promise<number> {
    checkWhere(where);
    return guard(() => this.collection.countDocuments(this.live({ ...(where ?? {}) })));
  }

  /** Adds "not expired" to a filter on collections with expiry (TTL deletion is lazy). */
  private live(filter: Filter<StoredDocument>): Filter<StoredDocument> {
    const field = this.spec.expireAtField;
    if (!field) return filter;
    // `null` matches both a missing field and an explicit null: neither expires.
    return { ...filter, $or: [{ [field]: { $gt: new Date() } }, { [field]: null }] };
  }

  /**
   * Deletes the expired documents among `ids`, as the TTL monitor would, so that a write treats
   * them as absent. Returns whether it deleted any. A no-op on collections without expiry.
   */
  private async purgeExpired(ids: readonly string[]): Promise<boolean> {
    const field = this.spec.expireAtField;
    if (!field) return false;
    const result = await guard(() =>
      this.collection.deleteMany({ _id: { $in: [...ids] }, [field]: { $lte: new Date() } }),
    );
    return result.deletedCount > 0;
  }

  /** After a conditional write matched nothing: NotFound when the document is gone, else Aborted. */
  private async conditionFailure(id: string, expectedVersion: number): Promise<Error> {
    const current = await guard(() =>
      this.collection.findOne(this.live({ _id: id }), { projection: { _v: 1 } }),
    );
    if (!current) return new NotFoundError(`${this.name} "${id}" does not exist`);
    return new AbortedError(
      `${this.name} "${id}" is at version ${current._v}, not ${expectedVersion}`,
      { metadata: { currentVersion: String(current._v) } },
    );
  }

  /**
   * Runs one unordered bulk of conditional upserts for `pending` (indexes into `docs`), records
   * each outcome and returns the indexes that hit a duplicate `_id`.
   */
  private async conditionalWrites(
    docs: readonly T[],
    pending: readonly number[],
    field: string,
    outcomes: ConditionalWriteOutcome[],
  ): Promise<number[]> {
    const operations: AnyBulkWriteOperation<StoredDocument>[] = pending.map((i) => {
      const doc = docs[i] as T;
      return {
        updateOne: {
          filter: {
            _id: doc.id,
            $or: [{ [field]: { $lt: fieldValue(doc, field) } }, { [field]: { $exists: false } }],
          },
          update: replaceAndBump(doc),
          upsert: true,
        },
      };
    });
    let upsertedIds: Record<number, unknown>;
    let failed: { index: number; duplicateId: boolean; error: WriteError }[] = [];
    let bulkError: MongoBulkWriteError | undefined;
    try {
      const result = await this.collection.bulkWrite(operations, { ordered: false });
      upsertedIds = result.upsertedIds;
    } catch (error) {
      if (!(error instanceof MongoBulkWriteError)) throw mapError(error);
      bulkError = error;
      upsertedIds = error.result.upsertedIds;
      failed = error.result.getWriteErrors().map((writeError) => ({
        index: writeError.index,
        duplicateId: writeError.code === DUPLICATE_KEY && isIdIndex(writeError.err),
        error: writeError,
      }));
    }
    const failedAt = new Map(failed.map((failure) => [failure.index, failure]));
    pending.forEach((docIndex, opIndex) => {
      if (failedAt.has(opIndex)) return;
      outcomes[docIndex] = opIndex in upsertedIds ? 'inserted' : 'updated';
    });
    const other = failed.find((failure) => !failure.duplicateId);
    if (other) {
      const message = other.error.errmsg ?? `write failed with code ${other.error.code}`;
      // The cause is the driver's error (an Error, with every write's), not the WriteError.
      throw serverError(other.error.code, bulkError) ?? new Error(message, { cause: bulkError });
    }
    return failed.map((failure) => pending[failure.index] as number);
  }
}

/** The stored form of a document: `_id` instead of `id`, plus the version. */
function toStored(doc: { readonly id: string }, version: number): StoredDocument {
  const { id, ...fields } = doc;
  return { _id: id, ...fields, _v: version };
}

function fromStored<T>(stored: StoredDocument): Versioned<T> {
  const { _id, _v, ...fields } = stored;
  return { doc: { id: _id, ...fields } as T, version: _v };
}

/**
 * A pipeline update that replaces the whole document (dropping fields the new one lacks) and
 * bumps the version in the same atomic step; `$literal` keeps strings such as "$5" from being
 * read as field paths.
 */
function replaceAndBump(doc: { readonly id: string }): Document[] {
  const { id, ...fields } = doc;
  return [
    {
      $replaceWith: {
        $mergeObjects: [
          { $literal: fields },
          { _id: id, _v: { $add: [{ $ifNull: ['$_v', 0] }, 1] } },
        ],
      },
    },
  ];
}

/** Whether a duplicate-key write error is on `_id` (mongod gives keyPattern; others the message). */
function isIdIndex(raw: { errmsg?: string; keyPattern?: unknown; errInfo?: unknown }): boolean {
  const keyPattern = raw.keyPattern as Record<string, unknown> | undefined;
  if (keyPattern) return Object.keys(keyPattern).join() === '_id';
  return /index: _id_\b/.test(raw.errmsg ?? '');
}

function isIdConflict(error: unknown): boolean {
  return (
    error instanceof MongoServerError &&
    error.code === DUPLICATE_KEY &&
    isIdIndex({ errmsg: error.errmsg, keyPattern: error.keyPattern as unknown })
  );
}

/**
 * Runs an upsert, trying once more when it lost a race to create the same `_id` (mongod retries
 * such upserts itself in most cases; this covers the rest, and servers that do not).
 */
async function retryIdRace<R>(operation: () => Promise<R>): Promise<R> {
  try {
    return await operation();
  } catch (error) {
    if (!isIdConflict(error)) throw mapError(error);
    return guard(operation);
  }
}

/** Runs a driver call and maps its errors to the platform's (see the module comment). */
async function guard<R>(operation: () => Promise<R>): Promise<R> {
  try {
    return await operation();
  } catch (error) {
    throw mapError(error);
  }
}

/** @internal Exported for tests. */
export function mapError(error: unknown): unknown {
  if (
    error instanceof MongoServerSelectionError ||
    error instanceof MongoNetworkError ||
    error instanceof MongoNotConnectedError ||
    error instanceof MongoTopologyClosedError
  ) {
    return new UnavailableError(STORAGE_UNAVAILABLE, { cause: error });
  }
  if (error instanceof MongoServerError && typeof error.code === 'number') {
    return serverError(error.code, error) ?? error;
  }
  return error;
}

/**
 * Maps a server error code (of a command or of one write in a bulk) to the platform's error, with
 * a message of its own and the driver's error as `cause`; undefined for codes that are bugs
 * rather than outcomes.
 */
function serverError(code: number, cause: unknown): TandemError | undefined {
  if (code === DUPLICATE_KEY) {
    return new AlreadyExistsError('a stored document already has this id or unique key', {
      cause,
    });
  }
  if (code === TYPE_MISMATCH) {
    return new InvalidArgumentError(
      'a stored field does not have the type the operation needs (a counter that is not a number)',
      [],
      { cause },
    );
  }
  if (UNAVAILABLE_CODES.has(code)) return new UnavailableError(STORAGE_UNAVAILABLE, { cause });
  return undefined;
}
