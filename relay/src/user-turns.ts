import type { UserId } from "@parley/shared"

/**
 * Longest a user's update waits for the one before it. A frame's own work
 * (checks, apply, commit, hook work) takes well under this; what can take
 * longer is waiting for storage (a database that stalls: the update behind
 * must reach the update path, which refuses it at once as retryable, instead
 * of waiting out the stall) or for another relay of a cluster.
 */
export const MAX_TURN_WAIT_MS = 500

/**
 * Resolves once `before` is done, in a later turn of the event loop (after the
 * I/O that waits: other users' frames), or after {@link MAX_TURN_WAIT_MS}.
 */
const after = (before: Promise<void>): Promise<void> =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, MAX_TURN_WAIT_MS)
    void before.then(() => {
      clearTimeout(timer)
      setImmediate(resolve)
    })
  })

const ignore = () => {}

/**
 * One update of each user in flight across the relay, the next one started in
 * a later turn of the event loop.
 *
 * A frame's work is bounded by the per-update caps, but a user has many
 * sockets: sixteen at-cap frames sent at once, each on its own socket to its
 * own conversation, were checked and applied side by side, joined one storage
 * commit and ran their hook work together, and an honest pair's message sent
 * meanwhile waited behind all of it (1.4–1.8 s, measured; each such frame costs
 * the relay up to ~170 ms of CPU). In turns, such a user's frames go one after
 * another with everyone else's in between: what one user can make others wait
 * is one frame's work, whatever their socket count. Honest users rarely have
 * two updates in flight at once (a typed message is saved in milliseconds);
 * when they do, the second waits for the first to be saved, as it would
 * behind it in one document's queue.
 */
export class UserTurns {
  /** Per user with an update in flight: when the last one queued is done (never rejects). */
  private readonly last = new Map<UserId, Promise<void>>()

  /**
   * Runs `work` once the user's earlier updates are done (or waited
   * {@link MAX_TURN_WAIT_MS}), in a later turn of the event loop; at once when
   * none is in flight. Resolves or rejects as `work` does.
   */
  run<T>(user: UserId, work: () => Promise<T>): Promise<T> {
    const before = this.last.get(user)
    const result = before ? after(before).then(work) : work()
    const done = result.then(ignore, ignore)
    this.last.set(user, done)
    void done.then(() => {
      if (this.last.get(user) === done) this.last.delete(user)
    })
    return result
  }

  /** Users with an update in flight (for tests and metrics). */
  get size(): number {
    return this.last.size
  }
}
