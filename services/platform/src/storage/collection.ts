/**
 * The storage port: a collection of JSON-like documents keyed by `id`, with versions for
 * optimistic concurrency, declared indexes and optional expiry. Each service builds its
 * repositories on it. Two adapters pass one contract test suite:
 * - MongoDB (`mongo-store.ts`, production, `MONGODB_URI`): one database per service;
 * - embedded (`embedded-store.ts`, the default): LMDB files under `TANDEM_DATA_DIR/<service>`.
 *
 * Documents must be plain data: strings, finite numbers, booleans, null, Dates, arrays, plain
 * objects and Uint8Array. Field names must not start with `$` or `_` (the adapters keep `_id`,
 * `_v` and `_expiresAt` for themselves). `checkDocument` below enforces this for both adapters.
 */
import { InvalidArgumentError, type FieldViolation } from '../errors';

/** A document as stored: the caller's data plus its version. */
export interface Versioned<T> {
  readonly doc: T;
  /** Starts at 1 on insert and grows by one on every write. Rendered as the resource's etag. */
  readonly version: number;
}

/** A secondary index, declared in code and created at start-up. */
export interface IndexSpec {
  /** Top-level (or dotted) field names, ascending. */
  readonly fields: readonly string[];
  readonly unique?: boolean;
}

export interface CollectionSpec {
  /** Collection name, unique within the service. */
  readonly name: string;
  readonly indexes?: readonly IndexSpec[];
  /**
   * When set, the document expires at the Date held in this field: reads never return it and it
   * is removed in the background (a MongoDB TTL index; a sweep in the embedded store).
   */
  readonly expireAtField?: string;
}

/** Equality filters on indexed fields; all must match. */
export type Where = Readonly<Record<string, string | number | boolean | null>>;

export interface ListOptions {
  readonly where?: Where;
  /** Return documents whose id is greater than this (a page token). */
  readonly afterId?: string;
  /** At most this many documents. */
  readonly limit: number;
}

export interface Page<T> {
  readonly items: Versioned<T>[];
  /** The id to pass as `afterId` for the next page; undefined on the last page. */
  readonly nextAfterId: string | undefined;
}

/** The outcome of one document of `upsertIfNewer`. */
export type ConditionalWriteOutcome = 'inserted' | 'updated' | 'skipped';

export interface Collection<T extends { readonly id: string }> {
  readonly name: string;
  get(id: string): Promise<Versioned<T> | undefined>;
  getMany(ids: readonly string[]): Promise<Map<string, Versioned<T>>>;
  /** Stores a new document at version 1. Throws `AlreadyExistsError` when the id is taken. */
  insert(doc: T): Promise<Versioned<T>>;
  /**
   * Replaces the document if its stored version is `expectedVersion`.
   * Throws `NotFoundError` when it does not exist and `AbortedError` when the version is stale.
   */
  replace(doc: T, expectedVersion: number): Promise<Versioned<T>>;
  /** Stores the document whatever is there, bumping the version. */
  upsert(doc: T): Promise<Versioned<T>>;
  /**
   * Writes each document only if there is no stored one or the stored `field` is smaller than the
   * new one (late writes lose); a stored value of another type, or null, is never older, and a
   * stored document without the field is replaced. Strings compare by their UTF-8 bytes. Atomic
   * per document; the batch is one write (on MongoDB one bulk round trip, plus a second for the
   * documents it skipped, since a skip and a lost creation race look alike at first).
   */
  upsertIfNewer(docs: readonly T[], field: string): Promise<ConditionalWriteOutcome[]>;
  /**
   * Atomically adds `deltas` to numeric top-level fields (a missing one counts as 0), creating the
   * document with `onInsert` and the deltas when absent; a counter named in `onInsert` is ignored
   * there (it starts at its delta). Returns the document after the change. Throws
   * `InvalidArgumentError` when a stored field is not a number.
   */
  increment(
    id: string,
    deltas: Readonly<Record<string, number>>,
    onInsert?: Partial<T>,
  ): Promise<Versioned<T>>;
  /**
   * Deletes the document. With `expectedVersion`, throws `AbortedError` when stale.
   * Returns false when there was nothing to delete.
   */
  delete(id: string, expectedVersion?: number): Promise<boolean>;
  /**
   * Deletes every document matching `where` (at least one field: never the whole collection), in
   * batches rather than one call per document (MongoDB: one `deleteMany`; embedded: a transaction
   * per thousand). Returns how many it deleted (on MongoDB, expired ones its TTL monitor had not
   * removed yet count too). Not atomic as a whole: a failure leaves the rest for a retry.
   */
  deleteWhere(where: Where): Promise<number>;
  /** A page of documents in id order. */
  list(options: ListOptions): Promise<Page<T>>;
  /** Every live document in id order, streamed in batches (warm caches, exports). */
  scan(where?: Where): AsyncIterable<Versioned<T>>;
  /** Number of live documents matching `where`. */
  count(where?: Where): Promise<number>;
}

