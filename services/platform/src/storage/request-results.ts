/**
 * Idempotency of mutations for every service (contracts give each mutation a `request_id`): the first response to a `request_id` is stored (encoded) with a TTL,
 * and a retry with the same id gets it back instead of running the mutation again. Keyed by method
 * and id, so the same id used for two different RPCs does not collide. Failures are not stored:
 * a retry of a failed mutation runs again. A mutation that ran but whose response could not be
 * stored (storage failing after its change) answers its response all the same, which is kept in
 * memory, answered to retries reaching this process and stored again until storage takes it.
 *
 * A retry is the same request sent again. The id reused for a different request (another view
 * written, another experiment created) is refused with INVALID_ARGUMENT (`REQUEST_ID_REUSED`)
 * rather than answered with the first request's response while doing nothing, which a caller
 * would take for success: each stored response keeps a fingerprint of its request (SHA-256 of
 * the request's proto3 JSON form with sorted keys, see `exactText`), which tells apart whatever
 * the service can tell apart: an `optional` field set to 0 and one left unset, 0, false, "",
 * null, [] and {} inside a `google.protobuf.Struct`. Services that do not name their request
 * types, and builds before this one, keep only a coarser fingerprint that leaves every default
 * value out (see `canonicalText`); it is still stored, and compared, so that a retry reaching a
 * replica of the previous build during a rolling update, or a first call answered by one, is
 * still recognized. Responses stored before fingerprints were kept, and requests too large to
 * fingerprint cheaply (see {@link MAX_FINGERPRINT_VALUES}), match any request.
 *
 * A retry that arrives while its first call is still running in the same process waits for it and
 * gets its response (or runs after its failure). On another replica it runs beside it: replicas
 * share only the stored responses. The response stored first stays, and is what the one that
 * finishes later answers too (builds before this one overwrote it with theirs), also when that
 * one failed because the first had already deleted, created or changed the resource.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { createHash } from 'node:crypto';
import { status as GrpcCode } from '@grpc/grpc-js';
import { CallsInFlight } from '../calls-in-flight';
import { AlreadyExistsError, InvalidArgumentError, TandemError, UnavailableError } from '../errors';
import type { Collection, DocumentStore } from './collection';

interface RequestResultDocument {
  readonly id: string;
  readonly response: Uint8Array;
  readonly expiresAt: Date;
  /**
   * The request's fingerprint without default values (see {@link fingerprintOf}), which builds
   * before {@link exactFingerprint} compare; absent on older documents and for requests too
   * large to fingerprint.
   */
  readonly fingerprint?: string;
  /**
   * The request's fingerprint with every value present (see {@link exactFingerprintOf}); absent
   * on documents of earlier builds, of services that do not name their request types, and for
   * requests too large to fingerprint.
   */
  readonly exactFingerprint?: string;
}

/** A mutation's request: what its `request_id` names. */
export interface IdentifiedRequest {
  readonly requestId: string;
}

/**
 * Requests with more values than this are not fingerprinted. Walking one costs ~0.5 µs per value
 * on the event loop, so this bounds the cost at about a millisecond: every configuration write
 * is compared, and a WriteFeatures batch of up to ~15 rows of 32 features; a larger batch sent
 * again under its id is not compared, and gets the first response as before fingerprints (its
 * size is judged from its first row, so passing over it costs microseconds).
 */
export const MAX_FINGERPRINT_VALUES = 2_000;

/** Thrown by {@link canonicalText} past {@link MAX_FINGERPRINT_VALUES} (made once, not per throw). */
const TOO_LARGE = new Error('too large to fingerprint');

/**
 * `value` as text that is the same for the same request: object keys sorted (a map sent in
 * another order is the same map), strings length-prefixed, bytes in base64, times in ms. Fields
 * holding their proto3 default (unset, '', 0, false, empty list or map, or a message of nothing
 * but defaults) are left out, so the same bytes decoded by a build that knows one more field
 * (a replica upgraded between a call and its retry) are the same request. Returns whether it
 * wrote anything: false for a default.
 */
