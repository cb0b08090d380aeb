/**
 * Checking and preparing the rows written to a push-sourced view, shared by WriteFeatures and the
 * bulk loader: every problem of every row is reported (all-or-nothing), and a valid row becomes
 * the encoded entity key, the wire values served from memory and the values stored.
 */
import type { FieldViolation } from './domain/feature-values';
import type { FeatureRow } from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import type { FeatureValue as FeatureValueMessage } from '../../../gen/ts/tandem/featurestore/v1/value';
import { domainValueOf, storedValueOf, type StoredValue } from './contract-mapping';
import { checkValue, type ValueType } from './domain/feature-values';
import type { FeatureDefinition } from './domain/registry';
import { encodeEntityKey } from './domain/online-table';

/** The join key and type of each entity of a view, in the view's order. */
export interface KeyColumn {
  readonly joinKey: string;
  readonly valueType: ValueType;
}

/** A row ready to store and serve. */
export interface PreparedRow {
  readonly entityKey: string;
  readonly eventTime: number;
  readonly values: Readonly<Record<string, FeatureValueMessage | null>>;
  readonly stored: Readonly<Record<string, StoredValue>>;
}

/** How far ahead of the server clock an event time may be. */
const MAX_FUTURE_MS = 3_600_000;
/** Longest encoded entity key: it becomes part of a document id. */
const MAX_ENTITY_KEY_BYTES = 400;

/**
 * The most bytes a row's values may take as stored: a MongoDB document holds 16 MiB of BSON, and
 * the record keeps 64 KiB for its id, entity key, times and versions. Enforced on every store, so
 * that what the embedded store takes MongoDB takes too. (Vectors and lists grow in BSON: each
 * element carries its type and index.)
 */
export const MAX_STORED_VALUES_BYTES = 16 * 1024 * 1024 - 64 * 1024;

/** BSON bytes of an array's element names, the decimal indexes 0 … n−1 with their NULs. */
function indexNameBytes(n: number): number {
  let bytes = n; // the NULs
  for (let digits = 1, from = 0, to = 10; from < n; digits++, from = to, to *= 10) {
    bytes += digits * (Math.min(n, to) - from);
  }
  return bytes;
}

/** BSON bytes of a number: an int32 when it is a whole number in its range, else a double. */
function numberBytes(value: number): number {
  return Number.isSafeInteger(value) &&
    value >= -2_147_483_648 &&
    value <= 2_147_483_647 &&
    !Object.is(value, -0)
    ? 4
    : 8;
}

/**
 * The BSON size of `values` as a document, as the `bson` serializer writes it. Strings count 3
 * bytes per UTF-16 unit (at least their UTF-8 size) unless that bound exceeds `exactAbove`, when
 * they are measured.
 */
export function storedValuesBytes(
  values: Readonly<Record<string, StoredValue>>,
  exactAbove = MAX_STORED_VALUES_BYTES,
): number {
  const size = (stringBytes: (text: string) => number): number => {
    let bytes = 5; // length, terminator
    for (const [name, value] of Object.entries(values)) {
      bytes += 2 + stringBytes(name); // type, name, NUL
      if (typeof value === 'number') bytes += numberBytes(value);
      else if (typeof value === 'boolean') bytes += 1;
      else if (typeof value === 'string') bytes += 5 + stringBytes(value);
      else if (Array.isArray(value)) {
        bytes += 5 + value.length + indexNameBytes(value.length); // document, element types
        for (const item of value) {
          bytes += typeof item === 'number' ? numberBytes(item) : 5 + stringBytes(item);
        }
      }
    }
    return bytes;
  };
  const bound = size((text) => 3 * text.length);
  return bound <= exactAbove ? bound : size((text) => Buffer.byteLength(text));
}

/** The entity key part of `value` for a join key of `type`, or a problem. */
export function keyPartOf(
  type: ValueType,
  value: FeatureValueMessage | undefined,
  field: string,
): { part: string | number } | { violation: FieldViolation } {
  const problem = checkValue(type, domainValueOf(value), { field, nullable: false });
  if (problem !== undefined) return { violation: problem };
  const kind = value?.kind;
  if (kind?.$case === 'stringValue' || kind?.$case === 'int64Value') return { part: kind.value };
  return {
    violation: {
      field,
      description: 'must be a string or int64 value',
      reason: 'WRONG_VALUE_TYPE',
    },
  };
}

/**
 * The most violations {@link prepareRows} names. A request within the message limit may hold
 * millions of wrong values (a row with 1.5 million unknown features took 4 s of the event loop
 * and 438 MB to describe, from any caller, though a status shows only the first 1.5 KiB of them);
 * past this many the rows are refused without looking further.
 */
