/**
 * pino logging with the active trace: every line logged inside a traced call carries `trace_id`
 * and `span_id`, so a log line leads to its trace and back.
 */
import { trace } from '@opentelemetry/api';
import { pino, type Logger, type LevelWithSilent, type DestinationStream } from 'pino';

export type { Logger } from 'pino';

export interface LoggerOptions {
  readonly service: string;
  readonly level: LevelWithSilent;
  /** Where lines go. @default standard output */
  readonly destination?: DestinationStream;
}

/** The service's root logger; handlers get children of it. */
export function createLogger(options: LoggerOptions): Logger {
  const base = { service: options.service };
  const settings = {
    level: options.level,
    base,
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label: string) => ({ level: label }) },
    mixin() {
      const span = trace.getActiveSpan();
      if (!span) return {};
      const { traceId, spanId } = span.spanContext();
      return { trace_id: traceId, span_id: spanId };
    },
  };
  return options.destination ? pino(settings, options.destination) : pino(settings);
}
