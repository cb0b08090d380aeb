/**
 * The trace of a streaming aggregation. An outcome event's consumer span must
 * be linked to (or be the child of) the publish that caused it, and background work of the
 * aggregation (its checkpoints) must not be attributed to the ApplyFeatureView call that created it.
 */
import { SpanKind, trace } from '@opentelemetry/api';
import { OutcomeEvent } from '../../../gen/ts/tandem/events/v1/outcome_event';
import type { EventBus } from '../../platform/src/events/bus';
import { connectNatsBus } from '../../platform/src/events/nats-bus';
import { overridingCollections } from '../../platform/test/support/wrapped-store';
import { describeWithNats, natsUrl, uniqueName } from '../../platform/test/support/integration';
import { installTestTracing, type TestTracing } from '../../platform/test/support/tracing';
import {
  eventually,
  startHarness,
  temporaryDataDir,
  type RunningHarness,
} from './support/feature-store-harness';
import { itemEntity, itemPlaysView, outcome } from './support/fixtures';

describeWithNats('FeatureStore aggregation traces', () => {
  let tracing: TestTracing;
  let bus: EventBus;
  let harness: RunningHarness;
  /** The trace active at each checkpoint write of this test's view. */
  const checkpointTraces: (string | undefined)[] = [];
  const name = uniqueName('play').toLowerCase();
  const subject = `tandem.events.v1.outcome.${name}`;

  beforeAll(async () => {
    tracing = installTestTracing();
    bus = await connectNatsBus({ servers: natsUrl!, name: 'aggregation-trace-test' });
    harness = await startHarness({
      dataDir: temporaryDataDir(),
      natsUrl: natsUrl!,
      wrapStore: (store) =>
        overridingCollections(store, (collection, spec) => {
          if (spec.name !== 'aggregation_checkpoints') return {};
          const record = (): void => {
            checkpointTraces.push(trace.getActiveSpan()?.spanContext().traceId);
          };
          const c = collection as unknown as Record<string, (...a: unknown[]) => unknown>;
          const overrides: Record<string, unknown> = {};
          for (const method of ['upsert', 'replace', 'insert', 'put', 'update', 'set']) {
            const own = c[method];
            if (typeof own === 'function') {
              overrides[method] = (...args: unknown[]) => {
                record();
                return own.apply(collection, args);
              };
            }
          }
          return overrides;
        }),
    });
  });

  afterAll(async () => {
    await harness.stop();
    await bus.close();
    await tracing.shutdown();
  });

  it('does not attribute the checkpoints of later, unrelated events to the ApplyFeatureView call that created the view', async () => {
    // Events published before the view exists are replayed in one batch when it starts.
    const producers: string[] = [];
    for (let i = 0; i < 5; i++) {
      await trace.getTracer('test').startActiveSpan(`backend ${i}`, async (span) => {
        await bus.publish(subject, OutcomeEvent, outcome(`item-${i}`, `user-${i}`, { name }), {
          eventId: uniqueName('evt'),
        });
        producers.push(span.spanContext().traceId);
        span.end();
      });
    }
    const applyTrace = await trace.getTracer('test').startActiveSpan('admin tool', async (span) => {
      await harness.client.applyEntity({ entity: itemEntity, requestId: '' });
      await harness.client.applyFeatureView({
        featureView: itemPlaysView(name, subject),
        requestId: '',
        validateOnly: false,
      });
      span.end();
      return span.spanContext().traceId;
    });

    // The aggregation's consumer span(s) for the replayed events.
    let consumers: ReturnType<typeof tracing.exporter.getFinishedSpans> = [];
    await eventually(async () => {
      consumers = tracing.exporter
        .getFinishedSpans()
        .filter((s) => s.kind === SpanKind.CONSUMER && s.name === `process ${subject}`);
      const covered = new Set(
        consumers.flatMap((s) => [
          s.spanContext().traceId,
          ...s.links.map((l) => l.context.traceId),
        ]),
      );
      for (const producer of producers) expect(covered).toContain(producer);
      return Promise.resolve();
    }, 10_000);

    // Later events (no trace of their own) are checkpointed well after ApplyFeatureView ended.
    checkpointTraces.length = 0;
    await bus.publish(subject, OutcomeEvent, outcome('item-late', 'user-late', { name }), {
      eventId: uniqueName('evt'),
    });
    await eventually(() => {
      expect(checkpointTraces.length).toBeGreaterThan(0);
      return Promise.resolve();
    }, 10_000);
    expect(checkpointTraces).not.toContain(applyTrace);
  });
});
