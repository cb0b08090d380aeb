/**
 * FeatureStore's own variables are checked at start, each problem naming its variable, like the
 * shared ones: a value that could only fail later (when the stream is declared, after storage
 * opened and every view loaded) names the variable that caused it here instead.
 */
import { ConfigError } from '../../platform/src/config';
import { readFeatureStoreConfig } from '../src/config';

function problemsOf(env: Record<string, string>): readonly string[] {
  try {
    readFeatureStoreConfig(env);
    return [];
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    return error.problems;
  }
}

describe('TANDEM_FEATURESTORE_OUTCOME_STREAM', () => {
  it('takes a JetStream stream name', () => {
    expect(readFeatureStoreConfig({}).outcomeStream).toBe('TANDEM_OUTCOMES');
    expect(
      readFeatureStoreConfig({ TANDEM_FEATURESTORE_OUTCOME_STREAM: 'OUTCOMES_v2' }).outcomeStream,
    ).toBe('OUTCOMES_v2');
  });

  it.each(['tandem.outcomes', 'OUT COMES', 'OUTCOMES>', 'OUT*', 'team/outcomes', 'a\\b'])(
    'refuses %j at start, naming the variable',
    (name) => {
      expect(problemsOf({ TANDEM_FEATURESTORE_OUTCOME_STREAM: name })).toEqual([
        expect.stringMatching(/^TANDEM_FEATURESTORE_OUTCOME_STREAM /),
      ]);
    },
  );
});
