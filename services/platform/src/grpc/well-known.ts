/**
 * The ranges of protobuf's well-known time types, which the generated code converts without
 * checking (Timestamps to Dates, Durations kept as seconds and nanos): every service checks a
 * request's times against them before it stores or uses them.
 */

/** 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z, in ms: the range of a Timestamp. */
export const MIN_TIMESTAMP_MS = -62_135_596_800_000;
export const MAX_TIMESTAMP_MS = 253_402_300_799_999;

/** Whether `ms` (since the epoch; NaN for an invalid Date) is a time a Timestamp holds. */
export function isTimestampMs(ms: number): boolean {
  return ms >= MIN_TIMESTAMP_MS && ms <= MAX_TIMESTAMP_MS;
}

/**
 * Whether a Duration's nanos are as the spec has them: whole, between -999,999,999 and
 * 999,999,999, and of the seconds' sign (a negative Duration is valid, and each field's range
 * refuses it as out of range). Converted to milliseconds other nanos would silently mean another
 * length (`{1 s, 2e9 ns}` as 3 s, `{1 s, -5 ns}` as 999 ms); the seconds' range is each field's
 * own rule.
 */
export function hasValidNanos(duration: {
  readonly seconds: number;
  readonly nanos: number;
}): boolean {
  const { seconds, nanos } = duration;
  return (
    Number.isInteger(nanos) &&
    nanos > -1e9 &&
    nanos < 1e9 &&
    (seconds > 0 ? nanos >= 0 : seconds < 0 ? nanos <= 0 : true)
  );
}
