/**
 * NATS server URLs as operators write them (`NATS_URL`: comma-separated, scheme optional, with
 * credentials as `user:password@` or `token@`): split, checked, and shown without credentials.
 */

/** The entries of a server list, trimmed, empty ones dropped. */
export function serverList(servers: string | readonly string[]): string[] {
  const list = typeof servers === 'string' ? servers.split(',') : [...servers];
  return list.map((server) => server.trim()).filter((server) => server.length > 0);
}

/** A URL's scheme and `//`. */
const SCHEME = /^[a-z][a-z0-9+.-]*:\/\//i;

/**
 * Credentials in a server URL (`nats://user:password@host`, `token@host`): everything up to the
 * last `@`, since a password may hold `@` or `/` (a server URL has no path to hold one).
 */
const URL_CREDENTIALS = /^([a-z][a-z0-9+.-]*:\/\/)?.*@/i;

/** A server URL as it may be logged: its credentials replaced by `***`. */
export function withoutCredentials(server: string): string {
  return server.replace(URL_CREDENTIALS, '$1***@');
}

/** Schemes the Node.js NATS client connects with (WebSockets take another client). */
const SCHEMES = new Set(['nats:', 'tls:']);

/**
 * What is wrong with each unusable entry of `servers` (shown without credentials), or nothing.
 * An entry without a scheme is a `nats://` one, as the client reads it.
 */
export function serverUrlProblems(servers: string): string[] {
  const entries = serverList(servers);
  if (entries.length === 0) return ['names no server'];
  const problems: string[] = [];
  for (const entry of entries) {
    const shown = withoutCredentials(entry);
    let url: URL;
    try {
      url = new URL(SCHEME.test(entry) ? entry : `nats://${entry}`);
    } catch {
      problems.push(`"${shown}" is not a server URL like nats://host:4222`);
      continue;
    }
    if (!SCHEMES.has(url.protocol)) {
      problems.push(`"${shown}" must use nats:// or tls://, not ${url.protocol}//`);
    } else if (url.hostname === '') {
      problems.push(`"${shown}" names no host`);
    }
  }
  return problems;
}
