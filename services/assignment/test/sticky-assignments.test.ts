/**
 * Sticky assignments past their TTL: storage removes expired documents only when its sweep runs,
 * and the replica's cache holds them too, so expiry is checked on every read.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AbortedError, AlreadyExistsError, UnavailableError } from '../../platform/src/errors';
import type { DocumentStore } from '../../platform/src/storage/collection';
import { openEmbeddedStore } from '../../platform/src/storage/embedded-store';
import { RELEASE_GRACE_MS, StickyAssignments } from '../src/store/sticky-assignments';

const HOUR = 3_600_000;
// Times ahead of the clock: the store hides documents whose expiry has passed by the real clock,
// so these stay stored and readable while the service's own `now` moves past their TTL.
const T0 = Date.now() + 24 * HOUR;

describe('sticky assignments', () => {
  let store: DocumentStore;

  beforeEach(async () => {
    // No sweep during the test: expired documents stay stored, as between two sweeps.
    store = await openEmbeddedStore({
      path: mkdtempSync(join(tmpdir(), 'tandem-sticky-')),
      sweepIntervalMs: 24 * HOUR,
    });
  });

  afterEach(async () => {
    await store.close();
  });

  const variant = (key: string) => ({ variantKey: key, allocationSequence: 1 });

  it('serves a stored variant until its TTL, from the cache and from storage', async () => {
    const writer = await StickyAssignments.open(store, 100);
    await writer.store('exp', 'user', 'u1', variant('treatment'), HOUR, T0);
    const reader = await StickyAssignments.open(store, 100);
    for (const sticky of [writer, reader]) {
      expect((await sticky.lookup('user', 'u1', ['exp'], T0 + HOUR - 1)).found).toEqual(
        new Map([['exp', variant('treatment')]]),
      );
      expect((await sticky.lookup('user', 'u1', ['exp'], T0 + HOUR)).found).toEqual(new Map());
    }
  });

  it('returns the variant in force: its own when first, the one stored before otherwise', async () => {
    const first = await StickyAssignments.open(store, 100);
    const second = await StickyAssignments.open(store, 100);
    expect(await first.store('exp', 'user', 'u1', variant('treatment'), HOUR, T0)).toEqual(
      variant('treatment'),
    );
    expect(await second.store('exp', 'user', 'u1', variant('control'), HOUR, T0 + 1)).toEqual(
      variant('treatment'),
    );
    // Expired by the service's clock though still stored: the new first exposure replaces it.
    expect(await second.store('exp', 'user', 'u1', variant('control'), HOUR, T0 + HOUR)).toEqual(
      variant('control'),
    );
    expect((await first.lookup('user', 'u1', ['exp'], T0 + HOUR + 1)).found).toEqual(
      new Map([['exp', variant('control')]]),
    );
  });

  it('answers ABORTED, to be retried, when the stored assignment keeps changing under it', async () => {
    const sticky = await StickyAssignments.open(store, 100);
    const collection = sticky['collection'];
    // Taken each time it inserts, and gone each time it reads: another writer and the expiry.
    const insert = jest
      .spyOn(collection, 'insert')
      .mockRejectedValue(new AlreadyExistsError('sticky_assignments "x" already exists'));
    jest.spyOn(collection, 'get').mockResolvedValue(undefined);
    const write = sticky.store('exp', 'user', 'u1', variant('treatment'), HOUR, T0);
    await expect(write).rejects.toBeInstanceOf(AbortedError);
    await expect(write).rejects.toMatchObject({ reason: 'STICKY_WRITE_CONFLICT' });
    expect(insert).toHaveBeenCalledTimes(3);
  });

  it('starts a new sticky period at the first exposure after the TTL', async () => {
    // Real times: the store itself treats a document past its expiry as gone.
    const sticky = await StickyAssignments.open(store, 100);
    const first = Date.now();
    await sticky.store('exp', 'user', 'u1', variant('treatment'), 300, first);
    await sticky.store('exp', 'user', 'u1', variant('control'), 300, first + 1);
    expect((await sticky.lookup('user', 'u1', ['exp'], first + 2)).found).toEqual(
      new Map([['exp', variant('treatment')]]),
    );

    await new Promise((resolve) => setTimeout(resolve, 400));
    const later = Date.now();
    await sticky.store('exp', 'user', 'u1', variant('control'), HOUR, later);
    const fresh = await StickyAssignments.open(store, 100);
    for (const reader of [sticky, fresh]) {
      expect((await reader.lookup('user', 'u1', ['exp'], later + 1)).found).toEqual(
        new Map([['exp', variant('control')]]),
      );
    }
  });

  it('still serves cached variants when storage fails, naming the experiments it could not read', async () => {
    const sticky = await StickyAssignments.open(store, 100);
    await sticky.store('cached', 'user', 'u1', variant('treatment'), HOUR, T0);
    await store.close(); // every read fails from here on
    const lookup = await sticky.lookup('user', 'u1', ['cached', 'missed'], T0 + 1);
    expect(lookup.found).toEqual(new Map([['cached', variant('treatment')]]));
    expect(lookup.unavailable).toEqual(['missed']);
    expect(lookup.error).toBeInstanceOf(Error);
    store = await openEmbeddedStore({ path: mkdtempSync(join(tmpdir(), 'tandem-sticky-')) });
  });

  it('answers a storage read that stalls as unavailable within its timeout, not when storage answers', async () => {
    const sticky = await StickyAssignments.open(store, 100, 50);
    await sticky.store('cached', 'user', 'u1', variant('treatment'), HOUR, T0);
    // A read that answers only after 5 s, as MongoDB does with no primary (server selection).
    const read = jest.spyOn(sticky['collection'], 'getMany').mockImplementationOnce(
      () =>
        new Promise((resolve) => {
          setTimeout(() => {
            resolve(new Map());
          }, 5_000).unref();
        }),
    );
    try {
      // Had it waited for the read, `missed` would be found absent, not unavailable.
      const lookup = await sticky.lookup('user', 'u1', ['cached', 'missed'], T0 + 1);
      expect(lookup.found).toEqual(new Map([['cached', variant('treatment')]]));
      expect(lookup.unavailable).toEqual(['missed']);
      expect(lookup.error).toBeInstanceOf(UnavailableError);
    } finally {
      read.mockRestore();
    }
  });

  it('waits for a slow storage read when the lookup is not bounded (Apply)', async () => {
    const writer = await StickyAssignments.open(store, 100);
    await writer.store('exp', 'user', 'u1', variant('treatment'), HOUR, T0);
    const sticky = await StickyAssignments.open(store, 100, 50);
    const collection = sticky['collection'];
    const getMany = collection.getMany.bind(collection);
    const read = jest.spyOn(collection, 'getMany').mockImplementationOnce(
      (ids) =>
        new Promise((resolve, reject) => {
          setTimeout(() => {
            getMany(ids).then(resolve, reject);
          }, 200);
        }),
    );
    try {
      const lookup = await sticky.lookup('user', 'u1', ['exp'], T0 + 1, { bounded: false });
      expect(lookup.found).toEqual(new Map([['exp', variant('treatment')]]));
      expect(lookup.unavailable).toEqual([]);
    } finally {
      read.mockRestore();
    }
  });

  it('does not let a lookup under way when this replica stored a variant cache it as absent', async () => {
    const sticky = await StickyAssignments.open(store, 100);
    const collection = sticky['collection'];
    const getMany = collection.getMany.bind(collection);
    let release = (): void => undefined;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const read = jest.spyOn(collection, 'getMany').mockImplementationOnce(async (ids) => {
      const found = await getMany(ids); // read before the store below: nothing yet
      await gate;
      return found;
    });
    try {
      // A Resolve's lookup is reading; meanwhile this replica's Apply stores the unit's variant.
      const lookup = sticky.lookup('user', 'u1', ['exp'], T0);
      await new Promise((resolve) => setTimeout(resolve, 20));
      await sticky.store('exp', 'user', 'u1', variant('treatment'), HOUR, T0);
      release();
      expect((await lookup).found.get('exp')).toEqual(variant('treatment'));
    } finally {
      read.mockRestore();
    }
    // The next Resolve on this replica, from the cache (storage is not asked again).
    const reads = jest.spyOn(collection, 'getMany');
    expect((await sticky.lookup('user', 'u1', ['exp'], T0 + 100)).found.get('exp')).toEqual(
      variant('treatment'),
    );
    expect(reads).not.toHaveBeenCalled();
  });

  it('keeps a release whose freeing failed for the next sweep, on any replica', async () => {
    const sticky = await StickyAssignments.open(store, 100);
    const now = Date.now();
    await sticky.store('gone', 'user', 'u1', variant('treatment'), HOUR, now);
    await sticky.store('kept', 'user', 'u1', variant('control'), HOUR, now);
    await sticky.release('gone', now);
    const forget = jest
      .spyOn(sticky, 'forget')
      .mockRejectedValueOnce(new AbortedError('storage timed out'));
    await expect(sticky.sweepReleased(now + RELEASE_GRACE_MS)).rejects.toThrow('storage timed out');
    forget.mockRestore();
    const other = await StickyAssignments.open(store, 100);
    expect(await other.sweepReleased(now + RELEASE_GRACE_MS - 1)).toBe(0);
    expect(await other.sweepReleased(now + RELEASE_GRACE_MS)).toBe(1);
    expect(await other.sweepReleased(now + RELEASE_GRACE_MS)).toBe(0);
    const found = await other.lookup('user', 'u1', ['gone', 'kept'], now);
    expect([...found.found.keys()]).toEqual(['kept']);
  });

  it("forgets a deleted experiment's assignments in storage and in its cache, and no other's", async () => {
    const sticky = await StickyAssignments.open(store, 100);
    const now = Date.now();
    for (const unit of ['u1', 'u2', 'u3']) {
      await sticky.store('gone', 'user', unit, variant('treatment'), HOUR, now);
    }
    await sticky.store('gone-too', 'user', 'u1', variant('control'), HOUR, now);
    expect(await sticky.forget('gone')).toBe(3);
    const found = await sticky.lookup('user', 'u1', ['gone', 'gone-too'], now);
    expect([...found.found.keys()]).toEqual(['gone-too']);
    const fresh = await StickyAssignments.open(store, 100);
    expect([...(await fresh.lookup('user', 'u2', ['gone'], now)).found.keys()]).toEqual([]);
  });
});
