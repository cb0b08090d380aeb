/**
 * ResolveResponse decoded for Node clients, without the generated decoder's detours: it builds a
 * `google.protobuf.Struct` message, a `Value` message per payload field and then unwraps them
 * into the plain object the `Assignment.payload` type is, and reads each short string through an
 * array of character codes. A response carries a few dozen assignments with a payload each, so on
 * a busy client that decoding cost more than everything else grpc-js does for the call.
 *
 * {@link decodeResolveResponse} returns exactly what `ResolveResponse.decode` returns; a test
 * compares both over many random responses (unknown fields, repeated singular fields, odd
 * payloads, non-ASCII text, truncated bytes). It reads the common shape itself: ASCII strings
 * straight from the buffer, small non-negative integers, payloads whose fields are strings,
 * numbers, booleans or nulls. A payload with nested objects or lists goes through the generated
 * decoders (at the nesting depth they would have reached), and anything else the fast path does
 * not expect (an unknown field, a wire type or integer out of the ordinary, a cut-off buffer)
 * through the generated decoder for the whole response, which then decodes or throws exactly as
 * it would have. {@link AssignmentClientDefinition} is the generated service definition with this
 * decoder for Resolve, for `createClient`.
 */
import { BinaryReader, getTextEncoding } from '@bufbuild/protobuf/wire';
import { Struct } from '../../../gen/ts/google/protobuf/struct';
import { Timestamp } from '../../../gen/ts/google/protobuf/timestamp';
import {
  AssignmentReason,
  ExposureCounts,
  HoldoutMembership,
  type Assignment,
} from '../../../gen/ts/tandem/assignment/v1/assignment';
import {
  AssignmentServiceService,
  ResolveResponse,
} from '../../../gen/ts/tandem/assignment/v1/assignment_service';
import { asEnum } from './handlers/messages';

/** What a fast read gives up with: the caller decodes the whole response the generated way. */
const UNUSUAL = Symbol('unusual');
type Unusual = typeof UNUSUAL;

/** Where the last {@link varint} ended (a module field, to spare an object per read). */
let varintEnd = 0;

/**
 * A varint of at most 7 bytes (below 2^49, so exact as a number and within what `longToNumber`
 * and `int32` return unchanged) at `pos`, before `end`; -1 when longer or cut off.
 */
function varint(bytes: Uint8Array, pos: number, end: number): number {
  let value = 0;
  let scale = 1;
  for (let i = pos; i < end && i < pos + 7; i++) {
    const byte = bytes[i] ?? 0;
    value += (byte & 0x7f) * scale;
    if (byte < 0x80) {
      varintEnd = i + 1;
      return value;
    }
    scale *= 128;
  }
  return -1;
}

/** The end of the length-delimited field whose length starts at `pos`; -1 when it overruns `end`. */
function delimited(bytes: Uint8Array, pos: number, end: number): number {
  const length = varint(bytes, pos, end);
  if (length < 0 || varintEnd + length > end) return -1;
  return varintEnd + length;
}

/** The UTF-8 text of `bytes[start, end)`, as bufbuild's reader decodes it. */
function text(bytes: Buffer, start: number, end: number): string {
  const length = end - start;
  if (length > 64) {
    for (let i = start; i < end; i++) {
      if ((bytes[i] ?? 0) > 0x7f) return getTextEncoding().decodeUtf8(bytes.subarray(start, end));
    }
    return bytes.toString('latin1', start, end);
  }
  // Short ASCII text from its character codes, as bufbuild's reader does (faster than a native call).
  const codes = new Array<number>(length);
  for (let i = 0; i < length; i++) {
    const byte = bytes[start + i] ?? 0;
    if (byte > 0x7f) return getTextEncoding().decodeUtf8(bytes.subarray(start, end));
    codes[i] = byte;
  }
  return String.fromCharCode.apply(String, codes);
}

