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
 *
 * {@link decodeOnlineFeaturesPlain} (and {@link FeatureStorePlainClientDefinition}) reads the same
 * bytes into plain values instead of `FeatureValue` messages, for clients that feed models.
 */
import { BinaryReader } from '@bufbuild/protobuf/wire';
import {
  FeatureStoreServiceService,
  OnlineFeaturesMetadata,
  type FeatureStatus,
  type GetOnlineFeaturesResponse,
} from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import { Timestamp } from '../../../gen/ts/google/protobuf/timestamp';
import { FeatureValue } from '../../../gen/ts/tandem/featurestore/v1/value';

/** The time value the generated `fromTimestamp` gives `new Date`. */
function millisOf(seconds: number, nanos: number): number {
  let millis = (seconds || 0) * 1_000;
  millis += (nanos || 0) / 1_000_000;
  return millis;
}

/** `new Date(millis).getTime()` without the Date (ECMAScript TimeClip). */
function timeClip(millis: number): number {
  return Math.abs(millis) > 8.64e15 ? NaN : Math.trunc(millis) + 0;
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
function eventTime(reader: BinaryReader, bytes: Uint8Array, end: number): number {
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
    return millisOf(seconds, nanos);
  }
  reader.pos = start;
  const timestamp = Timestamp.decode(reader, end - start);
  return millisOf(timestamp.seconds, timestamp.nanos);
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

/** A column as {@link decodeColumn} builds it, with values of type `V` and times of type `T`. */
interface Column<V, T> {
  values: V[];
  statuses: FeatureStatus[];
  eventTimes: T[];
}

/**
 * How a column's values and times are kept: `double` takes the common case (a double, read by
 * the caller), `decoded` any other value, from the generated decoder; `time` an event time, given
 * as the time value the generated decoder makes its Date of.
 */
interface ValueForm<V, T> {
  double(value: number): V;
  decoded(value: FeatureValue): V;
  time(millis: number): T;
}

const MESSAGES: ValueForm<FeatureValue, Date> = {
  double: (value) => ({ kind: { $case: 'doubleValue', value } }),
  decoded: (value) => value,
  time: (millis) => new Date(millis),
};

const PLAIN: ValueForm<PlainFeatureValue, number> = {
  time: timeClip,
  double: (value) => value,
  decoded: (value) => {
    const kind = value.kind;
    if (kind === undefined) return undefined;
    switch (kind.$case) {
      case 'floatVectorValue':
      case 'stringListValue':
        return kind.value.values;
      default:
        return kind.value;
    }
  },
};

/**
 * An array for `count` entries: of that length (its entries set by {@link put}) when the
 * previous column had that many, which is every column after the first in what servers send.
 * Growing an empty array by `push` reserves room for 17 entries, and a one-row read of 50
 * columns made 30 KB of arrays, mostly empty.
 */
function sized<E>(count: number): E[] {
  return count > 0 ? (new Array(count) as E[]) : [];
}

function put<E>(array: E[], index: number, entry: E): void {
  if (index < array.length) array[index] = entry;
  else array.push(entry);
}

/** How many entries of each kind a column had. */
interface ColumnShape {
  values: number;
  statuses: number;
  eventTimes: number;
}

function decodeColumn<V, T>(
  reader: BinaryReader,
  bytes: Uint8Array,
  length: number,
  form: ValueForm<V, T>,
  shape: ColumnShape,
): Column<V, T> {
  const end = reader.pos + length;
  const values = sized<V>(shape.values);
  const statuses = sized<FeatureStatus>(shape.statuses);
  const eventTimes = sized<T>(shape.eventTimes);
  let v = 0;
  let s = 0;
  let t = 0;
  while (reader.pos < end) {
    const tag = reader.uint32();
    if (tag === 10) {
      const valueLength = reader.uint32();
      if (valueLength === 9 && bytes[reader.pos] === 9) {
        reader.pos += 1;
        put(values, v++, form.double(reader.double()));
      } else {
        put(values, v++, form.decoded(FeatureValue.decode(reader, valueLength)));
      }
      continue;
    }
    if (tag === 18) {
      const packedEnd = reader.uint32() + reader.pos;
      while (reader.pos < packedEnd) put(statuses, s++, status(reader));
      continue;
    }
    if (tag === 16) {
      put(statuses, s++, status(reader));
      continue;
    }
    if (tag === 26) {
      const timeLength = reader.uint32();
      put(eventTimes, t++, form.time(eventTime(reader, bytes, reader.pos + timeLength)));
      continue;
    }
    // As the generated decoder: an end-group or zero tag ends the message, others are skipped.
    if ((tag & 7) === 4 || tag === 0) break;
    skipField(reader, tag);
  }
  // A column shorter than the previous one (not what servers send) leaves no holes.
  values.length = v;
  statuses.length = s;
  eventTimes.length = t;
  shape.values = v;
  shape.statuses = s;
  shape.eventTimes = t;
  return { values, statuses, eventTimes };
}

/** Whether `bytes[start, end)` is ASCII, where Latin-1 and UTF-8 read the same. */
function isAscii(bytes: Uint8Array, start: number, end: number): boolean {
  for (let i = start; i < end; i++) if ((bytes[i] ?? 0) > 0x7f) return false;
  return true;
}

/**
 * `OnlineFeaturesMetadata.decode(reader, length)`, reading ASCII feature names straight from the
 * buffer: the generated reader makes an array of char codes per string, and a read's metadata
 * names every column. Anything else (a non-ASCII name, a field running past the message) is
 * decoded again from the start by the generated decoder.
 */
function decodeMetadata(
  reader: BinaryReader,
  bytes: Uint8Array,
  length: number,
): OnlineFeaturesMetadata {
  const start = reader.pos;
  const end = start + length;
  const text = Buffer.isBuffer(bytes)
    ? bytes
    : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const fallBack = (): OnlineFeaturesMetadata => {
    reader.pos = start;
    return OnlineFeaturesMetadata.decode(reader, length);
  };
  const metadata: OnlineFeaturesMetadata = {
    featureNames: [],
    readTime: undefined,
    asOf: undefined,
  };
  while (reader.pos < end) {
    const tag = reader.uint32();
    if (tag === 10) {
      const nameEnd = reader.uint32() + reader.pos;
      if (nameEnd > end || nameEnd > bytes.length || !isAscii(bytes, reader.pos, nameEnd)) {
        return fallBack();
      }
      metadata.featureNames.push(text.toString('latin1', reader.pos, nameEnd));
      reader.pos = nameEnd;
      continue;
    }
    if (tag === 18 || tag === 26) {
      const timeEnd = reader.uint32() + reader.pos;
      if (timeEnd > end) return fallBack();
      const time = new Date(eventTime(reader, bytes, timeEnd));
      if (tag === 18) metadata.readTime = time;
      else metadata.asOf = time;
      continue;
    }
    // As the generated decoder: an end-group or zero tag ends the message where it is.
    if ((tag & 7) === 4 || tag === 0) return metadata;
    skipField(reader, tag);
  }
  return reader.pos === end ? metadata : fallBack();
}

function decodeResponse<V, T>(
  bytes: Uint8Array,
  form: ValueForm<V, T>,
): { metadata: OnlineFeaturesMetadata | undefined; columns: Column<V, T>[] } {
  const reader = new BinaryReader(bytes);
  const shape: ColumnShape = { values: 0, statuses: 0, eventTimes: 0 };
  const response: { metadata: OnlineFeaturesMetadata | undefined; columns: Column<V, T>[] } = {
    metadata: undefined,
    columns: [],
  };
  while (reader.pos < reader.len) {
    const tag = reader.uint32();
    if (tag === 10) {
      response.metadata = decodeMetadata(reader, bytes, reader.uint32());
      continue;
    }
    if (tag === 18) {
      response.columns.push(decodeColumn(reader, bytes, reader.uint32(), form, shape));
      continue;
    }
    if ((tag & 7) === 4 || tag === 0) break;
    skipField(reader, tag);
  }
  return response;
}

/** `GetOnlineFeaturesResponse.decode(bytes)`, faster on the shapes reads return. */
export function decodeOnlineFeaturesResponse(bytes: Uint8Array): GetOnlineFeaturesResponse {
  return decodeResponse(bytes, MESSAGES) satisfies GetOnlineFeaturesResponse;
}

/**
 * A feature value as plain JavaScript: a number (DOUBLE, INT64), string, boolean, `number[]`
 * (FLOAT_VECTOR), `string[]` (STRING_LIST), or `undefined` when the row has none (its status is
 * not PRESENT).
 */
export type PlainFeatureValue = number | string | boolean | number[] | string[] | undefined;

/** A `FeatureColumn` with plain values. */
export interface PlainFeatureColumn {
  /** One value per entity row, in row order. */
  readonly values: PlainFeatureValue[];
  readonly statuses: FeatureStatus[];
  /**
   * One event time per entity row, in milliseconds since the Unix epoch (what `getTime()` of the
   * message form's Date returns); empty when the request set `omit_event_times`.
   */
  readonly eventTimes: number[];
}

/** A GetOnlineFeatures response with plain values: see {@link decodeOnlineFeaturesPlain}. */
export interface PlainOnlineFeatures {
  readonly metadata: OnlineFeaturesMetadata | undefined;
  readonly columns: PlainFeatureColumn[];
}

/**
 * A GetOnlineFeatures response with each value as plain JavaScript ({@link PlainFeatureValue})
 * instead of a `FeatureValue` message, and each event time as milliseconds instead of a Date:
 * what a Node client that feeds a model wants, at a fraction of the cost. The message form takes
 * two objects per value and one per event time, so a ranking-sized read (500 items × 32
 * features) makes 32,000 to 48,000 objects; a column of doubles here is one array of unboxed
 * numbers. Everything else (metadata, statuses, what is refused) is as
 * {@link decodeOnlineFeaturesResponse}.
 */
export function decodeOnlineFeaturesPlain(bytes: Uint8Array): PlainOnlineFeatures {
  return decodeResponse(bytes, PLAIN);
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

/**
 * FeatureStoreService for Node clients that want plain values: as
 * {@link FeatureStoreClientDefinition}, except that GetOnlineFeatures answers with
 * {@link PlainOnlineFeatures} (see {@link decodeOnlineFeaturesPlain}).
 */
export const FeatureStorePlainClientDefinition = {
  ...FeatureStoreServiceService,
  getOnlineFeatures: {
    ...getOnlineFeatures,
    responseDeserialize: (value: Buffer): PlainOnlineFeatures => decodeOnlineFeaturesPlain(value),
  },
} as const;
export type FeatureStorePlainClientDefinition = typeof FeatureStorePlainClientDefinition;
