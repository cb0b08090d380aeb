/**
 * Sends hand-made request bytes (what a generated client cannot encode) to a method, for tests of
 * what a server answers to them.
 */
import { Client, credentials, Metadata, type ServiceError } from '@grpc/grpc-js';

/** Calls `path` at `address` with `bytes` (and `adminToken`, if given); resolves with its error. */
export async function rawCallError(
  address: string,
  path: string,
  bytes: Buffer,
  adminToken?: string,
): Promise<ServiceError> {
  const raw = new Client(address, credentials.createInsecure());
  const metadata = new Metadata();
  if (adminToken !== undefined) metadata.set('authorization', `Bearer ${adminToken}`);
  try {
    return await new Promise<ServiceError>((resolve, reject) => {
      raw.makeUnaryRequest(
        path,
        (b: Buffer) => b,
        (b: Buffer) => b,
        bytes,
        metadata,
        (error) => {
          if (error) resolve(error);
          else reject(new Error(`${path} succeeded`));
        },
      );
    });
  } finally {
    raw.close();
  }
}
