/**
 * Ordered shutdown. `main.ts` registers each resource as it starts it; on SIGTERM/SIGINT the steps
 * run in reverse order (gRPC server first, storage and telemetry last), all within one deadline,
 * so the process exits even when a step hangs.
 */
import type { Logger } from './logging';

type Step = { readonly name: string; readonly run: () => Promise<void> };

export class Shutdown {
  private readonly steps: Step[] = [];
  private readonly finalSteps: Step[] = [];
  private running: Promise<void> | undefined;

  constructor(private readonly logger: Logger) {}

  /** Registers a step; steps run last-registered first. */
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

  /** Runs every step in reverse order, giving up on the remainder after `deadlineMs`. Idempotent. */
  run(deadlineMs: number): Promise<void> {
    this.running ??= this.runSteps(deadlineMs);
    return this.running;
  }

  /** Runs `run(deadlineMs)` on SIGTERM or SIGINT, then exits (1 if a step failed or timed out). */
  onSignals(deadlineMs: number): void {
    const handler = (signal: NodeJS.Signals): void => {
      this.logger.info({ signal }, 'shutting down');
      this.run(deadlineMs).then(
        () => process.exit(0),
        () => process.exit(1),
      );
    };
    process.once('SIGTERM', handler);
    process.once('SIGINT', handler);
  }

  private async runSteps(deadlineMs: number): Promise<void> {
    const deadline = Date.now() + deadlineMs;
    let failed = false;
    for (const step of [...[...this.steps].reverse(), ...this.finalSteps]) {
      const remaining = Math.max(0, deadline - Date.now());
      try {
        await withTimeout(step.run(), remaining, step.name);
        this.logger.debug({ step: step.name }, 'shutdown step done');
      } catch (error) {
        failed = true;
        this.logger.error({ err: error, step: step.name }, 'shutdown step failed');
      }
    }
    if (failed) throw new Error('shutdown did not complete cleanly');
  }
}

function withTimeout(promise: Promise<void>, ms: number, name: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      reject(new Error(`${name} did not finish within the shutdown deadline`));
    }, ms);
    timer.unref();
    promise.then(
      () => {
        clearTimeout(timer);
        resolve();
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error instanceof Error ? error : new Error(String(error)));
      },
    );
  });
}
