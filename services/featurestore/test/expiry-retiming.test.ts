/**
 * The re-timing's marker bookkeeping against a replica whose registry is a reload behind storage:
 * what it may replace is decided by what storage holds, not by its own copy.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger } from '../../platform/src/logging';
import { openStore } from '../../platform/src/storage/open-store';
import type { DocumentStore } from '../../platform/src/storage/collection';
import { ExpiryRetiming, retimingChange, type RetimingMarker } from '../src/expiry-retiming';
import type { FeatureRegistry } from '../src/feature-registry';
import type { FeatureRowRepository } from '../src/store/feature-rows';

const HOUR = 3_600_000;

describe('ExpiryRetiming markers', () => {
  let dataDir: string;
  let store: DocumentStore;

  beforeEach(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'tandem-retiming-'));
    store = await openStore({ service: 'featurestore', dataDir, mongodbUri: undefined });
  });

  afterEach(async () => {
    await store.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it("keeps another registration's marker when storage says that registration is the current one", async () => {
    // This replica still holds the view as registered at `old`; storage has it re-created at
    // `current` (by another replica), whose own TTL change stored its marker.
    const old = Date.now() - HOUR;
    const current = Date.now();
    const registry = {
      view: () => ({
        definition: { ttlMs: 2 * HOUR, source: { kind: 'push' } },
        createTime: new Date(old),
        updateTime: new Date(old),
        version: 5,
      }),
      storedRegistration: () => Promise.resolve(current),
    } as unknown as FeatureRegistry;
    const restamped: number[] = [];
    const rows = {
      restampExpiry: (_view: string, _registration: number, ttlMs: number) => {
        restamped.push(ttlMs);
        return Promise.resolve(0);
      },
    } as unknown as FeatureRowRepository;
    const logger = createLogger({ service: 'test', level: 'silent' });
    const retiming = await ExpiryRetiming.open(store, rows, registry, logger, 0);
    const markers = await store.collection<RetimingMarker>({ name: 'expiry_retiming' });
    const theirs: RetimingMarker = {
      id: 'user_stats',
      ttlMs: 3 * HOUR,
      registration: current,
      change: retimingChange(current, 2),
    };
    await markers.insert(theirs);

    await retiming.start('user_stats', 2 * HOUR, old, 5);
    await retiming.stop();

    expect((await markers.get('user_stats'))?.doc).toEqual(theirs);
    expect(restamped).toEqual([]);
  });
});
