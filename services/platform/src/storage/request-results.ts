/**
 * Idempotency of mutations for every service (contracts give each mutation a `request_id`): the first response to a `request_id` is stored (encoded) with a TTL,
 * and a retry with the same id gets it back instead of running the mutation again. Keyed by method
 * and id, so the same id used for two different RPCs does not collide. Failures are not stored:
 * a retry of a failed mutation runs again.
 *
 * A retry is the same request sent again. The id reused for a different request (another view
 * written, another experiment created) is refused with INVALID_ARGUMENT (`REQUEST_ID_REUSED`)
 * rather than answered with the first request's response while doing nothing, which a caller
 * would take for success: each stored response keeps a fingerprint of its request (SHA-256 of
 * the request with sorted keys and without default values, see `canonicalText`). Responses
 * stored before fingerprints were kept, and requests too large to fingerprint cheaply (see
 * {@link MAX_FINGERPRINT_VALUES}), match any request.
 *
 * A retry that arrives while its first call is still running in the same process waits for it and
 * gets its response (or runs after its failure). On another replica it runs beside it: replicas
 * share only the stored responses.
 */
import { createHash } from 'node:crypto';
import { CallsInFlight } from '../calls-in-flight';
import { InvalidArgumentError } from '../errors';
import type { Collection, DocumentStore } from './collection';

interface RequestResultDocument {
  readonly id: string;
  readonly response: Uint8Array;
  readonly expiresAt: Date;
  /**
   * The request's fingerprint (see {@link fingerprintOf}); absent on older documents and for
   * requests too large to fingerprint.
   */
  readonly fingerprint?: string;
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

/** What tells two requests under one id apart; undefined for one too large to walk. */
function fingerprintOf(request: IdentifiedRequest): string | undefined {
  if (clearlyTooLarge(request)) return undefined;
  const out: string[] = [];
  try {
    canonicalText(request, out, { left: MAX_FINGERPRINT_VALUES });
  } catch (error) {
    if (error === TOO_LARGE) return undefined;
    throw error;
  }
  return createHash('sha256').update(out.join('')).digest('base64url');
}

/** The encode/decode pair ts-proto generates for a response message. */
export interface ResponseCodec<T> {
  encode(message: T): { finish(): Uint8Array };
  decode(input: Uint8Array): T;
}

/** Longest `request_id` accepted, as the contract says. */
export const MAX_REQUEST_ID_LENGTH = 128;

export class RequestResults {
  /** The calls of this process still running (see the module comment). */
  private readonly running = new CallsInFlight();

  private constructor(
    private readonly collection: Collection<RequestResultDocument>,
    private readonly ttlMs: number,
  ) {}

  static async open(store: DocumentStore, ttlMs: number): Promise<RequestResults> {
    const collection = await store.collection<RequestResultDocument>({
      name: 'request_results',
      expireAtField: 'expiresAt',
    });
    return new RequestResults(collection, ttlMs);
  }

  /**
   * Runs `mutation` once per (method, `request.requestId`); without a request id, every time. The
   * same id with a different request is refused (see the module comment).
   */
  async once<T>(
    method: string,
    request: IdentifiedRequest,
    codec: ResponseCodec<T>,
    mutation: () => Promise<T>,
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
    // A first call's outcome is read from the store below: a response, or none after a failure.
    await this.running.settled(id);
    const previous = await this.collection.get(id);
    if (previous) {
      const stored = previous.doc.fingerprint;
      if (stored !== undefined && fingerprint !== undefined && stored !== fingerprint) {
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
    if (this.running.has(id)) return this.once(method, request, codec, mutation);
    return this.running.run(id, async () => {
      const response = await mutation();
      await this.collection.upsert({
        id,
        response: codec.encode(response).finish(),
        expiresAt: new Date(Date.now() + this.ttlMs),
        fingerprint,
      });
      return response;
    });
  }
}
