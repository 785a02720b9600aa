import { performance } from "node:perf_hooks"
import type { UserId } from "@parley/shared"
import { MAX_TURN_WAIT_MS } from "./user-turns.js"

/** Length of one measuring window, in ms: a user found over their share waits this long at least. */
export const FAIR_SHARE_WINDOW_MS = 100

/** Event-loop utilization above which the relay counts as saturated. */
export const SATURATED_UTILIZATION = 0.8

/**
 * Update tokens in one window under which a user is never held back: an
 * honest user typing, marking read and reacting spends one or two.
 */
export const FAIR_SHARE_FLOOR_TOKENS = 8

/**
 * Frames of this many bytes or more are heavy: one at a time across the
 * relay (see {@link FairShare.heavy}). A typed message is a few hundred.
 */
export const HEAVY_FRAME_BYTES = 8 * 1024

/**
 * Shares the relay between users when it is saturated. Each user's budgets
 * are sized for one user (about a fifth of a core at the update budget, in
 * frames of a thousand messages), so a handful of accounts spending theirs
 * at once used the whole main thread, and an honest pair's messages waited
 * 0.2–0.9 s behind their frames (an outside probe, four to eight users from
 * one address). Every window the relay measures how busy its event loop was
 * and what each user spent of their update budget; when it was saturated,
 * the users who spent more than an even share of what was spent (and more
 * than {@link FAIR_SHARE_FLOOR_TOKENS}) are held back for the next window:
 * their sockets are not read and their next update waits. Whoever spends
 * little (an honest user between their heavy ones) goes first; the heavy
 * users share what is left, in turns. Nothing is refused or closed: a held
 * user's work only waits.
 */
export class FairShare {
  private spent = new Map<UserId, number>()
  private held = new Set<UserId>()
  private readonly waiting = new Map<UserId, (() => void)[]>()
  private last = performance.eventLoopUtilization()
  /** Measures each window while anything is spent or held (an idle relay wakes for nothing). */
  private timer: NodeJS.Timeout | undefined
  private closed = false
  /** Per user whose update waits here: when the last of them starts. */
  private readonly tails = new Map<UserId, Promise<void>>()
  /** The user whose heavy frames are in the update path, and how many; those waiting to follow, first first. */
  private heavyOwner: UserId | undefined
  private heavyCount = 0
  private readonly heavyQueue: { readonly user: UserId; readonly resolve: () => void }[] = []

  constructor(private readonly options: { readonly windowMs?: number; readonly saturated?: number } = {}) {}

  /** Counts `tokens` of `user`'s update budget spent in this window. */
  charge(user: UserId, tokens: number): void {
    this.spent.set(user, (this.spent.get(user) ?? 0) + tokens)
    if (this.timer || this.closed) return
    this.last = performance.eventLoopUtilization()
    this.timer = setInterval(() => this.measure(), this.options.windowMs ?? FAIR_SHARE_WINDOW_MS)
    this.timer.unref()
  }

  /** Whether `user` is held back in this window. */
  isHeld(user: UserId): boolean {
    return this.held.has(user)
  }

  /**
   * Runs `work`, an update of `user` (`heavy`: of {@link HEAVY_FRAME_BYTES}
   * or more), at once unless the user is held back, their earlier update is
   * still waiting here (an update depends on the one before it, and must
   * reach its document first), or it is heavy and another heavy one is in
   * the update path: each user has one update in flight, but several users'
   * at-cap frames (about 100 ms of work each) went through side by side, and
   * a light message read meanwhile waited for all of them. Heavy ones go one
   * at a time across the relay, in the order they came; light ones wait only
   * behind their own user's.
   */
  admit<T>(user: UserId, heavy: boolean, work: () => Promise<T>): Promise<T> {
    const tail = this.tails.get(user)
    if (!tail && !heavy && !this.held.has(user)) return work()
    const ready = (tail ?? Promise.resolve())
      .then(() => this.free(user))
      .then(() => (heavy ? this.heavySlot(user) : undefined))
    const started = ready.then(() => {})
    this.tails.set(user, started)
    void started.then(() => {
      if (this.tails.get(user) === started) this.tails.delete(user)
    })
    return ready.then((release) => {
      const result = work()
      if (release) {
        // Not held longer than a user's turn is (an update waiting for storage, or for another relay).
        const timer = setTimeout(release, MAX_TURN_WAIT_MS)
        const done = () => {
          clearTimeout(timer)
          release()
        }
        result.then(done, done)
      }
      return result
    })
  }

