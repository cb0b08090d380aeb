/**
 * A call answered UNAVAILABLE because a dependency failed tells the caller which dependency, not
 * what it said; the operator finds what it said (the host it could not reach) in the log, once per
 * interval per method however many calls fail.
 */
import { credentials, status as GrpcCode } from '@grpc/grpc-js';
import { EchoServiceService } from '../../../../gen/ts/tandem/echo/v1/echo_service';
import { UnavailableError } from '../../src/errors';
import { createClient } from '../../src/grpc/client';
import { implement } from '../../src/grpc/handlers';
import { capturedLogger } from '../support/captured-logger';
import { testServer } from '../support/echo';
import { failure } from '../support/failure';

it('logs the dependency behind UNAVAILABLE answers once per interval, and never shows it to the caller', async () => {
  const { lines, logger } = capturedLogger('unavailable-test');
  const { server } = testServer(4 * 1024 * 1024, logger);
  let withCause = true;
  server.add(
    EchoServiceService,
    implement(
      EchoServiceService,
      {
        echo: () =>
          Promise.reject(
            new UnavailableError(
              'storage is unavailable; retry with backoff',
              withCause ? { cause: new Error('connect ECONNREFUSED 10.1.2.3:27017') } : {},
            ),
          ),
      },
      { logger },
    ),
  );
  const port = await server.listen('127.0.0.1', 0);
  server.setServing(true);
  const client = createClient(EchoServiceService, {
    address: `127.0.0.1:${port}`,
    credentials: credentials.createInsecure(),
  });
  try {
    const request = { message: 'hi', failWithCode: 0, requireMessage: false };
    for (let i = 0; i < 3; i++) {
      const error = await failure(client.echo(request));
      expect(error.code).toBe(GrpcCode.UNAVAILABLE);
      expect(error.message).not.toContain('10.1.2.3');
    }
    withCause = false;
    await failure(client.echo(request));
    const logged = lines.filter((l) => l.msg === 'answered UNAVAILABLE: a dependency failed');
    expect(logged).toHaveLength(1);
    expect(logged[0]).toMatchObject({ rpc: '/tandem.echo.v1.EchoService/Echo', failures: 1 });
    expect(JSON.stringify(logged[0]?.err)).toContain('ECONNREFUSED 10.1.2.3:27017');
  } finally {
    client.close();
    await server.shutdown(1000);
  }
});
