/**
 * Loads many records into a push-sourced view in bounded memory: rows are read from an async
 * iterable, checked like WriteFeatures rows, and stored in batches with the same late-writes-lose
 * rule and change-log entries, so running replicas pick them up within their sync interval.
 */
import { AbortedError, InvalidArgumentError } from '../../../platform/src/errors';
import type { FeatureRow } from '../../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import type { FeatureValue } from '../../../../gen/ts/tandem/featurestore/v1/value';
import { messageOfStoredValue, type StoredValue } from '../contract-mapping';
import { ValueType, valueTypeName } from '../domain/feature-values';
import type { FeatureViewDefinition } from '../domain/registry';
import { storeRows } from '../online-views';
import { prepareRows, type KeyColumn } from '../push-rows';
import type { FeatureRowRepository } from './feature-rows';

export interface BulkLoadProgress {
  readonly rowsRead: number;
  readonly rowsWritten: number;
  readonly rowsSkippedOlder: number;
}

export interface BulkLoadTarget {
  readonly view: FeatureViewDefinition;
  /** The view's creation time: which view of its name the rows are for. */
  readonly createTime: Date;
  readonly keyColumns: readonly KeyColumn[];
  readonly rows: FeatureRowRepository;
  /** Rows per storage round trip. @default 1000 */
  readonly batchSize?: number;
  /**
   * The creation time (ms) of the view of that name storage holds now, undefined when none;
   * asked before each batch, as WriteFeatures asks before each write. Rows stored for a view
   * deleted (and perhaps applied again) meanwhile would carry its registration: no replica
   * would serve them, and a later view's deletion would leave them.
   */
  readonly storedRegistration: () => Promise<number | undefined>;
}

/** One line's JSON value, and where it was read (`rows.ndjson:12`). */
export interface JsonLine {
  readonly value: unknown;
  readonly where: string;
}

/**
 * The JSON value of each non-blank line of newline-delimited JSON, in order, with where it was
 * read. A line that is not JSON throws an error that names `source` and the line number (from 1),
 * which JSON.parse's own message lacks; the parse error is its cause.
 */
export async function* parseJsonLines(
  lines: AsyncIterable<string>,
  source: string,
): AsyncIterable<JsonLine> {
  let lineNumber = 0;
  for await (const read of lines) {
    lineNumber++;
    // A byte-order mark, which some editors and exports put first in a UTF-8 file, is no JSON.
    const line = lineNumber === 1 && read.startsWith('\uFEFF') ? read.slice(1) : read;
    if (line.trim() === '') continue;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      throw new Error(`${source}:${lineNumber}: ${reason}`, { cause: error });
    }
    yield { value, where: `${source}:${lineNumber}` };
  }
}

/** An RFC 3339 date-time (section 5.6), whose offset is required. */
const RFC_3339 = /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;

/**
 * Whether the date and hour of an RFC 3339 string exist: JavaScript takes February 30 as March 2
 * and hour 24 as the next day's 0.
 */
function aDay(text: string): boolean {
  const [year, month, day, hour] = [
    text.slice(0, 4),
    text.slice(5, 7),
    text.slice(8, 10),
    text.slice(11, 13),
  ].map(Number) as [number, number, number, number];
  const date = new Date(Date.UTC(year, month - 1, day));
  return date.getUTCMonth() === month - 1 && date.getUTCDate() === day && hour <= 23;
}

/** The types of a view's join keys and features, by name, for {@link rowOfJson}. */
export interface RowTypes {
  readonly keys: ReadonlyMap<string, ValueType>;
  readonly features: ReadonlyMap<string, ValueType>;
}

/**
 * A record of the bulk loader's input (`{"entity_key": {...}, "values": {...}, "event_time": ...}`,
 * bare values typed by the view) as the row WriteFeatures would take. What JSON cannot say as the
 * view's type throws, naming the line and the field: a key or value of another type (never turned
 * into a string that would pass as one), a null key, an event time that is not a time. A null
 * value is a null; an unknown name is left for the row's validation to name.
 */