export interface DocumentStore {
  /** `mongodb` or `embedded`, for logs and health. */
  readonly kind: 'mongodb' | 'embedded';
  /** Opens the collection, creating it and its indexes if needed. Idempotent. */
  collection<T extends { readonly id: string }>(spec: CollectionSpec): Promise<Collection<T>>;
  /** Resolves when storage answers; throws `UnavailableError` otherwise. */
  ping(): Promise<void>;
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------
// Document rules shared by both adapters. They live beside the port so the two adapters reject
// exactly the same documents, whatever their engine would have accepted.
// ---------------------------------------------------------------------------------------------

/**
 * Longest id accepted, in UTF-8 bytes. LMDB keys are limited to 1,978 bytes and an index key holds
 * the indexed values plus the id, so ids stay well below that.
 */
export const MAX_ID_BYTES = 512;

/**
 * The most UTF-8 bytes the strings one index entry holds may take together (besides the id): with
 * the id, an entry stays within LMDB's key limit. The same on both adapters, so that a document
 * one accepts the other does too.
 */
export const MAX_INDEXED_BYTES = 1_024;

/** The UTF-8 bytes of the strings among `values` (what {@link MAX_INDEXED_BYTES} bounds). */
export function indexedBytes(values: Iterable<unknown>): number {
  let bytes = 0;
  for (const value of values) if (typeof value === 'string') bytes += Buffer.byteLength(value);
  return bytes;
}

/** Nesting deeper than this is refused (it also stops a cyclic object). */
const MAX_DEPTH = 64;

/** A value an index or an equality filter can hold. */
export type IndexValue = string | number | boolean | null;

/** Collection names double as MongoDB collection and LMDB database names. */
const COLLECTION_NAME = /^[A-Za-z][A-Za-z0-9_-]{0,62}$/;

/** Reads a top-level or dotted field (`stats.count`); undefined when a step is missing. */
export function fieldValue(doc: unknown, path: string): unknown {
  let value: unknown = doc;
  for (const step of path.split('.')) {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) return undefined;
    value = (value as Record<string, unknown>)[step];
  }
  return value;
}

/**
 * The value an index entry holds for a field: a missing field counts as null (as in MongoDB,
 * where a unique index also lets only one document lack the field), a Date as its epoch ms and
 * −0 as 0 (equal in MongoDB, and −0 has no key of its own in LMDB's key encoding).
 */
export function indexValue(value: unknown): IndexValue {
  if (value === undefined || value === null) return null;
  if (isDate(value)) return value.getTime();
  if (value === 0) return 0;
  return value as IndexValue;
}

/** Throws `InvalidArgumentError` unless `spec` names a valid collection, indexes and expiry. */
export function checkCollectionSpec(spec: CollectionSpec): void {
  const violations: FieldViolation[] = [];
  if (!COLLECTION_NAME.test(spec.name)) {
    violations.push({
      field: 'name',
      description: 'a letter followed by up to 62 letters, digits, "_" or "-"',
    });
  }
  (spec.indexes ?? []).forEach((index, i) => {
    if (index.fields.length === 0) {
      violations.push({ field: `indexes[${i}].fields`, description: 'at least one field' });
    }
    index.fields.forEach((field, j) => {
      checkPath(field, `indexes[${i}].fields[${j}]`, violations);
    });
  });
  if (spec.expireAtField !== undefined) checkPath(spec.expireAtField, 'expireAtField', violations);
  if (violations.length > 0) {
    throw new InvalidArgumentError(`invalid collection spec "${spec.name}"`, violations);
  }
}

