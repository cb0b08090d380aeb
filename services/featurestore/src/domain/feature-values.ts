/**
 * Typed feature values, as FeatureStore stores and serves them.
 *
 * Why a module of its own: every write (pushed rows, aggregation outputs) and every entity key is
 * checked against a declared type before it is stored, and that check must be the same in the
 * gRPC layer, the storage loader and the stream consumer. The types mirror
 * `tandem.featurestore.v1.ValueType` / `FeatureValue` (value.proto) as plain TypeScript so the
 * domain depends on no generated code; the gRPC layer maps between the two.
 *
 * Policy (value.proto, "Limits"): doubles and vector floats must be finite (NaN and ±Infinity are
 * rejected, because a model input that silently becomes NaN poisons every score downstream);
 * int64 values must be safe integers (±(2^53 − 1)), the range every client language represents
 * exactly; vector floats must also fit a 32-bit float (|x| ≤ 3.4028234663852886e38), or they
 * would become Infinity on the wire.
 */

/** The type of a feature or of an entity's join key; numbers match `ValueType` in value.proto. */
export enum ValueType {
  Unspecified = 0,
  Double = 1,
  Int64 = 2,
  String = 3,
  Bool = 4,
  FloatVector = 5,
  StringList = 6,
}

/** Why a read returned what it did for one entity row and feature; numbers match `FeatureStatus`. */
export enum FeatureStatus {
  Unspecified = 0,
  Present = 1,
  NotFound = 2,
  Expired = 3,
  NullValue = 4,
}

/** One typed value; `null` (elsewhere) is the absent value. */
export type FeatureValue =
  | { readonly kind: 'double'; readonly value: number }
  | { readonly kind: 'int64'; readonly value: number }
  | { readonly kind: 'string'; readonly value: string }
  | { readonly kind: 'bool'; readonly value: boolean }
  | { readonly kind: 'floatVector'; readonly value: readonly number[] | Float32Array }
  | { readonly kind: 'stringList'; readonly value: readonly string[] };

/** The `kind` each ValueType requires. */
export const kindOfValueType: Readonly<Record<ValueType, FeatureValue['kind'] | undefined>> = {
  [ValueType.Unspecified]: undefined,
  [ValueType.Double]: 'double',
  [ValueType.Int64]: 'int64',
  [ValueType.String]: 'string',
  [ValueType.Bool]: 'bool',
  [ValueType.FloatVector]: 'floatVector',
  [ValueType.StringList]: 'stringList',
};

/** Limits from value.proto, enforced on every write. */
export const valueLimits = {
  /** Largest magnitude of an int64 value: 2^53 − 1. */
  maxSafeInteger: Number.MAX_SAFE_INTEGER,
  /** Largest string, in UTF-8 bytes. */
  maxStringBytes: 65_536,
  /** Most floats in a vector. */
  maxVectorLength: 4_096,
  /** Most strings in a string list. */
  maxStringListLength: 1_024,
  /** Largest finite 32-bit float. */
  maxFloat32: 3.4028234663852886e38,
} as const;

/** One problem with a value, shaped like google.rpc.BadRequest.FieldViolation. */
export interface FieldViolation {
  /** The path of the offending field, for example `rows[3].values.ctr`. */
  readonly field: string;
  /** What is wrong, for a developer. */
  readonly description: string;
  /** What is wrong, for a program: UPPER_SNAKE_CASE, for example `REQUIRED`. */
  readonly reason: string;
}

/** Options of {@link checkValue}. */
export interface CheckValueOptions {
  /** For FLOAT_VECTOR: the exact length required; 0 or unset accepts any length up to the limit. */
  readonly vectorLength?: number;
  /** The field path to report, for example `rows[3].values.ctr`. @default '' */
  readonly field?: string;
  /** Whether a null value is acceptable (a feature left out of a row is; an entity key is not). @default true */
  readonly nullable?: boolean;
}

const valueTypeNames: Readonly<Record<ValueType, string>> = {
  [ValueType.Unspecified]: 'VALUE_TYPE_UNSPECIFIED',
  [ValueType.Double]: 'VALUE_TYPE_DOUBLE',
  [ValueType.Int64]: 'VALUE_TYPE_INT64',
  [ValueType.String]: 'VALUE_TYPE_STRING',
  [ValueType.Bool]: 'VALUE_TYPE_BOOL',
  [ValueType.FloatVector]: 'VALUE_TYPE_FLOAT_VECTOR',
  [ValueType.StringList]: 'VALUE_TYPE_STRING_LIST',
};

/** The proto name of a value type, for messages: `VALUE_TYPE_DOUBLE`. */
export function valueTypeName(type: ValueType): string {
  return valueTypeNames[type];
}

/** Whether `type` is one of the six concrete value types. */
export function isConcreteValueType(type: number): type is ValueType {
  return Number.isInteger(type) && type >= 1 && type <= 6;
}

/** The UTF-8 length of a string, without allocating an encoded copy. */
export function utf8Length(text: string): number {
  // Counted by hand so the domain needs no Node globals and no encoded copy.
  let bytes = 0;
  for (let i = 0; i < text.length; i++) {
    const code = text.charCodeAt(i);
    if (code < 0x80) bytes += 1;
    else if (code < 0x800) bytes += 2;
    else if (code >= 0xd800 && code <= 0xdbff && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      if (next >= 0xdc00 && next <= 0xdfff) {
        bytes += 4;
        i++;
      } else bytes += 3;
    } else bytes += 3;
  }
  return bytes;
}

