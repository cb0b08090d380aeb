/**
 * How an entry point ends when it fails before it has a runtime to shut down: its configuration
 * is wrong, or what `bootstrap` opens first refuses it.
 */
import { ConfigError } from './config';
import { PROCESS_END, type ProcessEnd } from './lifecycle';
import { createLogger } from './logging';

/**
 * Ends an entry point that failed before it had a runtime to shut down (its configuration, or
 * what `bootstrap` opens first): one JSON log line like every other, naming each configuration
 * problem or the error, then exit code 1.
 */
export function exitBeforeStartup(
  service: string,
  error: unknown,
  end: Pick<ProcessEnd, 'exit'> = PROCESS_END,
): void {
  const logger = createLogger({ service, level: 'info' });
  if (error instanceof ConfigError) {
    logger.fatal({ problems: error.problems }, 'invalid configuration');
  } else {
    logger.fatal({ err: error }, 'could not start');
  }
  end.exit(1);
}
