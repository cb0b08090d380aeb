/**
 * Log correlation on a service that exports no spans (no tracer provider,
 * the default), as the NodeSDK sets it up: W3C trace context and baggage propagators, no provider.
 * A caller that sends `baggage` but no `traceparent` (a gateway adding a tenant) must not get log
 * lines stamped with the all-zero invalid trace id, which every such line would then share.
 */
import { Writable } from 'node:stream';
import { credentials, Metadata } from '@grpc/grpc-js';
import { context, propagation } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import {
  CompositePropagator,
  W3CBaggagePropagator,
  W3CTraceContextPropagator,
} from '@opentelemetry/core';
import { EchoServiceService } from '../../../../gen/ts/tandem/echo/v1/echo_service';
import { createClient } from '../../src/grpc/client';
import { createLogger } from '../../src/logging';
import { startEcho } from '../support/echo';

describe('log lines of a call that brings baggage but no trace', () => {
  beforeAll(() => {
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    propagation.setGlobalPropagator(
      new CompositePropagator({
        propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()],
      }),
    );
  });

  afterAll(() => {
    propagation.disable();
    context.disable();
  });

  it('carry no trace id, rather than the invalid all-zero one', async () => {
    const lines: Record<string, unknown>[] = [];
    const destination = new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
        done();
      },
    });
    const logger = createLogger({ service: 'echo-test', level: 'info', destination });
    const echo = await startEcho({
      logger,
      handlers: {
        echo: (request, ctx) => {
          ctx.logger.info('handling');
          return Promise.resolve({ message: request.message, traceId: '' });
        },
      },
    });
    const client = createClient(EchoServiceService, {
      address: echo.address,
      credentials: credentials.createInsecure(),
    });
    try {
      const metadata = new Metadata();
      metadata.set('baggage', 'tenant=acme');
      await client.echo({ message: 'hi', failWithCode: 0, requireMessage: false }, { metadata });
      const handled = lines.find((line) => line.msg === 'handling');
      expect(handled).toBeDefined();
      expect(handled?.trace_id).not.toBe('00000000000000000000000000000000');
      expect(handled?.span_id).not.toBe('0000000000000000');
    } finally {
      client.close();
      await echo.server.shutdown(1000);
    }
  });
});
