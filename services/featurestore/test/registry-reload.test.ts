/**
 * The registry's periodic reload never takes a replica back to an earlier definition: a snapshot
 * read while this replica changed a view, or overtaken by a later reload, is not applied.
 */
import { rmSync } from 'node:fs';
import { createInProcessBus } from '../../platform/src/events/in-process-bus';
import { createLogger } from '../../platform/src/logging';
import type { DocumentStore } from '../../platform/src/storage/collection';
import { openStore } from '../../platform/src/storage/open-store';
import { FeatureRegistry } from '../src/feature-registry';
import { openRegistryRepository, type RegistryRepository } from '../src/store/registry-repository';
import { temporaryDataDir } from './support/feature-store-harness';
import { userEntity, userStatsView } from './support/fixtures';

/** The repository with the next `loadAll` after `hold()` held until `release()`. */
function holdingLoads(repository: RegistryRepository): {
  repository: RegistryRepository;
  hold: () => { release: () => void };
} {
  let gate: Promise<void> | undefined;
  return {
    repository: {
      ...repository,
      loadAll: async () => {
        const held = gate;
        gate = undefined;
        const snapshot = await repository.loadAll();
        if (held) await held;
        return snapshot;
      },
    },
    hold: () => {
      let release = (): void => undefined;
      gate = new Promise((resolve) => {
        release = () => {
          resolve();
        };
      });
      return { release };
    },
  };
}

describe('the feature registry reload', () => {
  let dataDir: string;
  let store: DocumentStore;

  beforeEach(async () => {
    dataDir = temporaryDataDir();
    store = await openStore({ service: 'featurestore', dataDir });
  });

  afterEach(async () => {
    await store.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  const ttl = (hours: number) => ({ seconds: hours * 3600, nanos: 0 });

  it('does not apply a snapshot read before a change this replica made meanwhile', async () => {
    const { repository, hold } = holdingLoads(await openRegistryRepository(store));
    const bus = createInProcessBus();
    const registry = new FeatureRegistry(
      repository,
      bus,
      createLogger({ service: 'featurestore', level: 'silent' }),
      'replica-a',
    );
    try {
      await registry.reload();
      await registry.applyEntity(userEntity);
      await registry.applyFeatureView(userStatsView({ ttl: ttl(1) }), false);

      const held = hold();
      const reloading = registry.reload(); // reads the one-hour view, then waits
      await new Promise((resolve) => setTimeout(resolve, 50));
      await registry.applyFeatureView(userStatsView({ ttl: ttl(2) }), false);
      held.release();
      await reloading;
      expect(registry.view('user_stats')?.definition.ttlMs).toBe(2 * 3_600_000);

      // The next reload reads the change and applies it as usual.
      await registry.reload();
      expect(registry.view('user_stats')?.definition.ttlMs).toBe(2 * 3_600_000);
    } finally {
      await bus.close();
    }
  });

  it('does not apply a snapshot overtaken by a later reload', async () => {
    const { repository, hold } = holdingLoads(await openRegistryRepository(store));
    const bus = createInProcessBus();
    const logger = createLogger({ service: 'featurestore', level: 'silent' });
    const registry = new FeatureRegistry(repository, bus, logger, 'replica-a');
    // Another replica's registry, on the same storage, makes the change.
    const other = new FeatureRegistry(await openRegistryRepository(store), bus, logger, 'b');
    try {
      await other.reload();
      await other.applyEntity(userEntity);
      await other.applyFeatureView(userStatsView({ ttl: ttl(1) }), false);
      await registry.reload();

      const held = hold();
      const slow = registry.reload(); // reads the one-hour view, then waits
      await new Promise((resolve) => setTimeout(resolve, 50));
      await other.applyFeatureView(userStatsView({ ttl: ttl(3) }), false);
      await registry.reload(); // started later, finishes first
      expect(registry.view('user_stats')?.definition.ttlMs).toBe(3 * 3_600_000);
      held.release();
      await slow;
      expect(registry.view('user_stats')?.definition.ttlMs).toBe(3 * 3_600_000);
    } finally {
      await bus.close();
    }
  });
});
