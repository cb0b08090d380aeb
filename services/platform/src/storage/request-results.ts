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
 * the request as JSON with sorted keys, so a map sent in another order is the same request).
 * Responses stored before fingerprints were kept match any request.
 */
import { createHash } from 'node:crypto';
import { InvalidArgumentError } from '../errors';
import type { Collection, DocumentStore } from './collection';

interface RequestResultDocument {
  readonly id: string;
  readonly response: Uint8Array;
  readonly expiresAt: Date;
  /** The request's fingerprint (see {@link fingerprintOf}); absent on older documents. */
  readonly fingerprint?: string;
}

/** A mutation's request: what its `request_id` names. */
export interface IdentifiedRequest {
  readonly requestId: string;
}

/** JSON of `value` with object keys sorted and bytes as base64, for fingerprints. */
function canonical(value: unknown): unknown {
  if (value instanceof Uint8Array) return Buffer.from(value).toString('base64');
  if (value instanceof Date) return value.toISOString();
  if (Array.isArray(value)) return value.map(canonical);
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const key of Object.keys(value).sort()) {
      out[key] = canonical((value as Record<string, unknown>)[key]);
    }
    return out;
  }
  return value;
}

/** What tells two requests under one id apart. */
function fingerprintOf(request: IdentifiedRequest): string {
  return createHash('sha256')
    .update(JSON.stringify(canonical(request)))
    .digest('base64url');
}

/** The encode/decode pair ts-proto generates for a response message. */
export interface ResponseCodec<T> {
  encode(message: T): { finish(): Uint8Array };
  decode(input: Uint8Array): T;
}

/** Longest `request_id` accepted, as the contract says. */
export const MAX_REQUEST_ID_LENGTH = 128;

export class RequestResults {
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
    const previous = await this.collection.get(id);
    if (previous) {
      const stored = previous.doc.fingerprint;
      if (stored !== undefined && stored !== fingerprint) {
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
    const response = await mutation();
    await this.collection.upsert({
      id,
      response: codec.encode(response).finish(),
      expiresAt: new Date(Date.now() + this.ttlMs),
      fingerprint,
    });
    return response;
  }
}
