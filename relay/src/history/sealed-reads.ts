import { ErrorCode, ParleyError, UserLimit } from "@parley/shared"

/**
 * Rule of the refusal of a change whose sealed messages lie in more segments
 * than one change may make the relay read (`--max-sealed-reads-per-update`).
 */
export const SEALED_READS_PER_UPDATE = "sealed-reads-per-update"

/** Defaults of what one change may make the relay read of sealed history. */
export const SealedReadDefaults = {
  /**
   * Segments one change may make the relay read and decode (a few
   * milliseconds each): an offline device's few dozen edits, reactions and
   * deletions of sealed messages fit, a frame of sealed ids spread over a
   * conversation's whole history does not.
   */
  maxSealedReadsPerUpdate: 64,
  /**
   * Segments the relay keeps decoded per loaded document for the checks
   * (beyond, the least recently needed are let go; read again when needed).
   * At least the per-change bound.
   */
  heldSegmentsPerDocument: 256,
} as const

/**
 * What one change (a client's update, a trusted write) may still make the
 * relay read of sealed history: at most `max` segments, each also paid for
 * by `pay` (the sending user's budget: see `UserLedger.takeSealedReads`),
 * which may grant fewer. A change that needs more is refused
 * ({@link refusal}: RATE_LIMITED, retryable; the segments read stay held
 * for a while, so a retry needs fewer).
 */
export class SealedReads {
  private left: number
  /** Why the last grant fell short, when it did. */
  private short: "change" | "user" | undefined

  constructor(
    max: number,
    private readonly pay?: (wanted: number) => number,
  ) {
    this.left = Math.max(0, max)
  }

  /** Reads the relay makes for itself (sequencing leftovers, purging): not paid for, not bounded. */
  static relay(): SealedReads {
    return new SealedReads(Number.POSITIVE_INFINITY)
  }

  /** How many of `wanted` reads may be made now (taken from what is left and paid for). */
  grant(wanted: number): number {
    const bounded = Math.min(wanted, this.left)
    const paid = this.pay && bounded > 0 ? this.pay(bounded) : bounded
    this.left -= paid
    if (paid < wanted) this.short = paid < bounded ? "user" : "change"
    return paid
  }

  /** Whether the last grant fell short because the payer's budget was spent, not the bound. */
  get payerSpent(): boolean {
    return this.short === "user"
  }

  /** The refusal of a change that needed more reads than were granted. */
  refusal(): ParleyError {
    return this.short === "user"
      ? new ParleyError(
          ErrorCode.RATE_LIMITED,
          "the sealed history this change names could not be checked now: this user's sealed reads are spent for the moment",
          { rule: UserLimit.sealedReads },
        )
      : new ParleyError(
          ErrorCode.RATE_LIMITED,
          "the sealed history this change names could not be checked at once: it spans too many segments; send it again",
          { rule: SEALED_READS_PER_UPDATE },
        )
  }
}
