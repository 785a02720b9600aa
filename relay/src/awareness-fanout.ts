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
 * Longest time a small room's presence renewal waits to go out with others
 * (see {@link AwarenessFanout}): half a renewal period. A y-protocols client
 * renews its state every 15 s (at the first of its 3-second checks past 15 s,
 * so 15–18 s apart) and drops a remote entry not renewed for 30 s: forwarded
 * up to 7.5 s late, a renewal reaches the others at most 25.5 s after the one
 * before it. Members' renewals spread over the period go out in about two
 * frames per period rather than one each.
 */
export const RENEWAL_FORWARD_MS = 7_500

/**
 * Sends a document's awareness changes to its connections. In a small room
 * every change goes out at once (today's y-websocket behaviour, lowest
 * latency), but renewals (a client's 15-second re-announcement of a state it
 * did not change) wait up to {@link RENEWAL_FORWARD_MS} and go out together, in
 * one frame (or with the next change, whichever is first): what a renewal is
 * for, keeping the entry from timing out in the others' views, needs no
 * hurry, and every frame costs a send per member and, from each stock
 * y-websocket client, an echo back (it re-sends every update it applies) —
 * ten members renewing one by one cost a hundred frames each way, renewed
 * together ten. In a large room (more than {@link LARGE_ROOM_CONNECTIONS}
 * connections) presence would otherwise cost members squared: every member's
 * change and 15-second renewal goes to every member, and every stock client
 * echoes it. There, changes are coalesced into one frame per tick
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
  /** Client ids of a small room renewed and not forwarded yet. */
  private readonly renewed = new Set<number>()
  private renewalTimer: NodeJS.Timeout | undefined

  constructor(
    private readonly host: DocumentHost,
    /** Called once a frame went out with these removals (the gate forgets their records). */
    private readonly sentRemovals: (removed: readonly number[]) => void,
    /** The connection that set a present entry (the gate's record), if any. */
    private readonly setterOf: (clientId: number) => unknown = () => undefined,
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
    const large = this.large
    if (large || this.pending.size > 0 || changed.length === 0) {
      for (const id of changed) this.pending.add(id)
      if (this.pending.size > 0) this.timer ??= this.schedule()
      // A renewal need not go out in a large room (see the class); in a small one it waits a little.
      if (!large) for (const id of renewed) this.renewed.add(id)
      if (this.renewed.size > 0) this.renewalTimer ??= this.scheduleRenewals()
      return
    }
    // A change goes now, and the renewals waiting go with it.
    const ids = new Set([...changed, ...renewed])
    for (const id of this.renewed) if (this.host.awareness.states.has(id)) ids.add(id)
    this.clearRenewals()
    this.send([...ids], removed)
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

  /** Sends the renewals waiting, of entries still present (a removal went out when it happened). */
  flushRenewals(): void {
    const ids = [...this.renewed].filter((id) => this.host.awareness.states.has(id))
    this.clearRenewals()
    if (ids.length > 0 && !this.host.destroyed) this.send(ids, [])
  }

  /** Stops the ticks (the document is going away). */
  destroy(): void {
    clearTimeout(this.timer)
    this.timer = undefined
    this.pending.clear()
    this.clearRenewals()
  }

  private schedule(): NodeJS.Timeout {
    const timer = setTimeout(() => this.flush(), awarenessTickMs(this.host.connections.size))
    timer.unref()
    return timer
  }

  private scheduleRenewals(): NodeJS.Timeout {
    const timer = setTimeout(() => this.flushRenewals(), RENEWAL_FORWARD_MS)
    timer.unref()
    return timer
  }

  private clearRenewals(): void {
    clearTimeout(this.renewalTimer)
    this.renewalTimer = undefined
    this.renewed.clear()
  }

  private send(ids: readonly number[], removed: readonly number[]): void {
    if (ids.length > 0) {
      const frame = encodeAwareness(encodeAwarenessUpdate(this.host.awareness, [...ids]))
      // A stock client's echo is owed to others' presence only: one holding nothing but what it set
      // itself must not pay for its next frames (a socket setting its own state got them free).
      const setters = ids.map((id) => this.setterOf(id))
      for (const connection of this.host.connections)
        connection.send(frame, { echoOwed: setters.some((setter) => setter !== connection) })
    }
    if (removed.length > 0) this.sentRemovals(removed)
  }
}
