/**
 * FreshRuns: each caller gets a run begun after it asked, shared with the callers meanwhile.
 */
import { FreshRuns } from '../../src/fresh-runs';

/** A run held until released, counting how many began. */
function heldRuns() {
  const releases: ((error?: Error) => void)[] = [];
  const runs = new FreshRuns(
    () =>
      new Promise<void>((resolve, reject) => {
        releases.push((error) => {
          if (error) reject(error);
          else resolve();
        });
      }),
  );
  const settle = async (error?: Error) => {
    await new Promise((resolve) => setImmediate(resolve));
    releases.shift()?.(error);
    await new Promise((resolve) => setImmediate(resolve));
  };
  return { runs, began: () => releases.length, settle };
}

it('shares a run not begun yet, and gives a caller arriving during a run the next one', async () => {
  const { runs, began, settle } = heldRuns();
  const first = runs.afterNow();
  const joined = runs.afterNow();
  expect(joined).toBe(first);
  await new Promise((resolve) => setImmediate(resolve));
  expect(began()).toBe(1);
  // The run is under way: what made this caller ask may have been stored after it began.
  const later = runs.afterNow();
  const alsoLater = runs.afterNow();
  expect(later).not.toBe(first);
  expect(alsoLater).toBe(later);
  await settle();
  await first;
  expect(began()).toBe(1);
  await settle();
  await later;
});

it('fails the callers of a run that fails, and starts another for the next caller', async () => {
  const { runs, settle } = heldRuns();
  const failing = runs.afterNow();
  await settle(new Error('storage is unreachable'));
  await expect(failing).rejects.toThrow('storage is unreachable');
  const next = runs.afterNow();
  expect(next).not.toBe(failing);
  await settle();
  await expect(next).resolves.toBeUndefined();
});
