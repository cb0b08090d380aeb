/**
 * What the OpenTelemetry start-up exports: nothing unless the standard OTEL_* variables ask for
 * it. The SDK's own default registers an OTLP metric exporter to `localhost:4318` whenever
 * OTEL_METRICS_EXPORTER is unset; Tandem must not send anything anywhere unasked.
 */
import { metrics } from '@opentelemetry/api';
import {
  serviceNameOf,
  startTelemetry,
  wantsMetricExport,
  wantsTraceExport,
} from '../../src/telemetry/sdk';

describe('wantsTraceExport', () => {
  it('is true only when an exporter or an OTLP endpoint is named, a blank one counting as unset', () => {
    expect(wantsTraceExport({})).toBe(false);
    expect(wantsTraceExport({ OTEL_TRACES_EXPORTER: 'otlp' })).toBe(true);
    expect(wantsTraceExport({ OTEL_TRACES_EXPORTER: 'otlp, none' })).toBe(false);
    expect(wantsTraceExport({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' })).toBe(true);
    expect(wantsTraceExport({ OTEL_EXPORTER_OTLP_ENDPOINT: ' ' })).toBe(false);
    expect(
      wantsTraceExport({ OTEL_TRACES_EXPORTER: '', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318' }),
    ).toBe(true);
    expect(
      wantsTraceExport({
        OTEL_EXPORTER_OTLP_ENDPOINT: '',
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://c:4318/v1/traces',
      }),
    ).toBe(true);
    expect(wantsTraceExport({ OTEL_METRICS_EXPORTER: 'otlp' })).toBe(false);
  });
});

describe('wantsMetricExport', () => {
  it('is true only when an exporter or an OTLP endpoint is named, and not with "none"', () => {
    expect(wantsMetricExport({})).toBe(false);
    expect(wantsMetricExport({ OTEL_METRICS_EXPORTER: '' })).toBe(false);
    expect(wantsMetricExport({ OTEL_METRICS_EXPORTER: 'prometheus' })).toBe(true);
    expect(wantsMetricExport({ OTEL_METRICS_EXPORTER: 'console, otlp' })).toBe(true);
    expect(wantsMetricExport({ OTEL_METRICS_EXPORTER: 'otlp,none' })).toBe(false);
    expect(wantsMetricExport({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' })).toBe(true);
    expect(
      wantsMetricExport({ OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: 'http://c:4318/v1/metrics' }),
    ).toBe(true);
    expect(
      wantsMetricExport({
        OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318',
        OTEL_METRICS_EXPORTER: 'none',
      }),
    ).toBe(false);
    // The traces' variable alone asks for traces only.
    expect(wantsMetricExport({ OTEL_TRACES_EXPORTER: 'otlp' })).toBe(false);
    // A blank endpoint would be the SDK's default, localhost:4318: not asked.
    expect(wantsMetricExport({ OTEL_EXPORTER_OTLP_ENDPOINT: ' ' })).toBe(false);
    expect(
      wantsMetricExport({
        OTEL_EXPORTER_OTLP_METRICS_ENDPOINT: '',
        OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318',
      }),
    ).toBe(true);
    // The SDK turned off: no exporter either (its Prometheus one would open its port anyway).
    expect(
      wantsMetricExport({ OTEL_SDK_DISABLED: 'true', OTEL_METRICS_EXPORTER: 'prometheus' }),
    ).toBe(false);
  });
});

describe('serviceNameOf', () => {
  it.each([
    [{}, 'tandem-assignment'],
    [{ OTEL_SERVICE_NAME: 'assignment-canary' }, 'assignment-canary'],
    [{ OTEL_SERVICE_NAME: '  ' }, 'tandem-assignment'],
    [{ OTEL_RESOURCE_ATTRIBUTES: 'deployment.environment=prod,service.name=a%20b' }, 'a b'],
    [{ OTEL_RESOURCE_ATTRIBUTES: 'service.name=x', OTEL_SERVICE_NAME: 'y' }, 'y'],
    [{ OTEL_RESOURCE_ATTRIBUTES: 'service.name=%zz' }, 'tandem-assignment'],
    [{ OTEL_RESOURCE_ATTRIBUTES: 'service.namespace=tandem' }, 'tandem-assignment'],
  ])('%j names the service %s', (env, name) => {
    expect(serviceNameOf(env, 'tandem-assignment')).toBe(name);
  });
});

describe('startTelemetry', () => {
  const saved = { ...process.env };

  afterEach(() => {
    process.env = { ...saved };
    metrics.disable();
  });

  it('registers no meter provider when not asked, so instruments record and send nothing', async () => {
    const telemetry = startTelemetry({
      serviceName: 'test',
      exportTraces: false,
      exportMetrics: wantsMetricExport(process.env),
    });
    // Recording still works (as a no-op) for code that made its instruments.
    metrics.getMeter('test').createCounter('calls').add(1);
    expect(metrics.getMeterProvider().constructor.name).toBe('NoopMeterProvider');
    await telemetry.shutdown();
  });

  it("registers the SDK's meter provider, with the exporter the variables name, when asked", async () => {
    // Not exported here: the OTLP exporter's transport is loaded by a dynamic import, which
    // Jest's module sandbox refuses; what is checked is that Tandem leaves the choice to the SDK.
    process.env.OTEL_EXPORTER_OTLP_METRICS_ENDPOINT = 'http://127.0.0.1:9/v1/metrics';
    const telemetry = startTelemetry({
      serviceName: 'test',
      exportTraces: false,
      exportMetrics: wantsMetricExport(process.env),
    });
    expect(metrics.getMeterProvider().constructor.name).toBe('MeterProvider');
    await telemetry.shutdown();
  });
});
