/**
 * The GetOnlineFeatures response as the read path builds it, and its protobuf encoding.
 *
 * Why not the generated `GetOnlineFeaturesResponse.encode`: a ranking-sized read returns tens of
 * thousands of values, and building a `FeatureColumn` object per feature, a `Date` and a
 * `Timestamp` object per row and column, then running ts-proto's writer (a fork/join per nested
 * message, int64 through a string parser) cost more server CPU than everything else in the call.
 * So the read path returns an {@link OnlineFeaturesReply} that references the table's output
 * arrays as they are (no per-value objects), and {@link OnlineFeaturesReply.encode} writes the
 * wire bytes in two passes (sizes, then bytes) into one buffer. The event times of a view are
 * encoded once per read and copied into each of the view's columns.
 *
 * The bytes are exactly those the generated encoder writes for `toMessage()` (a test decodes both
 * for many random replies and compares them); values of rare shapes (vectors, lists, int64 beyond
 * the safe range, negative or fractional times) go through the generated encoders themselves.
 */
import {
  FeatureStatus as FeatureStatusMessage,
  FeatureStoreServiceService,
  GetOnlineFeaturesResponse,
  OnlineFeaturesMetadata,
  type FeatureColumn,
} from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import { Timestamp } from '../../../gen/ts/google/protobuf/timestamp';
import { FeatureValue as FeatureValueMessage } from '../../../gen/ts/tandem/featurestore/v1/value';
import { messageOfAggregate } from './contract-mapping';
import { FeatureStatus, ValueType } from './domain/feature-values';
import { responseTooLarge } from '../../platform/src/grpc/handlers';
import {
  timestampSize,
  varintSize,
  writeTimestamp,
  writeVarint,
} from '../../platform/src/grpc/wire';

/** One column of a reply: a window of a flat, column-major read result. */
export interface ReplyColumn {
  /**
   * `values[base + row]` is the row's value: a wire FeatureValue (push views) or an aggregate
   * (stream views, `aggregate` set); null or anything with a status other than PRESENT is no value.
   */
  readonly values: readonly unknown[];
  /** `statuses[base + row]` is the row's domain status. */
  readonly statuses: Uint8Array;
  readonly base: number;
  /** For a stream view's column: the feature's type, which says how an aggregate is sent. */
  readonly aggregateType?: ValueType;
  /** The view's event time per row (ms); undefined when the request omitted event times. */
  readonly eventTimes: Float64Array | undefined;
  /** Those event times encoded (the repeated field 3 entries); shared by the view's columns. */
  readonly encodedEventTimes: Uint8Array | undefined;
}

const PRESENT: number = FeatureStatus.Present;
const EPOCH = new Date(0);
const NULL_VALUE: FeatureValueMessage = { kind: undefined };
/** The contract's status for each domain status (the same numbers, by position). */
const STATUS_MESSAGES: readonly FeatureStatusMessage[] = [
  FeatureStatusMessage.FEATURE_STATUS_UNSPECIFIED,
  FeatureStatusMessage.FEATURE_STATUS_PRESENT,
  FeatureStatusMessage.FEATURE_STATUS_NOT_FOUND,
  FeatureStatusMessage.FEATURE_STATUS_EXPIRED,
  FeatureStatusMessage.FEATURE_STATUS_NULL_VALUE,
];
const statusMessage = (status: number): FeatureStatusMessage =>
  STATUS_MESSAGES[status] ?? FeatureStatusMessage.FEATURE_STATUS_UNSPECIFIED;

/**
 * The `feature_names` entries of a response's metadata (tag, length, name each), for a reader that
 * returns the same names many times (see {@link OnlineFeaturesReply}).
 */
export function encodeFeatureNames(names: readonly string[]): Buffer {
  return Buffer.from(OnlineFeaturesMetadata.encode({ featureNames: [...names] }).finish());
}

/** A GetOnlineFeatures answer, ready to encode (fast) or to turn into the generated message. */
export class OnlineFeaturesReply {
  /**
   * @param encodedFeatureNames when given, `encodeFeatureNames(featureNames)`, copied instead of
   *   encoding the names again
   */
  constructor(
    readonly featureNames: readonly string[],
    readonly readTime: number,
    readonly asOf: number,
    readonly rowCount: number,
    readonly columns: readonly ReplyColumn[],
    readonly encodedFeatureNames?: Uint8Array,
  ) {}

