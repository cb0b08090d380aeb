/**
 * The admin token check and TLS credentials.
 *
 * Admin RPCs (creating experiments, registering models, …) require `authorization: Bearer <token>`
 * when `TANDEM_ADMIN_TOKEN` is set. The comparison is constant-time so the token cannot be guessed
 * byte by byte from response times. Data-plane RPCs (Resolve, Rank, GetOnlineFeatures) are not
 * checked here: they are protected at the network layer (mTLS, mesh policy).
 */
import { createHash, timingSafeEqual, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import { ChannelCredentials, ServerCredentials, type Metadata } from '@grpc/grpc-js';
import { PermissionDeniedError, UnauthenticatedError } from '../errors';

/** Checks a call's metadata; throws when the caller may not use an admin RPC. */
export interface AdminAuth {
  check(metadata: Metadata): void;
}

/** The scheme of `authorization`, lowercased, with the space after it. */
const SCHEME = 'bearer ';

function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/** An `AdminAuth` accepting exactly `token`; undefined (no check) when no token is configured. */
export function bearerTokenAuth(token: string | undefined): AdminAuth | undefined {
  if (token === undefined) return undefined;
  const expected = digest(token);
  return {
    check(metadata) {
      const header = metadata.get('authorization')[0];
      const value = typeof header === 'string' ? header : header?.toString('utf8');
      // The scheme is case-insensitive (RFC 7235 §2.1): proxies and clients may lowercase it.
      if (value === undefined || value.slice(0, SCHEME.length).toLowerCase() !== SCHEME) {
        throw new UnauthenticatedError(
          'this RPC requires an admin token: send "authorization: Bearer <token>"',
          {
            reason: 'ADMIN_TOKEN_MISSING',
          },
        );
      }
      // Hashing first makes both sides the same length, as timingSafeEqual requires.
      if (!timingSafeEqual(digest(value.slice(SCHEME.length)), expected)) {
        throw new PermissionDeniedError('the admin token is not valid', {
          reason: 'ADMIN_TOKEN_INVALID',
        });
      }
    },
  };
}

/** TLS file paths, as in `PlatformConfig.tls`. */
export interface TlsFiles {
  readonly certFile: string;
  readonly keyFile: string;
  readonly caFile: string | undefined;
}

/** The contents of the TLS files. */
interface TlsContents {
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly ca: Buffer | null;
}

/**
 * Reads the TLS files and checks them as TLS will take them, so that a file of the wrong kind (a
 * key where the certificate goes, a certificate of another key, a truncated bundle) stops the
 * start naming its variable and path. Otherwise grpc-js fails to bind with OpenSSL's bare
 * message ("PEM routines::no start line"), or a CA it cannot parse fails every handshake later.
 */
function tlsContents(tls: TlsFiles): TlsContents {
  const cert = readFileSync(tls.certFile);
  const key = readFileSync(tls.keyFile);
  const ca = tls.caFile ? readFileSync(tls.caFile) : null;
  const check = (problem: string, test: () => void): void => {
    try {
      test();
    } catch (error) {
      const reason = error instanceof Error ? error.message : String(error);
      throw new Error(`${problem} (${reason})`, { cause: error });
    }
  };
  const cited = (name: string, path: string) => `${name} ("${path}")`;
  const certName = cited('TANDEM_TLS_CERT_FILE', tls.certFile);
  const keyName = cited('TANDEM_TLS_KEY_FILE', tls.keyFile);
  check(`${certName} is not a PEM certificate chain`, () => createSecureContext({ cert }));
  check(`${keyName} is not a PEM private key`, () => createSecureContext({ key }));
  check(`${keyName} is not the key of ${certName}`, () => createSecureContext({ cert, key }));
  if (ca !== null && tls.caFile !== undefined) {
    check(
      `${cited('TANDEM_TLS_CA_FILE', tls.caFile)} is not a PEM certificate bundle`,
      () => new X509Certificate(ca),
    );
  }
  return { cert, key, ca };
}

/** Server credentials: TLS when configured (client certificates required when a CA is given). */
export function serverCredentials(tls: TlsFiles | undefined): ServerCredentials {
  if (!tls) return ServerCredentials.createInsecure();
  const { cert, key, ca } = tlsContents(tls);
  return ServerCredentials.createSsl(ca, [{ cert_chain: cert, private_key: key }], ca !== null);
}

/** Client credentials: TLS verified against the CA when configured, with our certificate for mTLS. */
export function channelCredentials(tls: TlsFiles | undefined): ChannelCredentials {
  if (!tls) return ChannelCredentials.createInsecure();
  const { cert, key, ca } = tlsContents(tls);
  return ChannelCredentials.createSsl(ca, key, cert);
}
