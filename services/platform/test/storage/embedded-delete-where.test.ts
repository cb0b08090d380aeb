/**
 * The embedded store's `deleteWhere` works in transactions that each read and remove a bounded
 * number of documents, going on after the last id the one before read: what is written behind its
 * cursor meanwhile is taken by another pass, and a filter most candidates fail is still applied
 * to every one of them.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openEmbeddedStore } from '../../src/storage/embedded-store';
import type { Collection } from '../../src/storage/collection';

interface Item {
  readonly id: string;
  readonly group: string;
  readonly note?: string;
}

const root = mkdtempSync(join(tmpdir(), 'tandem-delete-where-'));
afterAll(() => {
  rmSync(root, { recursive: true, force: true });
});
const pad = (i: number) => String(i).padStart(5, '0');

async function withItems(test: (items: Collection<Item>) => Promise<void>): Promise<void> {
  const store = await openEmbeddedStore({ path: mkdtempSync(join(root, 's-')) });
  try {
    await test(await store.collection<Item>({ name: 'items', indexes: [{ fields: ['group'] }] }));
  } finally {
    await store.close();
  }
}

it('takes documents written behind its cursor, also during a pass from the start', async () => {
  await withItems(async (items) => {
    for (let i = 0; i < 2500; i++) await items.insert({ id: `doc${pad(i)}`, group: 'g' });
    // After its 1st transaction, 1,500 documents land behind its cursor (the pass from the start
    // that takes them spans two transactions); after the first of that pass, one more.
    const collection = items as unknown as { write: <R>(action: () => R) => Promise<R> };
    const write = collection.write.bind(collection);
    let transactions = 0;
    let inserting = false;
    collection.write = async <R>(action: () => R): Promise<R> => {
      const result = await write(action);
      if (inserting) return result;
      transactions++;
      inserting = true;
      if (transactions === 1) {
        for (let i = 0; i < 1500; i++) await items.insert({ id: `a${pad(i)}`, group: 'g' });
      }
      if (transactions === 4) await items.insert({ id: 'a00000x', group: 'g' });
      inserting = false;
      return result;
    };
    expect(await items.deleteWhere({ group: 'g' })).toBe(4001);
    collection.write = write;
    expect(await items.count({ group: 'g' })).toBe(0);
  });
});

it('applies a filter beyond the index to candidates past what one transaction reads', async () => {
  await withItems(async (items) => {
    for (let i = 0; i < 12_000; i++) {
      const note = i % 1_000 === 999 ? { note: 'x' } : {};
      await items.insert({ id: `doc${pad(i)}`, group: 'g', ...note });
    }
    expect(await items.deleteWhere({ group: 'g', note: 'x' })).toBe(12);
    expect(await items.count({ group: 'g', note: 'x' })).toBe(0);
    expect(await items.count({ group: 'g' })).toBe(11_988);
  });
});