function canonicalText(value: unknown, out: string[], budget: { left: number }): boolean {
  if (--budget.left < 0) throw TOO_LARGE;
  if (value === null || value === undefined) return false;
  switch (typeof value) {
    case 'string':
      if (value === '') return false;
      out.push(`s${value.length}:`, value);
      return true;
    case 'number':
    case 'boolean':
    case 'bigint':
      // -0 is 0 on the wire too.
      if (!value) return false;
      out.push(`${typeof value}:${String(value)};`);
      return true;
    default:
      break;
  }
  if (value instanceof Uint8Array) {
    if (value.length === 0) return false;
    out.push(`b${Buffer.from(value).toString('base64')};`);
    return true;
  }
  if (value instanceof Date) {
    out.push(`d${value.getTime()};`);
    return true;
  }
  const start = out.length;
  if (Array.isArray(value)) {
    if (value.length === 0) return false;
    out.push('[');
    // Positions matter: a default item is written as one.
    for (const item of value) if (!canonicalText(item, out, budget)) out.push('_;');
    out.push(']');
    return true;
  }
  const keys = Object.keys(value);
  if (keys.length > 1) keys.sort();
  out.push('{');
  let written = false;
  for (const key of keys) {
    const at = out.length;
    out.push(`k${key.length}:`, key);
    if (canonicalText((value as Record<string, unknown>)[key], out, budget)) written = true;
    else out.length = at;
  }
  if (!written) {
    out.length = start;
    return false;
  }
  out.push('}');
  return true;
}

/**
 * `value`, a message's proto3 JSON form (ts-proto's `toJSON`), as text that is the same for the
 * same request: object keys sorted, strings length-prefixed, every value written with its type.
 * That form already leaves out fields holding their proto3 default, and only those (an
 * `optional` field set to 0 and a Struct's values are kept), so a build that knows one more field
 * writes the same text for the same bytes.
 */
function exactText(value: unknown, out: string[], budget: { left: number }): void {
  if (--budget.left < 0) throw TOO_LARGE;
  if (value === null) {
    out.push('n;');
    return;
  }
  // A list item that is no value (a `Value` with no kind set decodes to undefined).
  if (value === undefined) {
    out.push('u;');
    return;
  }
  switch (typeof value) {
    case 'string':
      out.push(`s${value.length}:`, value);
      return;
    case 'number':
    case 'boolean':
      out.push(`${typeof value}:${String(value)};`);
      return;
    default:
      break;
  }
  if (Array.isArray(value)) {
    out.push('[');
    for (const item of value) exactText(item, out, budget);
    out.push(']');
    return;
  }
  const record = value as Record<string, unknown>;
  const keys = Object.keys(record).filter((key) => record[key] !== undefined);
  if (keys.length > 1) keys.sort();
  out.push('{');
  for (const key of keys) {
    out.push(`k${key.length}:`, key);
    exactText(record[key], out, budget);
  }
  out.push('}');
}

/** The values in `value`, counted up to `limit` (past it, `limit + 1`). */
function valuesIn(value: unknown, limit: number): number {
  let count = 1;
  if (value === null || typeof value !== 'object' || value instanceof Date) return count;
  if (value instanceof Uint8Array) return count;
  for (const item of Array.isArray(value) ? value : Object.values(value)) {
    count += valuesIn(item, limit - count);
    if (count > limit) return count;
  }
  return count;
}

/**
 * Whether a list of the request (a `WriteFeatures` batch's rows) holds more values than are
 * fingerprinted, judged by its first item: so that a large batch costs microseconds to pass over,
 * not the walk of {@link MAX_FINGERPRINT_VALUES} values before giving up.
 */
function clearlyTooLarge(request: IdentifiedRequest): boolean {
  for (const field of Object.values(request)) {
    if (!Array.isArray(field) || field.length === 0) continue;
    const perItem = valuesIn(field[0], MAX_FINGERPRINT_VALUES);
    if (field.length * perItem > MAX_FINGERPRINT_VALUES) return true;
  }
  return false;
}

/** The SHA-256 of what `write` writes; undefined past {@link MAX_FINGERPRINT_VALUES}. */
function digestOf(write: (out: string[], budget: { left: number }) => void): string | undefined {
  const out: string[] = [];
  try {
    write(out, { left: MAX_FINGERPRINT_VALUES });
  } catch (error) {
    if (error === TOO_LARGE) return undefined;
    throw error;
  }
  return createHash('sha256').update(out.join('')).digest('base64url');
}

/**
 * What tells two requests under one id apart, save defaults (see {@link canonicalText}), as
 * every build computes it; undefined for one too large to walk.
 */