  /** Resolves once `user` is not held back. */
  private free(user: UserId): Promise<void> | undefined {
    if (!this.held.has(user)) return undefined
    return new Promise((resolve) => {
      const list = this.waiting.get(user)
      if (list) list.push(resolve)
      else this.waiting.set(user, [resolve])
    })
  }

  /**
   * Resolves with the release of the heavy frames' slot, once it is `user`'s:
   * held by one user at a time, whose heavy updates share it (a device's
   * backlog sent in parts to one document is stored in batches, which waiting
   * for each part's commit would undo).
   */
  private heavySlot(user: UserId): Promise<() => void> {
    let released = false
    const release = () => {
      if (released) return
      released = true
      if (--this.heavyCount > 0) return
      this.heavyOwner = undefined
      const next = this.heavyQueue[0]
      if (next) setImmediate(() => this.grantHeavy())
    }
    // Joined by its owner's next one only while nobody else waits (a stream of one user's parts would
    // keep it from the others); taken free only when nobody waits for it.
    const free = this.heavyOwner === undefined || this.heavyOwner === user
    if ((free && this.heavyQueue.length === 0) || this.closed) {
      this.heavyOwner = user
      this.heavyCount++
      return Promise.resolve(release)
    }
    return new Promise<void>((resolve) => this.heavyQueue.push({ user, resolve })).then(() => release)
  }

  /** Gives the free slot to the first waiting user, with each of their updates waiting at the front. */
  private grantHeavy(): void {
    if (this.heavyOwner !== undefined) return
    const first = this.heavyQueue[0]
    if (!first) return
    this.heavyOwner = first.user
    while (this.heavyQueue[0]?.user === first.user) {
      this.heavyCount++
      this.heavyQueue.shift()!.resolve()
    }
  }

  /** Users held back now (tests, metrics). */
  get heldUsers(): number {
    return this.held.size
  }

  close(): void {
    this.closed = true
    clearInterval(this.timer)
    this.timer = undefined
    for (const list of this.waiting.values()) for (const resolve of list) resolve()
    this.waiting.clear()
    this.held.clear()
    for (const next of this.heavyQueue.splice(0)) next.resolve()
  }

  private measure(): void {
    const now = performance.eventLoopUtilization()
    const { utilization } = performance.eventLoopUtilization(now, this.last)
    this.last = now
    const spent = this.spent
    this.spent = new Map()
    const held = new Set<UserId>()
    if (utilization >= (this.options.saturated ?? SATURATED_UTILIZATION) && spent.size > 0) {
      let total = 0
      for (const tokens of spent.values()) total += tokens
      // An even share of what was spent, counting the users held last window too (they spent
      // nothing because they waited, and would otherwise be let go all at once).
      const share = total / (spent.size + [...this.held].filter((u) => !spent.has(u)).length)
      for (const [user, tokens] of spent)
        if (tokens > FAIR_SHARE_FLOOR_TOKENS && tokens > share) held.add(user)
      // Held last window and spending again at once: still over its share while saturated.
      for (const user of this.held) if ((spent.get(user) ?? 0) > FAIR_SHARE_FLOOR_TOKENS) held.add(user)
    }
    this.held = held
    if (spent.size === 0 && held.size === 0 && this.waiting.size === 0) {
      clearInterval(this.timer)
      this.timer = undefined
    }
    this.release([...this.waiting.keys()].filter((user) => !held.has(user)))
  }

  /**
   * Lets the users' waiting work go, one user per turn of the event loop:
   * all at once, several heavy frames would start together and an honest
   * message read meanwhile would wait for all of them.
   */
  private release(users: UserId[]): void {
    const user = users.shift()
    if (user === undefined) return
    const list = this.waiting.get(user)
    this.waiting.delete(user)
    for (const resolve of list ?? []) resolve()
    if (users.length > 0) setImmediate(() => this.release(users))
  }
}
