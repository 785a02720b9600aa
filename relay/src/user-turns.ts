import type { UserId } from "@parley/shared"

/**
 * Longest a user's update waits for the one before it. A frame's own work
 * (checks, apply, commit, hook work) takes well under this; what can take
 * longer is waiting for storage (a database that stalls: the update behind
 * must reach the update path, which refuses it at once as retryable, instead
 * of waiting out the stall) or for another relay of a cluster.
 */
export const MAX_TURN_WAIT_MS = 500

/** A user's update in the turns: when it started its work, and when it was done (neither rejects). */
interface Turn {
  readonly document: string
  /** When the work of its group started (updates to one document in a row are a group). */
  readonly started: Promise<void>
  /** When this update's own work began, and whether it has. */
  readonly begun: Promise<void>
  hasBegun(): boolean
  readonly done: Promise<void>
}

/**
 * Resolves once the update `before` is done, in a later turn of the event
 * loop (after the I/O that waits: other users' frames), or
 * {@link MAX_TURN_WAIT_MS} after it started: counted from its start, not from
 * now, so that a user's updates queued at once still go one at a time.
 */
const after = (before: Turn): Promise<void> =>
  new Promise((resolve) => {
    let timer: NodeJS.Timeout | undefined
    let finished = false
    void before.started.then(() => {
      if (!finished) timer = setTimeout(resolve, MAX_TURN_WAIT_MS)
    })
    void before.done.then(() => {
      finished = true
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
 * when they do, to two documents, the second waits for the first to be
 * saved (to one document, they queue there as before).
 */
export class UserTurns {
  /** Per user with an update in flight: the last one queued. */
  private readonly last = new Map<UserId, Turn>()

  /**
   * Runs `work`, an update of the user to `document`, once the user's earlier
   * updates are done (or the one before started {@link MAX_TURN_WAIT_MS}
   * ago), in a later turn of the event loop; at once when none is in flight,
   * or when the one before is to the same document: that document's queue
   * orders them already, and stores those queued behind a commit together
   * (see `update-batch.ts`) — once that one began, so that it reaches the
   * queue first. Resolves or rejects as `work` does.
   */
  run<T>(user: UserId, document: string, work: () => Promise<T>): Promise<T> {
    const before = this.last.get(user)
    let start!: () => void
    const begun = new Promise<void>((resolve) => {
      start = resolve
    })
    let begunNow = false
    // Let go of once begun: the turn outlives its work while an earlier one to the same document is not
    // done (a change held waiting for storage: every update behind it is refused at once, but its turn
    // chains onto the held one's), and must not keep the update's bytes (relay memory grew by every
    // byte sent for as long as storage failed).
    let job: (() => Promise<T>) | undefined = work
    const begin = () => {
      begunNow = true
      start()
      const run = job!
      job = undefined
      return run()
    }
    const together = before !== undefined && before.document === document
    // An update to the document of one still waiting for its turn (behind one to another document)
    // waits for that one to begin: it builds on it, and its document's queue would refuse it first
    // as following changes it does not have (`missing-changes`), which the client then sends again.
    const result = !before
      ? begin()
      : !together
        ? after(before).then(begin)
        : before.hasBegun()
          ? begin()
          : before.begun.then(begin)
    const own = result.then(ignore, ignore)
    // Beside one to the same document, the turn lasts until both are done.
    const done = together ? Promise.all([before.done, own]).then(ignore) : own
    const turn: Turn = {
      document,
      started: together ? before.started : begun,
      begun,
      hasBegun: () => begunNow,
      done,
    }
    this.last.set(user, turn)
    void done.then(() => {
      if (this.last.get(user) === turn) this.last.delete(user)
    })
    return result
  }

  /** Users with an update in flight (for tests and metrics). */
  get size(): number {
    return this.last.size
  }
}
