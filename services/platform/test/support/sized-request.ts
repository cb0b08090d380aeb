/**
 * Requests of an exact size, for tests of per-method request limits: a message's bytes followed by
 * unknown fields (which a decoder skips) up to the size, sent as they are.
 */
import { fromServiceError, type TandemError } from '../../src/errors';
import { rawCall } from './raw-call';

/** An unknown field number, far above any a contract uses (a 2-byte tag). */
const PADDING_FIELD = 2047;

function varint(value: number): number[] {
  const out: number[] = [];
  let rest = value;
  while (rest >= 128) {
    out.push((rest % 128) | 128);
    rest = Math.floor(rest / 128);
  }
  out.push(rest);
  return out;
}

/** `message` followed by unknown fields, `total` bytes in all. */
export function paddedTo(message: Uint8Array, total: number): Buffer {
  const parts: Buffer[] = [Buffer.from(message)];
  let left = total - message.length;
  for (;;) {
    const tag = varint((PADDING_FIELD << 3) | 2);
    // A length-delimited field of `length` bytes: the tag, the length's varint, the bytes.
    for (let length = Math.max(0, left - tag.length - 5); length <= left; length++) {
      if (tag.length + varint(length).length + length === left) {
        parts.push(Buffer.from([...tag, ...varint(length)]), Buffer.alloc(length));
        return Buffer.concat(parts);
      }
    }
    // No length fits exactly (around a varint's step): a 3-byte varint field first.
    if (left < 3) throw new Error(`cannot pad ${message.length} bytes to ${total}`);
    parts.push(Buffer.from([...varint(PADDING_FIELD << 3), 0]));
    left -= 3;
  }
}

/**
 * Calls `path` at `address` with `bytes` as the request (and `adminToken`, if given); resolves
 * with the error it failed with, undefined when it succeeded.
 */
export async function sizedCall(
  address: string,
  path: string,
  bytes: Buffer,
  adminToken?: string,
): Promise<TandemError | undefined> {
  const error = await rawCall(address, path, bytes, adminToken);
  return error === undefined ? undefined : fromServiceError(error);
}
