/**
 * Statistical properties of the bucketing, checked against published critical values of the χ²
 * distribution (1 degree of freedom, α = 0.001: 10.828; e.g. NIST/SEMATECH e-Handbook table 1.3.6.7.4).
 */
import { ExperimentStatus } from '../../src/domain/configuration';
import { buildSnapshot } from '../../src/domain/evaluator';
import { configuration, experiment } from './fixtures';

const CHI_SQUARE_1DF_ALPHA_0_001 = 10.828;
const UNITS = 100_000;

describe('bucketing statistics', () => {
  it('splits 100,000 units 50/50 with a χ² goodness-of-fit below the α = 0.001 critical value', () => {
    const snapshot = buildSnapshot(configuration({ experiments: [experiment({ id: 'split' })] }));
    const counts = [0, 0];
    for (let i = 0; i < UNITS; i++) {
      const a = snapshot.resolve({
        id: `user-${i}`,
        type: 'user',
        attributes: {},
        surfaces: ['home'],
        now: 0,
      }).assignments[0]!;
      counts[a.variant.index]!++;
    }
    const expected = UNITS / 2;
    const chiSquare = counts.reduce(
      (sum, observed) => sum + (observed - expected) ** 2 / expected,
      0,
    );
    expect(chiSquare).toBeLessThan(CHI_SQUARE_1DF_ALPHA_0_001);
  });

  it('randomizes experiments in different layers independently (χ² test of independence, 2×2)', () => {
    const snapshot = buildSnapshot(
      configuration({
        layers: [{ id: 'ranking' }, { id: 'artwork' }],
        experiments: [
          experiment({
            id: 'ranking-exp',
            layerId: 'ranking',
            layerRange: { start: 0, end: 1 },
            status: ExperimentStatus.RUNNING,
          }),
          experiment({ id: 'artwork-exp', layerId: 'artwork', layerRange: { start: 0, end: 1 } }),
        ],
      }),
    );
    const table = [
      [0, 0],
      [0, 0],
    ];
    for (let i = 0; i < UNITS; i++) {
      const [artwork, ranking] = snapshot.resolve({
        id: `user-${i}`,
        type: 'user',
        attributes: {},
        surfaces: ['home'],
        now: 0,
      }).assignments;
      table[ranking!.variant.index]![artwork!.variant.index]!++;
    }
    const rows = table.map((r) => r[0]! + r[1]!);
    const columns = [table[0]![0]! + table[1]![0]!, table[0]![1]! + table[1]![1]!];
    let chiSquare = 0;
    for (let r = 0; r < 2; r++) {
      for (let c = 0; c < 2; c++) {
        const expected = (rows[r]! * columns[c]!) / UNITS;
        chiSquare += (table[r]![c]! - expected) ** 2 / expected;
      }
    }
    expect(chiSquare).toBeLessThan(CHI_SQUARE_1DF_ALPHA_0_001);
  });
});
