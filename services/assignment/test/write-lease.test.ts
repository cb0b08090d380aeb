/**
 * The configuration-write lease that makes admin writes one at a time across replicas: one
 * holder at a time, released or taken over once its holder's time is up, ABORTED after waiting;
 * a holder that takes it over is told so (its last holder may have left a change unannounced).
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

  /** The lease documents as another replica's process reads and writes them. */
  const leaseDocuments = () =>
    store.collection<{ id: string; holder: string; token: string; expiresAt: number }>({
      name: 'leases',
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
    const leases = await leaseDocuments();
    await leases.insert({
      id: 'configuration-writes',
      holder: 'stalled',
      token: 'dead',
      expiresAt: Date.now() + 50,
    });
    const release = await configuration.acquireWriteLease('next', { ttlMs: 60_000, waitMs: 2_000 });
    // What the dead holder stored may not have been announced: the next holder is told.
    expect(release.takenOver).toBe(true);
    await release();
    const after = await configuration.acquireWriteLease('after', { ttlMs: 60_000, waitMs: 0 });
    expect(after.takenOver).toBe(false);
    await after();
  });

  it('released unsettled, is taken over at once, by one of the replicas waiting for it', async () => {
    const release = await configuration.acquireWriteLease('failed', { ttlMs: 60_000, waitMs: 0 });
    await release({ unsettled: true });
    const taken = await Promise.allSettled(
      ['b', 'c'].map((holder) =>
        configuration.acquireWriteLease(holder, { ttlMs: 60_000, waitMs: 200 }),
      ),
    );
    const held = taken.flatMap((t) => (t.status === 'fulfilled' ? [t.value] : []));
    expect(held.map((lease) => lease.takenOver)).toEqual([true]);
    await held[0]?.();
  });

  it('is kept while its holder writes, past its time, and freed only by its own release', async () => {
    const release = await configuration.acquireWriteLease('slow', { ttlMs: 300, waitMs: 0 });
    const leases = await leaseDocuments();
    const taken = (await leases.get('configuration-writes'))?.doc.expiresAt ?? 0;
    // Renewed (every third of its time) while held: its expiry moves on, past the first one.
    const deadline = Date.now() + 5_000;
    let expiresAt = taken;
    while (expiresAt <= taken + 300 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 20));
      expiresAt = (await leases.get('configuration-writes'))?.doc.expiresAt ?? 0;
    }
    expect(expiresAt).toBeGreaterThan(taken + 300);
    // Past its first time, so held only because it was renewed: no one else takes it.
    await expect(
      configuration.acquireWriteLease('other', { ttlMs: 60_000, waitMs: 0 }),
    ).rejects.toThrow(AbortedError);
    // Taken over meanwhile (its renewal failed, say): its release leaves the new holder's.
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