export const MAX_ROW_VIOLATIONS = 100;

/**
 * Checks every row against the view; returns the prepared rows, or the violations (the first
 * {@link MAX_ROW_VIOLATIONS}) with paths such as `rows[3].values.ctr`.
 */
export function prepareRows(
  rows: readonly FeatureRow[],
  keyColumns: readonly KeyColumn[],
  features: readonly FeatureDefinition[],
  now: number,
): { rows: PreparedRow[]; violations: FieldViolation[] } {
  const violations: FieldViolation[] = [];
  const prepared: PreparedRow[] = [];
  const featureByName = new Map(features.map((f) => [f.name, f]));
  const joinKeys = new Set(keyColumns.map((k) => k.joinKey));
  rows.forEach((row, i) => {
    if (violations.length >= MAX_ROW_VIOLATIONS) return;
    const at = `rows[${i}]`;
    const before = violations.length;
    const parts: (string | number)[] = [];
    for (const column of keyColumns) {
      const field = `${at}.entity_key.${column.joinKey}`;
      // Own properties only: a join key such as `constructor` is inherited by every object.
      const value = Object.hasOwn(row.entityKey, column.joinKey)
        ? row.entityKey[column.joinKey]
        : undefined;
      if (value === undefined) {
        violations.push({ field, description: 'is required', reason: 'REQUIRED' });
        continue;
      }
      const result = keyPartOf(column.valueType, value, field);
      if ('violation' in result) violations.push(result.violation);
      else parts.push(result.part);
    }
    for (const name in row.entityKey) {
      if (!Object.hasOwn(row.entityKey, name)) continue;
      if (violations.length >= MAX_ROW_VIOLATIONS) break;
      if (!joinKeys.has(name)) {
        violations.push({
          field: `${at}.entity_key.${name}`,
          description: `is not a join key of the view (expected ${[...joinKeys].join(', ')})`,
          reason: 'UNKNOWN_JOIN_KEY',
        });
      }
    }
    const entityKey = encodeEntityKey(parts);
    if (Buffer.byteLength(entityKey) > MAX_ENTITY_KEY_BYTES) {
      violations.push({
        field: `${at}.entity_key`,
        description: `must be at most ${MAX_ENTITY_KEY_BYTES} bytes`,
        reason: 'TOO_LONG',
      });
    }
    const values: Record<string, FeatureValueMessage | null> = {};
    const stored: Record<string, StoredValue> = {};
    for (const name in row.values) {
      if (!Object.hasOwn(row.values, name)) continue;
      if (violations.length >= MAX_ROW_VIOLATIONS) break;
      const value = row.values[name];
      const field = `${at}.values.${name}`;
      const feature = featureByName.get(name);
      if (feature === undefined) {
        violations.push({
          field,
          description: `the view has no feature ${name}`,
          reason: 'UNKNOWN_FEATURE',
        });
        continue;
      }
      const problem = checkValue(feature.valueType, domainValueOf(value), {
        field,
        vectorLength: feature.vectorLength,
      });
      if (problem !== undefined) violations.push(problem);
    }
    const eventTime = row.eventTime?.getTime();
    if (eventTime === undefined || Number.isNaN(eventTime)) {
      violations.push({
        field: `${at}.event_time`,
        description: 'is required',
        reason: 'REQUIRED',
      });
    } else if (eventTime < 0) {
      violations.push({
        field: `${at}.event_time`,
        description: 'must not be before 1970',
        reason: 'OUT_OF_RANGE',
      });
    } else if (eventTime > now + MAX_FUTURE_MS) {
      violations.push({
        field: `${at}.event_time`,
        description: 'must be at most one hour ahead of the server clock',
        reason: 'IN_THE_FUTURE',
      });
    }
    if (violations.length > before || eventTime === undefined) return;
    for (const feature of features) {
      const value = Object.hasOwn(row.values, feature.name) ? row.values[feature.name] : undefined;
      const present = value?.kind === undefined ? null : value;
      values[feature.name] = present;
      stored[feature.name] = storedValueOf(present ?? undefined);
    }
    const bytes = storedValuesBytes(stored);
    if (bytes > MAX_STORED_VALUES_BYTES) {
      violations.push({
        field: `${at}.values`,
        description: `take ${bytes} bytes as stored, more than a stored record holds (${MAX_STORED_VALUES_BYTES})`,
        reason: 'TOO_LARGE',
      });
      return;
    }
    prepared.push({ entityKey, eventTime, values, stored });
  });
  return {
    rows: violations.length > 0 ? [] : prepared,
    violations: violations.slice(0, MAX_ROW_VIOLATIONS),
  };
}
