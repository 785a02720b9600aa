/**
 * A source of immutable snapshots that tells when a new one is available: the
 * shape React's `useSyncExternalStore` (and most other view libraries) wants.
 * `getSnapshot` returns the same object until something changed, so that a
 * view can compare snapshots by identity. Both are bound functions.
 */
export interface SnapshotStore<T> {
  /** Calls `listener` after every change of the snapshot; returns the unsubscribe function. */
  subscribe(listener: () => void): () => void
  /** The current snapshot; the same object as long as nothing changed. */
  getSnapshot(): T
}

/**
 * The plumbing every store shares: the listeners, and a subscription to the
 * SDK object it reads that is held only while someone listens (a store nobody
 * subscribes to holds no listener on the SDK, and recomputes on each read).
 */
export abstract class BaseStore<T> implements SnapshotStore<T> {
  private readonly listeners = new Set<() => void>()
  private detach: (() => void) | undefined
  private snapshot: T | undefined
  private fresh = false

  /** Subscribes to the SDK object; returns what undoes it. */
  protected abstract attach(changed: () => void): () => void
  /** The next snapshot, given the previous one (reuse its unchanged parts). */
  protected abstract compute(previous: T | undefined): T

  // Arrow properties: bound once, so a view may pass them around as they are.
  readonly subscribe = (listener: () => void): (() => void) => {
    this.listeners.add(listener)
    if (!this.detach) {
      this.fresh = false
      this.detach = this.attach(() => this.changed())
    }
    return () => {
      this.listeners.delete(listener)
      if (this.listeners.size === 0 && this.detach) {
        this.detach()
        this.detach = undefined
      }
    }
  }

  readonly getSnapshot = (): T => {
    if (!this.fresh || !this.detach) {
      this.snapshot = this.compute(this.snapshot)
      this.fresh = this.detach !== undefined
    }
    return this.snapshot as T
  }

  /** Whether the store listens to the SDK now (else each read recomputes from scratch). */
  protected get listening(): boolean {
    return this.detach !== undefined
  }

  /** Recomputes now and notifies when the snapshot is a new object. */
  protected changed(): void {
    const before = this.snapshot
    this.snapshot = this.compute(before)
    this.fresh = true
    if (this.snapshot === before) return
    for (const listener of [...this.listeners]) listener()
  }
}

/** Whether two arrays hold the same elements by identity (or equal primitives). */
export function sameItems<T>(a: readonly T[], b: readonly T[]): boolean {
  if (a === b) return true
  if (a.length !== b.length) return false
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false
  return true
}