function fingerprintOf(request: IdentifiedRequest): string | undefined {
  if (clearlyTooLarge(request)) return undefined;
  return digestOf((out, budget) => {
    canonicalText(request, out, budget);
  });
}

/**
 * What tells two requests under one id apart (see {@link exactText}); undefined when too large,
 * or when the request has no JSON form (a Timestamp past what a Date holds, which the write
 * itself refuses): the fingerprint of {@link fingerprintOf} still tells those apart.
 */
function exactFingerprintOf<R extends IdentifiedRequest>(
  request: R,
  type: RequestType<R>,
): string | undefined {
  if (clearlyTooLarge(request)) return undefined;
  let json: unknown;
  try {
    json = type.toJSON(request);
  } catch {
    return undefined;
  }
  return digestOf((out, budget) => {
    exactText(json, out, budget);
  });
}

/** The message type ts-proto generates for a request: its proto3 JSON form. */
export interface RequestType<R> {
  toJSON(message: R): unknown;
}

/** The encode/decode pair ts-proto generates for a response message. */
export interface ResponseCodec<T> {
  encode(message: T): { finish(): Uint8Array };
  decode(input: Uint8Array): T;
}

/**
 * Failures a call of the same request running beside this one on another replica causes (it
 * deleted, created or changed the resource first); after one, the stored results are read again
 * {@link FIRST_RESULT_WAIT_MS} later, in case that call's response was not stored yet.
 */
const CONFLICTS: ReadonlySet<number> = new Set([
  GrpcCode.NOT_FOUND,
  GrpcCode.ALREADY_EXISTS,
  GrpcCode.ABORTED,
  GrpcCode.FAILED_PRECONDITION,
]);
const FIRST_RESULT_WAIT_MS = 50;

/** How soon, and at most how often, a response that could not be stored is tried again. */
const UNSTORED_RETRY_FIRST_MS = 100;
const UNSTORED_RETRY_CAP_MS = 5_000;
/** Responses that could not be stored kept at most (see `RequestResults.keep`). */
const MAX_UNSTORED = 10_000;

/** The stamp of the request whose mutation runs (see {@link currentRequestStamp}). */
const stamps = new AsyncLocalStorage<string>();

/**
 * The stamp of the request (method, `request_id` and fingerprint) whose mutation is running in
 * {@link RequestResults.once}, undefined outside one or without a request id. A service stores it
 * with what the mutation writes, so that a retry refused because of the first call's own change
 * can tell that change apart from another's (see `recover`).
 */
export function currentRequestStamp(): string | undefined {
  return stamps.getStore();
}

/**
 * Answers the retry of a mutation whose first call took effect without its response being
 * stored (its storage call failed after the change was made): given the request's stamp, the
 * response built from what that call stored, when what is stored carries the stamp; undefined
 * otherwise.
 */
export type Recover<T> = (stamp: string) => Promise<T | undefined>;

/** Longest `request_id` accepted, as the contract says. */
export const MAX_REQUEST_ID_LENGTH = 128;

export class RequestResults {
  /** The calls of this process still running (see the module comment). */
  private readonly running = new CallsInFlight();
  /**
   * Responses of mutations that ran but could not be stored (see {@link keep}), by id, until
   * they are; and the ids with an attempt at storing them under way or scheduled.
   */
  private readonly unstored = new Map<string, RequestResultDocument>();
  private readonly storing = new Set<string>();
  /** The retries scheduled, by id. */
  private readonly retries = new Map<string, NodeJS.Timeout>();
  private closed = false;

  private constructor(
    private readonly collection: Collection<RequestResultDocument>,
    private readonly ttlMs: number,
    private readonly serialized: boolean,
  ) {}

  /**
   * `serialized`: every `once` runs under a lease the replicas share (Assignment's configuration
   * writes), so no call of a request runs beside another of it, and a failed one is not looked
   * up again for such a call's result (which would hold the lease 50 ms for nothing).
   */
  static async open(
    store: DocumentStore,
    ttlMs: number,
    options: { readonly serialized?: boolean } = {},
  ): Promise<RequestResults> {
    const collection = await store.collection<RequestResultDocument>({
      name: 'request_results',
      expireAtField: 'expiresAt',
    });
    return new RequestResults(collection, ttlMs, options.serialized ?? false);
  }

