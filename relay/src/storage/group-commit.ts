/** One caller's share of a batch. */
interface Pending {
  readonly name: string
  readonly updates: readonly Uint8Array[]
  readonly resolve: (positions: number[]) => void
  readonly reject: (error: unknown) => void
}

/** A batch of appends from one tick, committed together. */
export type AppendBatch = readonly { readonly name: string; readonly updates: readonly Uint8Array[] }[]

/**
 * Gathers the appends made in one tick and commits them with one call to
 * `commit`, which returns each entry's positions. Every waiting caller resolves
 * after that single commit: one fsync serves many acknowledgements. Commits
 * run one at a time: appends made while one is under way (an asynchronous
 * commit, waiting for its sync) all go into the next.
 */
export class GroupCommit {
  private queue: Pending[] = []
  private scheduled = false
  private running: Promise<void> = Promise.resolve()
  /** Appends per document name not yet committed (or failed). */
  private readonly unsettled = new Map<string, number>()

  /**
   * `commit` returns each entry's positions, or an error that fails that
   * entry alone (a clustered relay's fence refused for one document); throwing
   * fails the whole batch.
   */
  constructor(
    private readonly commit: (batch: AppendBatch) => Promise<(number[] | Error)[]> | (number[] | Error)[],
  ) {}

  /**
   * True while appends wait for a commit that has not started yet (it runs
   * later in this turn or the next, or once the commit under way is done).
   */
  get commitScheduled(): boolean {
    return this.scheduled || this.queue.length > 0
  }

  append(name: string, updates: readonly Uint8Array[]): Promise<number[]> {
    this.unsettled.set(name, (this.unsettled.get(name) ?? 0) + 1)
    return new Promise((resolve, reject) => {
      // Copied now: the commit happens a tick later, after the caller may have reused its buffers.
      this.queue.push({ name, updates: updates.map((u) => u.slice()), resolve, reject })
      if (!this.scheduled) {
        this.scheduled = true
        setImmediate(() => {
          this.scheduled = false
          this.running = this.running.then(() => this.flush())
        })
      }
    })
  }

  /**
   * Resolves once every append of document `name` made so far is committed (or
   * failed). Unlike {@link drain} it does not wait for other documents, whose
   * appends may keep coming without a pause on a busy relay.
   */
  async settled(name: string): Promise<void> {
    while ((this.unsettled.get(name) ?? 0) > 0) {
      await new Promise((r) => setImmediate(r))
      await this.running
    }
  }

  /** Resolves once everything appended so far is committed (or failed). */
  async drain(): Promise<void> {
    while (this.queue.length > 0 || this.scheduled) {
      await new Promise((r) => setImmediate(r))
      await this.running
    }
    await this.running
  }

  private async flush(): Promise<void> {
    const batch = this.queue
    this.queue = []
    if (batch.length === 0) return
    try {
      const positions = await this.commit(batch)
      for (const [i, p] of batch.entries()) {
        const result = positions[i]!
        if (result instanceof Error) p.reject(result)
        else p.resolve(result)
      }
    } catch (error) {
      for (const p of batch) p.reject(error)
    } finally {
      for (const { name } of batch) {
        const left = (this.unsettled.get(name) ?? 1) - 1
        if (left > 0) this.unsettled.set(name, left)
        else this.unsettled.delete(name)
      }
    }
  }
}
