/**
 * Ordered shutdown. `main.ts` registers each resource as it starts it; on SIGTERM/SIGINT the steps
 * run in reverse order (gRPC server first, storage and telemetry last), all within one deadline,
 * so the process exits even when a step hangs.
 */
import type { Logger } from './logging';
import { withTimeout } from './timeout';

type Step = { readonly name: string; readonly run: () => Promise<void> };

export class Shutdown {
  private readonly steps: Step[] = [];
  private readonly finalSteps: Step[] = [];
  private running: Promise<void> | undefined;
  private handlingSignals = false;

  constructor(private readonly logger: Logger) {}

  /**
   * Registers a step; steps run last-registered first. A step registered while the shutdown is
   * already running (start-up went on after a signal) runs next, before the steps registered
   * earlier, so what start-up opened late is still closed.
   */
  add(name: string, run: () => Promise<void>): void {
    this.steps.push({ name, run });
  }

  /**
   * Registers a step that runs after every `add`ed step, whenever it was registered: for what must
   * outlive the rest, such as flushing telemetry after the last in-flight call's span has ended.
   */
  addFinal(name: string, run: () => Promise<void>): void {
    this.finalSteps.push({ name, run });
  }

  /** Whether the shutdown has begun. */
  get started(): boolean {
    return this.running !== undefined;
  }

  /** Runs every step in reverse order, giving up on the remainder after `deadlineMs`. Idempotent. */
  run(deadlineMs: number): Promise<void> {
    this.running ??= this.runSteps(deadlineMs);
    return this.running;
  }

  /**
   * Runs `runAndEnd(deadlineMs)` on SIGTERM or SIGINT. Entry points call it as soon as there is
   * something to close, before start-up finishes: a signal during start-up then closes what was
   * opened so far (see `abortStartup`) instead of killing the process with Node's default action.
   * A signal during the shutdown is logged and ignored, rather than ending the process mid-way
   * (storage not closed, buffered events not kept, telemetry not flushed): the shutdown ends by
   * its deadline whatever its steps do. Calling it again does nothing.
   */
  onSignals(deadlineMs: number, end: ProcessEnd = PROCESS_END): void {
    if (this.handlingSignals) return;
    this.handlingSignals = true;
    const handler = (signal: NodeJS.Signals): void => {
      if (this.running !== undefined) {
        this.logger.warn(
          { signal, deadlineMs },
          'already shutting down; the shutdown ends within its deadline',
        );
        return;
      }
      this.logger.info({ signal }, 'shutting down');
      void this.runAndEnd(deadlineMs, end);
    };
    process.on('SIGTERM', handler);
    process.on('SIGINT', handler);
  }

  /**
   * Runs every step, then ends the process: exit code 0, or 1 if a step failed. When a step
   * overran the deadline it is still running, and if it is writing to the embedded store, exiting
   * would wait for it forever (lmdb-js's writer thread waits for the JavaScript thread to run the
   * transaction, while `process.exit` stops that thread and then waits for the writer). So the
   * process is killed then; the store survives that, as an unfinished transaction never commits.
   */
  async runAndEnd(
    deadlineMs: number,
    end: ProcessEnd = PROCESS_END,
    successCode = 0,
  ): Promise<void> {
    try {
      await this.run(deadlineMs);
      end.exit(successCode);
    } catch (error) {
      if (error instanceof ShutdownIncompleteError && error.overran.length > 0) {
        this.logger.error(
          { steps: error.overran },
          'shutdown steps overran the deadline and may still be writing; killing the process',
        );
        end.kill();
      } else {
        end.exit(1);
      }
    }
  }

  /**
   * Ends a process whose start-up failed after resources were opened: runs the steps registered
   * so far, as `runAndEnd` does (so the embedded store is closed, not exited from mid-write), and
   * exits with 1 even when they all succeed. When a shutdown is already running (a signal arrived
   * during start-up), the error is its consequence: this waits for it and leaves ending the
   * process to it.
   */
  async abortStartup(
    error: unknown,
    deadlineMs: number,
    end: ProcessEnd = PROCESS_END,
  ): Promise<void> {
    if (this.running !== undefined) {
      // A signal arrived during start-up and its shutdown closed what start-up was using: the
      // error is a consequence of stopping, not a failure. Whoever started the shutdown ends the
      // process (the signal handler, with 0 when every step succeeded).
      this.logger.info({ err: error }, 'start-up interrupted by shutdown');
      await this.running.catch(() => undefined);
      return;
    }
    this.logger.error({ err: error }, 'start-up failed; closing what was opened');
    await this.runAndEnd(deadlineMs, end, 1);
  }

  /**
   * An entry point's start-up: signals are handled from now on (see `onSignals`), and a failure
   * of `start` ends the process through `abortStartup`.
   */
  async startUp(
    deadlineMs: number,
    start: () => Promise<void>,
    end: ProcessEnd = PROCESS_END,
  ): Promise<void> {
    this.onSignals(deadlineMs, end);
    try {
      await start();
    } catch (error) {
      await this.abortStartup(error, deadlineMs, end);
    }
  }

  private async runSteps(deadlineMs: number): Promise<void> {
    const deadline = Date.now() + deadlineMs;
    let failed = false;
    const overran: string[] = [];
    // Taken from the end one at a time, so a step added meanwhile (see `add`) runs next.
    for (
      let step = this.steps.pop() ?? this.finalSteps.shift();
      step !== undefined;
      step = this.steps.pop() ?? this.finalSteps.shift()
    ) {
      const remaining = Math.max(0, deadline - Date.now());
      try {
        await withTimeout(step.run(), remaining, () => new StepOverranError(step.name));
        this.logger.debug({ step: step.name }, 'shutdown step done');
      } catch (error) {
        failed = true;
        if (error instanceof StepOverranError) overran.push(step.name);
        // A step that is itself a shutdown (`make dev` runs each service's) passes on what overran
        // in it, so the process is killed rather than exited from under a write there too.
        else if (error instanceof ShutdownIncompleteError) {
          overran.push(...error.overran.map((name) => `${step.name}: ${name}`));
        }
        this.logger.error({ err: error, step: step.name }, 'shutdown step failed');
      }
    }
    if (failed) throw new ShutdownIncompleteError(overran);
  }
}

/** How `runAndEnd` ends the process. */
export interface ProcessEnd {
  exit(code: number): void;
  kill(): void;
}

export const PROCESS_END: ProcessEnd = {
  exit: (code) => process.exit(code),
  kill: () => process.kill(process.pid, 'SIGKILL'),
};

/** Thrown by `run` when a step failed or overran the deadline. */
export class ShutdownIncompleteError extends Error {
  constructor(
    /** The steps that were still running at the deadline. */
    readonly overran: readonly string[],
  ) {
    super('shutdown did not complete cleanly');
    this.name = 'ShutdownIncompleteError';
  }
}

/** Thrown when a step is still running at the deadline. */
class StepOverranError extends Error {
  constructor(step: string) {
    super(`${step} did not finish within the shutdown deadline`);
    this.name = 'StepOverranError';
  }
}
