/**
 * Upper bounds of a request's encoded size, for the per-method request limits of
 * `GrpcServer.add`: each service adds up what the largest valid request of a method holds, from
 * the validation limits of its fields, and {@link requestLimit} gives it a margin. The bounds are
 * loose (every tag counted at 2 bytes, every length at 5), never short.
 */

/** A tag (2 bytes for field numbers below 2048) and a length prefix (5 bytes for any length). */
const FIELD_OVERHEAD_BYTES = 7;

/** The most bytes a length-delimited field (a string, bytes or a message) of `bytes` takes. */
export function fieldBytes(bytes: number): number {
  return FIELD_OVERHEAD_BYTES + bytes;
}

/** The most bytes a scalar field takes: a tag and a 10-byte varint (or a fixed 8 bytes). */
export const SCALAR_FIELD_BYTES = 12;

/** A `google.protobuf.Timestamp` or `Duration` field: two scalars in a message. */
export const TIME_FIELD_BYTES = fieldBytes(2 * SCALAR_FIELD_BYTES);

/** UTF-8 bytes of a string limited to `n` UTF-16 units (JavaScript's `length`). */
export function utf16UnitsBytes(n: number): number {
  return 3 * n;
}

/** UTF-8 bytes of a string limited to `n` code points (an emoji counted once). */
export function codePointsBytes(n: number): number {
  return 4 * n;
}

/**
 * The most bytes a `google.protobuf.Struct` takes per byte of its contents written as JSON: a
 * number in a list is 2 bytes of JSON (`0,`) and 11 of protobuf (its entry's tag and length, the
 * Value's tag, 8 bytes of double). Nothing takes more: a string, a bool, a null or an empty list
 * or object in a list takes 3–5 bytes of JSON and at most 4 of protobuf, an object's entry at most
 * 3 times its JSON (`"a":0,`, 16 bytes), a list's brackets more than its length prefixes.
 */
export const STRUCT_BYTES_PER_JSON_BYTE = 5.5;

/**
 * The smallest per-method limit: decoding this much takes microseconds whatever it holds, and it
 * leaves a small request room for fields a newer client sets.
 */
export const MIN_REQUEST_LIMIT_BYTES = 16 * 1024;

/**
 * The request limit of a method whose largest valid request takes `validBytes`: twice that (room
 * for fields a newer client sets and for encodings other than the canonical one), in whole KiB, at
 * least {@link MIN_REQUEST_LIMIT_BYTES}.
 */
export function requestLimit(validBytes: number): number {
  return Math.max(MIN_REQUEST_LIMIT_BYTES, Math.ceil((2 * validBytes) / 1024) * 1024);
}