/**
 * Throws `InvalidArgumentError` listing every problem with `doc`: the id, field names, value
 * types, indexed fields that are not scalars and an expiry field that is not a Date.
 */
export function checkDocument(doc: unknown, spec: CollectionSpec): void {
  const violations: FieldViolation[] = [];
  if (!isPlainObject(doc)) {
    throw new InvalidArgumentError('a document must be a plain object', [
      { field: 'doc', description: 'a plain object' },
    ]);
  }
  checkId(doc.id, violations);
  for (const [name, value] of Object.entries(doc)) {
    if (name.startsWith('$') || name.startsWith('_') || name.includes('\0')) {
      violations.push({
        field: name,
        description: 'field names must not start with "$" or "_" or contain NUL',
      });
    }
    if (name !== 'id') checkValue(value, name, 1, violations);
  }
  for (const index of spec.indexes ?? []) {
    const values = index.fields.map((field) => fieldValue(doc, field));
    index.fields.forEach((field, i) => {
      const value = values[i];
      if (value !== undefined && !isScalar(value) && !isDate(value)) {
        violations.push({
          field,
          description: 'an indexed field holds a string, number, boolean, null or Date',
        });
      }
    });
    if (indexedBytes(values) > MAX_INDEXED_BYTES) {
      violations.push({
        field: index.fields.join(','),
        description: `indexed strings take at most ${MAX_INDEXED_BYTES} bytes of UTF-8 together`,
      });
    }
  }
  if (spec.expireAtField !== undefined) {
    const expiresAt = fieldValue(doc, spec.expireAtField);
    if (expiresAt !== undefined && expiresAt !== null && !isDate(expiresAt)) {
      violations.push({ field: spec.expireAtField, description: 'the expiry field holds a Date' });
    }
  }
  if (violations.length > 0) {
    throw new InvalidArgumentError(`invalid document for collection "${spec.name}"`, violations);
  }
}

/**
 * Whether a document could be stored under `id` (see {@link checkIdArgument}). Reads and deletes
 * find nothing under any other id, rather than fail: no document has it (a 2,000-character id in
 * a Get is a miss, not a bad request).
 */
export function isStorableId(id: string): boolean {
  return id.length > 0 && Buffer.byteLength(id) <= MAX_ID_BYTES;
}

/** Throws `InvalidArgumentError` unless `id` is a non-empty string of at most `MAX_ID_BYTES`. */
export function checkIdArgument(id: unknown): asserts id is string {
  const violations: FieldViolation[] = [];
  checkId(id, violations);
  if (violations.length > 0) throw new InvalidArgumentError('invalid document id', violations);
}

/** {@link checkWhere}, and at least one field: a deletion never takes the whole collection. */
export function checkDeleteWhere(where: Where): void {
  checkWhere(where);
  if (Object.keys(where).length === 0) {
    throw new InvalidArgumentError('invalid filter', [
      { field: 'where', description: 'a deletion needs at least one field to match' },
    ]);
  }
}

/** Throws `InvalidArgumentError` unless `where` is a set of scalar equality filters on fields. */
export function checkWhere(where: Where | undefined): void {
  if (where === undefined) return;
  const violations: FieldViolation[] = [];
  for (const [field, value] of Object.entries(where)) {
    checkPath(field, `where.${field}`, violations);
    if (field === 'id') {
      violations.push({ field: 'where.id', description: 'look documents up by id with get()' });
    } else if (field.startsWith('_')) {
      violations.push({ field: `where.${field}`, description: 'fields never start with "_"' });
    }
    if (!isScalar(value)) {
      violations.push({
        field: `where.${field}`,
        description: 'a string, number, boolean or null',
      });
    }
  }
  if (violations.length > 0) throw new InvalidArgumentError('invalid filter', violations);
}

