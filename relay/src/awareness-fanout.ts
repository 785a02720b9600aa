import { encodeAwareness } from "@parley/shared"
import { encodeAwarenessUpdate } from "y-protocols/awareness"
import type { DocumentHost } from "./document-host.js"

/** Connections above which a document is a large room: its presence is coalesced (see {@link AwarenessFanout}). */
export const LARGE_ROOM_CONNECTIONS = 32

/** The coalescing tick of a large room: 2 ms per connection, between 50 ms and 1 s. */
export function awarenessTickMs(connections: number): number {
  return Math.min(1000, Math.max(50, 2 * connections))
}

/**
 * Sends a document's awareness changes to its connections. In a small room
 * every update goes out at once, renewals included (today's y-websocket
 * behaviour, lowest latency). In a large room (more than
 * {@link LARGE_ROOM_CONNECTIONS} connections) presence would otherwise cost
 * members squared: every member's change and 15-second renewal goes to every
 * member, and a stock y-websocket client sends back every update it receives.
 * There, changes are coalesced into one frame per tick
 * ({@link awarenessTickMs}: the frames each socket gets, and so the echoes it
 * sends back, stay under 20 a second whatever the room's size), and renewals
 * that change no state are not forwarded: the relay keeps the entry alive
 * itself while its connection is open, joiners get every present state when
 * they connect, and a member's presence reaches others again with its next
 * change (an idle member's state fades from others' views after their
 * 30-second timeout, as in the big chat products, where presence in large
 * channels shows who is active).
 */
export class AwarenessFanout {
  /** Client ids changed since the last flush of a large room. */
  private readonly pending = new Set<number>()
  private timer: NodeJS.Timeout | undefined

  constructor(
    private readonly host: DocumentHost,
    /** Called once a frame went out with these removals (the gate forgets their records). */
    private readonly sentRemovals: (removed: readonly number[]) => void,
  ) {}

  /** Whether the room is large now. */
  get large(): boolean {
    return this.host.connections.size > LARGE_ROOM_CONNECTIONS
  }

  /**
   * An awareness `update` event: `changed` are the ids whose state (or
   * presence) changed, `renewed` those whose clock only moved.
   */
  updated(changed: readonly number[], renewed: readonly number[], removed: readonly number[]): void {
    if (!this.large && this.pending.size === 0) {
      this.send([...changed, ...renewed], removed)
      return
    }
    for (const id of changed) this.pending.add(id)
    // A renewal need not go out in a large room (see the class); in a small one it would.
    if (!this.large) for (const id of renewed) this.pending.add(id)
    if (this.pending.size > 0) this.timer ??= this.schedule()
  }

  /** Sends what is pending now (a tick, or the document going away). */
  flush(): void {
    clearTimeout(this.timer)
    this.timer = undefined
    if (this.pending.size === 0 || this.host.destroyed) return
    const ids = [...this.pending]
    this.pending.clear()
    const removed = ids.filter((id) => !this.host.awareness.states.has(id))
    this.send(ids, removed)
  }

  /** Stops the tick (the document is going away). */
  destroy(): void {
    clearTimeout(this.timer)
    this.timer = undefined
    this.pending.clear()
  }

  private schedule(): NodeJS.Timeout {
    const timer = setTimeout(() => this.flush(), awarenessTickMs(this.host.connections.size))
    timer.unref()
    return timer
  }

  private send(ids: readonly number[], removed: readonly number[]): void {
    if (ids.length > 0) {
      const frame = encodeAwareness(encodeAwarenessUpdate(this.host.awareness, [...ids]))
      for (const connection of this.host.connections) connection.send(frame)
    }
    if (removed.length > 0) this.sentRemovals(removed)
  }
}
