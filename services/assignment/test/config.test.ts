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

  it('refuses an exposure duplicate window too short to catch a timed-out publish sent again', () => {
    // The ledger hears of an exposure only from the stream's ack: a lost ack and the retry that
    // follows within seconds are caught by the window alone.
    expect(problems({ TANDEM_ASSIGNMENT_EXPOSURE_DEDUPE_WINDOW: '10s' })).toEqual([
      expect.stringMatching(/^TANDEM_ASSIGNMENT_EXPOSURE_DEDUPE_WINDOW must be at least/),
    ]);
    expect(problems({ TANDEM_ASSIGNMENT_EXPOSURE_DEDUPE_WINDOW: '1m' })).toEqual([]);
  });

  it('refuses a token secret shorter than the HMAC-SHA256 output, naming the variable', () => {
    for (const secret of ['x', 'secret', 'a'.repeat(31), 'é'.repeat(15)]) {
      expect(problems({ TANDEM_ASSIGNMENT_TOKEN_SECRET: secret })).toEqual([
        expect.stringMatching(/^TANDEM_ASSIGNMENT_TOKEN_SECRET must be at least 32 bytes/),
      ]);
    }
    // The secret itself is not repeated in the problem, which is logged.
    expect(problems({ TANDEM_ASSIGNMENT_TOKEN_SECRET: 'hunter2' })[0]).not.toContain('hunter2');
    // Counted in UTF-8 bytes, as the key is taken: 16 × 2 bytes.
    expect(problems({ TANDEM_ASSIGNMENT_TOKEN_SECRET: 'é'.repeat(16) })).toEqual([]);
    expect(problems({ TANDEM_ASSIGNMENT_TOKEN_SECRET: 'a'.repeat(32) })).toEqual([]);
  });
});
