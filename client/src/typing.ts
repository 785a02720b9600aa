import { isTyping, stampedUser, TYPING_EXPIRY_MS, TYPING_THROTTLE_MS, type UserId } from "@parley/shared"
import type { Awareness } from "y-protocols/awareness"

/**
 * Typing indicators over Yjs awareness (local state `{ user, typing }`): sends
 * at most one signal per {@link TYPING_THROTTLE_MS}, and lets the signals of
 * others expire on a timer after {@link TYPING_EXPIRY_MS} even when no
 * "stopped typing" ever arrives. Others are known by the relay's stamp
 * (shared `PRESENCE_STAMP`), never by the `user` a state claims: states without
 * a valid stamp are ignored.
 */
export class TypingIndicator {
  private lastSignal = 0
  private users: readonly UserId[] = []
  private expiry: ReturnType<typeof setTimeout> | undefined
  private readonly onChange = () => this.refresh()

  constructor(
    private readonly awareness: Awareness,
    private readonly user: UserId,
    private readonly changed: (users: readonly UserId[]) => void,
    private readonly now: () => number = Date.now,
  ) {
    awareness.setLocalState({ user })
    awareness.on("change", this.onChange)
  }

  /** Users other than this one who are typing now, sorted. */
  get typingUsers(): readonly UserId[] {
    return this.users
  }

  /** Signals that the user is typing (throttled). */
  typing(): void {
    const now = this.now()
    if (now - this.lastSignal < TYPING_THROTTLE_MS) return
    this.lastSignal = now
    this.awareness.setLocalStateField("typing", now)
  }

  /** Clears the user's typing signal (e.g. once they sent the message). */
  stop(): void {
    if (this.lastSignal === 0) return
    this.lastSignal = 0
    this.awareness.setLocalStateField("typing", 0)
  }

  /** Removes the listener and the expiry timer. */
  destroy(): void {
    this.awareness.off("change", this.onChange)
    clearTimeout(this.expiry)
    this.expiry = undefined
  }

  private refresh(): void {
    const now = this.now()
    const users = new Set<UserId>()
    let nextExpiry = Number.POSITIVE_INFINITY
    for (const [client, state] of this.awareness.getStates()) {
      const user = stampedUser(state)
      if (client === this.awareness.clientID || user === undefined || user === this.user) continue
      if (!isTyping(state, now)) continue
      users.add(user)
      nextExpiry = Math.min(nextExpiry, state.typing + TYPING_EXPIRY_MS)
    }
    clearTimeout(this.expiry)
    this.expiry = undefined
    if (nextExpiry !== Number.POSITIVE_INFINITY) {
      this.expiry = setTimeout(() => this.refresh(), Math.max(0, nextExpiry - now) + 1)
    }
    const sorted = [...users].sort()
    if (sorted.join("\n") === this.users.join("\n")) return
    this.users = sorted
    this.changed(sorted)
  }
}