  /**
   * Runs `mutation` once per (method, `request.requestId`); without a request id, every time. The
   * same id with a different request is refused (see the module comment); `requestType`, the
   * request's message type, tells apart requests that differ only in values present but equal
   * to a default. The mutation runs with the request's stamp (see {@link currentRequestStamp});
   * when it is refused (the resource exists, is missing, has moved on, is in another state),
   * `recover` is asked whether the refusal is the first call's own change: then its answer is
   * the response, stored as the first call's would have been.
   */
  async once<T, R extends IdentifiedRequest>(
    method: string,
    request: R,
    codec: ResponseCodec<T>,
    mutation: () => Promise<T>,
    requestType?: RequestType<R>,
    recover?: Recover<T>,
  ): Promise<T> {
    const { requestId } = request;
    if (requestId.length > MAX_REQUEST_ID_LENGTH) {
      throw new InvalidArgumentError('request_id is too long', [
        {
          field: 'request_id',
          description: `at most ${MAX_REQUEST_ID_LENGTH} characters`,
          reason: 'TOO_LONG',
        },
      ]);
    }
    if (requestId === '') return mutation();
    const id = `${method}/${requestId}`;
    const fingerprint = fingerprintOf(request);
    const exactFingerprint =
      requestType === undefined ? undefined : exactFingerprintOf(request, requestType);
    // A first call's outcome is read from the store below: a response, or none after a failure.
    await this.running.settled(id);
    /** Whether a stored result is of this request (as far as its fingerprints tell). */
    const ofThisRequest = (stored: RequestResultDocument): boolean =>
      !differ(stored.fingerprint, fingerprint) &&
      !differ(stored.exactFingerprint, exactFingerprint);
    // A response this process could not store (storage failed after the mutation stored its
    // change): the first result all the same, and a chance to store it.
    const unstored = this.unstored.get(id);
    const previous = unstored ? { doc: unstored } : await this.collection.get(id);
    if (unstored) this.storeKept(id);
    if (previous) {
      if (!ofThisRequest(previous.doc)) {
        throw new InvalidArgumentError(
          `request_id ${requestId} was used for another ${method} request`,
          [
            {
              field: 'request_id',
              description: `was used for another ${method} request; a retry must send the same request, and a new request a new id`,
              reason: 'REQUEST_ID_REUSED',
            },
          ],
          { reason: 'REQUEST_ID_REUSED' },
        );
      }
      return codec.decode(previous.doc.response);
    }
    if (this.running.has(id))
      return this.once(method, request, codec, mutation, requestType, recover);
    // Only a caller that recovers stores stamps: for the others there is nothing to run it with.
    const stamp =
      recover &&
      createHash('sha256')
        .update(`${id}\u0000${exactFingerprint ?? ''}\u0000${fingerprint ?? ''}`)
        .digest('base64url');
    return this.running.run(id, async () => {
      let response: T;
      try {
        response = await (stamp === undefined ? mutation() : stamps.run(stamp, mutation));
      } catch (error) {
        // The first call's change made, its response not stored (a storage call that failed
        // after taking effect): this retry finds the change, and answers it. Should storage
        // fail again while recovery reads, the refusal may be that change: not answered as
        // final, the caller retries.
        const recovered =
          recover !== undefined &&
          stamp !== undefined &&
          error instanceof TandemError &&
          CONFLICTS.has(error.code)
            ? await recover(stamp).catch((failure: unknown) => {
                if (failure instanceof UnavailableError) throw failure;
                return undefined;
              })
            : undefined;
        if (recovered === undefined) {
          // Failed beside its first call on another replica (which deleted what this one then
          // found missing, or moved the etag it sent): that call's response is the answer.
          if (this.serialized) throw error;
          const first = await this.firstResultAfter(error, id, ofThisRequest);
          if (first === undefined) throw error;
          return codec.decode(first);
        }
        response = recovered;
      }
      const stored: RequestResultDocument = {
        id,
        response: codec.encode(response).finish(),
        expiresAt: new Date(Date.now() + this.ttlMs),
        fingerprint,
        exactFingerprint,
      };
      for (let attempt = 0; attempt < 2; attempt++) {
        try {
          await this.collection.insert(stored);
          return response;
        } catch (error) {
          if (!(error instanceof AlreadyExistsError)) {
            // The mutation ran (its change is stored) but its response is not. Answered as a
            // failure, the caller would retry, and the mutation, run again, answer
            // ALREADY_EXISTS, a stale etag or NOT_FOUND for what it did itself. The response is
            // answered, kept for retries reaching this process, and stored as soon as storage
            // takes it, for those reaching any replica.
            this.keep(stored);
            return response;
          }
        }
        // The same id ran beside this call on another replica and stored its response first:
        // that one stays, and is this call's answer too, as it is every later retry's. (An id
        // reused at once for another request keeps this call's own response: it ran.) Gone
        // again (expired meanwhile): this one is stored in its place.
        const first = await this.collection.get(id);
        if (first === undefined) continue;
        return ofThisRequest(first.doc) ? codec.decode(first.doc.response) : response;
      }
      return response;
    });
  }

