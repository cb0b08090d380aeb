/**
 * Idempotency of mutations for every service (contracts give each mutation a `request_id`): the first response to a `request_id` is stored (encoded) with a TTL,
 * and a retry with the same id gets it back instead of running the mutation again. Keyed by method
 * and id, so the same id used for two different RPCs does not collide. Failures are not stored:
 * a retry of a failed mutation runs again.
 */
import { InvalidArgumentError } from '../errors';
import type { Collection, DocumentStore } from './collection';

interface RequestResultDocument {
  readonly id: string;
  readonly response: Uint8Array;
  readonly expiresAt: Date;
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

  /** Runs `mutation` once per (method, requestId); without a request id, every time. */
  async once<T>(
    method: string,
    requestId: string,
    codec: ResponseCodec<T>,
    mutation: () => Promise<T>,
  ): Promise<T> {
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
    const previous = await this.collection.get(id);
    if (previous) return codec.decode(previous.doc.response);
    const response = await mutation();
    await this.collection.upsert({
      id,
      response: codec.encode(response).finish(),
      expiresAt: new Date(Date.now() + this.ttlMs),
    });
    return response;
  }
}
