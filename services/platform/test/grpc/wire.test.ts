/**
 * The hand-written wire helpers that encoders build on: fields copied from shared arenas.
 */
import { encodedFieldsOf, encodedFieldsSize, writeEncodedFields } from '../../src/grpc/wire';

/** `length` bytes counting up from `first` (mod 256), so any misplaced byte shows. */
function counting(first: number, length: number): Buffer {
  return Buffer.from(Array.from({ length }, (_, i) => (first + i) % 256));
}

describe('writeEncodedFields', () => {
  it('copies each range of its source in order, short and long ones alike', () => {
    // Two arenas holding fields of 3, 256, 257 and 4,000 bytes (both sides of the size up to
    // which bytes are copied one by one) at offsets other than zero.
    const arena = Buffer.concat([counting(7, 10), counting(50, 3), counting(90, 256)]);
    const other = Buffer.concat([counting(1, 5), counting(200, 257), counting(33, 4000)]);
    const fields = {
      sources: [arena, other, arena, other],
      ranges: [10, 13, 5, 262, 13, 269, 262, 4262],
    };
    const expected = Buffer.concat([
      counting(50, 3),
      counting(200, 257),
      counting(90, 256),
      counting(33, 4000),
    ]);
    expect(encodedFieldsSize(fields)).toBe(expected.length);

    const out = Buffer.alloc(expected.length + 20, 0xee);
    const end = writeEncodedFields(out, 11, fields);

    expect(end).toBe(11 + expected.length);
    expect(out.subarray(11, end)).toEqual(expected);
    // Nothing outside the written span was touched.
    expect([...out.subarray(0, 11), ...out.subarray(end)]).toEqual(new Array(20).fill(0xee));
  });

  it('writes whole buffers given by encodedFieldsOf, and nothing for none', () => {
    const out = Buffer.alloc(8);
    expect(writeEncodedFields(out, 2, encodedFieldsOf([]))).toBe(2);
    const end = writeEncodedFields(out, 0, encodedFieldsOf([counting(1, 2), counting(9, 3)]));
    expect(end).toBe(5);
    expect([...out.subarray(0, end)]).toEqual([1, 2, 9, 10, 11]);
  });
});
