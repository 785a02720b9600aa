import {
  AWAY_AFTER_MS,
  PRESENCE_THROTTLE_MS,
  type PresenceState,
  stampedUser,
  type UserId,
} from "@parley/shared"
import type { Awareness } from "y-protocols/awareness"
import { Emitter } from "./emitter.js"

/** Whether a user is around: `online` (active lately), `away` (connected, idle), `offline`. */
export type PresenceStatus = "online" | "away" | "offline"

/** Another user's presence as this device sees it. */
export interface UserPresence {
  readonly user: UserId
  readonly status: PresenceStatus
  /** When this device last saw them active (ms since epoch, this device's clock); absent if never. */
  readonly lastSeen?: number
}

/** Events of {@link PresenceSettings}. */
export interface PresenceSettingsEvents {
  /** The user's own settings changed: visible or not, or active again. */
  changed: { visible: boolean; active: number }
}

/**
 * The user's own presence, shared by all their conversations: whether others
 * may see it at all (the privacy switch) and the activity counter published
 * as the `active` awareness field, raised at most once per {@link PRESENCE_THROTTLE_MS}.
 */
export class PresenceSettings extends Emitter<PresenceSettingsEvents> {
  private shown = true
  private counter = 1
  private lastRaised = Number.NEGATIVE_INFINITY

  constructor(private readonly now: () => number) {
    super()
  }

  get visible(): boolean {
    return this.shown
  }

  /** The activity counter to publish (changes when the user was active). */
  get active(): number {
    return this.counter
  }

  setVisible(visible: boolean): void {
    if (visible === this.shown) return
    this.shown = visible
    this.emit("changed", { visible, active: this.counter })
  }

  /** The user did something (typed, sent, focused the app): publish it, throttled. */
  activity(): void {
    const now = this.now()
    if (now - this.lastRaised < PRESENCE_THROTTLE_MS) return
    this.lastRaised = now
    this.counter++
    if (this.shown) this.emit("changed", { visible: true, active: this.counter })
  }
}

/** What a tracker knows of one remote user. */
interface Seen {
  /** Their `active` counter per awareness client id, as last seen. */
  readonly counters: Map<number, number>
  /** Local time their counter last changed (or they appeared). */
  lastActive: number
  present: boolean
}

/**
 * Presence in one conversation, from its awareness: publishes the user's own
 * (the `active` counter, or nothing at all when hidden) and derives everyone
 * else's from the relay's stamp (shared `PRESENCE_STAMP`) only — a state
 * claiming a user is never believed. "Away" is judged on this device's clock
 * (when the counter last changed), so clock skew between devices does not
 * matter; a user whose entries all left is `offline`, last seen when their
 * counter last changed. Entries of a closed connection are removed by the
 * relay, and y-protocols drops remote states not renewed for 30 s.
 */
export class PresenceTracker {
  private readonly seen = new Map<UserId, Seen>()
  private snapshot: readonly UserPresence[] = []
  private timer: ReturnType<typeof setTimeout> | undefined
  private readonly onChange = () => this.refresh()
  private readonly offSettings: () => void

  constructor(
    private readonly awareness: Awareness,
    private readonly user: UserId,
    private readonly settings: PresenceSettings,
    private readonly changed: (presence: readonly UserPresence[]) => void,
    private readonly now: () => number,
  ) {
    this.publish()
    this.offSettings = settings.on("changed", () => this.publish())
    awareness.on("change", this.onChange)
    this.refresh()
  }

  /** Other users seen in this conversation since it opened, sorted by user id. */
  get presence(): readonly UserPresence[] {
    return this.snapshot
  }

  destroy(): void {
    this.offSettings()
    this.awareness.off("change", this.onChange)
    clearTimeout(this.timer)
    this.timer = undefined
  }

  private publish(): void {
    if (!this.settings.visible) {
      // Hidden: no entry at all, so nobody learns even that a connection is there.
      if (this.awareness.getLocalState() !== null) this.awareness.setLocalState(null)
      return
    }
    const state = (this.awareness.getLocalState() ?? { user: this.user }) as PresenceState
    if (state.active === this.settings.active) return
    this.awareness.setLocalState({ ...state, user: this.user, active: this.settings.active })
  }

  private refresh(): void {
    const now = this.now()
    const present = new Set<UserId>()
    for (const [client, state] of this.awareness.getStates()) {
      const user = stampedUser(state)
      if (client === this.awareness.clientID || user === undefined || user === this.user) continue
      const active = (state as { active?: unknown }).active
      // A state without the counter is a client that publishes no presence (stock, or hidden).
      if (typeof active !== "number") continue
      present.add(user)
      let seen = this.seen.get(user)
      if (!seen) {
        seen = { counters: new Map(), lastActive: now, present: true }
        this.seen.set(user, seen)
      }
      if (seen.counters.get(client) !== active) {
        seen.counters.set(client, active)
        seen.lastActive = now
      }
    }
    let nextAway = Number.POSITIVE_INFINITY
    const list: UserPresence[] = []
    for (const [user, seen] of this.seen) {
      seen.present = present.has(user)
      if (!seen.present) seen.counters.clear()
      const idleFor = now - seen.lastActive
      const status: PresenceStatus = !seen.present ? "offline" : idleFor < AWAY_AFTER_MS ? "online" : "away"
      if (status === "online") nextAway = Math.min(nextAway, seen.lastActive + AWAY_AFTER_MS)
      list.push({ user, status, lastSeen: seen.lastActive })
    }
    list.sort((a, b) => (a.user < b.user ? -1 : a.user > b.user ? 1 : 0))
    clearTimeout(this.timer)
    this.timer = undefined
    if (nextAway !== Number.POSITIVE_INFINITY)
      this.timer = setTimeout(() => this.refresh(), Math.max(0, nextAway - now) + 1)
    const same =
      list.length === this.snapshot.length &&
      list.every((p, i) => p.user === this.snapshot[i]!.user && p.status === this.snapshot[i]!.status)
    this.snapshot = list
    if (!same) this.changed(list)
  }
}

/**
 * The best of several conversations' views of one user: online beats away
 * beats offline, and the latest `lastSeen` wins.
 */
export function mergePresence(views: readonly UserPresence[]): UserPresence | undefined {
  const rank: Record<PresenceStatus, number> = { online: 2, away: 1, offline: 0 }
  let best: UserPresence | undefined
  let lastSeen: number | undefined
  for (const view of views) {
    if (!best || rank[view.status] > rank[best.status]) best = view
    if (view.lastSeen !== undefined) lastSeen = Math.max(lastSeen ?? 0, view.lastSeen)
  }
  if (!best) return undefined
  return { user: best.user, status: best.status, ...(lastSeen === undefined ? {} : { lastSeen }) }
}
