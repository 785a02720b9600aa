/** A listener for one event: receives that event's payload object. */
export type Listener<T> = (payload: T) => void

/**
 * A tiny typed event emitter: `Events` maps each event name to its payload
 * object. `on` returns the unsubscribe function, so that callers never need to
 * keep the listener around to remove it.
 */
export class Emitter<Events extends { [K in keyof Events]: object }> {
  private readonly listeners = new Map<keyof Events, Set<Listener<never>>>()

  /** Calls `listener` on every `name` event until the returned function is called. */
  on<K extends keyof Events>(name: K, listener: Listener<Events[K]>): () => void {
    let set = this.listeners.get(name)
    if (!set) {
      set = new Set()
      this.listeners.set(name, set)
    }
    set.add(listener as Listener<never>)
    return () => this.off(name, listener)
  }

  /** Calls `listener` on the next `name` event only. */
  once<K extends keyof Events>(name: K, listener: Listener<Events[K]>): () => void {
    const off = this.on(name, (payload) => {
      off()
      listener(payload)
    })
    return off
  }

  /** Removes `listener`. */
  off<K extends keyof Events>(name: K, listener: Listener<Events[K]>): void {
    this.listeners.get(name)?.delete(listener as Listener<never>)
  }

  protected emit<K extends keyof Events>(name: K, payload: Events[K]): void {
    const set = this.listeners.get(name)
    if (!set) return
    for (const listener of [...set]) {
      // A throwing app listener must not break the SDK's own bookkeeping.
      try {
        ;(listener as Listener<Events[K]>)(payload)
      } catch (error) {
        console.error(`parley: a "${String(name)}" listener threw`, error)
      }
    }
  }

  protected removeAllListeners(): void {
    this.listeners.clear()
  }
}
