/**
 * What a client's send queue holds beyond its initial sync. The answer to a
 * client's sync step 1 can be the whole conversation (megabytes, more than the
 * limit a slow reader is held to); it leaves the queue first, so only what
 * queues behind it counts: the bytes sent so far minus those buffered say how
 * far the client has read, and whatever of the initial-sync frame is still
 * unread is left out. One such frame at a time: a client asking again before
 * it has read the last answer (a way to pile up copies of the conversation)
 * has the new answer counted.
 */
export class SendQueue {
  private total = 0
  /** Stream offsets of the initial-sync frame not yet read past. */
  private initial: { readonly start: number; readonly end: number } | undefined

  sent(bytes: number, initialSync: boolean): void {
    if (initialSync && this.initial === undefined)
      this.initial = { start: this.total, end: this.total + bytes }
    this.total += bytes
  }

  /** Of the `buffered` bytes waiting, those of the unread initial-sync frame. */
  initialBytes(buffered: number): number {
    return buffered - this.countedBytes(buffered)
  }

  /** Of the `buffered` bytes waiting, those that count against the limit. */
  countedBytes(buffered: number): number {
    const read = this.total - buffered
    if (this.initial && this.initial.end <= read) this.initial = undefined
    if (!this.initial) return buffered
    return buffered - (this.initial.end - Math.max(this.initial.start, read))
  }
}
