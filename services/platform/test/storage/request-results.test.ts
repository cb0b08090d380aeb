import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CreateExperimentRequest } from '../../../../gen/ts/tandem/assignment/v1/assignment_service';
import { EchoResponse } from '../../../../gen/ts/tandem/echo/v1/echo_service';
import { InvalidArgumentError, NotFoundError, UnavailableError } from '../../src/errors';
import type { Collection, DocumentStore } from '../../src/storage/collection';
import { eventually } from '../events/event-bus-contract';
import { openEmbeddedStore } from '../../src/storage/embedded-store';
import {
  MAX_FINGERPRINT_VALUES,
  RequestResults,
  type RequestType,
} from '../../src/storage/request-results';

describe('RequestResults', () => {
  let dir: string;
  let store: DocumentStore;
  let results: RequestResults;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'tandem-request-results-'));
    store = await openEmbeddedStore({ path: dir });
    results = await RequestResults.open(store, 60_000);
  });

  afterAll(async () => {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('runs a mutation once per request id and returns the first response to retries', async () => {
    let runs = 0;
    const mutation = () => Promise.resolve({ message: `run ${++runs}`, traceId: '' });
    const first = await results.once('Create', { requestId: 'r-1' }, EchoResponse, mutation);
    const retry = await results.once('Create', { requestId: 'r-1' }, EchoResponse, mutation);
    expect(runs).toBe(1);
    expect(retry).toEqual(first);
    // The same id on another method is another request.
    await results.once('Update', { requestId: 'r-1' }, EchoResponse, mutation);
    expect(runs).toBe(2);
  });

  it('keeps the first stored response when a retry ran beside its first call on another replica', async () => {
    const other = await RequestResults.open(store, 60_000);
    let releaseFirst = (): void => undefined;
    let releaseRetry = (): void => undefined;
    const firstHeld = new Promise<void>((resolve) => (releaseFirst = resolve));
    const retryHeld = new Promise<void>((resolve) => (releaseRetry = resolve));
    const first = results.once('Create', { requestId: 'r-beside' }, EchoResponse, async () => {
      await firstHeld;
      return { message: 'first call', traceId: '' };
    });
    const retry = other.once('Create', { requestId: 'r-beside' }, EchoResponse, async () => {
      await retryHeld;
      return { message: 'retry on another replica', traceId: '' };
    });
    await new Promise((resolve) => setTimeout(resolve, 20));
    releaseFirst();
    expect(await first).toEqual({ message: 'first call', traceId: '' });
    releaseRetry();
    // The one finishing later answers what was stored first, as every later retry gets.
    expect(await retry).toEqual({ message: 'first call', traceId: '' });
    const later = await other.once('Create', { requestId: 'r-beside' }, EchoResponse, () =>
      Promise.resolve({ message: 'ran a third time', traceId: '' }),
    );
    expect(later).toEqual({ message: 'first call', traceId: '' });
  });

  it('answers the response of the first call to a retry that failed beside it on another replica', async () => {
    const other = await RequestResults.open(store, 60_000);
    // The first call deletes the resource; the retry, beside it, then finds it gone.
    let deleted = false;
    let markDeleted = (): void => undefined;
    const deletion = new Promise<void>((resolve) => (markDeleted = resolve));
    let retryStarted = (): void => undefined;
    const retryRunning = new Promise<void>((resolve) => (retryStarted = resolve));
    const first = results.once('Delete', { requestId: 'r-gone' }, EchoResponse, async () => {
      await retryRunning;
      deleted = true;
      markDeleted();
      return { message: 'deleted', traceId: '' };
    });
    const retry = other.once('Delete', { requestId: 'r-gone' }, EchoResponse, async () => {
      retryStarted();
      await deletion;
      if (deleted) throw new NotFoundError('no resource r-gone');
      return { message: 'deleted by the retry', traceId: '' };
    });
    expect(await first).toEqual({ message: 'deleted', traceId: '' });
    expect(await retry).toEqual({ message: 'deleted', traceId: '' });
    // A failure with nothing stored, or a request's own fault, is the caller's answer.
    await expect(
      other.once('Delete', { requestId: 'r-never' }, EchoResponse, () =>
        Promise.reject(new NotFoundError('no resource r-never')),
      ),
    ).rejects.toThrow(NotFoundError);
    // Where every call runs under a lease the replicas share, none runs beside another, so a
    // failure is the answer as it is (here, the two calls break the lease that rules this out).
    const serialized = await RequestResults.open(store, 60_000, { serialized: true });
    let leasedRetryStarted = (): void => undefined;
    const leasedRetryRunning = new Promise<void>((resolve) => (leasedRetryStarted = resolve));
    let stored = (): void => undefined;
    const storedFirst = new Promise<void>((resolve) => (stored = resolve));
    const leasedFirst = results
      .once('Delete', { requestId: 'r-leased' }, EchoResponse, async () => {
        await leasedRetryRunning;
        return { message: 'deleted', traceId: '' };
      })
      .finally(stored);
    const leasedRetry = serialized.once(
      'Delete',
      { requestId: 'r-leased' },
      EchoResponse,
      async () => {
        leasedRetryStarted();
        await storedFirst;
        throw new NotFoundError('no resource r-leased');
      },
    );
    await leasedFirst;
    await expect(leasedRetry).rejects.toThrow(NotFoundError);
  });

  describe('a response that could not be stored after its mutation ran', () => {
    const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));
    /** The collection `of` stores responses in (private). */
    const collectionOf = (of: RequestResults) =>
      (of as unknown as { readonly collection: Collection<{ readonly id: string }> }).collection;

    it('is answered, given to a retry here, and stored once storage answers', async () => {
      const kept = await RequestResults.open(store, 60_000);
      const collection = collectionOf(kept);
      const insert = jest
        .spyOn(collection, 'insert')
        .mockRejectedValue(new UnavailableError('storage is unreachable'));
      let runs = 0;
      const mutation = () => Promise.resolve({ message: `run ${++runs}`, traceId: '' });
      try {
        const first = await kept.once('Create', { requestId: 'r-kept' }, EchoResponse, mutation);
        expect(first.message).toBe('run 1');
        expect(await kept.once('Create', { requestId: 'r-kept' }, EchoResponse, mutation)).toEqual(
          first,
        );
        insert.mockRestore();
        await eventually(async () => {
          expect(await collection.get('Create/r-kept')).toBeDefined();
        });
        expect(runs).toBe(1);
      } finally {
        insert.mockRestore();
        kept.close();
      }
    });

    it('is given up when storage refuses it otherwise than by being unavailable, or when closed', async () => {
      const kept = await RequestResults.open(store, 60_000);
      const insert = jest
        .spyOn(collectionOf(kept), 'insert')
        .mockRejectedValue(new Error('document too large'));
      const mutation = () => Promise.resolve({ message: 'ran', traceId: '' });
      try {
        await kept.once('Create', { requestId: 'r-refused' }, EchoResponse, mutation);
        await sleep(400);
        // The call's own attempt and one more: a refusal is not tried again.
        expect(insert).toHaveBeenCalledTimes(2);
        insert.mockClear();
        insert.mockRejectedValue(new UnavailableError('storage is unreachable'));
        await kept.once('Create', { requestId: 'r-closed' }, EchoResponse, mutation);
        await sleep(200);
        kept.close();
        const attempts = insert.mock.calls.length;
        await sleep(500);
        expect(insert.mock.calls.length).toBe(attempts);
      } finally {
        insert.mockRestore();
        kept.close();
      }
    });
  });

  it('runs every time without a request id, and again after a failure', async () => {
    let runs = 0;
    const mutation = () => Promise.resolve({ message: `run ${++runs}`, traceId: '' });
    await results.once('Create', { requestId: '' }, EchoResponse, mutation);
    await results.once('Create', { requestId: '' }, EchoResponse, mutation);
    expect(runs).toBe(2);
    await expect(
      results.once('Create', { requestId: 'r-2' }, EchoResponse, () =>
        Promise.reject(new Error('boom')),
      ),
    ).rejects.toThrow('boom');
    await results.once('Create', { requestId: 'r-2' }, EchoResponse, mutation);
    expect(runs).toBe(3);
  });

  it('has a retry that arrives while its first call runs wait for it, not run beside it', async () => {
    let runs = 0;
    let release = (): void => undefined;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const slow = async () => {
      const run = ++runs;
      await gate;
      return { message: `run ${run}`, traceId: '' };
    };
    const request = { requestId: 'r-concurrent', view: 'a' };
    const first = results.once('Write', request, EchoResponse, slow);
    const retry = results.once('Write', { ...request }, EchoResponse, slow);
    const changed = { ...request, view: 'b' };
    const other = results.once('Write', changed, EchoResponse, slow);
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(runs).toBe(1);
    release();
    expect(await first).toEqual({ message: 'run 1', traceId: '' });
    expect(await retry).toEqual({ message: 'run 1', traceId: '' });
    await expect(other).rejects.toMatchObject({ reason: 'REQUEST_ID_REUSED' });
    expect(runs).toBe(1);
  });

  it('runs a retry that waited for a first call that failed', async () => {
    let runs = 0;
    let fail = (): void => undefined;
    const gate = new Promise<void>(
      (_resolve, reject) =>
        (fail = () => {
          reject(new Error('boom'));
        }),
    );
    const first = results.once('Write', { requestId: 'r-failed' }, EchoResponse, async () => {
      runs++;
      await gate;
      return { message: 'never', traceId: '' };
    });
    const retry = results.once('Write', { requestId: 'r-failed' }, EchoResponse, () =>
      Promise.resolve({ message: `run ${++runs}`, traceId: '' }),
    );
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(runs).toBe(1);
    fail();
    await expect(first).rejects.toThrow('boom');
    expect(await retry).toEqual({ message: 'run 2', traceId: '' });
  });

  it('refuses the id reused for a different request, whatever order its maps came in', async () => {
    let runs = 0;
    const mutation = () => Promise.resolve({ message: `run ${++runs}`, traceId: '' });
    const request = {
      requestId: 'r-3',
      view: 'a',
      tags: { x: '1', y: '2' },
      rows: [{ at: new Date(0), bytes: Uint8Array.of(1, 2) }],
    };
    const first = await results.once('Write', request, EchoResponse, mutation);
    // The same request again, its map keys in another order: a retry.
    const again = { ...request, tags: { y: '2', x: '1' } };
    expect(await results.once('Write', again, EchoResponse, mutation)).toEqual(first);
    expect(runs).toBe(1);
    for (const other of [
      { ...request, view: 'b' },
      { ...request, rows: [{ at: new Date(1), bytes: Uint8Array.of(1, 2) }] },
      { ...request, rows: [{ at: new Date(0), bytes: Uint8Array.of(1, 3) }] },
    ]) {
      const refused = results.once('Write', other, EchoResponse, mutation);
      await expect(refused).rejects.toBeInstanceOf(InvalidArgumentError);
      await expect(refused).rejects.toMatchObject({
        reason: 'REQUEST_ID_REUSED',
        violations: [expect.objectContaining({ field: 'request_id' })],
      });
    }
    expect(runs).toBe(1);
  });

  it('takes the same bytes decoded by a build that knows more fields as the same request', async () => {
    let runs = 0;
    const mutation = () => Promise.resolve({ message: `run ${++runs}`, traceId: '' });
    // What an older build decodes, and what one with new fields (left at their defaults by the
    // caller) decodes from the same bytes.
    const older = { requestId: 'r-6', view: 'a', rows: [{ key: 'k', at: new Date(5) }] };
    const newer = {
      ...older,
      rows: [{ key: 'k', at: new Date(5), weight: 0, labels: [], extra: { note: '', on: false } }],
      validateOnly: false,
      reason: undefined,
      bytes: new Uint8Array(0),
      tags: {},
    };
    const first = await results.once('Write', older, EchoResponse, mutation);
    expect(await results.once('Write', newer, EchoResponse, mutation)).toEqual(first);
    expect(runs).toBe(1);
    // A value that is not the default is another request; so is an item moved in a list.
    const refused = { reason: 'REQUEST_ID_REUSED' };
    const changedRow = { ...newer, rows: [{ ...newer.rows[0], weight: 1 }] };
    await expect(results.once('Write', changedRow, EchoResponse, mutation)).rejects.toMatchObject(
      refused,
    );
    const listed = { requestId: 'r-7', ids: ['', 'b'] };
    await results.once('Write', listed, EchoResponse, mutation);
    const shifted = { ...listed, ids: ['b'] };
    await expect(results.once('Write', shifted, EchoResponse, mutation)).rejects.toMatchObject(
      refused,
    );
  });

  /** A request with an `optional double share` and a `google.protobuf.Struct condition`. */
  interface ShareRequest {
    readonly requestId: string;
    readonly view: string;
    readonly share?: number | undefined;
    readonly condition?: { [key: string]: unknown } | undefined;
  }
  /** Its type's `toJSON`, as ts-proto generates it: defaults left out where they are unset. */
  const ShareRequest: RequestType<ShareRequest> = {
    toJSON: (message) => ({
      ...(message.requestId !== '' && { requestId: message.requestId }),
      ...(message.view !== '' && { view: message.view }),
      ...(message.share !== undefined && { share: message.share }),
      ...(message.condition !== undefined && { condition: message.condition }),
    }),
  };

  it('tells apart, given the request type, requests differing only in values set to a default', async () => {
    let runs = 0;
    const mutation = () => Promise.resolve({ message: `run ${++runs}`, traceId: '' });
    const once = (request: ShareRequest) =>
      results.once('Share', request, EchoResponse, mutation, ShareRequest);
    const unset: ShareRequest = { requestId: 'r-share', view: 'a', condition: { beta: false } };
    const first = await once(unset);
    expect(await once({ ...unset, condition: { beta: false }, share: undefined })).toEqual(first);
    const refused = { reason: 'REQUEST_ID_REUSED' };
    await expect(once({ ...unset, share: 0 })).rejects.toMatchObject(refused);
    for (const beta of [0, '', null, [], {}]) {
      await expect(once({ ...unset, condition: { beta } })).rejects.toMatchObject(refused);
    }
    await expect(once({ ...unset, condition: {} })).rejects.toMatchObject(refused);
    await expect(once({ ...unset, condition: undefined })).rejects.toMatchObject(refused);
    expect(runs).toBe(1);
  });

  it('fingerprints any request that decodes, with or without a JSON form', async () => {
    let runs = 0;
    const mutation = () => Promise.resolve({ message: `run ${++runs}`, traceId: '' });
    // A list item that is a Value with no kind (it decodes to undefined), and a Timestamp past
    // what a Date holds (no JSON form): the write refuses what it must, not the fingerprint.
    const requests = [
      CreateExperimentRequest.decode(
        CreateExperimentRequest.encode(
          CreateExperimentRequest.fromPartial({
            requestId: 'r-empty-value',
            experiment: { id: 'e', condition: { tags: { $in: [undefined, 'a'] } } },
          }),
        ).finish(),
      ),
      CreateExperimentRequest.fromPartial({
        requestId: 'r-far-time',
        experiment: { id: 'e', scheduledStartTime: new Date(Number.NaN) },
      }),
    ];
    for (const request of requests) {
      const first = await results.once(
        'CreateExperiment',
        request,
        EchoResponse,
        mutation,
        CreateExperimentRequest,
      );
      expect(
        await results.once(
          'CreateExperiment',
          request,
          EchoResponse,
          mutation,
          CreateExperimentRequest,
        ),
      ).toEqual(first);
    }
    expect(runs).toBe(2);
  });

  it('recognizes a retry answered by a build that did not take the request type, and the reverse', async () => {
    let runs = 0;
    const mutation = () => Promise.resolve({ message: `run ${++runs}`, traceId: '' });
    const request: ShareRequest = { requestId: 'r-rolling', view: 'a', share: 0 };
    // The first call answered by the previous build (or a service that names no request type),
    // the retry by this one; then the other way round, under another id.
    const first = await results.once('Share', request, EchoResponse, mutation);
    expect(await results.once('Share', request, EchoResponse, mutation, ShareRequest)).toEqual(
      first,
    );
    const other = { ...request, requestId: 'r-rolling-2' };
    const second = await results.once('Share', other, EchoResponse, mutation, ShareRequest);
    expect(await results.once('Share', other, EchoResponse, mutation)).toEqual(second);
    expect(runs).toBe(2);
    // What the previous build told apart, it still tells apart.
    await expect(
      results.once('Share', { ...request, view: 'b' }, EchoResponse, mutation, ShareRequest),
    ).rejects.toMatchObject({ reason: 'REQUEST_ID_REUSED' });
  });

  it('answers a response stored before fingerprints were kept to any request under its id', async () => {
    const collection = await store.collection<{
      id: string;
      response: Uint8Array;
      expiresAt: Date;
    }>({ name: 'request_results', expireAtField: 'expiresAt' });
    const stored = { message: 'stored earlier', traceId: '' };
    await collection.upsert({
      id: 'Write/r-8',
      response: EchoResponse.encode(stored).finish(),
      expiresAt: new Date(Date.now() + 60_000),
    });
    const mutation = () => Promise.reject(new Error('must not run'));
    const request = { requestId: 'r-8', view: 'x' };
    expect(await results.once('Write', request, EchoResponse, mutation)).toEqual(stored);
  });

  it('does not compare requests too large to fingerprint cheaply, as before fingerprints', async () => {
    let runs = 0;
    const mutation = () => Promise.resolve({ message: `run ${++runs}`, traceId: '' });
    const large = (value: number) => ({
      requestId: 'r-4',
      rows: Array.from({ length: MAX_FINGERPRINT_VALUES }, () => value),
    });
    const first = await results.once('Write', large(1), EchoResponse, mutation);
    expect(await results.once('Write', large(2), EchoResponse, mutation)).toEqual(first);
    expect(runs).toBe(1);
    // Just within the bound, it is compared.
    const within = (value: number) => ({ requestId: 'r-5', rows: Array(1_990).fill(value) });
    await results.once('Write', within(1), EchoResponse, mutation);
    await expect(results.once('Write', within(2), EchoResponse, mutation)).rejects.toMatchObject({
      reason: 'REQUEST_ID_REUSED',
    });
  });

  it('refuses a request id longer than the contract allows', async () => {
    await expect(
      results.once('Create', { requestId: 'x'.repeat(129) }, EchoResponse, () =>
        Promise.resolve({ message: '', traceId: '' }),
      ),
    ).rejects.toBeInstanceOf(InvalidArgumentError);
  });
});
