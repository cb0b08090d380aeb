/**
 * GetOnlineFeatures responses decoded for clients, without the generated decoder's per-value
 * detours: it reads every event time as a `Timestamp` object, its seconds through int64 → string
 * → number, then makes the `Date`, and enters a nested decoder (with its recursion bookkeeping)
 * for every value. A ranking-sized read carries thousands of each, so a Node client spent twice
 * as long decoding a read with event times as one without.
 *
 * {@link decodeOnlineFeaturesResponse} returns exactly what `GetOnlineFeaturesResponse.decode`
 * returns (a test compares both over many random responses, with unknown fields and unpacked
 * statuses): doubles and times with whole non-negative seconds below 2^49 are read directly, anything else
 * (other value kinds, negative or huge times, unknown fields) goes through the generated decoders
 * or the same skipping rules. {@link FeatureStoreClientDefinition} is the generated service
 * definition with this decoder, for `createClient`.
 */
import { BinaryReader } from '@bufbuild/protobuf/wire';
import {
  FeatureStoreServiceService,
  OnlineFeaturesMetadata,
  type FeatureColumn,
  type FeatureStatus,
  type GetOnlineFeaturesResponse,
} from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import { Timestamp } from '../../../gen/ts/google/protobuf/timestamp';
import { FeatureValue } from '../../../gen/ts/tandem/featurestore/v1/value';

/** As the generated `fromTimestamp`. */
function dateOf(seconds: number, nanos: number): Date {
  let millis = (seconds || 0) * 1_000;
  millis += (nanos || 0) / 1_000_000;
  return new Date(millis);
}

/** Where the varint {@link shortVarint} last read ends (a field, to spare an object per call). */
let varintEnd = 0;

/**
 * A varint of at most `maxBytes` bytes at `pos`, ending before `end`, with {@link varintEnd} set
 * after it; -1 when it is longer (the caller then takes the generated path, which also handles
 * negative and out-of-range numbers).
 */
function shortVarint(bytes: Uint8Array, pos: number, end: number, maxBytes: number): number {
  let value = 0;
  let scale = 1;
  for (let i = 0; i < maxBytes && pos + i < end; i++) {
    const byte = bytes[pos + i] ?? 0;
    value += (byte & 0x7f) * scale;
    if (byte < 0x80) {
      varintEnd = pos + i + 1;
      return value;
    }
    scale *= 128;
  }
  return -1;
}

/**
 * The event time whose `Timestamp` body is `bytes[start, end)`: read directly when it is fields 1
 * and 2 in order with short varints (what servers write), else by the generated decoder.
 */
function eventTime(reader: BinaryReader, bytes: Uint8Array, end: number): Date {
  const start = reader.pos;
  let pos = start;
  let seconds = 0;
  let nanos = 0;
  // A body running past the buffer (a truncated response) is the generated decoder's to refuse.
  if (end > bytes.length) seconds = -1;
  else if (pos < end && bytes[pos] === 8) {
    // 7 varint bytes hold 49 bits: whole seconds far beyond any date, and always a safe integer.
    seconds = shortVarint(bytes, pos + 1, end, 7);
    if (seconds >= 0) pos = varintEnd;
  }
  if (seconds >= 0 && pos < end && bytes[pos] === 16) {
    // 5 varint bytes hold every valid nanos value (< 10^9); beyond int32 (which the generated
    // decoder wraps) and negative values take the generated path.
    nanos = shortVarint(bytes, pos + 1, end, 5);
    if (nanos >= 2 ** 31) nanos = -1;
    if (nanos >= 0) pos = varintEnd;
  }
  if (seconds >= 0 && nanos >= 0 && pos === end) {
    reader.pos = end;
    return dateOf(seconds, nanos);
  }
  reader.pos = start;
  const timestamp = Timestamp.decode(reader, end - start);
  return dateOf(timestamp.seconds, timestamp.nanos);
}

/** A status as sent: any int32, values this version does not know included, as generated code keeps them. */
function status(reader: BinaryReader): FeatureStatus {
  // eslint-disable-next-line @typescript-eslint/no-unsafe-enum-assignment -- a wire enum is any int32
  return reader.int32();
}

/** Skips a field this version does not know, as the generated decoders do. */
function skipField(reader: BinaryReader, tag: number): void {
  // eslint-disable-next-line @typescript-eslint/no-unsafe-enum-assignment -- skip() rejects invalid wire types itself
  reader.skip(tag & 7);
}

function decodeColumn(reader: BinaryReader, bytes: Uint8Array, length: number): FeatureColumn {
  const end = reader.pos + length;
  const column: FeatureColumn = { values: [], statuses: [], eventTimes: [] };
  while (reader.pos < end) {
    const tag = reader.uint32();
    if (tag === 10) {
      const valueLength = reader.uint32();
      if (valueLength === 9 && bytes[reader.pos] === 9) {
        reader.pos += 1;
        column.values.push({ kind: { $case: 'doubleValue', value: reader.double() } });
      } else {
        column.values.push(FeatureValue.decode(reader, valueLength));
      }
      continue;
    }
    if (tag === 18) {
      const packedEnd = reader.uint32() + reader.pos;
      while (reader.pos < packedEnd) column.statuses.push(status(reader));
      continue;
    }
    if (tag === 16) {
      column.statuses.push(status(reader));
      continue;
    }
    if (tag === 26) {
      const timeLength = reader.uint32();
      column.eventTimes.push(eventTime(reader, bytes, reader.pos + timeLength));
      continue;
    }
    // As the generated decoder: an end-group or zero tag ends the message, others are skipped.
    if ((tag & 7) === 4 || tag === 0) break;
    skipField(reader, tag);
  }
  return column;
}

/** `GetOnlineFeaturesResponse.decode(bytes)`, faster on the shapes reads return. */
export function decodeOnlineFeaturesResponse(bytes: Uint8Array): GetOnlineFeaturesResponse {
  const reader = new BinaryReader(bytes);
  const response: GetOnlineFeaturesResponse = { metadata: undefined, columns: [] };
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    if (tag === 10) {
      response.metadata = OnlineFeaturesMetadata.decode(reader, reader.uint32());
      continue;
    }
    if (tag === 18) {
      response.columns.push(decodeColumn(reader, bytes, reader.uint32()));
      continue;
    }
    if ((tag & 7) === 4 || tag === 0) break;
    skipField(reader, tag);
  }
  return response;
}

const getOnlineFeatures = FeatureStoreServiceService.getOnlineFeatures;

/**
 * FeatureStoreService for clients (`createClient`): the generated definition, except that
 * GetOnlineFeatures responses are decoded by {@link decodeOnlineFeaturesResponse}. Same paths,
 * same messages.
 */
export const FeatureStoreClientDefinition = {
  ...FeatureStoreServiceService,
  getOnlineFeatures: {
    ...getOnlineFeatures,
    responseDeserialize: (value: Buffer): GetOnlineFeaturesResponse =>
      decodeOnlineFeaturesResponse(value),
  },
} as const;
export type FeatureStoreClientDefinition = typeof FeatureStoreClientDefinition;
