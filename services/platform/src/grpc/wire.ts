/**
 * Protobuf wire-format pieces for the few hand-written encoders on hot paths (Resolve's response
 * and token, FeatureStore's online reads), which reuse bytes encoded once instead of re-encoding
 * them per call. Each such encoder is tested byte for byte against the generated one. Numbers here
 * are non-negative safe integers; callers send anything else through the generated encoder.
 */

/** Bytes of the varint of a non-negative safe integer. */
export function varintSize(value: number): number {
  let size = 1;
  let rest = value;
  while (rest >= 128) {
    rest = Math.floor(rest / 128);
    size++;
  }
  return size;
}

/** Writes the varint of a non-negative safe integer; returns the position after it. */
export function writeVarint(out: Buffer, pos: number, value: number): number {
  let at = pos;
  let rest = value;
  while (rest >= 128) {
    out[at++] = (rest % 128) | 128;
    rest = Math.floor(rest / 128);
  }
  out[at++] = rest;
  return at;
}

/**
 * Bytes of the body of the `google.protobuf.Timestamp` of `ms`, a whole non-negative number of
 * milliseconds since the epoch, with the seconds and nanos ts-proto's `toTimestamp` computes.
 */
export function timestampSize(ms: number): number {
  const seconds = Math.trunc(ms / 1_000);
  const nanos = (ms % 1_000) * 1_000_000;
  return (seconds !== 0 ? 1 + varintSize(seconds) : 0) + (nanos !== 0 ? 1 + varintSize(nanos) : 0);
}

/** Writes the body {@link timestampSize} measures; returns the position after it. */
export function writeTimestamp(out: Buffer, pos: number, ms: number): number {
  const seconds = Math.trunc(ms / 1_000);
  const nanos = (ms % 1_000) * 1_000_000;
  let at = pos;
  if (seconds !== 0) {
    out[at++] = 8;
    at = writeVarint(out, at, seconds);
  }
  if (nanos !== 0) {
    out[at++] = 16;
    at = writeVarint(out, at, nanos);
  }
  return at;
}

/** A complete length-delimited field: tag, length, bytes. */
export function lengthDelimited(field: number, bytes: Uint8Array): Buffer {
  const tag = (field << 3) | 2;
  const out = Buffer.allocUnsafe(varintSize(tag) + varintSize(bytes.length) + bytes.length);
  out.set(bytes, writeVarint(out, writeVarint(out, 0, tag), bytes.length));
  return out;
}

/** A number the fast encoders write as the generated ones do: a non-negative safe integer. */
export function isPlainCount(value: number): boolean {
  return Number.isSafeInteger(value) && value >= 0;
}

/** Exactly how many bytes {@link writeString} writes for `value` (length prefix included). */
export function stringSize(value: string): number {
  const bytes = value.length < 128 && isAscii(value) ? value.length : Buffer.byteLength(value);
  return varintSize(bytes) + bytes;
}

function isAscii(value: string): boolean {
  for (let i = 0; i < value.length; i++) if (value.charCodeAt(i) > 127) return false;
  return true;
}

/** At most how many bytes {@link writeString} writes for `value` (length prefix included). */
export function maxStringSize(value: string): number {
  return 5 + 3 * value.length;
}

/**
 * Writes `value` as a length-prefixed UTF-8 string (the part after the tag). Short ASCII strings,
 * nearly all of them on these paths, are copied unit by unit: for them two native calls (byte
 * length, write) cost more than the copy.
 */
export function writeString(out: Buffer, pos: number, value: string): number {
  const length = value.length;
  if (length < 128) {
    let i = 0;
    for (; i < length; i++) {
      const unit = value.charCodeAt(i);
      if (unit > 127) break;
      out[pos + 1 + i] = unit;
    }
    if (i === length) {
      out[pos] = length;
      return pos + 1 + length;
    }
  }
  const bytes = Buffer.byteLength(value);
  const at = writeVarint(out, pos, bytes);
  return at + out.write(value, at, bytes, 'utf8');
}

/**
 * Complete encoded fields (tag, length and body each) to write one after the other: field `i` is
 * `sources[i]` from `ranges[2i]` to `ranges[2i + 1]`. Encoders that keep the fields of shared
 * messages in one arena hand them over as ranges of it, so writing a message reads a few cache
 * lines of that arena instead of one Buffer object per field.
 */
export interface EncodedFields {
  readonly sources: readonly Buffer[];
  readonly ranges: readonly number[];
}

/** The bytes of all the fields of `fields`. */
export function encodedFieldsSize(fields: EncodedFields): number {
  const { ranges } = fields;
  let size = 0;
  for (let i = 0; i < ranges.length; i += 2) size += (ranges[i + 1] ?? 0) - (ranges[i] ?? 0);
  return size;
}

/**
 * Fields up to this many bytes are copied byte by byte: `Buffer#copy` of part of a buffer makes a
 * typed-array view of that part on every call, garbage that costs more than copying a short field.
 */
const COPY_BY_BYTE_LIMIT = 256;

/** Copies the fields of `fields` to `out` from `pos`; returns the position after them. */
export function writeEncodedFields(out: Uint8Array, pos: number, fields: EncodedFields): number {
  const { sources, ranges } = fields;
  let at = pos;
  for (let i = 0; i < sources.length; i++) {
    const source = sources[i] as Buffer;
    const start = ranges[2 * i] as number;
    const end = ranges[2 * i + 1] as number;
    if (end - start <= COPY_BY_BYTE_LIMIT) {
      for (let j = start; j < end; j++) out[at++] = source[j] as number;
    } else {
      at += source.copy(out, at, start, end);
    }
  }
  return at;
}

/** Whole encoded fields as {@link EncodedFields}. */
export function encodedFieldsOf(fields: readonly Buffer[]): EncodedFields {
  return { sources: fields, ranges: fields.flatMap((bytes) => [0, bytes.length]) };
}
