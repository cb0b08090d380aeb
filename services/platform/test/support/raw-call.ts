/**
 * Sends hand-made request bytes (what a generated client cannot encode) to a method, for tests of
 * what a server answers to them.
 */
import { Client, credentials, Metadata, type ServiceError } from '@grpc/grpc-js';

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
  const raw = new Client(address, credentials.createInsecure(), {
    'grpc.max_send_message_length': -1,
    'grpc.max_receive_message_length': -1,
  });
  const metadata = new Metadata();
  if (adminToken !== undefined) metadata.set('authorization', `Bearer ${adminToken}`);
  try {
    return await new Promise<ServiceError | undefined>((resolve) => {
      raw.makeUnaryRequest(
        path,
        (b: Buffer) => b,
        (b: Buffer) => b,
        bytes,
        metadata,
        { deadline: Date.now() + 60_000 },
        (error) => {
          resolve(error ?? undefined);
        },
      );
    });
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
