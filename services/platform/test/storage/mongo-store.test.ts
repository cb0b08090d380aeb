import { status as GrpcCode } from '@grpc/grpc-js';
import { MongoClient, MongoNetworkError, MongoServerError } from 'mongodb';
import {
  AlreadyExistsError,
  decodeStatus,
  FailedPreconditionError,
  InvalidArgumentError,
  toStatus,
  UnavailableError,
} from '../../src/errors';
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
    // deploy/compose.yaml's URI: the driver then sends every command to that one member,
    // whatever its role and the read preference, so a ping proves nothing about writes.
    { options: '&directConnection=true', what: 'a direct connection to the member' },
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

describe('MongoDB errors as callers see them', () => {
  /** What a caller receives for `error`: the status message and its copy in the details. */
  function shown(error: unknown): { code: number; message: string; detailsMessage: string } {
    const status = toStatus(error);
    const decoded = decodeStatus({
      code: status.code,
      details: status.details,
      metadata: status.metadata,
    });
    return { code: status.code, message: status.details, detailsMessage: decoded.message };
  }

  it.each([
    [
      'an unreachable server',
      new MongoNetworkError('connect ECONNREFUSED 10.0.0.5:27017'),
      UnavailableError,
      GrpcCode.UNAVAILABLE,
    ],
    [
      'a node that cannot take the operation now',
      new MongoServerError({
        code: 10107,
        errmsg: 'not primary: mongo-0.internal:27017 of replica set rs-prod',
      }),
      UnavailableError,
      GrpcCode.UNAVAILABLE,
    ],
    [
      'a duplicate key',
      new MongoServerError({
        code: 11000,
        errmsg:
          'E11000 duplicate key error collection: tandem_assignment.experiments index: _id_ dup key: { _id: "checkout" }',
      }),
      AlreadyExistsError,
      GrpcCode.ALREADY_EXISTS,
    ],
    [
      'a type mismatch',
      new MongoServerError({
        code: 14,
        errmsg:
          'Cannot apply $inc to a value of non-numeric type. {_id: "a"} has the field \'plays\' of non-numeric type string',
      }),
      InvalidArgumentError,
      GrpcCode.INVALID_ARGUMENT,
    ],
  ])(
    'tell the caller what failed, not the driver message, for %s',
    (_what, driverError, type, code) => {
      const mapped = mapError(driverError);
      expect(mapped).toBeInstanceOf(type);
      // The driver's error stays, for the span and the logs.
      expect((mapped as Error).cause).toBe(driverError);
      const { code: sent, message, detailsMessage } = shown(mapped);
      expect(sent).toBe(code);
      for (const text of [message, detailsMessage]) {
        for (const detail of [
          '10.0.0.5',
          '27017',
          'mongo-0.internal',
          'rs-prod',
          'tandem_assignment',
          '_id_',
          'E11000',
          '$inc',
        ]) {
          expect(text).not.toContain(detail);
        }
      }
    },
  );

  it('say which dependency is unavailable, and that a retry may succeed', () => {
    const mapped = mapError(new MongoNetworkError('getaddrinfo ENOTFOUND mongo-0.internal'));
    expect(shown(mapped).message).toBe('storage is unavailable; retry with backoff');
  });
});
