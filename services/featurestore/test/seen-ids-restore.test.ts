/**
 * Restoring the de-duplication seen-set keeps it within its cap: the checkpoint reader returns the
 * newest ids only, the aggregator keeps no more than its own cap, and the ids left out are counted
 * as evictions and logged.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger } from '../../platform/src/logging';
import type { DocumentStore } from '../../platform/src/storage/collection';
import { openEmbeddedStore } from '../../platform/src/storage/embedded-store';
import { WindowAggregator } from '../src/domain/window-aggregation';
import { AggregationCheckpoints } from '../src/store/aggregation-checkpoints';
import { playsCountOptions } from './support/fixtures';

const now = Date.now();
const until = now + 600_000;

const play = (eventId: string) => ({ eventId, key: 'i1', eventTime: now, values: [undefined] });

describe('restoring the seen-set of an aggregation', () => {
  let store: DocumentStore;

  beforeEach(async () => {
    store = await openEmbeddedStore({ path: mkdtempSync(join(tmpdir(), 'tandem-seen-ids-')) });
  });

  afterEach(async () => {
    await store.close();
  });

  it('reads back only the newest ids up to the cap, counting and logging the others', async () => {
    const aggregator = new WindowAggregator(playsCountOptions(1_000));
    const writer = (await AggregationCheckpoints.open(store)).forOwner('item_plays', 'r1');
    // Three checkpoints of two ids each: e1 … e6, oldest first.
    for (let i = 1; i <= 6; i += 2) {
      aggregator.ingest(play(`e${i}`), now);
      aggregator.ingest(play(`e${i + 1}`), now);
      await writer.write(
        aggregator.checkpoint(),
        [
          [`e${i}`, until],
          [`e${i + 1}`, until],
        ],
        {},
      );
    }

    const lines: { msg: string; forgotten?: number }[] = [];
    const logger = createLogger({
      service: 'featurestore',
      level: 'info',
      destination: { write: (line: string) => lines.push(JSON.parse(line) as (typeof lines)[0]) },
    });
    const restored = await (
      await AggregationCheckpoints.open(store)
    )
      .forOwner('item_plays', 'r1', { maxSeenEventIds: 2, logger })
      .restore();

    expect(restored?.checkpoint.seenEventIds).toEqual([
      ['e5', until],
      ['e6', until],
    ]);
    expect(restored?.checkpoint.counters.dedupeEvictions).toBe(4);
    expect(lines).toEqual([expect.objectContaining({ forgotten: 4 })]);
    const again = WindowAggregator.restore(playsCountOptions(2), restored!.checkpoint);
    expect(again.ingest(play('e6'), now)).toBe('duplicate');
    expect(again.ingest(play('e1'), now)).toBe('accepted');
  });

  it('keeps the aggregator within its cap when a checkpoint holds more ids', () => {
    const large = new WindowAggregator(playsCountOptions(1_000));
    for (let i = 1; i <= 5; i++) large.ingest(play(`e${i}`), now);

    const restored = WindowAggregator.restore(playsCountOptions(3), large.checkpoint());

    expect(restored.memory().trackedEventIds).toBe(3);
    expect(restored.status().dedupeEvictions).toBe(2);
    expect(restored.ingest(play('e3'), now)).toBe('duplicate');
    expect(restored.ingest(play('e2'), now)).toBe('accepted');
  });
});
