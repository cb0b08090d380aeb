/**
 * pino logging with the active trace: every line logged inside a traced call carries `trace_id`
 * and `span_id`, so a log line leads to its trace and back. Logged errors (`err`) have the
 * credentials of any URL in them replaced, causes included.
 */
import { isSpanContextValid, trace } from '@opentelemetry/api';
import { pino, type Logger, type LevelWithSilent, type DestinationStream } from 'pino';
import { causeChain } from './errors';

export type { Logger } from 'pino';

export interface LoggerOptions {
  readonly service: string;
  readonly level: LevelWithSilent;
  /** Where lines go. @default standard output */
  readonly destination?: DestinationStream;
}

/**
 * A URL's credentials in free text: from a scheme's `//` to the last `@` before the next
 * whitespace, since a password may hold `@` or `/`.
 */
const URL_CREDENTIALS = /([a-z][a-z0-9+.-]*:\/\/)\S*@/gi;

/** `text` with the credentials of every URL in it (`mongodb://user:password@host`) as `***`. */
export function withoutUrlCredentials(text: string): string {
  return text.replace(URL_CREDENTIALS, '$1***@');
}

/**
 * A warning for failures that come with every call while a dependency is down: logged with the
 * error at most once per `intervalMs`, saying how many failures it stands for (`failures`, this
 * one and those unlogged since the last line).
 */
export function rateLimitedWarning(
  logger: Logger,
  message: string,
  intervalMs: number,
): (error: unknown) => void {
  let failures = 0;
  let warnedAt = -Infinity;
  return (error) => {
    failures++;
    const now = Date.now();
    if (now - warnedAt < intervalMs) return;
    logger.warn({ err: error, failures }, message);
    warnedAt = now;
    failures = 0;
  };
}

/**
 * `error`'s message followed by its causes' (`a: b`, as `err` is logged), URL credentials taken
 * out, for a log field that holds text. A message callers are shown names only the dependency
 * that failed; what the dependency said is in the cause, and belongs in the log line.
 */
export function errorText(error: unknown): string {
  const messages = causeChain(error).map((e) => e.message);
  return withoutUrlCredentials(messages.length > 0 ? messages.join(': ') : String(error));
}

/** How deep `redacted` looks into an error's serialized properties. */
const MAX_REDACTION_DEPTH = 4;

/**
 * `value` with `withoutUrlCredentials` applied to every string in it, to `depth` levels, through
 * arrays and plain objects (copied: they may be the error's own). Other objects are left as they
 * are.
 */
function redacted(value: unknown, depth: number): unknown {
  if (typeof value === 'string') return withoutUrlCredentials(value);
  if (value instanceof URL) return withoutUrlCredentials(value.href);
  if (depth === 0 || value === null || typeof value !== 'object') return value;
  if (Array.isArray(value)) return value.map((item) => redacted(item, depth - 1));
  const prototype: unknown = Object.getPrototypeOf(value);
  // A nested error pino serialized (an AggregateError's, or a property holding one): fresh.
  if (prototype === SERIALIZED_ERROR) return redactedProperties(value, depth);
  if (prototype !== Object.prototype && prototype !== null) return value;
  return redactedProperties({ ...(value as Record<string, unknown>) }, depth);
}

/** The prototype of the objects pino's error serializer makes. */
const SERIALIZED_ERROR: unknown = Object.getPrototypeOf(pino.stdSerializers.err(new Error()));

/** `target` (a fresh object) with its own enumerable properties redacted in place. */
function redactedProperties<T extends object>(target: T, depth: number): T {
  const properties = target as Record<string, unknown>;
  for (const key of Object.keys(properties)) {
    properties[key] = redacted(properties[key], depth - 1);
  }
  return target;
}

/**
 * pino's error serializer (message and stack with their causes', the error's own properties),
 * then the credentials of URLs taken out: a driver's error may quote a connection string, and a
 * cause's message is appended to the logged one.
 */
function serializeError(error: unknown): unknown {
  const serialized: unknown = pino.stdSerializers.err(error as Error);
  // Not an error: logged as it is, strings redacted all the same.
  if (serialized === error) return redacted(error, MAX_REDACTION_DEPTH);
  // A fresh object (pino's error prototype, with a hidden `raw`).
  return redactedProperties(serialized as object, MAX_REDACTION_DEPTH);
}

/** The service's root logger; handlers get children of it. */
export function createLogger(options: LoggerOptions): Logger {
  const base = { service: options.service };
  const settings = {
    level: options.level,
    base,
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label: string) => ({ level: label }) },
    serializers: { err: serializeError },
    mixin() {
      const span = trace.getActiveSpan();
      if (!span) return {};
      // A call that brought baggage but no valid trace runs in a span without one (all zeros),
      // which would join every such call's lines under one id.
      const spanContext = span.spanContext();
      if (!isSpanContextValid(spanContext)) return {};
      return { trace_id: spanContext.traceId, span_id: spanContext.spanId };
    },
  };
  return options.destination ? pino(settings, options.destination) : pino(settings);
}
