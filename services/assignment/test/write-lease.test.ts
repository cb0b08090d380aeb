/**
 * The configuration-write lease that makes admin writes one at a time across replicas: one
 * holder at a time, released or taken over once its holder's time is up, ABORTED after waiting.
 */
import { rmSync } from 'node:fs';
import { AbortedError } from '../../platform/src/errors';
import type { DocumentStore } from '../../platform/src/storage/collection';
import { openStore } from '../../platform/src/storage/open-store';
import { ConfigurationStore } from '../src/store/configuration-store';
import { temporaryDataDir } from './support/harness';

describe('the configuration-write lease', () => {
  let dataDir: string;
  let store: DocumentStore;
  let configuration: ConfigurationStore;

  beforeEach(async () => {
    dataDir = temporaryDataDir();
    store = await openStore({ service: 'assignment', dataDir });
    configuration = await ConfigurationStore.open(store);
  });

  afterEach(async () => {
    await store.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('has one holder at a time: the next takes it once it is released', async () => {
    const release = await configuration.acquireWriteLease('a', { ttlMs: 60_000, waitMs: 0 });
    const waiting = configuration.acquireWriteLease('b', { ttlMs: 60_000, waitMs: 5_000 });
    let taken = false;
    void waiting.then(() => (taken = true));
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(taken).toBe(false);
    await release();
    const releaseB = await waiting;
    await releaseB();
  });

  it('answers ABORTED, naming the holder, when the lease stays held past the wait', async () => {
    await configuration.acquireWriteLease('replica-a', { ttlMs: 60_000, waitMs: 0 });
    const refused = configuration.acquireWriteLease('replica-b', { ttlMs: 60_000, waitMs: 100 });
    await expect(refused).rejects.toThrow(AbortedError);
    await expect(refused).rejects.toThrow(/replica-a/);
  });

  it('is taken over once a holder that died is past its time', async () => {
    // What a replica that died holding the lease leaves behind: a lease nobody renews.
    const leases = await store.collection<{
      id: string;
      holder: string;
      token: string;
      expiresAt: number;
    }>({
      name: 'leases',
    });
    await leases.insert({
      id: 'configuration-writes',
      holder: 'stalled',
      token: 'dead',
      expiresAt: Date.now() + 50,
    });
    const release = await configuration.acquireWriteLease('next', { ttlMs: 60_000, waitMs: 2_000 });
    await release();
  });

  it('is kept while its holder writes, past its time, and freed only by its own release', async () => {
    const release = await configuration.acquireWriteLease('slow', { ttlMs: 150, waitMs: 0 });
    // Three times its time: renewed meanwhile, so no other replica takes it over.
    await new Promise((resolve) => setTimeout(resolve, 450));
    await expect(
      configuration.acquireWriteLease('other', { ttlMs: 60_000, waitMs: 0 }),
    ).rejects.toThrow(AbortedError);
    // Taken over meanwhile (its renewal failed, say): its release leaves the new holder's.
    const leases = await store.collection<{
      id: string;
      holder: string;
      token: string;
      expiresAt: number;
    }>({
      name: 'leases',
    });
    const held = await leases.get('configuration-writes');
    await leases.replace(
      { id: 'configuration-writes', holder: 'new', token: 'other', expiresAt: Date.now() + 60_000 },
      held?.version ?? 0,
    );
    await release();
    await expect(
      configuration.acquireWriteLease('third', { ttlMs: 60_000, waitMs: 0 }),
    ).rejects.toThrow(/new/);
  });
});
