/**
 * Event codecs that read an event's Timestamps before the generated decoder does, which would add
 * nanos outside [0, 999,999,999] to the seconds (an `event_time` two seconds later than sent, in
 * another window).
 *
 * By default such an event is refused as undecodable: the bus terminates it and counts it as
 * poison, as for any other malformed event. A consumer whose events stay useful without the
 * Timestamp (an informational time beside data that must not be lost) passes `repair`, which gets
 * the decoded event and the paths of its bad Timestamps (proto field names: `compute_time`) and
 * returns the event without them; an event `repair` cannot mend (it returns `undefined`) is refused.
 * Bytes that are not well-formed protobuf (on the way to a Timestamp: a field number 0, a stray
 * end-group tag, a packed field of partial elements; see `wire-check.ts`) are refused either way.
 */
import type { FieldViolation } from '../errors';
import { contractRegistry } from '../grpc/descriptor-set';
import { timestampNanosCheck } from '../grpc/wire-check';
import type { EventCodec } from './bus';

/** Mends an event whose Timestamps at `paths` were bad, or says it cannot (`undefined`). */
export type TimestampRepair<T> = (event: T, paths: readonly string[]) => T | undefined;

function described(violations: readonly FieldViolation[]): string {
  return violations.map((v) => `${v.field}: ${v.description}`).join('; ');
}

/** `codec` for `typeName` (a contract message), checking Timestamps before decoding. */
export function checkingTimestamps<T>(
  codec: EventCodec<T>,
  typeName: string,
  repair?: TimestampRepair<T>,
): EventCodec<T> {
  let check: ReturnType<typeof timestampNanosCheck>;
  try {
    const schema = contractRegistry().getMessage(typeName);
    check = schema === undefined ? undefined : timestampNanosCheck(schema);
  } catch {
    // No descriptor set (a build without `make gen`): decoded unchecked, as before.
  }
  if (check === undefined) return codec;
  const invalid = check;
  return {
    encode: (message) => codec.encode(message),
    decode: (input) => {
      const violations = invalid(input);
      // Not well-formed: the generated decoder may take it anyway, its Timestamps unchecked.
      if (violations === undefined) throw new Error('not well-formed protobuf');
      if (violations.length === 0) return codec.decode(input);
      const mended =
        repair === undefined
          ? undefined
          : repair(
              codec.decode(input),
              violations.map((v) => v.field),
            );
      if (mended === undefined) throw new Error(`invalid Timestamp: ${described(violations)}`);
      return mended;
    },
  };
}
