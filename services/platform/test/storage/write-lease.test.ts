/**
 * Writes one at a time across replicas: what a write that may have stored a change without
 * announcing it tells the next holder of the lease, on whichever replica.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AbortedError, InvalidArgumentError, UnavailableError } from '../../src/errors';
import type { DocumentStore } from '../../src/storage/collection';
import { openEmbeddedStore } from '../../src/storage/embedded-store';
import { SerialWrites, WriteLease } from '../../src/storage/write-lease';
import { overridingCollections } from '../support/wrapped-store';

describe('SerialWrites across replicas', () => {
  let dir: string;
  let store: DocumentStore;
  let lease: WriteLease;

  beforeEach(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tandem-write-lease-'));
    store = await openEmbeddedStore({ path: dir });
    lease = await WriteLease.open(store, 'writes', { what: 'the state', reason: 'BUSY' });
  });

  afterEach(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** A replica's writes, recording how each of its refreshes was asked to bring its state up. */
  const replica = (holder: string, unsettled: (failure: unknown) => boolean) => {
    const refreshes: boolean[] = [];
    const writes = new SerialWrites({
      lease: (waitMs = 1_000) => lease.acquire(holder, { ttlMs: 60_000, waitMs }),
      refresh: (everything) => {
        refreshes.push(everything);
        return Promise.resolve();
      },
      unsettled,
      abandoned: () => lease.abandoned(),
    });
    return { writes, refreshes };
  };
  // What a service says of a write: a failure that is not a refusal may have stored.
  const storageFailures = (failure: unknown) =>
    failure !== undefined && !(failure instanceof InvalidArgumentError);

  it('takes a lease its holder released while acquire was finding out who held it', async () => {
    await lease.acquire('holder', { ttlMs: 60_000, waitMs: 0 });
    let released = false;
    // The holder lets go just after the second replica's insert found the lease taken.
    const racing = overridingCollections(store, (collection) => ({
      get: async (id: string) => {
        if (!released) {
          released = true;
          await collection.delete(id);
        }
        return collection.get(id);
      },
    }));
    const second = await WriteLease.open(racing, 'writes', { what: 'the state', reason: 'BUSY' });
    await expect(second.acquire('second', { ttlMs: 60_000, waitMs: 0 })).resolves.toBeDefined();
    expect(released).toBe(true);
  });

  it('gives up at its deadline when reads keep missing a lease the insert finds held', async () => {
    await lease.acquire('holder', { ttlMs: 60_000, waitMs: 0 });
    // A read that lags behind the writes (a MongoDB secondary, say).
    const lagging = overridingCollections(store, () => ({
      get: () => Promise.resolve(undefined),
    }));
    const second = await WriteLease.open(lagging, 'writes', { what: 'the state', reason: 'BUSY' });
    await expect(second.acquire('second', { ttlMs: 60_000, waitMs: 100 })).rejects.toBeInstanceOf(
      AbortedError,
    );
  });

  it('has the next write on another replica reload everything after one that failed storing', async () => {
    const first = replica('first', storageFailures);
    const second = replica('second', storageFailures);
    await expect(
      first.writes.exclusively(() => Promise.reject(new UnavailableError('storage timed out'))),
    ).rejects.toThrow(UnavailableError);
    await second.writes.exclusively(() => Promise.resolve());
    await second.writes.exclusively(() => Promise.resolve());
    // Told once: the write that reloaded settled the lease.
    expect(second.refreshes).toEqual([true, false]);
  });

  it('has the next write reload as usual after one that succeeded or was refused', async () => {
    const first = replica('first', storageFailures);
    const second = replica('second', storageFailures);
    await first.writes.exclusively(() => Promise.resolve());
    await expect(
      first.writes.exclusively(() => Promise.reject(new InvalidArgumentError('refused', []))),
    ).rejects.toThrow(InvalidArgumentError);
    await second.writes.exclusively(() => Promise.resolve());
    expect([...first.refreshes, ...second.refreshes]).toEqual([false, false, false]);
  });

  it('passes it on when the write that was told to reload everything could not', async () => {
    const first = replica('first', storageFailures);
    await expect(
      first.writes.exclusively(() => Promise.reject(new UnavailableError('storage timed out'))),
    ).rejects.toThrow(UnavailableError);
    // Storage still down for the refresh of the next holder: it reloaded nothing.
    const failing = new SerialWrites({
      lease: (waitMs = 1_000) => lease.acquire('failing', { ttlMs: 60_000, waitMs }),
      refresh: () => Promise.reject(new UnavailableError('storage is unreachable')),
    });
    await expect(failing.exclusively(() => Promise.resolve())).rejects.toThrow(UnavailableError);
    const third = replica('third', storageFailures);
    await third.writes.exclusively(() => Promise.resolve());
    expect(third.refreshes).toEqual([true]);
  });

  it('lets a periodic check take over a lease left unsettled, once, and nothing else', async () => {
    const first = replica('first', storageFailures);
    const second = replica('second', storageFailures);
    // Free, then held by a write under way: nothing to take over.
    expect(await second.writes.takeOverAbandoned()).toBe(false);
    let release = (): void => undefined;
    const holding = first.writes.exclusively(
      () => new Promise<void>((resolve) => (release = resolve)),
    );
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(await lease.abandoned()).toBe(false);
    expect(await second.writes.takeOverAbandoned()).toBe(false);
    release();
    await holding;
    expect(second.refreshes).toEqual([]);
    // Released unsettled: taken over once, with everything reloaded, and settled by that.
    await expect(
      first.writes.exclusively(() => Promise.reject(new UnavailableError('storage timed out'))),
    ).rejects.toThrow(UnavailableError);
    expect(await lease.abandoned()).toBe(true);
    expect(await second.writes.takeOverAbandoned()).toBe(true);
    expect(await lease.abandoned()).toBe(false);
    expect(await first.writes.takeOverAbandoned()).toBe(false);
    expect(second.refreshes).toEqual([true]);
    expect(first.refreshes).toEqual([false, false]);
  });
});
