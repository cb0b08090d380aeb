/** A logger whose lines tests read back. */
import { Writable } from 'node:stream';
import { createLogger, type Logger } from '../../src/logging';

/** A logger of `service` whose lines are kept, parsed, in `lines`. */
export function capturedLogger(service: string): {
  lines: Record<string, unknown>[];
  logger: Logger;
} {
  const lines: Record<string, unknown>[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
      done();
    },
  });
  return { lines, logger: createLogger({ service, level: 'info', destination }) };
}
