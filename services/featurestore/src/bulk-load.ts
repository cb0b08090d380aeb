/**
 * Command-line bulk loader: `node dist/services/featurestore/src/bulk-load.js <view> [file.ndjson]`
 * (stdin when no file). Each line is one record as JSON with bare values typed by the view's
 * definition: `{"entity_key": {"user_id": "u1"}, "values": {"ctr": 0.5}, "event_time": "2024-05-01T00:00:00Z"}`.
 * Uses the same storage settings as the service (MONGODB_URI or TANDEM_DATA_DIR); memory stays
 * bounded by the batch size whatever the file's length. Progress goes to stderr.
 */
import { createReadStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { openStore } from '../../platform/src/storage/open-store';
import type { FeatureRow } from '../../../gen/ts/tandem/featurestore/v1/featurestore_service';
import { dateOf } from './contract-mapping';
import { RowsMaybeStoredError, RowsNotAnnouncedError } from './online-views';
import { readFeatureStoreConfig } from './config';
import { InvalidArgumentError } from '../../platform/src/errors';
import { bulkLoad, parseJsonLines, rowOfJson, type BulkLoadProgress } from './store/bulk-load';
import { FeatureRowRepository } from './store/feature-rows';
import { openRegistryRepository } from './store/registry-repository';

async function main(): Promise<void> {
  const [viewName, file] = process.argv.slice(2);
  if (viewName === undefined) {
    console.error('usage: bulk-load <feature view> [file.ndjson]   (reads stdin without a file)');
    process.exit(2);
  }
  // An entry point like main.ts: the environment is read here and handed to config.ts.
  // eslint-disable-next-line no-restricted-properties
  const config = readFeatureStoreConfig(process.env);
  const store = await openStore({
    service: 'featurestore',
    mongodbUri: config.platform.mongodbUri,
    dataDir: config.platform.dataDir,
  });
  try {
    const registry = await openRegistryRepository(store);
    const stored = (await registry.featureViews.get(viewName))?.doc;
    if (stored === undefined) throw new Error(`no feature view named ${viewName}`);
    const view = stored.definition;
    const keyColumns = [];
    for (const name of view.entities) {
      const entity = (await registry.entities.get(name))?.doc.definition;
      if (entity === undefined) throw new Error(`no entity named ${name}`);
      keyColumns.push({ joinKey: entity.joinKey, valueType: entity.valueType });
    }
    const types = {
      keys: new Map(keyColumns.map((k) => [k.joinKey, k.valueType])),
      features: new Map(view.features.map((f) => [f.name, f.valueType])),
    };
    // Opened before the input: lines read while an await is pending would otherwise be lost.
    const rowRepository = await FeatureRowRepository.open(store, config.changeLogRetentionMs);
    const lines = createInterface({
      input: file ? createReadStream(file) : process.stdin,
      crlfDelay: Infinity,
    });
    async function* rows(): AsyncIterable<FeatureRow> {
      for await (const line of parseJsonLines(lines, file ?? 'stdin')) {
        yield rowOfJson(line, types);
      }
    }
    const started = Date.now();
    let written = 0;
    const progress = (p: BulkLoadProgress): void => {
      written = p.rowsWritten;
      if (p.rowsRead % 100_000 < 1_000) {
        const seconds = (Date.now() - started) / 1000;
        console.error(
          `${p.rowsRead} rows read, ${p.rowsWritten} written, ${p.rowsSkippedOlder} older skipped (${Math.round(p.rowsRead / seconds)} rows/s, heap ${Math.round(process.memoryUsage().heapUsed / 1e6)} MB)`,
        );
      }
    };
    let done: BulkLoadProgress;
    try {
      done = await bulkLoad(
        {
          view,
          createTime: dateOf(stored.createTime),
          keyColumns,
          rows: rowRepository,
          storedRegistration: () => registry.viewRegistration(viewName),
        },
        rows(),
        progress,
      );
    } catch (error) {
      // The batches stored before the failure stay stored: say how many rows they held.
      if (error instanceof RowsNotAnnouncedError) {
        console.error(
          `stopped with ${written + error.rows.length} rows written; the last ${error.rows.length} are not announced to running replicas (they serve them after loading the view again, or once the load is run again):`,
        );
      } else if (error instanceof RowsMaybeStoredError) {
        // Its message says what failed; the cause says why.
        console.error(
          `stopped with ${written} rows written; storage may have taken some of the last ${error.attempted.length} before failing (running replicas serve those after loading the view again, or once the load is run again):`,
        );
        throw error.cause;
      } else {
        console.error(`stopped with ${written} rows written:`);
      }
      throw error;
    }
    console.error(
      `done: ${done.rowsRead} rows read, ${done.rowsWritten} written, ${done.rowsSkippedOlder} older skipped in ${((Date.now() - started) / 1000).toFixed(1)} s`,
    );
  } finally {
    await store.close();
  }
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? error.message : error);
  if (error instanceof InvalidArgumentError) {
    for (const v of error.violations.slice(0, 20)) console.error(`  ${v.field}: ${v.description}`);
    if (error.violations.length > 20) console.error(`  … ${error.violations.length - 20} more`);
  }
  process.exit(1);
});
