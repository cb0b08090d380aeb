/**
 * Request bytes with a Timestamp a generated client cannot write: its nanos outside
 * [0, 999,999,999] (the generated code holds Timestamps as Dates). The request is decoded and
 * encoded again by bufbuild's runtime from the contracts' descriptor set, with one Timestamp's
 * nanos changed, so the bytes do not depend on the code under test.
 */
import { fromBinary, toBinary } from '@bufbuild/protobuf';
import { reflect, type ReflectList, type ReflectMessage } from '@bufbuild/protobuf/reflect';
import { contractRegistry } from '../../src/grpc/descriptor-set';

function fieldOf(message: ReflectMessage, name: string) {
  const field = message.fields.find((f) => f.name === name);
  if (field === undefined) throw new Error(`${message.desc.typeName} has no field ${name}`);
  return field;
}

/**
 * `bytes`, a `typeName` message, with the nanos of the Timestamp at `path` (proto field names,
 * list items as `rows[1]`; the Timestamp must be set) replaced by `nanos`, and `trailing` bytes
 * appended (to make it malformed in ways a lenient decoder accepts).
 */
export function withTimestampNanos(
  typeName: string,
  bytes: Uint8Array,
  path: string,
  nanos: number,
  trailing: readonly number[] = [],
): Buffer {
  const schema = contractRegistry().getMessage(typeName);
  if (schema === undefined) throw new Error(`no message ${typeName} in the contracts`);
  const root = reflect(schema, fromBinary(schema, bytes));
  let message = root;
  for (const segment of path.split('.')) {
    const [, name = segment, index] = /^(\w+)(?:\[(\d+)\])?$/.exec(segment) ?? [];
    const field = fieldOf(message, name);
    const value: unknown = message.get(field);
    message =
      index === undefined
        ? (value as ReflectMessage)
        : ((value as ReflectList).get(Number(index)) as ReflectMessage);
  }
  message.set(fieldOf(message, 'nanos'), nanos);
  return Buffer.concat([toBinary(schema, root.message), Uint8Array.from(trailing)]);
}
