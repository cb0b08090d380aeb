/**
 * A promise with a time limit: it settles as `promise` does, or rejects with `onTimeout()` after
 * `ms`. The timer is `unref`'d (a pending limit never keeps the process alive) and cleared once
 * `promise` settles; `promise` itself is not cancelled, and a rejection it gives after the limit
 * is ignored.
 */
export function withTimeout<T>(
  promise: Promise<T>,
  ms: number,
  onTimeout: () => Error,
): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(onTimeout());
    }, ms);
    timer.unref();
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error instanceof Error ? error : new Error(String(error)));
      },
    );
  });
}
