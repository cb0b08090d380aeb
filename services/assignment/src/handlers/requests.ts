/**
 * What every resource's handlers share: field-violation collection, pagination with opaque page
 * tokens bound to the filters they were issued for, etags, and update masks.
 */
import {
  AbortedError,
  AlreadyExistsError,
  InvalidArgumentError,
  NotFoundError,
  type FieldViolation,
} from '../../../platform/src/errors';
import { fillPage } from '../../../platform/src/grpc/pages';
import type { Collection, Versioned } from '../../../platform/src/storage/collection';
import type { ConfigurationStore, ResourceKind } from '../store/configuration-store';
import { etagOf, type Stored } from '../store/documents';

/** INVALID_ARGUMENT listing `violations`, with ErrorInfo `reason` when given. */
export function invalidRequest(
  what: string,
  violations: readonly FieldViolation[],
  reason?: string,
): InvalidArgumentError {
  return new InvalidArgumentError(
    `invalid ${what}: ${violations.map((v) => `${v.field}: ${v.description}`).join('; ')}`,
    violations,
    { reason },
  );
}

/** Throws INVALID_ARGUMENT with every violation when there is any. */
export function rejectIfAny(what: string, violations: readonly FieldViolation[]): void {
  if (violations.length > 0) throw invalidRequest(what, violations);
}

/** Domain violations (paths relative to the resource) as request violations under `prefix`. */
export function under(prefix: string, violations: readonly FieldViolation[]): FieldViolation[] {
  return violations.map((v) => ({ ...v, field: `${prefix}.${v.field}` }));
}

export function required(field: string, value: string, violations: FieldViolation[]): void {
  if (value === '') violations.push({ field, description: 'is required', reason: 'REQUIRED' });
}

export function notFound(type: string, id: string): NotFoundError {
  return new NotFoundError(`${type} "${id}" does not exist`, {
    reason: `${type.toUpperCase()}_NOT_FOUND`,
    resource: { type: resourceType(type), name: id },
  });
}

/**
 * ALREADY_EXISTS for the id of a deleted experiment or holdout that served: such an id is never
 * given out again (see `ConfigurationStore.retire`).
 */
export function retiredId(type: 'experiment' | 'holdout', id: string): AlreadyExistsError {
  return new AlreadyExistsError(
    `${type} id "${id}" belonged to a deleted ${type} that served; such an id is never reused, so that its sticky assignments and exposures stay its own`,
    { reason: 'ID_RETIRED', resource: { type: resourceType(type), name: id } },
  );
}

/**
 * Stores a new resource's document, as the next incarnation of its id when one was deleted before
 * (see `etagOf`); ALREADY_EXISTS naming the resource when its id is taken.
 */
export async function insertNew<T extends { readonly id: string; readonly incarnation?: number }>(
  store: ConfigurationStore,
  collection: Collection<T>,
  type: ResourceKind,
  doc: T,
): Promise<Versioned<T>> {
  const incarnation = await store.incarnationOf(type, doc.id);
  try {
    return await collection.insert(incarnation > 1 ? { ...doc, incarnation } : doc);
  } catch (error) {
    if (!(error instanceof AlreadyExistsError)) throw error;
    throw new AlreadyExistsError(`${type} "${doc.id}" already exists`, {
      reason: `${type.toUpperCase()}_ALREADY_EXISTS`,
      resource: { type: resourceType(type), name: doc.id },
      cause: error,
    });
  }
}

function resourceType(type: string): string {
  return `tandem.assignment.v1.${type[0]?.toUpperCase() ?? ''}${type.slice(1)}`;
}

/**
 * The stored resource an update or transition names, to check the request against it. With no
 * id, or no resource of that id, what can be checked without it is: the violations found so far
 * and `valueProblems()` (the requested values' own problems, those that do not depend on what is
 * stored) are reported then, all together (before NOT_FOUND: a request that is itself wrong says
 * so first).
 */
