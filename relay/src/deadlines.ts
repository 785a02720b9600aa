/** Longest delay a Node timer takes (about 24.8 days); a later deadline is reached in steps. */
const MAX_TIMER_MS = 2 ** 31 - 1

/** Something that is due at a time: a {@link Deadlines} entry. */
export interface Due {
  /** Called once the deadline passed (never before it, by the wall clock). */
  due(): void
}

interface Entry {
  readonly at: number
  readonly item: Due
}

/**
 * Many deadlines on one timer: a binary heap ordered by time, and a single
 * Node timer armed for the earliest. Every open socket's token expiry is one
 * entry here instead of a timer (and its `Timeout` object) of its own; the
 * timer is unreferenced, so deadlines never keep a stopping process alive.
 * Each item has at most one deadline: setting another replaces it.
 */
export class Deadlines {
  private readonly heap: Entry[] = []
  /** Each item's position in the heap. */
  private readonly slots = new Map<Due, number>()
  private timer: ReturnType<typeof setTimeout> | undefined
  /** The time the timer is armed for (it may fire earlier, for a deadline beyond a timer's range). */
  private armedFor = Number.POSITIVE_INFINITY

  constructor(
    /** An item's `due` threw: the others are still served; this says what happened. */
    private readonly failed: (error: unknown) => void = () => {},
    private readonly now: () => number = Date.now,
  ) {}

  /** Entries waiting. */
  get size(): number {
    return this.heap.length
  }

  /** Calls `item.due()` once `at` (ms since the epoch) has passed, unless cleared or set again first. */
  set(item: Due, at: number): void {
    this.clear(item)
    // Not a time at all: due now (never due would keep whatever holds it open for ever).
    if (Number.isNaN(at)) at = 0
    const slot = this.heap.length
    this.heap.push({ at, item })
    this.slots.set(item, slot)
    this.up(slot)
    this.arm()
  }

  /** Forgets `item`'s deadline, if it has one. */
  clear(item: Due): void {
    const slot = this.slots.get(item)
    if (slot === undefined) return
    this.slots.delete(item)
    const last = this.heap.pop()!
    if (slot < this.heap.length) {
      this.place(slot, last)
      this.down(slot)
      this.up(slot)
    }
    if (this.heap.length === 0) this.disarm()
  }

  /** Stops the timer and forgets every deadline. */
  stop(): void {
    this.disarm()
    this.heap.length = 0
    this.slots.clear()
  }

  private fire(): void {
    this.timer = undefined
    this.armedFor = Number.POSITIVE_INFINITY
    const now = this.now()
    while (this.heap.length > 0 && this.heap[0]!.at <= now) {
      const { item } = this.heap[0]!
      this.clear(item)
      try {
        item.due()
      } catch (error) {
        // One item's failure must not leave the others' deadlines unserved.
        this.failed(error)
      }
    }
    this.arm()
  }

  private arm(): void {
    const first = this.heap[0]
    if (!first) return
    if (this.timer && this.armedFor <= first.at) return
    this.disarm()
    const delay = Math.min(MAX_TIMER_MS, Math.max(0, first.at - this.now()))
    this.armedFor = first.at
    this.timer = setTimeout(() => this.fire(), delay)
    this.timer.unref?.()
  }

  private disarm(): void {
    clearTimeout(this.timer)
    this.timer = undefined
    this.armedFor = Number.POSITIVE_INFINITY
  }

  private place(slot: number, entry: Entry): void {
    this.heap[slot] = entry
    this.slots.set(entry.item, slot)
  }

  private up(slot: number): void {
    const entry = this.heap[slot]!
    while (slot > 0) {
      const parent = (slot - 1) >> 1
      if (this.heap[parent]!.at <= entry.at) break
      this.place(slot, this.heap[parent]!)
      slot = parent
    }
    this.place(slot, entry)
  }

  private down(slot: number): void {
    const entry = this.heap[slot]!
    const n = this.heap.length
    for (;;) {
      const left = 2 * slot + 1
      if (left >= n) break
      const right = left + 1
      const child = right < n && this.heap[right]!.at < this.heap[left]!.at ? right : left
      if (this.heap[child]!.at >= entry.at) break
      this.place(slot, this.heap[child]!)
      slot = child
    }
    this.place(slot, entry)
  }
}