  /**
   * Keeps a response whose storing failed, and stores it again in the background, backing off,
   * until storage takes it (or holds another's first: that one stays), it expires, storage
   * refuses it otherwise than by being unavailable, or this is closed. At most
   * {@link MAX_UNSTORED} are kept, the oldest given up first: they are admin writes' answers,
   * and so many failing together means storage is down for long, when a retry runs again anyway.
   */
  private keep(stored: RequestResultDocument): void {
    if (this.closed) return;
    this.unstored.delete(stored.id);
    this.unstored.set(stored.id, stored);
    while (this.unstored.size > MAX_UNSTORED) {
      const oldest = this.unstored.keys().next().value as string;
      this.forgetKept(oldest);
    }
    this.storeKept(stored.id, UNSTORED_RETRY_FIRST_MS);
  }

  /**
   * Tries to store the kept response of `id` now and, while storage is unavailable, again after
   * `delayMs` (doubling up to {@link UNSTORED_RETRY_CAP_MS}). One attempt, or one scheduled, at a
   * time per id.
   */
  private storeKept(id: string, delayMs = UNSTORED_RETRY_FIRST_MS): void {
    const kept = this.unstored.get(id);
    if (kept === undefined || this.storing.has(id) || this.closed) return;
    if (kept.expiresAt.getTime() <= Date.now()) {
      this.forgetKept(id);
      return;
    }
    this.storing.add(id);
    this.collection.insert(kept).then(
      () => {
        this.forgetKept(id);
      },
      (error: unknown) => {
        // Another call's response stored first stays, as it would have had this one's failed;
        // a refusal other than unavailability would only be repeated.
        if (!(error instanceof UnavailableError) || this.closed) {
          this.forgetKept(id);
          return;
        }
        const timer = setTimeout(() => {
          this.retries.delete(id);
          this.storing.delete(id);
          this.storeKept(id, Math.min(delayMs * 2, UNSTORED_RETRY_CAP_MS));
        }, delayMs);
        timer.unref();
        this.retries.set(id, timer);
      },
    );
  }

  /** Gives up the kept response of `id`, and its retry. */
  private forgetKept(id: string): void {
    this.unstored.delete(id);
    this.storing.delete(id);
    clearTimeout(this.retries.get(id));
    this.retries.delete(id);
  }

  /**
   * Stops storing kept responses (at shutdown, before storage closes): a retry reaching another
   * replica runs its mutation again, as it would have had this process ended.
   */
  close(): void {
    this.closed = true;
    for (const id of [...this.unstored.keys()]) this.forgetKept(id);
  }

  /**
   * The response stored under `id` by a call of this request that ran beside this one, after
   * this one failed with `error`: read at once and, for a failure such a call causes (a conflict,
   * not a bad request), once more a moment later, as that call stores its response just after
   * its mutation; undefined when there is none.
   */
  private async firstResultAfter(
    error: unknown,
    id: string,
    ofThisRequest: (stored: RequestResultDocument) => boolean,
  ): Promise<Uint8Array | undefined> {
    if (error instanceof InvalidArgumentError || !(error instanceof TandemError)) return undefined;
    const read = () =>
      this.collection.get(id).then(
        (found) => found?.doc,
        () => undefined,
      );
    let stored = await read();
    if (stored === undefined && CONFLICTS.has(error.code)) {
      await new Promise((resolve) => setTimeout(resolve, FIRST_RESULT_WAIT_MS));
      stored = await read();
    }
    return stored !== undefined && ofThisRequest(stored) ? stored.response : undefined;
  }
}

/** Whether two fingerprints both known tell two requests apart. */
function differ(stored: string | undefined, computed: string | undefined): boolean {
  return stored !== undefined && computed !== undefined && stored !== computed;
}
