/**
 * The in-memory configuration's periodic check: it keeps picking up stored changes while the
 * schedule step it starts is held up (that step queues behind this replica's admin writes, which
 * may wait for another replica's write lease).
 */
import { rmSync } from 'node:fs';
import { createLogger } from '../../platform/src/logging';
import type { DocumentStore } from '../../platform/src/storage/collection';
import { openStore } from '../../platform/src/storage/open-store';
import { LiveConfiguration } from '../src/live-configuration';
import { ConfigurationStore } from '../src/store/configuration-store';
import { eventually, temporaryDataDir } from './support/harness';

describe('the live configuration', () => {
  let dataDir: string;
  let store: DocumentStore;
  let configuration: ConfigurationStore;
  let live: LiveConfiguration;

  beforeEach(async () => {
    dataDir = temporaryDataDir();
    store = await openStore({ service: 'assignment', dataDir });
    configuration = await ConfigurationStore.open(store);
    live = new LiveConfiguration(configuration, createLogger({ service: 'test', level: 'silent' }));
    await live.load();
  });

  afterEach(async () => {
    await live.stopPolling();
    await store.close();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it('reloads stored changes while the schedule step is still waiting', async () => {
    let ticks = 0;
    let unstick = (): void => undefined;
    live.startPolling(20, () => {
      ticks++;
      // Does not finish until the end, like a step stuck behind a lease.
      return new Promise((resolve) => (unstick = resolve));
    });
    await eventually(() => {
      expect(ticks).toBe(1);
    }, 2000);
    const now = Date.now();
    await configuration.layers.insert({
      id: 'late',
      description: '',
      owner: '',
      tags: [],
      createTime: now,
      updateTime: now,
    });
    await configuration.bumpVersion();
    await eventually(() => {
      expect(live.current().layers.has('late')).toBe(true);
    }, 2000);
    // One schedule run at a time: the stuck one is not piled on.
    expect(ticks).toBe(1);
    unstick();
  });

  it('waits, when stopped, for the check under way, and starts nothing after it', async () => {
    let release = (): void => undefined;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const events: string[] = [];
    live.startPolling(
      10,
      () => {
        events.push('schedule');
        return Promise.resolve();
      },
      async () => {
        events.push('before check');
        await gate; // a takeover of the write lease under way, say
        events.push('before check done');
      },
    );
    await eventually(() => {
      expect(events).toEqual(['before check']);
    }, 2000);
    let stopped = false;
    const stopping = live.stopPolling().then(() => (stopped = true));
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(stopped).toBe(false);
    release();
    await stopping;
    await new Promise((resolve) => setTimeout(resolve, 50));
    // The check finished before the stop returned, and no schedule step or check followed.
    expect(events).toEqual(['before check', 'before check done']);
  });

  it('catches up to a version another replica has seen, sharing one refresh between callers', async () => {
    const refresh = jest.spyOn(live, 'refresh');
    await live.catchUp(live.current().version); // held already: nothing to read
    expect(refresh).not.toHaveBeenCalled();

    await configuration.bumpVersion();
    const seen = live.current().version + 1;
    await Promise.all([live.catchUp(seen), live.catchUp(seen), live.catchUp(seen)]);
    expect(live.current().version).toBe(seen);
    expect(refresh).toHaveBeenCalledTimes(1);

    // A version storage does not hold (a token from another deployment): looked for once, then
    // left to the periodic check for a while.
    refresh.mockClear();
    await live.catchUp(seen + 100);
    await live.catchUp(seen + 100);
    expect(refresh).toHaveBeenCalledTimes(1);
    expect(live.current().version).toBe(seen);
    // Not a version storage does hold, though.
    await configuration.bumpVersion();
    await live.catchUp(seen + 1);
    expect(live.current().version).toBe(seen + 1);
  });

  it('refreshes once more for a caller that joined a refresh which read the stored version before its own was stored', async () => {
    const storedVersion = configuration.version.bind(configuration);
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    let read!: () => void;
    const hasRead = new Promise<void>((resolve) => (read = resolve));
    // A refresh reads the version twice: to see whether it changed, then as part of reading all.
    jest
      .spyOn(configuration, 'version')
      .mockImplementationOnce(storedVersion)
      .mockImplementationOnce(async () => {
        const version = await storedVersion();
        read();
        await held;
        return version;
      });
    const first = await configuration.bumpVersion();
    const early = live.catchUp(first);
    await hasRead;
    // Another replica stores the next version, and a token resolved with it arrives.
    const second = await configuration.bumpVersion();
    const late = live.catchUp(second);
    release();
    await Promise.all([early, late]);
    expect(live.current().version).toBe(second);
  });
});
