/**
 * Chooses a service's storage adapter: MongoDB when a URI is configured (production), else the
 * embedded LMDB store on local disk (dev mode, one machine, no server). Services call this once
 * in `main.ts` with values from their `config.ts`.
 */
import { join } from 'node:path';
import { InvalidArgumentError } from '../errors';
import type { DocumentStore } from './collection';
import { openEmbeddedStore } from './embedded-store';
import { openMongoStore } from './mongo-store';

export interface OpenStoreOptions {
  /** The service's name, for example `assignment`; names its database and data folder. */
  readonly service: string;
  /** `MONGODB_URI`. When set, the service uses database `tandem_<service>` on that server. */
  readonly mongodbUri?: string;
  /** `TANDEM_DATA_DIR`: the embedded store lives in `<dataDir>/<service>`. */
  readonly dataDir: string;
}

/** Lower-case words joined by `-` or `_`: valid as a MongoDB database name and a folder name. */
const SERVICE_NAME = /^[a-z][a-z0-9_-]{0,39}$/;

/** Opens the service's store; throws `UnavailableError` when MongoDB is configured but unreachable. */
export async function openStore(options: OpenStoreOptions): Promise<DocumentStore> {
  if (!SERVICE_NAME.test(options.service)) {
    throw new InvalidArgumentError(`invalid service name "${options.service}"`, [
      { field: 'service', description: 'lower-case letters, digits, "-" or "_", up to 40' },
    ]);
  }
  if (options.mongodbUri) {
    return openMongoStore({
      uri: options.mongodbUri,
      database: `tandem_${options.service.replaceAll('-', '_')}`,
      appName: `tandem-${options.service}`,
    });
  }
  return openEmbeddedStore({ path: join(options.dataDir, options.service) });
}