/**
 * A reader on `bytes` at `start`, as deep in the generated decoders' recursion count as a nested
 * message's decoder would find it, for handing one field to a generated decoder.
 */
function readerAt(bytes: Uint8Array, start: number, depth: number): BinaryReader {
  const reader = new BinaryReader(bytes);
  reader.pos = start;
  (reader as unknown as { __tsProtoDecodeDepth: number }).__tsProtoDecodeDepth = depth;
  return reader;
}

/** The generated `fromTimestamp`. */
function dateOf(timestamp: Timestamp): Date {
  let millis = (timestamp.seconds || 0) * 1_000;
  millis += (timestamp.nanos || 0) / 1_000_000;
  return new Date(millis);
}

/**
 * One `google.protobuf.Value` of a flat payload unwrapped (undefined when it holds no kind), or
 * {@link UNUSUAL} for a nested one or anything unexpected.
 */
function flatValue(bytes: Buffer, pos: number, end: number): unknown {
  let value: unknown;
  while (pos < end) {
    const tag = bytes[pos] ?? 0;
    pos++;
    switch (tag) {
      case 8: {
        // null_value: unwrapped to null whatever the number.
        if (varint(bytes, pos, end) < 0) return UNUSUAL;
        pos = varintEnd;
        value = null;
        break;
      }
      case 17:
        if (pos + 8 > end) return UNUSUAL;
        value = bytes.readDoubleLE(pos);
        pos += 8;
        break;
      case 26: {
        const stop = delimited(bytes, pos, end);
        if (stop < 0) return UNUSUAL;
        value = text(bytes, varintEnd, stop);
        pos = stop;
        break;
      }
      case 32: {
        const flag = varint(bytes, pos, end);
        if (flag < 0) return UNUSUAL;
        value = flag !== 0;
        pos = varintEnd;
        break;
      }
      default:
        return UNUSUAL;
    }
  }
  return value;
}

/** An assignment's payload: a flat Struct read here, anything else by the generated decoder. */
function payload(bytes: Buffer, start: number, end: number): Record<string, unknown> {
  const object: Record<string, unknown> = {};
  let pos = start;
  while (pos < end) {
    if (bytes[pos] !== 10) return generatedPayload(bytes, start, end);
    const entryEnd = delimited(bytes, pos + 1, end);
    if (entryEnd < 0) return generatedPayload(bytes, start, end);
    pos = varintEnd;
    let key = '';
    let value: unknown;
    while (pos < entryEnd) {
      const tag = bytes[pos];
      const stop = delimited(bytes, pos + 1, entryEnd);
      if ((tag !== 10 && tag !== 18) || stop < 0) return generatedPayload(bytes, start, end);
      if (tag === 10) key = text(bytes, varintEnd, stop);
      else value = flatValue(bytes, varintEnd, stop);
      if (value === UNUSUAL) return generatedPayload(bytes, start, end);
      pos = stop;
    }
    // The generated Struct keeps an entry only when its value is set; it assigns `__proto__`
    // like any key, which a plain object takes as its prototype.
    if (key === '__proto__') return generatedPayload(bytes, start, end);
    if (value !== undefined) object[key] = value;
  }
  return object;
}

function generatedPayload(bytes: Buffer, start: number, end: number): Record<string, unknown> {
  // ResolveResponse (1) → Assignment (2) → Struct.
  return Struct.unwrap(Struct.decode(readerAt(bytes, start, 2), end - start));
}