/** Throws `InvalidArgumentError` unless `options` has a positive integer limit and a valid filter. */
export function checkListOptions(options: ListOptions): void {
  if (!Number.isSafeInteger(options.limit) || options.limit < 1) {
    throw new InvalidArgumentError('limit must be a positive integer', [
      { field: 'limit', description: 'a positive integer' },
    ]);
  }
  checkWhere(options.where);
}

/**
 * Throws `InvalidArgumentError` unless `deltas` adds finite numbers to top-level fields and
 * `onInsert` is valid data. Counters stay top-level so both engines address them the same way.
 */
export function checkIncrement(
  deltas: Readonly<Record<string, number>>,
  onInsert: object | undefined,
): void {
  const violations: FieldViolation[] = [];
  for (const [field, delta] of Object.entries(deltas)) {
    if (!/^[^$_.][^.]*$/.test(field) || field === 'id') {
      violations.push({ field: `deltas.${field}`, description: 'a top-level field other than id' });
    }
    if (typeof delta !== 'number' || !Number.isFinite(delta)) {
      violations.push({ field: `deltas.${field}`, description: 'a finite number' });
    }
  }
  if (onInsert !== undefined) {
    if (!isPlainObject(onInsert)) {
      violations.push({ field: 'onInsert', description: 'a plain object' });
    } else {
      for (const [name, value] of Object.entries(onInsert)) {
        if (name.startsWith('$') || name.startsWith('_')) {
          violations.push({
            field: `onInsert.${name}`,
            description: 'must not start with "$" or "_"',
          });
        }
        checkValue(value, `onInsert.${name}`, 1, violations);
      }
    }
  }
  if (violations.length > 0) throw new InvalidArgumentError('invalid increment', violations);
}

/**
 * Orders two values of the `upsertIfNewer` field: negative when `stored` is older than `incoming`.
 * Undefined when they cannot be compared (different types, or not a number, string or Date):
 * MongoDB's `$lt` matches nothing across types, so such a write is skipped by both adapters.
 */
export function compareVersionField(stored: unknown, incoming: unknown): number | undefined {
  if (typeof stored === 'number' && typeof incoming === 'number') return stored - incoming;
  if (typeof stored === 'string' && typeof incoming === 'string') {
    // Byte order of UTF-8, as MongoDB compares strings without a collation.
    return Buffer.compare(Buffer.from(stored), Buffer.from(incoming));
  }
  if (isDate(stored) && isDate(incoming)) return stored.getTime() - incoming.getTime();
  return undefined;
}

/** Throws `InvalidArgumentError` unless every document carries a comparable `field`. */
export function checkVersionField(docs: readonly object[], field: string): void {
  const violations: FieldViolation[] = [];
  checkPath(field, 'field', violations);
  // MongoDB keeps the id as `_id`: a condition on `id` would read a field no document has.
  if (field === 'id') violations.push({ field: 'field', description: 'a field other than the id' });
  docs.forEach((doc, i) => {
    const value = fieldValue(doc, field);
    if (typeof value !== 'number' && typeof value !== 'string' && !isDate(value)) {
      violations.push({ field: `docs[${i}].${field}`, description: 'a number, string or Date' });
    }
  });
  if (violations.length > 0)
    throw new InvalidArgumentError('invalid conditional write', violations);
}

function checkId(id: unknown, violations: FieldViolation[]): void {
  if (typeof id !== 'string' || id.length === 0) {
    violations.push({ field: 'id', description: 'a non-empty string' });
  } else if (Buffer.byteLength(id) > MAX_ID_BYTES) {
    violations.push({ field: 'id', description: `at most ${MAX_ID_BYTES} bytes of UTF-8` });
  }
}

/** Field paths: dot-separated names, none empty or starting with "$", without NUL. */
function checkPath(path: string, field: string, violations: FieldViolation[]): void {
  if (path.includes('\0') || path.split('.').some((s) => s.length === 0 || s.startsWith('$'))) {
    violations.push({
      field,
      description: 'dot-separated names, none empty or starting with "$", without NUL',
    });
  }
}

