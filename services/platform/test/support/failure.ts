import { TandemError } from '../../src/errors';

/** Resolves with the `TandemError` a call failed with; rejects when it succeeded or failed otherwise. */
export async function failure(call: Promise<unknown>): Promise<TandemError> {
  try {
    await call;
  } catch (error) {
    if (error instanceof TandemError) return error;
    throw error;
  }
  throw new Error('expected the call to fail');
}