/**
 * Checks that `value` is a valid value of `type`. Returns the problem, or undefined when the value
 * is acceptable. The gRPC layer turns problems into INVALID_ARGUMENT field violations.
 */
export function checkValue(
  type: ValueType,
  value: FeatureValue | null | undefined,
  options: CheckValueOptions = {},
): FieldViolation | undefined {
  const field = options.field ?? '';
  const problem = (description: string, reason: string): FieldViolation => ({
    field,
    description,
    reason,
  });
  if (value === null || value === undefined) {
    return options.nullable === false ? problem('must not be null', 'NULL_VALUE') : undefined;
  }
  const expected = kindOfValueType[type];
  if (expected === undefined)
    return problem('the declared value type is VALUE_TYPE_UNSPECIFIED', 'UNSPECIFIED_VALUE_TYPE');
  if (value.kind !== expected) {
    return problem(
      `must be a ${valueTypeName(type)} value, not a ${value.kind} value`,
      'WRONG_VALUE_TYPE',
    );
  }
  switch (value.kind) {
    case 'double':
      return Number.isFinite(value.value)
        ? undefined
        : problem(`must be a finite number, not ${String(value.value)}`, 'NOT_FINITE');
    case 'int64':
      return Number.isSafeInteger(value.value)
        ? undefined
        : problem(
            `must be an integer within ±(2^53 − 1), not ${String(value.value)}`,
            'OUT_OF_RANGE',
          );
    case 'string':
      return utf8Length(value.value) <= valueLimits.maxStringBytes
        ? undefined
        : problem(`must be at most ${valueLimits.maxStringBytes} UTF-8 bytes`, 'TOO_LONG');
    case 'bool':
      return undefined;
    case 'floatVector':
      return checkVector(value.value, options.vectorLength ?? 0, problem);
    case 'stringList':
      return checkStringList(value.value, problem);
  }
}

function checkVector(
  values: readonly number[] | Float32Array,
  vectorLength: number,
  problem: (description: string, reason: string) => FieldViolation,
): FieldViolation | undefined {
  if (vectorLength > 0 && values.length !== vectorLength) {
    return problem(
      `must hold exactly ${vectorLength} floats, not ${values.length}`,
      'WRONG_LENGTH',
    );
  }
  if (values.length > valueLimits.maxVectorLength) {
    return problem(
      `must hold at most ${valueLimits.maxVectorLength} floats, not ${values.length}`,
      'TOO_MANY',
    );
  }
  for (let i = 0; i < values.length; i++) {
    const x = values[i] ?? Number.NaN;
    if (!Number.isFinite(x) || Math.abs(x) > valueLimits.maxFloat32) {
      return problem(
        `element ${i} must be a finite 32-bit float, not ${String(x)}`,
        'OUT_OF_RANGE',
      );
    }
  }
  return undefined;
}

function checkStringList(
  values: readonly string[],
  problem: (description: string, reason: string) => FieldViolation,
): FieldViolation | undefined {
  if (values.length > valueLimits.maxStringListLength) {
    return problem(
      `must hold at most ${valueLimits.maxStringListLength} strings, not ${values.length}`,
      'TOO_MANY',
    );
  }
  for (let i = 0; i < values.length; i++) {
    if (utf8Length(values[i] ?? '') > valueLimits.maxStringBytes) {
      return problem(
        `element ${i} must be at most ${valueLimits.maxStringBytes} UTF-8 bytes`,
        'TOO_LONG',
      );
    }
  }
  return undefined;
}

/** Approximate heap bytes a value occupies, for memory metrics (V8 object + payload estimates). */
export function approximateValueBytes(value: FeatureValue | null | undefined): number {
  if (value === null || value === undefined) return 0;
  const objectBytes = 32;
  switch (value.kind) {
    case 'double':
    case 'int64':
    case 'bool':
      return objectBytes + 16;
    case 'string':
      return objectBytes + 16 + value.value.length * 2;
    case 'floatVector':
      return objectBytes + 32 + value.value.length * 8;
    case 'stringList': {
      let bytes = objectBytes + 32 + value.value.length * 8;
      for (const s of value.value) bytes += 16 + s.length * 2;
      return bytes;
    }
  }
}

/**
 * The column-oriented answer of an online read, shared by pushed tables and streaming aggregates:
 * one column per requested feature, one entry per entity row, flattened column-major so a read
 * allocates a handful of arrays rather than one object per value. The entry of feature `f` for
 * row `r` is at index `f * rowCount + r`.
 */
export interface FeatureColumns<V> {
  /** The number of entity rows. */
  readonly rowCount: number;
  /** The feature names of the columns, in order. */
  readonly features: readonly string[];
  /** The values; null unless the status is PRESENT. */
  readonly values: (V | null)[];
  /** One FeatureStatus per entry. */
  readonly statuses: Uint8Array;
  /**
   * One event time per row (ms since the Unix epoch): the record's event time, shared by every
   * feature of a view, also for EXPIRED and NULL_VALUE; 0 for NOT_FOUND.
   */
  readonly eventTimes: Float64Array;
}
