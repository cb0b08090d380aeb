import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { open } from 'lmdb';
import { AlreadyExistsError } from '../../src/errors';
import type { CollectionSpec } from '../../src/storage/collection';
import { openEmbeddedStore } from '../../src/storage/embedded-store';
import { openStore } from '../../src/storage/open-store';
import { runCollectionContract } from './collection-contract';

const root = mkdtempSync(join(tmpdir(), 'tandem-embedded-'));
let stores = 0;

/** A fresh directory under this file's temporary root. */
function freshPath(): string {
  stores += 1;
  return join(root, `store-${stores}`);
}

afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});

runCollectionContract('embedded (LMDB)', () => openEmbeddedStore({ path: freshPath() }));

interface Account {
  readonly id: string;
  readonly email: string;
  readonly plan?: string;
}

describe('the embedded store on disk', () => {
  it('acknowledges a write once it is flushed to disk, not when it is committed', async () => {
    // lmdb-js flushes after the commit (overlappingSync): held here until released.
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const lmdb = require('lmdb') as { open: typeof open };
    const opened = jest.spyOn(lmdb, 'open');
    const store = await openEmbeddedStore({ path: freshPath() });
    const lmdbRoot = opened.mock.results[0]?.value as { flushed: PromiseLike<boolean> };
    opened.mockRestore();
    try {
      let release = (): void => undefined;
      const held = new Promise<boolean>((resolve) => {
        release = () => {
          resolve(true);
        };
      });
      lmdbRoot.flushed = { then: (done, failed) => held.then(done, failed) };
      const accounts = await store.collection<Account>({ name: 'accounts' });
      let acknowledged = false;
      const write = accounts.insert({ id: 'a', email: 'a@example.com' }).then(() => {
        acknowledged = true;
      });
      await new Promise((resolve) => setTimeout(resolve, 100));
      expect(acknowledged).toBe(false);
      release();
      await write;
      expect(acknowledged).toBe(true);
    } finally {
      await store.close();
    }
  });

  it('keeps documents, versions and indexes across a close and reopen', async () => {
    const path = freshPath();
    const spec: CollectionSpec = {
      name: 'accounts',
      indexes: [{ fields: ['email'], unique: true }, { fields: ['plan'] }],
    };
    const first = await openEmbeddedStore({ path });
    const accounts = await first.collection<Account>(spec);
    await accounts.insert({ id: 'a', email: 'ana@example.com', plan: 'pro' });
    await accounts.insert({ id: 'b', email: 'bo@example.com', plan: 'free' });
    await accounts.replace({ id: 'a', email: 'ana@example.com', plan: 'free' }, 1);
    await first.close();

    const second = await openEmbeddedStore({ path });
    const reopened = await second.collection<Account>(spec);
    expect(await reopened.get('a')).toEqual({
      doc: { id: 'a', email: 'ana@example.com', plan: 'free' },
      version: 2,
    });
    expect(await reopened.count({ plan: 'free' })).toBe(2);
    await expect(reopened.insert({ id: 'c', email: 'bo@example.com' })).rejects.toBeInstanceOf(
      AlreadyExistsError,
    );
    await second.close();
  });

  it('builds an index declared after documents were stored, and drops one no longer declared', async () => {
    const path = freshPath();
    const before = await openEmbeddedStore({ path });
    const plain = await before.collection<Account>({ name: 'accounts' });
    await plain.insert({ id: 'a', email: 'ana@example.com', plan: 'pro' });
    await plain.insert({ id: 'b', email: 'bo@example.com', plan: 'pro' });
    await before.close();

    const indexed = await openEmbeddedStore({ path });
    const accounts = await indexed.collection<Account>({
      name: 'accounts',
      indexes: [{ fields: ['plan'] }, { fields: ['email'], unique: true }],
    });
    expect((await accounts.list({ where: { plan: 'pro' }, limit: 10 })).items).toHaveLength(2);
    await expect(accounts.insert({ id: 'c', email: 'ana@example.com' })).rejects.toBeInstanceOf(
      AlreadyExistsError,
    );
    await indexed.close();

    const unindexed = await openEmbeddedStore({ path });
    const again = await unindexed.collection<Account>({ name: 'accounts' });
    // The unique index is gone, so the same email is accepted.
    await again.insert({ id: 'c', email: 'ana@example.com', plan: 'pro' });
    expect(await again.count({ plan: 'pro' })).toBe(3);
    await unindexed.close();
  });

  it('refuses to open a unique index that the stored documents already violate', async () => {
    const store = await openEmbeddedStore({ path: freshPath() });
    const plain = await store.collection<Account>({ name: 'accounts' });
    await plain.insert({ id: 'a', email: 'same@example.com' });
    await plain.insert({ id: 'b', email: 'same@example.com' });
    await expect(
      store.collection<Account>({
        name: 'accounts',
        indexes: [{ fields: ['email'], unique: true }],
      }),
    ).rejects.toBeInstanceOf(AlreadyExistsError);
    // Nothing was half-built: without the index, the collection still opens and reads.
    expect(await (await store.collection<Account>({ name: 'accounts' })).count()).toBe(2);
    await store.close();
  });

  it('deletes expired documents from disk in the background, not only hides them', async () => {
    const path = freshPath();
    const spec: CollectionSpec = { name: 'sessions', expireAtField: 'expiresAt' };
    const store = await openEmbeddedStore({ path, sweepIntervalMs: 20 });
    const sessions = await store.collection<{ id: string; expiresAt: Date }>(spec);
    await sessions.insert({ id: 'soon', expiresAt: new Date(Date.now() + 50) });
    await sessions.insert({ id: 'later', expiresAt: new Date(Date.now() + 3_600_000) });
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(ids(await sessions.list({ limit: 10 }))).toEqual(['later']);
    await store.close();
    // Look under the adapter: the document and its expiry entry are gone from the files.
    expect(await rawCount(path, 'd:sessions')).toBe(1);
    expect(await rawCount(path, 'x:sessions')).toBe(1);
  });

  it('deletes documents that expired while it was closed when it opens', async () => {
    const path = freshPath();
    const spec: CollectionSpec = { name: 'sessions', expireAtField: 'expiresAt' };
    const store = await openEmbeddedStore({ path });
    const sessions = await store.collection<{ id: string; expiresAt: Date }>(spec);
    await sessions.insert({ id: 'soon', expiresAt: new Date(Date.now() + 30) });
    await store.close();
    await new Promise((resolve) => setTimeout(resolve, 60));
    expect(await rawCount(path, 'd:sessions')).toBe(1);
    const reopened = await openEmbeddedStore({ path });
    await reopened.collection(spec);
    await reopened.close();
    expect(await rawCount(path, 'd:sessions')).toBe(0);
  });

  it('is what openStore picks without a MongoDB URI, in <dataDir>/<service>', async () => {
    const dataDir = freshPath();
    const store = await openStore({ service: 'assignment', dataDir });
    expect(store.kind).toBe('embedded');
    const items = await store.collection<{ id: string }>({ name: 'items' });
    await items.insert({ id: 'a' });
    await store.close();
    const direct = await openEmbeddedStore({ path: join(dataDir, 'assignment') });
    expect(
      await (await direct.collection<{ id: string }>({ name: 'items' })).get('a'),
    ).toBeDefined();
    await direct.close();
  });
});

/** Entries in one of the store's LMDB databases, read with lmdb directly. */
async function rawCount(path: string, dbName: string): Promise<number> {
  const env = open({ path, maxDbs: 1000, readOnly: true });
  try {
    return env.openDB(dbName, {}).getCount();
  } finally {
    await env.close();
  }
}

function ids(page: { items: { doc: { id: string } }[] }): string[] {
  return page.items.map((item) => item.doc.id);
}
