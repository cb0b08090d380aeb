/**
 * Remembered responses of mutations by `request_id`, so a retry returns the first result without
 * applying again. Only successes are remembered (a failure may be retried), and entries expire.
 */
import type { Collection, DocumentStore } from '../../../platform/src/storage/collection';

interface RequestResultDocument {
  /** `<method>/<request_id>`. */
  readonly id: string;
  /** The encoded response message. */
  readonly response: Uint8Array;
  readonly expiresAt: Date;
}

/** The encode/decode pair of a response message. */
export interface ResponseCodec<T> {
  encode(message: T): { finish(): Uint8Array };
  decode(input: Uint8Array): T;
}

export class RequestResults {
  private constructor(
    private readonly results: Collection<RequestResultDocument>,
    private readonly retentionMs: number,
  ) {}

  static async open(store: DocumentStore, retentionMs: number): Promise<RequestResults> {
    const results = await store.collection<RequestResultDocument>({
      name: 'request_results',
      expireAtField: 'expiresAt',
    });
    return new RequestResults(results, retentionMs);
  }

  /**
   * Runs `apply` unless `requestId` already has a remembered response, which is returned instead.
   * An empty `requestId` always applies.
   */
  async once<T>(
    method: string,
    requestId: string,
    codec: ResponseCodec<T>,
    apply: () => Promise<T>,
  ): Promise<T> {
    if (requestId === '') return apply();
    const id = `${method}/${requestId}`;
    const remembered = await this.results.get(id);
    if (remembered !== undefined) return codec.decode(remembered.doc.response);
    const response = await apply();
    await this.results.upsert({
      id,
      response: codec.encode(response).finish(),
      expiresAt: new Date(Date.now() + this.retentionMs),
    });
    return response;
  }
}
