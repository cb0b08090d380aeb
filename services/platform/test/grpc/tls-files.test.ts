/**
 * TLS from the files `TANDEM_TLS_*` name: a server and a client with a certificate, its key and a
 * CA talk (client certificates required), and a file of the wrong kind stops the start naming its
 * variable and path rather than with OpenSSL's bare message at bind time. The fixtures in
 * `support/tls` are a self-signed certificate for localhost and 127.0.0.1 (valid until 2126), its
 * key, and another key.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EchoServiceService } from '../../../../gen/ts/tandem/echo/v1/echo_service';
import { channelCredentials, serverCredentials, type TlsFiles } from '../../src/grpc/auth';
import { createClient } from '../../src/grpc/client';
import { implement } from '../../src/grpc/handlers';
import { GrpcServer } from '../../src/grpc/server';
import { createLogger } from '../../src/logging';
import { echoHandlers } from '../support/echo';

const fixture = (name: string) => join(__dirname, '..', 'support', 'tls', name);
const files: TlsFiles = {
  certFile: fixture('cert.pem'),
  keyFile: fixture('key.pem'),
  caFile: fixture('cert.pem'),
};

describe('TLS files', () => {
  let dir: string;

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'tandem-tls-'));
  });

  afterAll(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  /** A file holding `text`. */
  const written = (name: string, text: string): string => {
    const path = join(dir, name);
    writeFileSync(path, text);
    return path;
  };

  it('serve and call over mutual TLS', async () => {
    const logger = createLogger({ service: 'tls-test', level: 'silent' });
    const server = new GrpcServer({
      logger,
      credentials: serverCredentials(files),
      maxMessageBytes: 4 * 1024 * 1024,
      keepaliveTimeMs: 30_000,
      keepaliveTimeoutMs: 10_000,
    });
    server.add(
      EchoServiceService,
      implement(EchoServiceService, echoHandlers(), { logger, adminMethods: [] }),
    );
    const port = await server.listen('127.0.0.1', 0);
    server.setServing(true);
    const client = createClient(EchoServiceService, {
      address: `127.0.0.1:${port}`,
      credentials: channelCredentials(files),
    });
    try {
      const answer = await client.echo({
        message: 'over tls',
        failWithCode: 0,
        requireMessage: false,
      });
      expect(answer.message).toBe('over tls');
    } finally {
      client.close();
      await server.shutdown(1000);
    }
  });

  it.each([
    [
      'a key where the certificate goes',
      () => ({ ...files, certFile: fixture('key.pem') }),
      /^TANDEM_TLS_CERT_FILE \(".*key\.pem"\) is not a PEM certificate chain \(.+\)$/,
    ],
    [
      'a certificate where the key goes',
      () => ({ ...files, keyFile: fixture('cert.pem') }),
      /^TANDEM_TLS_KEY_FILE \(".*cert\.pem"\) is not a PEM private key \(.+\)$/,
    ],
    [
      'the key of another certificate',
      () => ({ ...files, keyFile: fixture('other-key.pem') }),
      /^TANDEM_TLS_KEY_FILE \(".*other-key\.pem"\) is not the key of TANDEM_TLS_CERT_FILE \(".*cert\.pem"\)/,
    ],
    [
      'a CA bundle that holds no certificate',
      () => ({ ...files, caFile: written('ca.pem', 'not a certificate\n') }),
      /^TANDEM_TLS_CA_FILE \(".*ca\.pem"\) is not a PEM certificate bundle \(.+\)$/,
    ],
  ])('stop the start naming the variable for %s', (_what, tls, message) => {
    expect(() => serverCredentials(tls())).toThrow(message);
    expect(() => channelCredentials(tls())).toThrow(message);
  });
});