  /** The generated message with the same content (the reference the encoder is tested against). */
  toMessage(): GetOnlineFeaturesResponse {
    const rowCount = this.rowCount;
    const columns: FeatureColumn[] = this.columns.map((column) => {
      const values = new Array<FeatureValueMessage>(rowCount);
      const statuses = new Array<FeatureStatusMessage>(rowCount);
      const eventTimes: Date[] = [];
      for (let row = 0; row < rowCount; row++) {
        const status = column.statuses[column.base + row] ?? FeatureStatus.NotFound;
        statuses[row] = statusMessage(status);
        values[row] = valueMessage(column, row, status);
        if (column.eventTimes !== undefined) {
          const ms = column.eventTimes[row] ?? 0;
          eventTimes.push(ms === 0 ? EPOCH : new Date(ms));
        }
      }
      return { values, statuses, eventTimes };
    });
    return {
      metadata: {
        featureNames: [...this.featureNames],
        readTime: new Date(this.readTime),
        asOf: new Date(this.asOf),
      },
      columns,
    };
  }

  /**
   * The protobuf encoding of `toMessage()`, written directly; RESOURCE_EXHAUSTED as soon as it
   * would pass `maxBytes`, before the buffer (or the encodings of its rare values) is made:
   * repeated rows make a read's size unbounded by its request's.
   */
  encode(maxBytes = Infinity): Buffer {
    return new ReplyEncoder(this, maxBytes).encode();
  }
}

function valueMessage(column: ReplyColumn, row: number, status: number): FeatureValueMessage {
  const value = column.values[column.base + row];
  if (value === null || value === undefined || status !== PRESENT) return NULL_VALUE;
  if (column.aggregateType === undefined) return value;
  return messageOfAggregate(column.aggregateType, value as number | string) ?? NULL_VALUE;
}

/** Encodes the event times of a view's rows as the repeated `event_times` entries (tag 3). */
export function encodeEventTimes(eventTimes: Float64Array, rowCount: number): Uint8Array {
  const bodies: (Uint8Array | number)[] = new Array<Uint8Array | number>(rowCount);
  let size = 0;
  let lastMs = Number.NaN;
  let lastBody: Uint8Array | number = 0;
  for (let row = 0; row < rowCount; row++) {
    const ms = eventTimes[row] ?? 0;
    if (ms !== lastMs) {
      lastMs = ms;
      lastBody = timestampBody(ms);
    }
    bodies[row] = lastBody;
    const length = typeof lastBody === 'number' ? timestampSize(ms) : lastBody.length;
    size += 1 + varintSize(length) + length;
  }
  const out = Buffer.allocUnsafe(size);
  let pos = 0;
  for (let row = 0; row < rowCount; row++) {
    const body = bodies[row] as Uint8Array | number;
    out[pos++] = 26;
    if (typeof body === 'number') {
      const ms = eventTimes[row] ?? 0;
      pos = writeVarint(out, pos, timestampSize(ms));
      pos = writeTimestamp(out, pos, ms);
    } else {
      pos = writeVarint(out, pos, body.length);
      out.set(body, pos);
      pos += body.length;
    }
  }
  return out;
}

/** The seconds and nanos of `ms` as ts-proto's `toTimestamp(new Date(ms))` computes them. */
function secondsAndNanos(ms: number): { seconds: number; nanos: number } {
  const time = new Date(ms).getTime();
  return { seconds: Math.trunc(time / 1_000), nanos: (time % 1_000) * 1_000_000 };
}

/** 0 when `ms` takes the fast path (a whole, non-negative time), else the generated encoding. */
function timestampBody(ms: number): Uint8Array | number {
  if (Number.isInteger(ms) && ms >= 0 && ms <= 8.64e15) return 0;
  return Timestamp.encode(secondsAndNanos(ms)).finish();
}

const DOUBLE = 1;
const INT64 = 2;
const STRING = 3;
const BOOL = 4;
/** An aggregate the fast path does not write (an int64 beyond the safe range). */
const OTHER_AGGREGATE = 5;
/** A FeatureValue message the fast path does not write (vectors, lists, unsafe int64). */
const OTHER_MESSAGE = 6;
const NONE = 0;

/**
 * The two passes of one encoding. The first measures every nested message and remembers what the
 * second needs again (string byte lengths, fallback encodings), in order; the second writes.
 */
class ReplyEncoder {
  private readonly stringLengths: number[] = [];
  private readonly fallbacks: Uint8Array[] = [];
  private stringAt = 0;
  private fallbackAt = 0;
  /** The value `shape()` found. */
  private value: unknown = undefined;

