/**
 * Sends hand-made request bytes (what a generated client cannot encode) to a method, for tests of
 * what a server answers to them.
 */
import { Client, credentials, Metadata, type ServiceError } from '@grpc/grpc-js';

/** A client that sends request bytes as they are (no client-side size limit), kept for many calls. */
export class RawClient {
  private readonly client: Client;

  constructor(
    address: string,
    private readonly adminToken?: string,
  ) {
    this.client = new Client(address, credentials.createInsecure(), {
      'grpc.max_send_message_length': -1,
      'grpc.max_receive_message_length': -1,
    });
  }

  /** Calls `path` with `bytes`; resolves with the error it failed with, or the response's bytes. */
  call(
    path: string,
    bytes: Uint8Array,
    timeoutMs = 60_000,
  ): Promise<{ readonly error: ServiceError | undefined; readonly response?: Buffer }> {
    const metadata = new Metadata();
    if (this.adminToken !== undefined) metadata.set('authorization', `Bearer ${this.adminToken}`);
    return new Promise((resolve) => {
      this.client.makeUnaryRequest(
        path,
        (b: Buffer) => b,
        (b: Buffer) => b,
        Buffer.from(bytes),
        metadata,
        { deadline: Date.now() + timeoutMs },
        (error: ServiceError | null, response?: Buffer) => {
          resolve({ error: error ?? undefined, response });
        },
      );
    });
  }

  close(): void {
    this.client.close();
  }
}

/**
 * Calls `path` at `address` with `bytes` (and `adminToken`, if given), with no client-side size
 * limit; resolves with the error it failed with, undefined when it succeeded.
 */
export async function rawCall(
  address: string,
  path: string,
  bytes: Buffer,
  adminToken?: string,
): Promise<ServiceError | undefined> {
  const raw = new RawClient(address, adminToken);
  try {
    return (await raw.call(path, bytes)).error;
  } finally {
    raw.close();
  }
}

/** {@link rawCall} for a call that must fail: resolves with its error. */
export async function rawCallError(
  address: string,
  path: string,
  bytes: Buffer,
  adminToken?: string,
): Promise<ServiceError> {
  const error = await rawCall(address, path, bytes, adminToken);
  if (error === undefined) throw new Error(`${path} succeeded`);
  return error;
}
