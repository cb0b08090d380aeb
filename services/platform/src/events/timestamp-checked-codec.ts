/**
 * An event codec that refuses an event holding a Timestamp with nanos out of range, which the
 * generated decoder would add to the seconds (an `event_time` two seconds later than sent, in
 * another window). Refused as undecodable, the bus terminates the event and counts it as poison,
 * as for any other malformed event.
 */
import { contractRegistry } from '../grpc/descriptor-set';
import { timestampNanosCheck } from '../grpc/timestamp-nanos';
import type { EventCodec } from './bus';

/** `codec` for `typeName` (a contract message), checking Timestamps before decoding. */
export function checkingTimestamps<T>(codec: EventCodec<T>, typeName: string): EventCodec<T> {
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
      if (violations.length > 0) {
        throw new Error(
          `invalid Timestamp: ${violations.map((v) => `${v.field}: ${v.description}`).join('; ')}`,
        );
      }
      return codec.decode(input);
    },
  };
}