function assignment(bytes: Buffer, pos: number, end: number): Assignment | Unusual {
  const message: Assignment = {
    experimentId: '',
    variantKey: '',
    payload: undefined,
    inExperiment: false,
    reason: AssignmentReason.ASSIGNMENT_REASON_UNSPECIFIED,
    layerId: '',
    holdoutId: '',
    surfaces: [],
    experimentEtag: '',
    allocationSequence: 0,
  };
  while (pos < end) {
    const tag = bytes[pos] ?? 0;
    if (tag === 32 || tag === 40 || tag === 80) {
      const number = varint(bytes, pos + 1, end);
      if (number < 0) return UNUSUAL;
      pos = varintEnd;
      if (tag === 32) {
        if (number > 1) return UNUSUAL;
        message.inExperiment = number === 1;
      } else if (tag === 40) {
        // int32 reads a varint above 2^31 as negative: left to the generated decoder.
        if (number > 0x7fffffff) return UNUSUAL;
        // Any number, as the generated decoder's `int32() as any`: an enum value this client's
        // code does not know stays a number.
        message.reason = asEnum<AssignmentReason>(number);
      } else {
        message.allocationSequence = number;
      }
      continue;
    }
    const stop = delimited(bytes, pos + 1, end);
    if (stop < 0) return UNUSUAL;
    const start = varintEnd;
    switch (tag) {
      case 10:
        message.experimentId = text(bytes, start, stop);
        break;
      case 18:
        message.variantKey = text(bytes, start, stop);
        break;
      case 26:
        message.payload = payload(bytes, start, stop);
        break;
      case 50:
        message.layerId = text(bytes, start, stop);
        break;
      case 58:
        message.holdoutId = text(bytes, start, stop);
        break;
      case 66:
        message.surfaces.push(text(bytes, start, stop));
        break;
      case 74:
        message.experimentEtag = text(bytes, start, stop);
        break;
      default:
        return UNUSUAL;
    }
    pos = stop;
  }
  return message;
}

function fastResponse(bytes: Buffer): ResolveResponse | Unusual {
  const response: ResolveResponse = {
    assignments: [],
    holdouts: [],
    resolveToken: '',
    resolveId: '',
    configVersion: 0,
    resolveTime: undefined,
    unknownSurfaces: [],
    exposures: undefined,
  };
  const end = bytes.length;
  let pos = 0;
  while (pos < end) {
    const tag = bytes[pos] ?? 0;
    if (tag === 40) {
      const version = varint(bytes, pos + 1, end);
      if (version < 0) return UNUSUAL;
      response.configVersion = version;
      pos = varintEnd;
      continue;
    }
    const stop = delimited(bytes, pos + 1, end);
    if (stop < 0) return UNUSUAL;
    const start = varintEnd;
    switch (tag) {
      case 10: {
        const decoded = assignment(bytes, start, stop);
        if (decoded === UNUSUAL) return UNUSUAL;
        response.assignments.push(decoded);
        break;
      }
      case 18:
        response.holdouts.push(HoldoutMembership.decode(readerAt(bytes, start, 1), stop - start));
        break;
      case 26:
        response.resolveToken = text(bytes, start, stop);
        break;
      case 34:
        response.resolveId = text(bytes, start, stop);
        break;
      case 50:
        response.resolveTime = dateOf(Timestamp.decode(readerAt(bytes, start, 1), stop - start));
        break;
      case 58:
        response.unknownSurfaces.push(text(bytes, start, stop));
        break;
      case 66:
        response.exposures = ExposureCounts.decode(readerAt(bytes, start, 1), stop - start);
        break;
      default:
        return UNUSUAL;
    }
    pos = stop;
  }
  return response;
}

/** Exactly `ResolveResponse.decode(bytes)`, faster for the responses the service sends. */
export function decodeResolveResponse(bytes: Uint8Array): ResolveResponse {
  const buffer = Buffer.isBuffer(bytes)
    ? bytes
    : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const fast = fastResponse(buffer);
  return fast === UNUSUAL ? ResolveResponse.decode(bytes) : fast;
}

/** The generated service definition, with {@link decodeResolveResponse} for Resolve. */
export const AssignmentClientDefinition = {
  ...AssignmentServiceService,
  resolve: {
    ...AssignmentServiceService.resolve,
    responseDeserialize: (value: Buffer): ResolveResponse => decodeResolveResponse(value),
  },
} as const;
export type AssignmentClientDefinition = typeof AssignmentClientDefinition;
