import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EchoResponse } from '../../../../gen/ts/tandem/echo/v1/echo_service';
import { InvalidArgumentError } from '../../src/errors';
import type { DocumentStore } from '../../src/storage/collection';
import { openEmbeddedStore } from '../../src/storage/embedded-store';
import { RequestResults } from '../../src/storage/request-results';

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
    const first = await results.once('Create', 'r-1', EchoResponse, mutation);
    const retry = await results.once('Create', 'r-1', EchoResponse, mutation);
    expect(runs).toBe(1);
    expect(retry).toEqual(first);
    // The same id on another method is another request.
    await results.once('Update', 'r-1', EchoResponse, mutation);
    expect(runs).toBe(2);
  });

  it('runs every time without a request id, and again after a failure', async () => {
    let runs = 0;
    const mutation = () => Promise.resolve({ message: `run ${++runs}`, traceId: '' });
    await results.once('Create', '', EchoResponse, mutation);
    await results.once('Create', '', EchoResponse, mutation);
    expect(runs).toBe(2);
    await expect(
      results.once('Create', 'r-2', EchoResponse, () => Promise.reject(new Error('boom'))),
    ).rejects.toThrow('boom');
    await results.once('Create', 'r-2', EchoResponse, mutation);
    expect(runs).toBe(3);
  });

  it('refuses a request id longer than the contract allows', async () => {
    await expect(
      results.once('Create', 'x'.repeat(129), EchoResponse, () =>
        Promise.resolve({ message: '', traceId: '' }),
      ),
    ).rejects.toBeInstanceOf(InvalidArgumentError);
  });
});
