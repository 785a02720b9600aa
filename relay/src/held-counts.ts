/**
 * How many of something each key holds at once (a user's downloads, their
 * upload chunks in flight), each hold with its own release: a function that
 * counts it back once, however often it is called (a response's `close` and
 * its stream's end may both call it). A key holding nothing is not kept.
 */
export class HeldCounts<K> {
  private readonly held = new Map<K, number>()

  /** What `key` holds now. */
  count(key: K): number {
    return this.held.get(key) ?? 0
  }

  /** Whether `key` holds anything. */
  has(key: K): boolean {
    return this.held.has(key)
  }

  /** The keys holding something. */
  keys(): IterableIterator<K> {
    return this.held.keys()
  }

  /** Counts one more for `key`; returns its release, which calls `released` after counting it back. */
  hold(key: K, released?: () => void): () => void {
    this.held.set(key, this.count(key) + 1)
    let done = false
    return () => {
      if (done) return
      done = true
      const left = this.count(key) - 1
      if (left > 0) this.held.set(key, left)
      else this.held.delete(key)
      released?.()
    }
  }
}
