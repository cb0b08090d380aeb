/**
 * ResolveResponse on the wire without re-encoding what does not change between calls.
 *
 * The evaluator's results are shared per (experiment, reason, variant), and so are the `Assignment`
 * messages made from them; the Resolve handler keeps their protobuf bytes (in the BASIC
 * view) in an arena per configuration snapshot and hands each response's
 * entries over with {@link withEncodedAssignments}. The serializer then writes a response as one
 * buffer: those bytes copied as they are and the few per-call fields (token, ids, time, counts)
 * written directly. The output is byte for byte what the generated `ResolveResponse.encode`
 * produces (fields in number order, defaults omitted), which the tests check over random
 * responses; anything the fast path does not cover (negative or non-integer numbers) goes through
 * the generated encoder.
 *
 * {@link resolveServiceDefinition} is `AssignmentServiceService` with this serializer for Resolve;
 * the message types are unchanged, so the handlers stay typed against the generated definition.
 */
import {
  Assignment,
  HoldoutMembership,
  type ExposureCounts,
} from '../../../../gen/ts/tandem/assignment/v1/assignment';
import {
  AssignmentServiceService,
  ResolveResponse,
} from '../../../../gen/ts/tandem/assignment/v1/assignment_service';
import {
  encodedFieldsOf,
  encodedFieldsSize,
  isPlainCount,
  lengthDelimited,
  stringSize,
  timestampSize,
  varintSize,
  writeEncodedFields,
  writeTimestamp,
  writeString,
  writeVarint,
  type EncodedFields,
} from '../../../platform/src/grpc/wire';

/** The complete `assignments` entry (tag, length, message) of `assignment` in a response. */
export function encodeResponseAssignment(assignment: Assignment): Buffer {
  return lengthDelimited(1, Assignment.encode(assignment).finish());
}

/** The encoded `assignments` entries of the responses a handler registered. */
const encodedAssignments = new WeakMap<ResolveResponse, EncodedFields>();

/**
 * Records that `entries` are the encoded `assignments` entries of `response`, in order (see
 * {@link encodeResponseAssignment}), so serializing copies them. Neither may change afterwards.
 */
export function withEncodedAssignments(
  response: ResolveResponse,
  entries: EncodedFields,
): ResolveResponse {
  encodedAssignments.set(response, entries);
  return response;
}

function stringEntrySize(value: string): number {
  return 1 + stringSize(value);
}

function writeStringEntry(buffer: Buffer, offset: number, tag: number, value: string): number {
  buffer[offset] = tag;
  return writeString(buffer, offset + 1, value);
}

/** The fields of `ExposureCounts` with their tags (field number << 3, varint), in field order. */
const COUNT_FIELDS = [
  ['loggedCount', 8],
  ['alreadyLoggedCount', 16],
  ['notInExperimentCount', 24],
  ['droppedCount', 32],
  ['notRunningCount', 40],
] as const satisfies readonly (readonly [keyof ExposureCounts, number])[];

/** Whether every count is written directly: a non-negative int32. */
function plainCounts(counts: ExposureCounts): boolean {
  for (const [field] of COUNT_FIELDS) {
    const count = counts[field];
    if (!isPlainCount(count) || count >= 2 ** 31) return false;
  }
  return true;
}

function countsSize(counts: ExposureCounts): number {
  let size = 0;
  for (const [field] of COUNT_FIELDS) {
    const count = counts[field];
    if (count !== 0) size += 1 + varintSize(count);
  }
  return size;
}

function generated(response: ResolveResponse): Buffer {
  return Buffer.from(ResolveResponse.encode(response).finish());
}

/** `ResolveResponse.encode(response)`, reusing the bytes of registered assignments. */
export function serializeResolveResponse(response: ResolveResponse): Buffer {
  const { assignments, holdouts, resolveToken, resolveId, configVersion, resolveTime, exposures } =
    response;
  // Written directly when a whole non-negative time, as nearly always; else by the generated encoder.
  const timeMs = resolveTime?.getTime();
  if (
    !isPlainCount(configVersion) ||
    (timeMs !== undefined && !isPlainCount(timeMs)) ||
    (exposures !== undefined && !plainCounts(exposures))
  ) {
    return generated(response);
  }

  const entries =
    encodedAssignments.get(response) ?? encodedFieldsOf(assignments.map(encodeResponseAssignment));
  const parts: Uint8Array[] = [];
  let size = encodedFieldsSize(entries);
  for (const holdout of holdouts) {
    const bytes = lengthDelimited(2, HoldoutMembership.encode(holdout).finish());
    parts.push(bytes);
    size += bytes.length;
  }
  if (resolveToken !== '') size += stringEntrySize(resolveToken);
  if (resolveId !== '') size += stringEntrySize(resolveId);
  if (configVersion !== 0) size += 1 + varintSize(configVersion);
  let timeSize = 0;
  if (timeMs !== undefined) {
    timeSize = timestampSize(timeMs);
    size += 1 + varintSize(timeSize) + timeSize;
  }
  for (const surface of response.unknownSurfaces) size += stringEntrySize(surface);
  let exposuresSize = 0;
  if (exposures !== undefined) {
    exposuresSize = countsSize(exposures);
    size += 1 + varintSize(exposuresSize) + exposuresSize;
  }

  const out = Buffer.allocUnsafe(size);
  let offset = writeEncodedFields(out, 0, entries);
  for (const part of parts) {
    out.set(part, offset);
    offset += part.length;
  }
  if (resolveToken !== '') offset = writeStringEntry(out, offset, 26, resolveToken);
  if (resolveId !== '') offset = writeStringEntry(out, offset, 34, resolveId);
  if (configVersion !== 0) {
    out[offset++] = 40;
    offset = writeVarint(out, offset, configVersion);
  }
  if (timeMs !== undefined) {
    out[offset++] = 50;
    offset = writeVarint(out, offset, timeSize);
    offset = writeTimestamp(out, offset, timeMs);
  }
  for (const surface of response.unknownSurfaces)
    offset = writeStringEntry(out, offset, 58, surface);
  if (exposures !== undefined) {
    out[offset++] = 66;
    offset = writeVarint(out, offset, exposuresSize);
    for (const [field, tag] of COUNT_FIELDS) {
      const count = exposures[field];
      if (count === 0) continue;
      out[offset++] = tag;
      offset = writeVarint(out, offset, count);
    }
  }
  return offset === size ? out : generated(response);
}

/** The Assignment service definition with Resolve serialized by {@link serializeResolveResponse}. */
export const resolveServiceDefinition: typeof AssignmentServiceService = {
  ...AssignmentServiceService,
  resolve: { ...AssignmentServiceService.resolve, responseSerialize: serializeResolveResponse },
};
