/**
 * Handler pacing: calls start at once until a slice's time is used, later ones in later turns of
 * the event loop, in arrival order. Time is a fake clock each call advances.
 */
import { HandlerPacer } from '../../src/grpc/handler-pacing';

/** The next turn of the event loop (after the immediates queued so far). */
function nextTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

describe('HandlerPacer', () => {
  let clock: number;
  const started: string[] = [];
  /** A call that takes `ms` of the fake clock. */
  const work = (name: string, ms: number) => (): void => {
    started.push(name);
    clock += ms;
  };

  beforeEach(() => {
    clock = 0;
    started.length = 0;
  });

  it('starts calls at once while the slice lasts, and the rest in later turns, in arrival order', async () => {
    const pacer = new HandlerPacer(1, () => clock);
    // A burst arriving in one turn: 0.4 ms each, so the slice of 1 ms ends after the third.
    for (const name of ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h']) pacer.start(work(name, 0.4));
    expect(started).toEqual(['a', 'b', 'c']);
    expect(pacer.waitingCount).toBe(5);

    await nextTurn();
    // One slice per turn: d, e and f fill the next one.
    expect(started).toEqual(['a', 'b', 'c', 'd', 'e', 'f']);
    // A call arriving while others wait goes behind them, even in a new slice.
    pacer.start(work('late', 0));
    expect(started).toHaveLength(6);

    await nextTurn();
    expect(started).toEqual(['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'late']);
    expect(pacer.waitingCount).toBe(0);

    // Nothing waits any more: the next turn's calls start at once, in a slice of their own.
    await nextTurn();
    pacer.start(work('next', 0.1));
    expect(started.at(-1)).toBe('next');
  });

  it('starts at least one waiting call per turn, however long calls take', async () => {
    const pacer = new HandlerPacer(1, () => clock);
    for (const name of ['a', 'b', 'c']) pacer.start(work(name, 5));
    expect(started).toEqual(['a']);
    await nextTurn();
    expect(started).toEqual(['a', 'b']);
    await nextTurn();
    expect(started).toEqual(['a', 'b', 'c']);
  });

  it('holds no more than the calls waiting while calls keep arriving faster than they start', async () => {
    const pacer = new HandlerPacer(1, () => clock);
    for (let i = 0; i < 8; i++) pacer.start(work(`burst ${i}`, 0.4));
    // Each turn three calls start and three more arrive: some always wait, for many turns.
    for (let turn = 0; turn < 2000; turn++) {
      await nextTurn();
      for (let i = 0; i < 3; i++) pacer.start(work(`turn ${turn} ${i}`, 0.4));
    }
    expect(pacer.waitingCount).toBe(5);
    const held = (pacer as unknown as { waiting: unknown[] }).waiting.length;
    expect(held).toBeLessThan(2000);
    while (pacer.waitingCount > 0) await nextTurn();
  });

  it('starts every call at once with a slice of 0 (pacing off), after any calls already waiting', async () => {
    const pacer = new HandlerPacer(1, () => clock);
    for (const name of ['a', 'b', 'c']) pacer.start(work(name, 5));
    expect(started).toEqual(['a']);
    pacer.setSlice(0);
    // Calls that were waiting keep their place: a new one still goes behind them.
    pacer.start(work('d', 5));
    expect(started).toEqual(['a']);
    while (pacer.waitingCount > 0) await nextTurn();
    expect(started).toEqual(['a', 'b', 'c', 'd']);

    await nextTurn();
    for (const name of ['e', 'f', 'g']) pacer.start(work(name, 5));
    expect(started).toEqual(['a', 'b', 'c', 'd', 'e', 'f', 'g']);
    expect(pacer.waitingCount).toBe(0);
  });

  it('refuses a negative or unbounded slice', () => {
    expect(() => new HandlerPacer(-1)).toThrow(RangeError);
    expect(() => {
      new HandlerPacer().setSlice(Number.POSITIVE_INFINITY);
    }).toThrow(RangeError);
    expect(() => {
      new HandlerPacer().setSlice(Number.NaN);
    }).toThrow(RangeError);
  });
});
