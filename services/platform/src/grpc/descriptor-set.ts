/**
 * The descriptor set `make gen` writes (`gen/descriptor/tandem.binpb`, with comments and every
 * import): served by reflection, and read to explain a request the generated decoder refused.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import {
  createFileRegistry,
  fromBinary,
  type DescMessage,
  type FileRegistry,
} from '@bufbuild/protobuf';
import { FileDescriptorSetSchema } from '@bufbuild/protobuf/wkt';

/**
 * The descriptor set's path, found by walking up from this file, so it resolves both from sources
 * (jest) and from the compiled `dist/` tree.
 */
export function findDescriptorSet(from: string = __dirname): string {
  for (let dir = from; ; dir = dirname(dir)) {
    const candidate = join(dir, 'gen', 'descriptor', 'tandem.binpb');
    if (existsSync(candidate)) return candidate;
    if (dirname(dir) === dir) {
      throw new Error(`gen/descriptor/tandem.binpb not found above ${from}: run make gen`);
    }
  }
}

let registry: FileRegistry | undefined;

/** Every message and service of the contracts, loaded on first use. */
export function contractRegistry(): FileRegistry {
  registry ??= createFileRegistry(
    fromBinary(FileDescriptorSetSchema, readFileSync(findDescriptorSet())),
  );
  return registry;
}

/**
 * The request message of a gRPC method path (`/tandem.x.v1.Service/Method`), if it is a
 * contract's. Throws when the descriptor set cannot be found.
 */
export function requestMessage(methodPath: string): DescMessage | undefined {
  const [, serviceName, methodName] = methodPath.split('/');
  if (serviceName === undefined || methodName === undefined) return undefined;
  const service = contractRegistry().getService(serviceName);
  return service?.methods.find((method) => method.name === methodName)?.input;
}
