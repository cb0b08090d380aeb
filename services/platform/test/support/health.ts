/** A `grpc.health.v1` client for tests, loaded from the proto that grpc-health-check ships. */
import {
  credentials,
  loadPackageDefinition,
  type Client,
  type ChannelCredentials,
  type ServiceError,
} from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';

export type HealthClient = Client & {
  check(
    request: { service: string },
    callback: (error: ServiceError | null, response?: { status: string }) => void,
  ): void;
};

export function healthClient(address: string): HealthClient {
  const definition = loadSync(require.resolve('grpc-health-check/proto/health/v1/health.proto'), {
    enums: String,
  });
  const pkg = loadPackageDefinition(definition) as unknown as {
    grpc: {
      health: {
        v1: { Health: new (address: string, creds: ChannelCredentials) => HealthClient };
      };
    };
  };
  return new pkg.grpc.health.v1.Health(address, credentials.createInsecure());
}

/** The status `service` reports (`''` is the whole server), e.g. `SERVING`. */
export const checkHealth = (client: HealthClient, service: string): Promise<string> =>
  new Promise<string>((resolve, reject) => {
    client.check({ service }, (error, response) => {
      if (error) reject(error);
      else resolve(response!.status);
    });
  });
