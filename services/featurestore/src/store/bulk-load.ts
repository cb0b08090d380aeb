/**
 * Loads many records into a push-sourced view in bounded memory: rows are read from an async
 * iterable, checked like WriteFeatures rows, and stored in batches with the same late-writes-lose
 * rule and change-log entries, so running replicas pick them up within their sync interval.
 */
import { InvalidArgumentError } from '../../../platform/src/errors';
import type { FeatureRow } from '../../../../gen/ts/tandem/featurestore/v1/featurestore_service';
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
  readonly keyColumns: readonly KeyColumn[];
  readonly rows: FeatureRowRepository;
  /** Rows per storage round trip. @default 1000 */
  readonly batchSize?: number;
}

/**
 * The JSON value of each non-blank line of newline-delimited JSON, in order. A line that is not
 * JSON throws an error that names `source` and the line number (from 1), which JSON.parse's own
 * message lacks; the parse error is its cause.
 */
export async function* parseJsonLines(
  lines: AsyncIterable<string>,
  source: string,
): AsyncIterable<unknown> {
  let lineNumber = 0;
  for await (const line of lines) {
    lineNumber++;
    if (line.trim() === '') continue;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      throw new Error(`${source}:${lineNumber}: ${reason}`, { cause: error });
    }
    yield value;
  }
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
    const stored = await storeRows(target.rows, 'bulk-load', target.view, prepared.rows, now);
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
