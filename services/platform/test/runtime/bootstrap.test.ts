import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { credentials } from '@grpc/grpc-js';
import { EchoServiceService } from '../../../../gen/ts/tandem/echo/v1/echo_service';
import { bootstrap } from '../../src/bootstrap';
import { EnvReader, readPlatformConfig } from '../../src/config';
import { createClient } from '../../src/grpc/client';
import { implement } from '../../src/grpc/handlers';
import { createLogger } from '../../src/logging';
import { echoHandlers } from '../support/echo';

describe('bootstrap', () => {
  it('starts a service on embedded storage and the in-process bus, serves, and shuts down in reverse', async () => {
    const dataDir = mkdtempSync(join(tmpdir(), 'tandem-bootstrap-'));
    const env = new EnvReader({
      TANDEM_ECHO_PORT: '0',
      TANDEM_GRPC_HOST: '127.0.0.1',
      TANDEM_DATA_DIR: dataDir,
      LOG_LEVEL: 'silent',
    });
    const config = readPlatformConfig(env, 'echo', 0);
    env.finish();

    const runtime = await bootstrap(config);
    expect(runtime.store.kind).toBe('embedded');
    expect(runtime.bus.kind).toBe('in-process');
    runtime.server.add(
      EchoServiceService,
      implement(EchoServiceService, echoHandlers(), { logger: runtime.logger }),
    );
    const port = await runtime.serve();

    const client = createClient(EchoServiceService, {
      address: `127.0.0.1:${port}`,
      credentials: credentials.createInsecure(),
    });
    await expect(
      client.echo({ message: 'up', failWithCode: 0, requireMessage: false }),
    ).resolves.toMatchObject({ message: 'up' });
    client.close();

    await runtime.shutdown.run(2000);
    await expect(runtime.store.ping()).rejects.toThrow();
    rmSync(dataDir, { recursive: true, force: true });
  });

  it.each([
    ['without TANDEM_ADMIN_TOKEN, warns that admin RPCs are open', undefined, 1],
    ['with TANDEM_ADMIN_TOKEN, does not', 's3cret-admin-token', 0],
  ])('%s', async (_name, token, warnings) => {
    const dataDir = mkdtempSync(join(tmpdir(), 'tandem-bootstrap-'));
    const env = new EnvReader({
      TANDEM_ECHO_PORT: '0',
      TANDEM_GRPC_HOST: '127.0.0.1',
      TANDEM_DATA_DIR: dataDir,
      TANDEM_ADMIN_TOKEN: token,
    });
    const config = readPlatformConfig(env, 'echo', 0);
    env.finish();
    const lines: { level: string; msg: string }[] = [];
    const destination = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(JSON.parse(chunk.toString('utf8')) as { level: string; msg: string });
        done();
      },
    });
    const runtime = await bootstrap(config, {
      logger: createLogger({ service: 'echo', level: 'info', destination }),
    });
    await runtime.shutdown.run(2000);
    rmSync(dataDir, { recursive: true, force: true });
    const open = lines.filter((l) => l.level === 'warn' && l.msg.includes('TANDEM_ADMIN_TOKEN'));
    expect(open).toHaveLength(warnings);
    // The token itself is never logged.
    expect(JSON.stringify(lines)).not.toContain('s3cret-admin-token');
  });
});
