/**
 * Runs tasks one at a time, in arrival order for each key (a writer), taking
 * the keys in turn: a writer with a backlog waits between its own tasks for
 * one task of each other writer waiting, rather than everyone waiting behind
 * all of it. A relay that does not order a document forwards its changes one
 * at a time (each builds on the ones before it, see `Cluster.inOrder`), a
 * few dozen a second: before, one user sending within every per-user limit
 * through such a relay queued everyone else's messages in that conversation
 * behind tens of seconds of hers (an outside probe).
 */
export class FairQueue {
  /** Each key's waiting tasks, the key to run next first (a Map keeps insertion order). */
  private readonly waiting = new Map<string, (() => Promise<void>)[]>()
  private running = false

  /** Runs `task` after every earlier task of `key`, with the other keys' tasks taken in turn. */
  add<T>(key: string, task: () => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      // A task that throws before its first await fails alone too.
      const run = () => Promise.resolve().then(task).then(resolve, reject)
      const queue = this.waiting.get(key)
      if (queue) queue.push(run)
      else this.waiting.set(key, [run])
      if (!this.running) void this.drain()
    })
  }

  /** True while a task runs or waits. */
  get busy(): boolean {
    return this.running
  }

  private async drain(): Promise<void> {
    this.running = true
    try {
      for (let next = this.waiting.entries().next(); !next.done; next = this.waiting.entries().next()) {
        const [key, queue] = next.value
        this.waiting.delete(key)
        const run = queue.shift()
        // Empty: the key had its turn and nothing of it came since.
        if (!run) continue
        // To the back of the turn, empty or not: what the key adds meanwhile waits for the others.
        this.waiting.set(key, queue)
        await run()
        // Behind the keys that came while it ran, too.
        if (this.waiting.get(key) === queue) {
          this.waiting.delete(key)
          this.waiting.set(key, queue)
        }
      }
    } finally {
      this.running = false
    }
  }
}