export async function storedToChange<T>(
  type: string,
  id: string,
  read: (id: string) => Promise<Stored<T> | undefined>,
  violations: readonly FieldViolation[],
  valueProblems: () => readonly FieldViolation[] = () => [],
): Promise<Stored<T>> {
  const stored = id === '' ? undefined : await read(id);
  if (stored) return stored;
  rejectIfAny('request', [...violations, ...valueProblems()]);
  throw notFound(type, id);
}

/**
 * Whether a violation of `field` (`experiment.variants[2].payload`, under the resource `prefix`)
 * is about one of the update mask's `paths`: its top-level field, or a field nested in it
 * (`layer_range.start`).
 */
export function inUpdateMask(prefix: string, field: string, paths: ReadonlySet<string>): boolean {
  if (!field.startsWith(`${prefix}.`)) return false;
  const path = /^[a-z_]+/.exec(field.slice(prefix.length + 1))?.[0];
  return (
    path !== undefined && (paths.has(path) || [...paths].some((p) => p.startsWith(`${path}.`)))
  );
}

/** Throws ABORTED when `etag` is not the stored resource's current one (see `etagOf`). */
export function checkEtag(type: string, id: string, etag: string, stored: Stored<unknown>): void {
  const current = etagOf(stored);
  if (etag !== current) {
    throw new AbortedError(
      `${type} "${id}": etag "${etag}" is stale; the current one is "${current}"`,
      {
        reason: 'STALE_ETAG',
        metadata: { current_etag: current },
      },
    );
  }
}

/** The stored version a current etag names (see `etagOf`), for conditional writes. */
export function versionOf(etag: string): number {
  const version = Number(etag.slice(etag.lastIndexOf('.') + 1));
  return Number.isSafeInteger(version) && version > 0 ? version : -1;
}

export const DEFAULT_PAGE_SIZE = 50;
export const MAX_PAGE_SIZE = 1000;
interface PageToken {
  /** The last id of the previous page. */
  readonly a: string;
  /** The filters the token was issued for. */
  readonly f: string;
}

/** A page request, checked: the size to return and the id to continue after. */
export interface PageRequest {
  readonly size: number;
  readonly afterId: string | undefined;
}

/**
 * The most `statuses` values that are no status a list request's violations name. The filter is a
 * read any caller may send: a packed enum takes one byte a value, so 16 MiB holds 16 million of
 * them, and a violation (and its part of the message) for each took seconds of the event loop
 * and gigabytes of heap, enough to end the process. The first ones say what is wrong.
 */
export const MAX_STATUS_VIOLATIONS = 20;

/**
 * The statuses of a list request's `statuses` filter, deduplicated and sorted; UNSPECIFIED (0) is
 * ignored. A value that is no status (a typo, or a newer client's) is a violation rather than a
 * filter that nothing matches: an empty list would read as "none in that state". Only the first
 * {@link MAX_STATUS_VIOLATIONS} such values are named.
 */
export function statusFilter(
  statuses: readonly number[],
  known: Readonly<Record<string, number>>,
  enumPrefix: string,
  violations: FieldViolation[],
): number[] {
  // Statuses are numbered from 1: 0 is unset, and -1 (ts-proto's UNRECOGNIZED) is none.
  const statusEntries = Object.entries(known).filter(([, value]) => value > 0);
  const description = `must be one of ${statusEntries.map(([name]) => `${enumPrefix}${name}`).join(', ')}`;
  const values = new Set(statusEntries.map(([, value]) => value));
  // Only known values are kept: a set of every value sent could hold millions.
  const filter = new Set<number>();
  let named = 0;
  statuses.forEach((status, i) => {
    if (values.has(status)) filter.add(status);
    else if (status !== 0 && named < MAX_STATUS_VIOLATIONS) {
      violations.push({ field: `statuses[${i}]`, description, reason: 'UNKNOWN_STATUS' });
      named++;
    }
  });
  return [...filter].sort((a, b) => a - b);
}

