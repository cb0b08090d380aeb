/** The bulk loader's NDJSON input: a malformed line is reported with its file and line number. */
import { Readable } from 'node:stream';
import { parseJsonLines } from '../src/store/bulk-load';

/** Lines as readline gives them. */
const linesOf = (...lines: string[]): AsyncIterable<string> => Readable.from(lines);

async function valuesOf(values: AsyncIterable<unknown>): Promise<unknown[]> {
  const out: unknown[] = [];
  for await (const value of values) out.push(value);
  return out;
}

describe('the bulk loader input', () => {
  it('reads one JSON value per line, skipping blank lines', async () => {
    const values = await valuesOf(
      parseJsonLines(linesOf('{"a": 1}', '', '  ', '[2]'), 'rows.ndjson'),
    );
    expect(values).toEqual([{ a: 1 }, [2]]);
  });

  it('names the file and the line number of a line that is not JSON', async () => {
    const values = parseJsonLines(linesOf('{"a": 1}', '', 'not json', '{"a": 2}'), 'rows.ndjson');
    await expect(valuesOf(values)).rejects.toThrow(/^rows\.ndjson:3: Unexpected token/);
  });
});
