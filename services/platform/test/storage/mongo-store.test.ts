import { MongoClient, MongoServerError } from 'mongodb';
import { FailedPreconditionError, UnavailableError } from '../../src/errors';
import { mapError, openMongoStore } from '../../src/storage/mongo-store';
import { openStore } from '../../src/storage/open-store';
import { describeWithMongo, mongodbUri, uniqueName } from '../support/integration';
import { startSecondaryMember } from '../support/secondary-member';
import { runCollectionContract } from './collection-contract';

describeWithMongo('the MongoDB store', () => {
  const uri = mongodbUri ?? '';
  const database = uniqueName('tandem_storage_test');
  const service = uniqueName('svc');

  afterAll(async () => {
    // Data outlives the server's restarts, so every database this file made is dropped.
    const client = new MongoClient(uri);
    try {
      await client.db(database).dropDatabase();
      await client.db(`tandem_${service}`).dropDatabase();
    } finally {
      await client.close();
    }
  });

  runCollectionContract('mongodb', () => openMongoStore({ uri, database }));

  it('creates the declared indexes, with a TTL index on the expiry field', async () => {
    const store = await openMongoStore({ uri, database });
    await store.collection({
      name: 'indexed',
      indexes: [{ fields: ['email'], unique: true }, { fields: ['group', 'rank'] }],
      expireAtField: 'expiresAt',
    });
    await store.close();
    const client = new MongoClient(uri);
    try {
      const indexes = (await client.db(database).collection('indexed').listIndexes().toArray()) as {
        key: Record<string, number>;
        unique?: boolean;
        expireAfterSeconds?: number;
      }[];
      const byKey = new Map(indexes.map((index) => [JSON.stringify(index.key), index]));
      expect(byKey.get('{"email":1}')?.unique).toBe(true);
      expect(byKey.has('{"group":1,"rank":1}')).toBe(true);
      expect(byKey.get('{"expiresAt":1}')?.expireAfterSeconds).toBe(0);
    } finally {
      await client.close();
    }
  });

  it('refuses, naming it, an index stored with other options than declared, and leaves it be', async () => {
    const store = await openMongoStore({ uri, database });
    try {
      await store.collection({ name: 'redeclared', indexes: [{ fields: ['group'] }] });
      const refused = await store
        .collection({ name: 'redeclared', indexes: [{ fields: ['group'], unique: true }] })
        .then(
          () => undefined,
          (error: unknown) => error,
        );
      expect(refused).toBeInstanceOf(FailedPreconditionError);
      expect((refused as FailedPreconditionError).reason).toBe('INDEX_CONFLICT');
      expect((refused as Error).message).toContain('redeclared');
    } finally {
      await store.close();
    }
    const client = new MongoClient(uri);
    try {
      const indexes = (await client
        .db(database)
        .collection('redeclared')
        .listIndexes()
        .toArray()) as { key: Record<string, number>; unique?: boolean }[];
      const group = indexes.find((index) => JSON.stringify(index.key) === '{"group":1}');
      expect(group).toBeDefined();
      expect(group?.unique).toBeUndefined();
    } finally {
      await client.close();
    }
  });

  it('is what openStore picks with a MongoDB URI, in database tandem_<service>', async () => {
    const store = await openStore({ service, mongodbUri: uri, dataDir: '/nonexistent' });
    expect(store.kind).toBe('mongodb');
    const items = await store.collection<{ id: string }>({ name: 'items' });
    await items.insert({ id: 'a' });
    await store.close();
    const client = new MongoClient(uri);
    try {
      expect(await client.db(`tandem_${service}`).collection('items').countDocuments()).toBe(1);
    } finally {
      await client.close();
    }
  });
});

describe('the MongoDB store without a server', () => {
  it('fails to open with UNAVAILABLE when nothing answers', async () => {
    const opening = openMongoStore({
      uri: 'mongodb://127.0.0.1:9/?directConnection=true',
      database: 'unreachable',
      serverSelectionTimeoutMs: 300,
    });
    await expect(opening).rejects.toBeInstanceOf(UnavailableError);
  });

  it.each([
    { options: '', what: 'by default' },
    { options: '&readPreference=secondaryPreferred', what: 'reads allowed on a secondary' },
  ])(
    'fails to open with UNAVAILABLE while the replica set has no primary ($what)',
    async ({ options }) => {
      // A member answers, but only as a secondary: opening must not succeed on it, or start-up
      // would go on and exit at its first write instead of waiting NOT_SERVING for a primary.
      const member = await startSecondaryMember();
      try {
        const opening = openMongoStore({
          uri: `${member.uri}${options}`,
          database: 'no_primary',
          serverSelectionTimeoutMs: 500,
        });
        await expect(opening).rejects.toBeInstanceOf(UnavailableError);
      } finally {
        await member.close();
      }
    },
  );
});

describe('MongoDB server errors', () => {
  it('are UNAVAILABLE for every code the driver retries reads or writes on', () => {
    // The MongoDB driver's RETRYABLE_READ_ERROR_CODES and RETRYABLE_WRITE_ERROR_CODES.
    const retryable = [6, 7, 89, 91, 134, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436];
    for (const code of retryable) {
      const mapped = mapError(new MongoServerError({ code, errmsg: `code ${code}` }));
      expect([code, mapped]).toEqual([code, expect.any(UnavailableError)]);
    }
    const duplicate = new MongoServerError({ code: 11000, errmsg: 'duplicate key' });
    expect(mapError(duplicate)).not.toBeInstanceOf(UnavailableError);
  });
});