export function rowOfJson({ value, where }: JsonLine, types: RowTypes): FeatureRow {
  const fail = (message: string): never => {
    throw new Error(`${where}: ${message}`);
  };
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return fail('a record must be a JSON object');
  }
  const json = value as Record<string, unknown>;
  const eventTime = json.event_time;
  let time: Date | undefined;
  if (eventTime !== undefined) {
    if (typeof eventTime !== 'string' && typeof eventTime !== 'number') {
      return fail('event_time must be an RFC 3339 string or milliseconds since the epoch');
    }
    // A string is RFC 3339, with its offset: JavaScript reads a date-time without one in the
    // machine's time zone, so one file would load at different times on different machines.
    if (typeof eventTime === 'string' && !RFC_3339.test(eventTime)) {
      return fail(
        `event_time ${JSON.stringify(eventTime)} is not an RFC 3339 time with an offset (such as 2024-05-01T00:00:00Z)`,
      );
    }
    time = new Date(eventTime);
    if (Number.isNaN(time.getTime()) || (typeof eventTime === 'string' && !aDay(eventTime)))
      return fail(`event_time ${JSON.stringify(eventTime)} is not a time`);
  }
  return {
    entityKey: typedValues(json.entity_key, 'entity_key', types.keys, false, fail),
    values: typedValues(json.values, 'values', types.features, true, fail),
    eventTime: time,
  };
}

function typedValues(
  record: unknown,
  field: string,
  types: ReadonlyMap<string, ValueType>,
  nullable: boolean,
  fail: (message: string) => never,
): Record<string, FeatureValue> {
  // Without a prototype, so that a key `__proto__` stays a key (and is refused as unknown).
  const out = Object.create(null) as Record<string, FeatureValue>;
  if (record === undefined) return out;
  if (typeof record !== 'object' || record === null || Array.isArray(record)) {
    return fail(`${field} must be a JSON object`);
  }
  for (const [name, raw] of Object.entries(record as Record<string, unknown>)) {
    const type = types.get(name);
    if (type === undefined) {
      // Not the view's: the row's validation names it.
      out[name] = { kind: { $case: 'stringValue', value: JSON.stringify(raw) } };
      continue;
    }
    if (raw === null) {
      if (!nullable) fail(`${field}.${name} must not be null`);
      out[name] = { kind: undefined };
      continue;
    }
    const elements =
      type === ValueType.FloatVector ? 'number' : type === ValueType.StringList ? 'string' : '';
    const message =
      elements !== '' && !(Array.isArray(raw) && raw.every((x) => typeof x === elements))
        ? undefined
        : messageOfStoredValue(type, raw as StoredValue);
    if (message === undefined) {
      fail(`${field}.${name} must be a ${valueTypeName(type)} value, not ${JSON.stringify(raw)}`);
    }
    out[name] = message;
  }
  return out;
}

/** Stores every row; throws InvalidArgumentError (with the row numbers) on the first bad batch. */
export async function bulkLoad(
  target: BulkLoadTarget,
  source: AsyncIterable<FeatureRow> | Iterable<FeatureRow>,
  onProgress: (progress: BulkLoadProgress) => void,
): Promise<BulkLoadProgress> {
  if (target.view.source?.kind !== 'push') {
    throw new InvalidArgumentError(`feature view ${target.view.name} is not push-sourced`);
  }
  const batchSize = target.batchSize ?? 1_000;
  let progress: BulkLoadProgress = { rowsRead: 0, rowsWritten: 0, rowsSkippedOlder: 0 };
  let batch: FeatureRow[] = [];
  const flush = async (): Promise<void> => {
    if (batch.length === 0) return;
    const now = Date.now();
    const prepared = prepareRows(batch, target.keyColumns, target.view.features, now);
    if (prepared.violations.length > 0) {
      const offset = progress.rowsRead - batch.length;
      throw new InvalidArgumentError(
        `invalid rows in the batch starting at row ${offset}`,
        prepared.violations.map((v) => ({
          ...v,
          field: v.field.replace(/^rows\[(\d+)\]/, (_, i: string) => `rows[${offset + Number(i)}]`),
        })),
      );
    }
    if ((await target.storedRegistration()) !== target.createTime.getTime()) {
      throw new AbortedError(
        `feature view ${target.view.name} was deleted or applied again during the load; ${progress.rowsWritten} rows written before`,
        { reason: 'FEATURE_VIEW_CHANGED' },
      );
    }
    const stored = await storeRows(
      target.rows,
      'bulk-load',
      { definition: target.view, createTime: target.createTime },
      prepared.rows,
    );
    progress = {
      rowsRead: progress.rowsRead,
      rowsWritten: progress.rowsWritten + stored.length,
      rowsSkippedOlder: progress.rowsSkippedOlder + batch.length - stored.length,
    };
    batch = [];
    onProgress(progress);
  };
  for await (const row of source) {
    batch.push(row);
    progress = { ...progress, rowsRead: progress.rowsRead + 1 };
    if (batch.length >= batchSize) await flush();
  }
  await flush();
  return progress;
}