  constructor(
    private readonly reply: OnlineFeaturesReply,
    private readonly maxBytes: number,
  ) {}

  encode(): Buffer {
    const { reply } = this;
    const rowCount = reply.rowCount;
    // Sizes.
    const encodedNames = reply.encodedFeatureNames;
    const nameLengths =
      encodedNames === undefined ? reply.featureNames.map((name) => Buffer.byteLength(name)) : [];
    let metadataSize = encodedNames?.length ?? 0;
    for (const length of nameLengths) metadataSize += 1 + varintSize(length) + length;
    const readTimeSize = timestampSize(reply.readTime);
    const asOfSize = timestampSize(reply.asOf);
    const wholeTimes =
      Number.isInteger(reply.readTime) &&
      reply.readTime >= 0 &&
      Number.isInteger(reply.asOf) &&
      reply.asOf >= 0;
    if (!wholeTimes) {
      // Encoded in full before its size is known: the read path sets both times from the clock,
      // in whole milliseconds, so only a reply made elsewhere (tests) comes this way.
      const bytes = GetOnlineFeaturesResponse.encode(reply.toMessage()).finish();
      if (bytes.length > this.maxBytes) throw responseTooLarge(this.maxBytes, bytes.length);
      return Buffer.from(bytes);
    }
    metadataSize += 1 + varintSize(readTimeSize) + readTimeSize;
    metadataSize += 1 + varintSize(asOfSize) + asOfSize;
    const columnSizes = new Array<number>(reply.columns.length);
    let total = 1 + varintSize(metadataSize) + metadataSize;
    const maxBytes = this.maxBytes;
    reply.columns.forEach((column, c) => {
      let size = 0;
      for (let row = 0; row < rowCount; row++) {
        const valueSize = this.measureValue(column, row);
        size += 1 + varintSize(valueSize) + valueSize;
        if (total + size > maxBytes) throw responseTooLarge(maxBytes);
      }
      if (rowCount > 0) size += 1 + varintSize(rowCount) + rowCount;
      if (column.encodedEventTimes !== undefined) size += column.encodedEventTimes.length;
      columnSizes[c] = size;
      total += 1 + varintSize(size) + size;
    });
    if (total > maxBytes) throw responseTooLarge(maxBytes, total);

    // Bytes.
    const out = Buffer.allocUnsafe(total);
    let pos = 0;
    out[pos++] = 10;
    pos = writeVarint(out, pos, metadataSize);
    if (encodedNames !== undefined) {
      out.set(encodedNames, pos);
      pos += encodedNames.length;
    } else {
      reply.featureNames.forEach((name, i) => {
        const length = nameLengths[i] as number;
        out[pos++] = 10;
        pos = writeVarint(out, pos, length);
        pos += out.write(name, pos, length, 'utf8');
      });
    }
    out[pos++] = 18;
    pos = writeVarint(out, pos, readTimeSize);
    pos = writeTimestamp(out, pos, reply.readTime);
    out[pos++] = 26;
    pos = writeVarint(out, pos, asOfSize);
    pos = writeTimestamp(out, pos, reply.asOf);
    reply.columns.forEach((column, c) => {
      out[pos++] = 18;
      pos = writeVarint(out, pos, columnSizes[c] as number);
      for (let row = 0; row < rowCount; row++) pos = this.writeValue(out, pos, column, row);
      if (rowCount > 0) {
        out[pos++] = 18;
        pos = writeVarint(out, pos, rowCount);
        for (let row = 0; row < rowCount; row++) {
          out[pos++] = statusMessage(column.statuses[column.base + row] ?? FeatureStatus.NotFound);
        }
      }
      if (column.encodedEventTimes !== undefined) {
        out.set(column.encodedEventTimes, pos);
        pos += column.encodedEventTimes.length;
      }
    });
    if (pos !== total) throw new Error(`encoded ${pos} bytes of ${total}`);
    return out;
  }

