import { ConfigError } from '../../platform/src/config';
import { readAssignmentConfig } from '../src/config';

/** The problems reading `env` reports, none when it reads. */
function problems(env: Readonly<Record<string, string>>): readonly string[] {
  try {
    readAssignmentConfig(env, { replicaId: 'replica-1' });
    return [];
  } catch (error) {
    if (error instanceof ConfigError) return error.problems;
    throw error;
  }
}

describe('the Assignment configuration', () => {
  it('refuses an exposure duplicate window longer than the exposure stream keeps exposures', () => {
    // JetStream refuses such a stream at start-up with "invalid stream spec", naming no variable.
    expect(problems({ TANDEM_ASSIGNMENT_EXPOSURE_DEDUPE_WINDOW: '8d' })).toEqual([
      expect.stringMatching(/^TANDEM_ASSIGNMENT_EXPOSURE_DEDUPE_WINDOW must be at most/),
    ]);
    expect(problems({ TANDEM_ASSIGNMENT_EXPOSURE_DEDUPE_WINDOW: '7d' })).toEqual([]);
  });
});