/** Reads `page_size` and `page_token`, collecting violations. `filters` binds the token. */
export function pageRequest(
  pageSize: number,
  pageToken: string,
  filters: string,
  violations: FieldViolation[],
): PageRequest {
  if (pageSize < 0) {
    violations.push({
      field: 'page_size',
      description: 'must not be negative',
      reason: 'OUT_OF_RANGE',
    });
  }
  const size = pageSize <= 0 ? DEFAULT_PAGE_SIZE : Math.min(pageSize, MAX_PAGE_SIZE);
  if (pageToken === '') return { size, afterId: undefined };
  let token: PageToken | undefined;
  try {
    const parsed = JSON.parse(Buffer.from(pageToken, 'base64url').toString('utf8')) as unknown;
    if (
      typeof parsed === 'object' &&
      parsed !== null &&
      typeof (parsed as PageToken).a === 'string' &&
      typeof (parsed as PageToken).f === 'string'
    ) {
      token = parsed as PageToken;
    }
  } catch {
    token = undefined;
  }
  if (!token) {
    violations.push({
      field: 'page_token',
      description: 'is malformed',
      reason: 'INVALID_PAGE_TOKEN',
    });
    return { size, afterId: undefined };
  }
  if (token.f !== filters) {
    violations.push({
      field: 'page_token',
      description: 'was issued for other filters',
      reason: 'PAGE_TOKEN_FILTER_MISMATCH',
    });
  }
  return { size, afterId: token.a };
}

/** How a list renders its resources: as messages, their encoded size, and the response's limit. */
export interface PageRendering<T, M> {
  readonly render: (item: T) => M;
  readonly encode: (message: M) => { finish(): Uint8Array };
  /** The most bytes the response may take (see the kit's `maxPageBytes`). */
  readonly maxBytes: number;
}

function pageToken(lastId: string, filters: string): string {
  return Buffer.from(JSON.stringify({ a: lastId, f: filters } satisfies PageToken)).toString(
    'base64url',
  );
}

/**
 * One page of `items` (sorted by id) after `request.afterId`, rendered, and the token for the next
 * one. The page ends early once its messages and the token would pass `maxBytes`; it always holds
 * one resource at least.
 */
export function page<T extends { readonly id: string }, M>(
  items: Iterable<T>,
  request: PageRequest,
  filters: string,
  { render, encode, maxBytes }: PageRendering<T, M>,
): { items: M[]; nextPageToken: string } {
  const { afterId } = request;
  const filled = fillPage(
    afterId === undefined ? items : only(items, (item) => item.id > afterId),
    {
      size: request.size,
      render,
      encodedBytes: (message) => encode(message).finish().length,
      tokenAfter: (item) => pageToken(item.id, filters),
      maxBytes,
    },
  );
  return {
    items: filled.messages,
    nextPageToken:
      filled.more && filled.last !== undefined ? pageToken(filled.last.id, filters) : '',
  };
}

/** The items of `items` that `keep` accepts, lazily. */
function* only<T>(items: Iterable<T>, keep: (item: T) => boolean): Iterable<T> {
  for (const item of items) if (keep(item)) yield item;
}

/**
 * The fields an update mask names, checked against what may be updated; `*` means all of them.
 * Names an unknown, immutable or output-only field ⇒ a violation.
 */
export function maskPaths(
  paths: readonly string[] | undefined,
  mutable: readonly string[],
  known: readonly string[],
  violations: FieldViolation[],
): Set<string> {
  const selected = new Set<string>();
  if (!paths || paths.length === 0) {
    violations.push({ field: 'update_mask', description: 'is required', reason: 'REQUIRED' });
    return selected;
  }
  paths.forEach((path, i) => {
    if (path === '*') {
      for (const field of mutable) selected.add(field);
    } else if (mutable.includes(path)) {
      selected.add(path);
    } else {
      violations.push({
        field: `update_mask.paths[${i}]`,
        description: known.includes(path)
          ? `"${path}" is immutable or output only`
          : `"${path}" is not a field`,
        reason: known.includes(path) ? 'FIELD_NOT_UPDATABLE' : 'UNKNOWN_FIELD',
      });
    }
  });
  return selected;
}