  /**
   * The shape of a row's value (returned) and, for the fast cases, its number, string or boolean
   * (left in `this.value`, so no object is allocated per value); for OTHER the value itself.
   */
  private shape(column: ReplyColumn, row: number): number {
    const status = column.statuses[column.base + row] ?? FeatureStatus.NotFound;
    const value = column.values[column.base + row];
    this.value = value;
    if (value === null || value === undefined || status !== PRESENT) return NONE;
    if (column.aggregateType !== undefined) {
      if (typeof value === 'string') return STRING;
      if (column.aggregateType === ValueType.Int64) return intShape(value as number);
      return DOUBLE;
    }
    const kind = (value as FeatureValueMessage).kind;
    if (kind === undefined) return NONE;
    switch (kind.$case) {
      case 'doubleValue':
        this.value = kind.value;
        return DOUBLE;
      case 'int64Value':
        this.value = kind.value;
        return intShape(kind.value) === INT64 ? INT64 : OTHER_MESSAGE;
      case 'stringValue':
        this.value = kind.value;
        return STRING;
      case 'boolValue':
        this.value = kind.value;
        return BOOL;
      default:
        return OTHER_MESSAGE;
    }
  }

  /** The size of the FeatureValue message body of a row. */
  private measureValue(column: ReplyColumn, row: number): number {
    const kind = this.shape(column, row);
    const value = this.value;
    switch (kind) {
      case NONE:
        return 0;
      case DOUBLE:
        return 9;
      case INT64:
        return 1 + varintSize(value as number);
      case STRING: {
        const length = Buffer.byteLength(value as string);
        this.stringLengths.push(length);
        return 1 + varintSize(length) + length;
      }
      case BOOL:
        return 2;
      default: {
        const message =
          kind === OTHER_MESSAGE
            ? (column.values[column.base + row] as FeatureValueMessage)
            : (messageOfAggregate(column.aggregateType ?? ValueType.Int64, value as number) ??
              NULL_VALUE);
        const bytes = FeatureValueMessage.encode(message).finish();
        this.fallbacks.push(bytes);
        return bytes.length;
      }
    }
  }

  /** Writes a row's value as a `values` entry (tag 1, length, FeatureValue). */
  private writeValue(out: Buffer, pos: number, column: ReplyColumn, row: number): number {
    const kind = this.shape(column, row);
    const value = this.value;
    let at = pos;
    out[at++] = 10;
    switch (kind) {
      case NONE:
        out[at++] = 0;
        return at;
      case DOUBLE:
        out[at++] = 9;
        out[at++] = 9;
        out.writeDoubleLE(value as number, at);
        return at + 8;
      case INT64:
        at = writeVarint(out, at, 1 + varintSize(value as number));
        out[at++] = 16;
        return writeVarint(out, at, value as number);
      case STRING: {
        const length = this.stringLengths[this.stringAt++] as number;
        at = writeVarint(out, at, 1 + varintSize(length) + length);
        out[at++] = 26;
        at = writeVarint(out, at, length);
        return at + out.write(value as string, at, length, 'utf8');
      }
      case BOOL:
        out[at++] = 2;
        out[at++] = 32;
        out[at++] = value === true ? 1 : 0;
        return at;
      default: {
        const bytes = this.fallbacks[this.fallbackAt++] as Uint8Array;
        at = writeVarint(out, at, bytes.length);
        out.set(bytes, at);
        return at + bytes.length;
      }
    }
  }
}

/** A whole int64 in the safe, non-negative range takes the fast path; anything else the generated one. */
function intShape(value: number): number {
  return Number.isSafeInteger(value) && value >= 0 ? INT64 : OTHER_AGGREGATE;
}

/** What the GetOnlineFeatures handler may return: the generated message or a reply to encode. */
export type GetOnlineFeaturesResult = GetOnlineFeaturesResponse | OnlineFeaturesReply;

const getOnlineFeatures = FeatureStoreServiceService.getOnlineFeatures;

/**
 * FeatureStoreService as registered with grpc-js: the generated definition, except that
 * GetOnlineFeatures serializes an {@link OnlineFeaturesReply} with its own encoder. Same paths,
 * same wire format; clients keep using the generated definition.
 */
export const FeatureStoreServiceDefinition = {
  ...FeatureStoreServiceService,
  getOnlineFeatures: {
    ...getOnlineFeatures,
    // The kit passes its limit (see `ResponseSerializer`); grpc-js does not.
    responseSerialize: (value: GetOnlineFeaturesResult, maxBytes?: number): Buffer =>
      value instanceof OnlineFeaturesReply
        ? value.encode(maxBytes)
        : getOnlineFeatures.responseSerialize(value),
    responseDeserialize: (value: Buffer): GetOnlineFeaturesResult =>
      getOnlineFeatures.responseDeserialize(value),
  },
} as const;
export type FeatureStoreServiceDefinition = typeof FeatureStoreServiceDefinition;
