import { AckFrontier } from '../../src/events/ack-frontier';

describe('AckFrontier', () => {
  it('moves the acknowledgement point to a finished batch when every earlier one is finished', () => {
    const frontier = new AckFrontier<string>();
    const first = frontier.add(3, 'm3');
    const second = frontier.add(2, 'm5');

    expect(frontier.finish(first)).toMatchObject({ last: 'm3', through: 3 });
    expect(frontier.finish(second)).toMatchObject({ last: 'm5', through: 5 });
    expect(frontier.openBatches()).toBe(0);
  });

  it('holds the point behind a batch still running, then jumps past every finished one', () => {
    const frontier = new AckFrontier<string>();
    const first = frontier.add(1, 'm1');
    const second = frontier.add(1, 'm2');
    const third = frontier.add(4, 'm6');

    expect(frontier.finish(third)).toBeUndefined();
    expect(frontier.finish(second)).toBeUndefined();
    expect(frontier.openBatches()).toBe(3);
    expect(frontier.finish(first)).toMatchObject({ last: 'm6', through: 6 });
    expect(frontier.openBatches()).toBe(0);
  });

  it('counts every delivery handed out, batches that finish later included', () => {
    const frontier = new AckFrontier<string>();
    const first = frontier.add(2, 'm2');
    frontier.add(5, 'm7');
    const third = frontier.add(1, 'm8');

    expect(frontier.finish(first)).toMatchObject({ last: 'm2', through: 2 });
    expect(frontier.finish(third)).toBeUndefined();
    expect(frontier.openBatches()).toBe(2);
  });
});
