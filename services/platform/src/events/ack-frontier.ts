/**
 * Where a subscription that acknowledges cumulatively may acknowledge. Batches are handed out in
 * delivery order and may finish in any order, while an acknowledgement of one delivery covers
 * every earlier one (JetStream `AckPolicy.All`). So the acknowledgement point is the end of the
 * longest run of finished batches counted from the oldest one still open, and it only moves
 * forward. Pure bookkeeping: the adapter decides what finishing means and sends the acknowledgement.
 */

/** A batch handed out, in delivery order. */
export interface FrontierBatch<M> {
  /** Its last delivery, the one whose acknowledgement covers it and everything before. */
  readonly last: M;
  /** Deliveries handed out since the frontier started, up to and including this batch's last. */
  readonly through: number;
}

interface OpenBatch<M> extends FrontierBatch<M> {
  finished: boolean;
}

export class AckFrontier<M> {
  /** Batches not yet acknowledgeable, oldest first. */
  private readonly open: OpenBatch<M>[] = [];
  private handedOut = 0;

  /** Registers the next batch: `deliveries` deliveries (skipped ones included), ending with `last`. */
  add(deliveries: number, last: M): FrontierBatch<M> {
    this.handedOut += deliveries;
    const batch: OpenBatch<M> = { last, through: this.handedOut, finished: false };
    this.open.push(batch);
    return batch;
  }

  /**
   * Marks `batch` finished. Returns the batch whose last delivery is now the acknowledgement point
   * when the point moved, undefined when an older batch is still open.
   */
  finish(batch: FrontierBatch<M>): FrontierBatch<M> | undefined {
    (batch as OpenBatch<M>).finished = true;
    let point: OpenBatch<M> | undefined;
    while (this.open[0]?.finished === true) point = this.open.shift();
    return point;
  }

  /** Batches handed out and not yet covered by the acknowledgement point. */
  openBatches(): number {
    return this.open.length;
  }
}
