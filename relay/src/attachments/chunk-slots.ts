/** An upload chunk being received, in one of the relay's {@link ChunkSlots}. */
export interface ChunkSlot {
  /** Bytes of the chunk received so far (its reader counts them). */
  received: number
  /** Aborted when a new chunk took this one's slot: its reader ends it as too slow (408). */
  readonly preempted: AbortSignal
  /** Frees the slot, once the chunk is stored or refused (again: nothing). */
  release(): void
}

interface Held {
  readonly slot: ChunkSlot
  readonly started: number
  readonly preempt: () => void
}

/** How a chunk's pace is measured: over at least a second, so that one just begun is not taken for fast. */
const MEASURED_MS = 1000

/**
 * The relay's slots for upload chunks being received, all users together
 * (each holds up to a chunk in memory). When every slot is taken, a new chunk
 * takes the slot of the slowest chunk that is arriving under
 * `contendedBytesPerSecond` (bytes received over the time since it began,
 * counted as a second at least), which ends with 408 keeping what arrived;
 * when none is that slow, there is no slot (503). So senders that trickle just
 * above the relay's floor cannot hold every slot and keep other users'
 * uploads out (before: 64 chunks at 5 KiB/s held them for minutes), while a
 * slow link only loses its slot when someone needs it, and resumes from what
 * it sent.
 */
export class ChunkSlots {
  private readonly held = new Set<Held>()

  constructor(
    private readonly size: number,
    private readonly contendedBytesPerSecond: number,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /** Chunks being received. */
  get inFlight(): number {
    return this.held.size
  }

  /** Whether {@link take} would give a slot now (a free one, or a slow chunk's), taking nothing. */
  available(): boolean {
    return this.held.size < this.size || this.slowest() !== undefined
  }

  /** A slot for a new chunk: a free one, or the slowest chunk's (which is preempted); undefined when none. */
  take(): ChunkSlot | undefined {
    if (this.held.size >= this.size) {
      const victim = this.slowest()
      if (!victim) return undefined
      this.held.delete(victim)
      victim.preempt()
    }
    const abort = new AbortController()
    const entry: Held = {
      slot: { received: 0, preempted: abort.signal, release: () => this.held.delete(entry) },
      started: this.now(),
      preempt: () => abort.abort(),
    }
    this.held.add(entry)
    return entry.slot
  }

  /** The slowest chunk under the contended pace (the one that began first among equals), if any. */
  private slowest(): Held | undefined {
    const now = this.now()
    let found: { entry: Held; rate: number } | undefined
    for (const entry of this.held) {
      const rate = (entry.slot.received * 1000) / Math.max(MEASURED_MS, now - entry.started)
      if (rate >= this.contendedBytesPerSecond) continue
      if (!found || rate < found.rate || (rate === found.rate && entry.started < found.entry.started))
        found = { entry, rate }
    }
    return found?.entry
  }
}