function checkValue(
  value: unknown,
  path: string,
  depth: number,
  violations: FieldViolation[],
): void {
  if (depth > MAX_DEPTH) {
    violations.push({ field: path, description: `nested deeper than ${MAX_DEPTH} levels` });
    return;
  }
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) violations.push({ field: path, description: 'a finite number' });
    return;
  }
  // undefined is allowed and means "absent" (MongoDB is opened with ignoreUndefined).
  if (value === undefined || isScalar(value) || isBytes(value)) return;
  if (isDate(value)) {
    if (Number.isNaN(value.getTime()))
      violations.push({ field: path, description: 'a valid Date' });
    return;
  }
  if (Array.isArray(value)) {
    value.forEach((item: unknown, i) => {
      checkValue(item, `${path}[${i}]`, depth + 1, violations);
    });
    return;
  }
  if (isPlainObject(value)) {
    for (const [name, nested] of Object.entries(value)) {
      if (name.startsWith('$') || name.includes('.') || name.includes('\0')) {
        violations.push({
          field: `${path}.${name}`,
          description: 'nested names must not start with "$" or contain "." or NUL',
        });
      }
      checkValue(nested, `${path}.${name}`, depth + 1, violations);
    }
    return;
  }
  violations.push({
    field: path,
    description: 'plain data only: string, number, boolean, null, Date, Uint8Array, array, object',
  });
}

function isScalar(value: unknown): value is IndexValue {
  return (
    value === null ||
    typeof value === 'string' ||
    typeof value === 'boolean' ||
    (typeof value === 'number' && Number.isFinite(value))
  );
}

/*
 * Realm-independent type checks: documents decoded by a driver (or built in another vm context, as
 * jest does per test file) carry another realm's Object, Date and Uint8Array, which `instanceof`
 * and prototype identity do not recognise.
 */

/** True for a Date from any realm. */
export function isDate(value: unknown): value is Date {
  return Object.prototype.toString.call(value) === '[object Date]';
}

/** True for a Uint8Array (or Buffer) from any realm. */
export function isBytes(value: unknown): value is Uint8Array {
  return (
    ArrayBuffer.isView(value) && Object.prototype.toString.call(value) === '[object Uint8Array]'
  );
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (value === null || typeof value !== 'object') return false;
  if (Object.prototype.toString.call(value) !== '[object Object]') return false;
  const proto: unknown = Object.getPrototypeOf(value);
  // Object.prototype of whichever realm made it: its own prototype is null.
  return proto === null || Object.getPrototypeOf(proto) === null;
}

/**
 * Whether two documents (or values of documents) hold the same data: the same types and values,
 * arrays in the same order, objects with the same fields in any order (a field holding undefined
 * counts as absent, as storage stores it). Realm-independent, unlike `util.isDeepStrictEqual`,
 * which tells apart a decoded document from an equal one built here by their prototypes.
 */
export function sameData(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a === 'number' && typeof b === 'number') return Number.isNaN(a) && Number.isNaN(b);
  if (a === null || b === null || typeof a !== 'object' || typeof b !== 'object') return false;
  if (Array.isArray(a) || Array.isArray(b)) {
    return (
      Array.isArray(a) &&
      Array.isArray(b) &&
      a.length === b.length &&
      a.every((item, i) => sameData(item, b[i]))
    );
  }
  if (isDate(a) || isDate(b)) return isDate(a) && isDate(b) && a.getTime() === b.getTime();
  if (isBytes(a) || isBytes(b)) {
    return isBytes(a) && isBytes(b) && Buffer.from(a).equals(Buffer.from(b));
  }
  if (!isPlainObject(a) || !isPlainObject(b)) return false;
  const fields = (o: Record<string, unknown>) =>
    Object.keys(o).filter((key) => o[key] !== undefined);
  const keys = fields(a);
  return (
    keys.length === fields(b).length &&
    keys.every((key) => Object.prototype.hasOwnProperty.call(b, key) && sameData(a[key], b[key]))
  );
}
