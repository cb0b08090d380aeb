/**
 * The configuration repository: layers, experiments, holdouts and bandit allocations, plus the
 * global configuration version every change bumps. Writes go to storage first and bump the
 * version after, so a replica that reads version v (then scans) sees every write up to v.
 * Optimistic concurrency is the storage port's: the etag is the stored version, and a stale one
 * fails the write with ABORTED.
 */
import { randomBytes } from 'node:crypto';
import { AlreadyExistsError } from '../../../platform/src/errors';
import type { Collection, DocumentStore } from '../../../platform/src/storage/collection';
import type {
  AllocationDocument,
  ExperimentDocument,
  HoldoutDocument,
  LayerDocument,
  Stored,
} from './documents';

interface CounterDocument {
  readonly id: string;
  readonly value: number;
}

interface SecretDocument {
  readonly id: string;
  readonly secret: string;
}

const VERSION_ID = 'configuration';
const TOKEN_SECRET_ID = 'resolve-token';

/** Everything configured, read at one configuration version. */
export interface ConfigurationRecords {
  readonly version: number;
  readonly layers: readonly Stored<LayerDocument>[];
  readonly experiments: readonly Stored<ExperimentDocument>[];
  readonly holdouts: readonly Stored<HoldoutDocument>[];
  readonly allocations: readonly Stored<AllocationDocument>[];
}

export class ConfigurationStore {
  private constructor(
    readonly layers: Collection<LayerDocument>,
    readonly experiments: Collection<ExperimentDocument>,
    readonly holdouts: Collection<HoldoutDocument>,
    readonly allocations: Collection<AllocationDocument>,
    private readonly counters: Collection<CounterDocument>,
    private readonly secrets: Collection<SecretDocument>,
  ) {}

  /** Opens (and creates) the collections. Throws `UnavailableError` when storage is down. */
  static async open(store: DocumentStore): Promise<ConfigurationStore> {
    return new ConfigurationStore(
      await store.collection<LayerDocument>({ name: 'layers' }),
      await store.collection<ExperimentDocument>({ name: 'experiments' }),
      await store.collection<HoldoutDocument>({ name: 'holdouts' }),
      await store.collection<AllocationDocument>({ name: 'allocations' }),
      await store.collection<CounterDocument>({ name: 'counters' }),
      await store.collection<SecretDocument>({ name: 'secrets' }),
    );
  }

  /** The stored configuration version; 0 before the first change. */
  async version(): Promise<number> {
    return (await this.counters.get(VERSION_ID))?.doc.value ?? 0;
  }

  /** Bumps the configuration version after a change and returns the new one. */
  async bumpVersion(): Promise<number> {
    return (await this.counters.increment(VERSION_ID, { value: 1 })).doc.value;
  }

  /** Reads everything: the version first, so the data read is at least that recent. */
  async readAll(): Promise<ConfigurationRecords> {
    const version = await this.version();
    const [layers, experiments, holdouts, allocations] = await Promise.all([
      collect(this.layers),
      collect(this.experiments),
      collect(this.holdouts),
      collect(this.allocations),
    ]);
    return { version, layers, experiments, holdouts, allocations };
  }

  /**
   * The resolve-token key kept in storage: created once by whichever replica asks first, so every
   * replica sharing the storage signs and verifies with the same key.
   */
  async tokenSecret(): Promise<string> {
    const existing = await this.secrets.get(TOKEN_SECRET_ID);
    if (existing) return existing.doc.secret;
    try {
      const created = await this.secrets.insert({
        id: TOKEN_SECRET_ID,
        secret: randomBytes(32).toString('base64url'),
      });
      return created.doc.secret;
    } catch (error) {
      if (!(error instanceof AlreadyExistsError)) throw error;
      const raced = await this.secrets.get(TOKEN_SECRET_ID);
      if (!raced) throw error;
      return raced.doc.secret;
    }
  }
}

async function collect<T extends { readonly id: string }>(
  collection: Collection<T>,
): Promise<Stored<T>[]> {
  const all: Stored<T>[] = [];
  for await (const item of collection.scan()) all.push(item);
  return all;
}
