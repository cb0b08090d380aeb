/**
 * Every `grpcurl -d '<json>' localhost:<port> <service>/<method>` example in the READMEs, replayed
 * in order against freshly started services, once as they start and once after the `make dev`
 * simulator has configured them, since the README promises the examples work either way. The JSON
 * is read with the descriptor set the servers serve through reflection — exactly what grpcurl
 * does — so an example that would fail for a user (a misspelt field, a wrong enum name, a call
 * that errors, a definition that clashes with the simulator's) fails here.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client, Metadata, credentials, type ServiceError } from '@grpc/grpc-js';
import { fromBinary, fromJsonString, toBinary, toJson, type JsonValue } from '@bufbuild/protobuf';
import { AssignmentServiceService } from '../../gen/ts/tandem/assignment/v1/assignment_service';
import { FeatureStoreClientDefinition } from '../../services/featurestore/src/online-response-decoder';
import { createClient } from '../../services/platform/src/grpc/client';
import { contractRegistry } from '../../services/platform/src/grpc/descriptor-set';
import { configure } from '../simulator';
import { startDevServices, type DevServices } from './support/services';

const ROOT = join(__dirname, '..', '..');
const READMES = ['README.md', 'services/featurestore/README.md'];

interface Example {
  readonly file: string;
  readonly port: number;
  readonly service: string;
  readonly method: string;
  readonly json: string;
}

/**
 * The one shell substitution examples may use inside their JSON: the current UTC time, so that an
 * example's event time is never older than its view's TTL, whenever it is run.
 */
const NOW_IN_SHELL = `'"$(date -u +%FT%TZ)"'`;

/** The grpcurl calls with a request body in the README's shell blocks, in order. */
function examplesOf(file: string): Example[] {
  const text = readFileSync(join(ROOT, file), 'utf8');
  const examples: Example[] = [];
  for (const block of text.matchAll(/```sh\n([\s\S]*?)```/g)) {
    const call =
      /grpcurl\s+-plaintext\s+(?:-H\s+'[^']*'\s+)*-d\s+'((?:[^']|'"\$\(date -u \+%FT%TZ\)"')*)'\s*\\?\s*localhost:(\d+)\s+([\w.]+)\/(\w+)/g;
    for (const m of (block[1] ?? '').matchAll(call)) {
      const [, body = '', port = '0', service = '', method = ''] = m;
      // What the shell makes of it: `date -u +%FT%TZ` prints the time to the second.
      const now = new Date().toISOString().replace(/\.\d{3}Z$/, 'Z');
      const json = body.replaceAll(NOW_IN_SHELL, now);
      examples.push({ file, port: Number(port), service, method, json });
    }
  }
  return examples;
}

describe('the README examples', () => {
  it('exist for both services, and read the time from the shell where they need it', () => {
    const all = READMES.flatMap(examplesOf);
    const write = all.find((e) => e.file === 'README.md' && e.method === 'WriteFeatures');
    expect(write?.json).toMatch(/"event_time": "\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"/);
    expect(all.filter((e) => e.port === 50051).length).toBeGreaterThanOrEqual(4);
    expect(all.filter((e) => e.port === 50052).length).toBeGreaterThanOrEqual(4);
  });
});

describe.each([
  ['on services as they start', false],
  ['after the simulator has configured the services', true],
])('the README examples %s', (_, simulator) => {
  const registry = contractRegistry();
  const ports = new Map<number, number>();
  let services: DevServices | undefined;
  let dataDir: string;

  beforeAll(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'tandem-readme-'));
    services = await startDevServices(dataDir);
    ports.set(50051, services.assignmentPort);
    ports.set(50052, services.featurestorePort);
    if (simulator) {
      const address = (port: number) => `127.0.0.1:${ports.get(port) ?? 0}`;
      const assignmentClient = createClient(AssignmentServiceService, {
        address: address(50051),
        credentials: credentials.createInsecure(),
      });
      const featuresClient = createClient(FeatureStoreClientDefinition, {
        address: address(50052),
        credentials: credentials.createInsecure(),
      });
      try {
        await configure(assignmentClient, featuresClient);
      } finally {
        assignmentClient.close();
        featuresClient.close();
      }
    }
  });

  afterAll(async () => {
    await services?.shutdown();
    rmSync(dataDir, { recursive: true, force: true });
  });

  /** Sends one example like grpcurl: JSON → protobuf by descriptor, response → JSON. */
  async function call(example: Example): Promise<JsonValue> {
    const service = registry.getService(example.service);
    const method = service?.methods.find((m) => m.name === example.method);
    if (!method)
      throw new Error(`${example.file}: unknown method ${example.service}/${example.method}`);
    const request = toBinary(
      method.input,
      fromJsonString(method.input, example.json, { registry }),
    );
    const port = ports.get(example.port);
    if (port === undefined)
      throw new Error(`${example.file}: no service on README port ${example.port}`);
    const client = new Client(`127.0.0.1:${port}`, credentials.createInsecure());
    try {
      const response = await new Promise<Buffer>((resolve, reject) => {
        client.makeUnaryRequest(
          `/${example.service}/${example.method}`,
          (b: Buffer) => b,
          (b: Buffer) => b,
          Buffer.from(request),
          new Metadata(),
          (error: ServiceError | null, value?: Buffer) => {
            if (error)
              reject(new Error(`${example.file}: ${example.method} failed: ${error.message}`));
            else resolve(value!);
          },
        );
      });
      return toJson(method.output, fromBinary(method.output, response), { registry });
    } finally {
      client.close();
    }
  }

  it.each(READMES)('in %s all succeed, in order, and answer what the text says', async (file) => {
    const responses = new Map<string, JsonValue>();
    for (const example of examplesOf(file)) responses.set(example.method, await call(example));

    if (file === 'README.md') {
      const resolved = JSON.stringify(responses.get('Resolve'));
      expect(resolved).toContain('one-click-buy');
    }
    // The first entity was just written, within the view's TTL; the second never was.
    const read = responses.get('GetOnlineFeatures') as { columns?: { statuses?: string[] }[] };
    expect(read.columns?.[0]?.statuses).toEqual([
      'FEATURE_STATUS_PRESENT',
      'FEATURE_STATUS_NOT_FOUND',
    ]);
  });
});
